//! The Kubernetes suite's control plane is real and usable the way the DaemonSet agent will use
//! it: Istio's CRDs, the seed's unchanged YAML, Pods found by node, a kube-rs watcher, RBAC.
//! Each test starts its own etcd + kube-apiserver (see `tests/src/cluster.rs`).
use std::time::Duration;

use egress_tests::*;
use futures_util::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, GroupVersionKind, ListParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::watcher,
};

/// A bound on every wait for the API server inside a test.
const WAIT: Duration = Duration::from_secs(30);

fn example(name: &str) -> String {
    let path = format!("{}/../examples/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// A kube-rs client with the admin's kubeconfig, as the agent will build one.
async fn client(cluster: &Cluster) -> Client {
    let kubeconfig = Kubeconfig::read_from(cluster.kubeconfig()).expect("reading the kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("a kube config from the kubeconfig");
    Client::try_from(config).expect("a kube client")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

#[test]
fn kube_istio_crds_serve_the_seed_yaml_and_a_watcher_sees_new_service_entries() {
    if !require_control_plane() {
        return;
    }
    let cluster = Cluster::start();
    cluster.install_istio_crds();
    for crd in [
        "serviceentries.networking.istio.io",
        "destinationrules.networking.istio.io",
        "authorizationpolicies.security.istio.io",
    ] {
        let established = cluster.get(
            "crd",
            "",
            crd,
            r#"{.status.conditions[?(@.type=="Established")].status}"#,
        );
        assert_eq!(established, "True", "{crd}");
    }

    // The seed's unchanged YAML.
    cluster.apply(&example("httpbin.yaml"));
    cluster.apply(&example("httpbin-authz.yaml"));
    assert_eq!(
        cluster.get("serviceentry", "default", "httpbin.org", "{.spec.hosts[0]}"),
        "httpbin.org"
    );
    assert_eq!(
        cluster.get(
            "authorizationpolicy",
            "default",
            "httpbin",
            "{.spec.targetRefs[0].kind}"
        ),
        "ServiceEntry"
    );
    // Older apiVersions are served too (same storage, no conversion needed).
    cluster.apply(
        "apiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\n\
         metadata: {name: httpbin-tls, namespace: default}\n\
         spec: {host: httpbin.org, trafficPolicy: {tls: {mode: SIMPLE}}}\n\
         ---\napiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\n\
         metadata: {name: deny-nothing, namespace: default}\nspec: {action: DENY}\n",
    );
    assert_eq!(
        cluster.get(
            "destinationrules.v1.networking.istio.io",
            "default",
            "httpbin-tls",
            "{.spec.trafficPolicy.tls.mode}"
        ),
        "SIMPLE"
    );

    // A kube-runtime watcher, started before the object exists, sees it created.
    runtime().block_on(async {
        let gvk = GroupVersionKind::gvk("networking.istio.io", "v1", "ServiceEntry");
        let resource = ApiResource::from_gvk_with_plural(&gvk, "serviceentries");
        let api: Api<DynamicObject> =
            Api::namespaced_with(client(&cluster).await, "default", &resource);
        let mut events = watcher(api, watcher::Config::default()).boxed();
        tokio::time::timeout(WAIT, async {
            while let Some(event) = events.try_next().await.expect("a watch event") {
                if matches!(event, watcher::Event::InitDone) {
                    return;
                }
            }
            panic!("the watch ended before its initial list");
        })
        .await
        .expect("the watcher's initial list within 30 s");

        cluster.apply(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
             metadata: {name: api-example, namespace: default}\n\
             spec: {hosts: [api.example.com], ports: [{number: 443, name: tls, protocol: TLS}], \
             resolution: DNS}\n",
        );
        let seen = tokio::time::timeout(WAIT, async {
            while let Some(event) = events.try_next().await.expect("a watch event") {
                if let watcher::Event::Apply(se) = event
                    && se.metadata.name.as_deref() == Some("api-example")
                {
                    return se;
                }
            }
            panic!("the watch ended");
        })
        .await
        .expect("the watcher sees the new ServiceEntry within 30 s");
        assert_eq!(seen.data["spec"]["hosts"][0], "api.example.com");
        assert!(seen.metadata.uid.is_some());
    });
}

#[test]
fn kube_pods_of_one_node_are_listed_by_field_selector_with_their_uids() {
    if !require_control_plane() {
        return;
    }
    let cluster = Cluster::start();
    cluster.apply(
        "apiVersion: v1\nkind: Namespace\n\
         metadata: {name: apps, labels: {istio.io/dataplane-mode: ambient}}\n",
    );
    // No kubelet runs: a Pod bound to a node is an object, which is all the agent reads.
    let pod = |name: &str, node: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: apps}}\n\
             spec:\n  nodeName: {node}\n  serviceAccountName: sleep\n\
             \x20 containers: [{{name: app, image: registry.invalid/sleep}}]\n"
        )
    };
    cluster.apply(&pod("sleep", "node-1"));
    cluster.apply(&pod("elsewhere", "node-2"));
    assert_eq!(
        cluster.get(
            "namespace",
            "",
            "apps",
            "{.metadata.labels.istio\\.io/dataplane-mode}"
        ),
        "ambient"
    );
    let uid = cluster.get("pod", "apps", "sleep", "{.metadata.uid}");
    assert_eq!(uid.len(), 36, "a server-assigned UUID: {uid:?}");
    assert_eq!(uid.matches('-').count(), 4, "{uid:?}");

    runtime().block_on(async {
        let pods: Api<Pod> = Api::all(client(&cluster).await);
        let list = tokio::time::timeout(
            WAIT,
            pods.list(&ListParams::default().fields("spec.nodeName=node-1")),
        )
        .await
        .expect("listing within 30 s")
        .expect("listing pods by node");
        let found: Vec<(String, String, String)> = list
            .items
            .iter()
            .map(|p| {
                (
                    p.metadata.name.clone().unwrap_or_default(),
                    p.metadata.uid.clone().unwrap_or_default(),
                    p.spec
                        .as_ref()
                        .and_then(|s| s.service_account_name.clone())
                        .unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(found, [("sleep".to_owned(), uid, "sleep".to_owned())]);
    });
}

#[test]
fn kube_rbac_grants_a_service_account_only_what_a_cluster_role_binds() {
    if !require_control_plane() {
        return;
    }
    let cluster = Cluster::builder()
        .service_account("egress-system", "egress")
        .start();
    let agent = service_account_user("egress-system", "egress");
    let can_i = |verb: &str, resource: &str| {
        let as_agent = format!("--as={agent}");
        // Exit 1 with "no" is an answer, not a failure.
        let out = cluster
            .kubectl(&["auth", "can-i", verb, resource, &as_agent])
            .run();
        out.stdout.trim().to_owned()
    };
    assert_eq!(can_i("list", "pods"), "no");
    // With its own token, not impersonated: the API server refuses.
    let refused = cluster.kubectl(&["get", "pods", "-A"]).user(&agent).run();
    assert!(
        !refused.success() && refused.stderr.contains("Forbidden"),
        "{refused:?}"
    );

    cluster.apply(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: egress-system}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: egress}\n\
         rules:\n- apiGroups: ['']\n  resources: [pods, namespaces]\n  verbs: [get, list, watch]\n\
         ---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\n\
         metadata: {name: egress}\n\
         roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: egress}\n\
         subjects: [{kind: ServiceAccount, name: egress, namespace: egress-system}]\n",
    );
    cluster.eventually("the binding takes effect", || {
        can_i("list", "pods") == "yes"
    });
    assert_eq!(can_i("delete", "pods"), "no", "only what the role names");
    assert_eq!(can_i("list", "secrets"), "no");
    cluster.kubectl(&["get", "pods", "-A"]).user(&agent).ok();
}
