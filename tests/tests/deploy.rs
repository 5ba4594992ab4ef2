//! The packaging (design §10): the Helm chart in deploy/helm/egress renders what the node agent
//! needs and nothing it does not, deploy/manifests/egress.yaml is that chart rendered, both pass
//! the real API server's validation (`kubectl apply --dry-run=server`, then for real), and the
//! agent's ServiceAccount may read exactly what the agent watches (`kubectl auth can-i` with the
//! ServiceAccount's own token). A real helm 4.3.1 renders and installs; a real kube-apiserver
//! 1.20.2 + etcd judges (tests/src/cluster.rs).
use egress_tests::*;
use serde_json::{Value, json};

/// The `helm template` arguments `cargo xtask manifests` renders the plain manifests with
/// (xtask/src/deploy.rs says the same).
const MANIFEST_ARGS: &[&str] = &["--set", "createNamespace=true"];
/// The capabilities of design §10.
const CAPABILITIES: [&str; 5] = ["BPF", "NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE", "PERFMON"];
const AGENT: (&str, &str) = ("egress-system", "egress");

fn read(path: &str) -> String {
    let path = workspace_root().join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn manifests() -> String {
    read("deploy/manifests/egress.yaml")
}

fn agent() -> String {
    service_account_user(AGENT.0, AGENT.1)
}

/// The DaemonSet's pod spec and its one container.
fn pod_and_container(docs: &[Value]) -> (&Value, &Value) {
    let pod = &Chart::find(docs, "DaemonSet", "egress")["spec"]["template"]["spec"];
    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "one container: {containers:?}");
    (pod, &containers[0])
}

fn args(container: &Value) -> Vec<&str> {
    container["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("string args"))
        .collect()
}

/// The volume mounted at `path`: (its mount, its hostPath).
fn mount<'a>(pod: &'a Value, container: &'a Value, path: &str) -> (&'a Value, &'a Value) {
    let mount = container["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .find(|m| m["mountPath"] == path)
        .unwrap_or_else(|| panic!("nothing mounted at {path}"));
    let volume = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap_or_else(|| panic!("no volume {}", mount["name"]));
    (mount, &volume["hostPath"])
}

#[test]
fn deploy_chart_lints_and_renders_the_daemonset_of_design_10() {
    if !require_helm() {
        return;
    }
    let chart = Chart::egress();
    chart
        .helm(&["lint", "--strict", "deploy/helm/egress"])
        .expect_success("helm lint --strict");

    let docs = chart.render();
    let mut objects = kinds_and_names(&docs);
    objects.sort();
    assert_eq!(
        objects,
        [
            "ClusterRole/egress",
            "ClusterRole/egress-secrets",
            "ClusterRoleBinding/egress",
            "ClusterRoleBinding/egress-secrets",
            "DaemonSet/egress",
            "ServiceAccount/egress",
        ],
        "the default release renders these objects and no others (no Namespace: helm install \
         --create-namespace makes it; no CRDs: helm installs crds/ itself)"
    );
    let daemonset = Chart::find(&docs, "DaemonSet", "egress");
    assert_eq!(daemonset["apiVersion"], "apps/v1");
    assert_eq!(daemonset["metadata"]["namespace"], "egress-system");
    let (pod, container) = pod_and_container(&docs);
    assert_eq!(pod["serviceAccountName"], "egress");
    assert_eq!(pod["hostNetwork"], true, "upstreams leave from the node");
    assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet");
    assert_eq!(pod["hostPID"], false, "host /proc is mounted at /host/proc");
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(
        pod["tolerations"],
        json!([{"operator": "Exists"}]),
        "runs on every node"
    );

    let args = args(container);
    for arg in [
        "run",
        "--kubernetes",
        "--proc=/host/proc",
        "--listen=127.0.0.1:15001",
        "--admin=$(HOST_IP):15000",
        "--dataplane-mode=ambient",
        "--service-entries=bound",
        "--root-namespace=istio-system",
    ] {
        assert!(args.contains(&arg), "{arg} not in {args:?}");
    }
    assert_eq!(args[..2], ["run", "--kubernetes"]);
    let env = &container["env"];
    assert_eq!(env[0]["name"], "NODE_NAME");
    assert_eq!(
        env[0]["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    assert_eq!(
        env[1]["name"], "HOST_IP",
        "--admin=$(HOST_IP) needs it first"
    );
    assert_eq!(
        env[1]["valueFrom"]["fieldRef"]["fieldPath"],
        "status.hostIP"
    );

    let security = &container["securityContext"];
    assert_eq!(security["privileged"], false);
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(security["capabilities"]["add"], json!(CAPABILITIES));
    assert_eq!(security["readOnlyRootFilesystem"], true);

    let (bpffs, host) = mount(pod, container, "/sys/fs/bpf");
    assert_eq!(host["path"], "/sys/fs/bpf");
    assert_eq!(bpffs["mountPropagation"], "HostToContainer");
    let (_, host) = mount(pod, container, "/sys/fs/cgroup");
    assert_eq!(host["path"], "/sys/fs/cgroup");
    let (proc, host) = mount(pod, container, "/host/proc");
    assert_eq!(host["path"], "/proc");
    assert_eq!(proc["readOnly"], true);

    assert_eq!(
        container["ports"],
        json!([{"name": "admin", "containerPort": 15000, "protocol": "TCP"}])
    );
    let probe = &container["readinessProbe"]["httpGet"];
    assert_eq!(probe["path"], "/healthz/ready");
    assert_eq!(probe["port"], "admin");
    assert!(container.get("livenessProbe").is_none());
    assert!(container["resources"]["requests"]["memory"].is_string());
    assert!(container["resources"]["limits"]["memory"].is_string());
    let annotations = &daemonset["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], "15000");
    assert_eq!(annotations["prometheus.io/path"], "/stats/prometheus");
    assert_eq!(
        annotations["container.apparmor.security.beta.kubernetes.io/egress"],
        "unconfined"
    );
}

#[test]
fn deploy_chart_values_change_what_they_name() {
    if !require_helm() {
        return;
    }
    let docs = Chart::egress()
        .set("dataplaneMode=egress")
        .set("serviceEntries=all")
        .set("admin.port=15090")
        .set("image.repository=registry.test/egress")
        .set("image.tag=dev")
        .set("privileged=true")
        .set("rootNamespace=mesh-root")
        .set("cgroupRoot=/sys/fs/cgroup/kubepods.slice")
        .set("extraArgs={--access-log-format,json}")
        .set("prometheus.scrape=false")
        .render();
    let (pod, container) = pod_and_container(&docs);
    assert_eq!(container["image"], "registry.test/egress:dev");
    let args = args(container);
    for arg in [
        "--dataplane-mode=egress",
        "--service-entries=all",
        "--admin=$(HOST_IP):15090",
        "--root-namespace=mesh-root",
        "--cgroup=/sys/fs/cgroup/kubepods.slice",
    ] {
        assert!(args.contains(&arg), "{arg} not in {args:?}");
    }
    assert_eq!(args[args.len() - 2..], ["--access-log-format", "json"]);
    assert_eq!(container["ports"][0]["containerPort"], 15090);
    let security = &container["securityContext"];
    assert_eq!(security["privileged"], true);
    assert!(security.get("capabilities").is_none(), "{security}");
    let (bpffs, _) = mount(pod, container, "/sys/fs/bpf");
    assert_eq!(bpffs["mountPropagation"], "Bidirectional");
    let annotations =
        &Chart::find(&docs, "DaemonSet", "egress")["spec"]["template"]["metadata"]["annotations"];
    assert!(annotations.get("prometheus.io/scrape").is_none());
    assert!(
        annotations
            .get("container.apparmor.security.beta.kubernetes.io/egress")
            .is_none(),
        "privileged containers are unconfined anyway"
    );

    // The default image tag is the chart's appVersion.
    let docs = Chart::egress().render();
    let (_, container) = pod_and_container(&docs);
    let chart = read("deploy/helm/egress/Chart.yaml");
    let app_version = chart
        .lines()
        .find_map(|l| l.strip_prefix("appVersion: "))
        .expect("appVersion in Chart.yaml")
        .trim_matches('"');
    assert_eq!(container["image"], format!("egress:{app_version}"));
}

#[test]
fn deploy_chart_refuses_bad_values_naming_them() {
    if !require_helm() {
        return;
    }
    for (set, expected) in [
        ("serviceEntries=some", "serviceEntries"),
        ("dataplaneMode=none", "dataplaneMode"),
        ("admin.port=70000", "admin/port"),
        ("rbac.secrets=everything", "rbac/secrets"),
        ("privileged=yes", "privileged"),
        ("replicas=2", "replicas"),
        ("rbac.secrets=namespaces", "rbac.secretNamespaces"),
    ] {
        let out = Chart::egress()
            .set(set)
            .helm(&["template", "egress", "deploy/helm/egress"]);
        assert!(!out.success(), "--set {set} was accepted: {out:?}");
        assert!(
            out.stderr.contains(expected),
            "--set {set}: the error does not name {expected}: {}",
            out.stderr
        );
    }
}

#[test]
fn deploy_manifests_are_the_chart_rendered_with_defaults() {
    if !require_helm() {
        return;
    }
    let committed = manifests();
    // The file is a comment header (how it was made) and then exactly what helm prints.
    let body_at = committed
        .find("\n---\n")
        .expect("deploy/manifests/egress.yaml has a header and documents");
    let (header, body) = committed.split_at(body_at + 1);
    assert!(header.lines().all(|l| l.starts_with('#')), "{header}");
    assert!(header.contains("cargo xtask manifests"), "{header}");
    let rendered = Chart::egress().template(MANIFEST_ARGS);
    assert!(
        body == rendered,
        "deploy/manifests/egress.yaml is stale: run `cargo xtask manifests`"
    );
    // Defaults plus the Namespace: what `kubectl apply -f` alone needs.
    let mut objects = kinds_and_names(&documents(body));
    objects.sort();
    assert_eq!(
        objects[..3],
        [
            "ClusterRole/egress",
            "ClusterRole/egress-secrets",
            "ClusterRoleBinding/egress"
        ]
    );
    assert!(
        objects.contains(&"Namespace/egress-system".to_owned()),
        "{objects:?}"
    );
    assert!(
        !committed.contains("CustomResourceDefinition"),
        "CRDs are separate"
    );
}

#[test]
fn deploy_chart_crds_are_deploy_crds_and_skippable() {
    if !require_helm() {
        return;
    }
    assert!(
        read("deploy/helm/egress/crds/istio.yaml") == read("deploy/crds/istio.yaml"),
        "deploy/helm/egress/crds/istio.yaml differs from deploy/crds/istio.yaml: run `cargo \
         xtask manifests`"
    );
    let chart = Chart::egress();
    let with = documents(&chart.template(&["--include-crds"]));
    let crds: Vec<&Value> = with
        .iter()
        .filter(|d| d["kind"] == "CustomResourceDefinition")
        .collect();
    let names: Vec<&str> = crds
        .iter()
        .map(|d| d["metadata"]["name"].as_str().expect("a name"))
        .collect();
    assert_eq!(
        names,
        [
            "serviceentries.networking.istio.io",
            "destinationrules.networking.istio.io",
            "authorizationpolicies.security.istio.io",
        ]
    );
    assert!(
        crds.iter()
            .all(|d| d["apiVersion"] == "apiextensions.k8s.io/v1")
    );
    // helm installs crds/ on `helm install` unless --skip-crds (a cluster with Istio; see
    // deploy_helm_install_then_upgrades_scope_secret_access); templates never carry them.
    let without = chart.render();
    assert!(
        without
            .iter()
            .all(|d| d["kind"] != "CustomResourceDefinition")
    );
}

#[test]
fn deploy_manifests_pass_server_side_dry_run_on_the_test_api_server() {
    if !(require_helm() && require_control_plane()) {
        return;
    }
    let cluster = Cluster::start();
    let crds = read("deploy/crds/istio.yaml");
    let dry = |yaml: &str| {
        cluster
            .kubectl(&["apply", "--dry-run=server", "-f", "-"])
            .stdin(yaml)
            .run()
    };
    let out = dry(&crds).expect_success("the CRDs, dry run");
    assert_eq!(out.stdout.matches("(server dry run)").count(), 3, "{out:?}");

    // Namespaced objects need their namespace to exist even in a dry run.
    cluster
        .kubectl(&["create", "namespace", "egress-system"])
        .ok();
    let out = dry(&manifests()).expect_success("deploy/manifests/egress.yaml, dry run");
    for object in [
        "serviceaccount/egress",
        "clusterrole.rbac.authorization.k8s.io/egress",
        "clusterrole.rbac.authorization.k8s.io/egress-secrets",
        "clusterrolebinding.rbac.authorization.k8s.io/egress",
        "clusterrolebinding.rbac.authorization.k8s.io/egress-secrets",
        "daemonset.apps/egress",
    ] {
        assert!(
            out.stdout
                .contains(&format!("{object} created (server dry run)")),
            "{object}: {out:?}"
        );
    }
    assert!(
        !cluster
            .kubectl(&["get", "daemonset", "egress", "-n", "egress-system"])
            .run()
            .success(),
        "a dry run creates nothing"
    );
    // The privileged variant and one with its Secrets bound per namespace are valid too.
    for sets in [
        &["privileged=true"][..],
        &[
            "rbac.secrets=namespaces",
            "rbac.secretNamespaces={egress-system}",
        ],
        &["rbac.secrets=none", "hostPID=true"],
    ] {
        let chart = sets.iter().fold(Chart::egress(), |c, s| c.set(s));
        dry(&chart.template(&[])).expect_success(&format!("dry run with {sets:?}"));
    }
    // The server does judge: Bidirectional propagation without privileged is refused, which is
    // why the chart uses it only with privileged=true.
    let invalid = manifests().replace(
        "mountPropagation: HostToContainer",
        "mountPropagation: Bidirectional",
    );
    let out = dry(&invalid);
    assert!(!out.success(), "Bidirectional without privileged: {out:?}");
    assert!(out.stderr.contains("mountPropagation"), "{out:?}");

    // For real, then read back: 1.20 kept every field the chart sets.
    cluster.apply(&manifests());
    let spec = |path: &str| {
        cluster.get(
            "daemonset",
            "egress-system",
            "egress",
            &format!("{{.spec.template.spec{path}}}"),
        )
    };
    assert_eq!(spec(".hostNetwork"), "true");
    assert_eq!(spec(".priorityClassName"), "system-node-critical");
    assert_eq!(
        spec(".containers[0].readinessProbe.httpGet.path"),
        "/healthz/ready"
    );
    assert_eq!(
        spec(".containers[0].volumeMounts[?(@.name==\"bpffs\")].mountPropagation"),
        "HostToContainer"
    );
    assert_eq!(
        spec(".containers[0].securityContext.capabilities.add"),
        r#"["BPF","NET_ADMIN","SYS_ADMIN","SYS_PTRACE","PERFMON"]"#
    );
    assert_eq!(
        spec(".containers[0].env[0].valueFrom.fieldRef.fieldPath"),
        "spec.nodeName"
    );
}

#[test]
fn deploy_manifests_validate_against_the_schemas_of_kubernetes_1_33_and_1_37() {
    if !(require_helm() && require_kubernetes_validate()) {
        return;
    }
    // The test API server is 1.20; these are today's releases, strictly (an unknown or
    // misspelt field is an error, not dropped).
    let privileged = Chart::egress().set("privileged=true").template(&[]);
    let per_namespace = Chart::egress()
        .set("rbac.secrets=namespaces")
        .set("rbac.secretNamespaces={team-a}")
        .template(&[]);
    for version in ["1.33.0", "1.37.0"] {
        for (what, yaml) in [
            ("deploy/manifests/egress.yaml", manifests()),
            ("deploy/crds/istio.yaml", read("deploy/crds/istio.yaml")),
            ("privileged=true", privileged.clone()),
            ("rbac.secrets=namespaces", per_namespace.clone()),
        ] {
            kubernetes_validate(version, &yaml)
                .expect_success(&format!("{what} against Kubernetes {version}"));
        }
    }
    // It does judge.
    let misspelt = manifests().replace("hostNetwork: true", "hostNetwrk: true");
    let out = kubernetes_validate("1.33.0", &misspelt);
    assert!(!out.success(), "a misspelt field passed: {out:?}");
    assert!(
        out.stdout.contains("hostNetwrk") || out.stderr.contains("hostNetwrk"),
        "{out:?}"
    );
}

/// `kubectl auth can-i VERB RESOURCE ARGS...` as the agent, with its own token.
fn can_i(cluster: &Cluster, verb: &str, resource: &str, scope: &[&str]) -> bool {
    let mut args = vec!["auth", "can-i", verb, resource];
    args.extend_from_slice(scope);
    let out = cluster.kubectl(&args).user(&agent()).run();
    match out.stdout.trim() {
        "yes" => true,
        "no" => false,
        _ => panic!("kubectl auth can-i {verb} {resource} {scope:?}: {out:?}"),
    }
}

/// The resources the agent watches, with the scope it watches them in.
const READS: [(&str, &[&str]); 6] = [
    ("serviceentries.networking.istio.io", &["-A"]),
    ("destinationrules.networking.istio.io", &["-A"]),
    ("authorizationpolicies.security.istio.io", &["-A"]),
    ("namespaces", &[]),
    ("pods", &["-A"]),
    ("secrets", &["-A"]),
];

#[test]
fn deploy_rbac_lets_the_agent_read_what_it_watches_and_nothing_more() {
    if !(require_helm() && require_control_plane()) {
        return;
    }
    let cluster = Cluster::builder().service_account(AGENT.0, AGENT.1).start();
    cluster.install_istio_crds();
    cluster
        .kubectl(&["create", "namespace", "istio-system"])
        .ok();
    // Before the RBAC: nothing.
    assert!(!can_i(&cluster, "list", "pods", &["-A"]));
    cluster.apply(&manifests());

    // The rules, exactly: read verbs only, the istio ConfigMap by name.
    let rules = |role: &str| -> Value {
        let json = cluster.get("clusterrole", "", role, "{.rules}");
        serde_json::from_str(&json).expect("rules as JSON")
    };
    let read = json!(["get", "list", "watch"]);
    assert_eq!(
        rules("egress"),
        json!([
            {"apiGroups": ["networking.istio.io"], "resources": ["serviceentries", "destinationrules"], "verbs": read},
            {"apiGroups": ["security.istio.io"], "resources": ["authorizationpolicies"], "verbs": read},
            {"apiGroups": [""], "resources": ["namespaces", "pods"], "verbs": read},
            {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["istio"], "verbs": read},
        ])
    );
    assert_eq!(
        rules("egress-secrets"),
        json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": read}])
    );

    for (resource, scope) in READS {
        for verb in ["get", "list", "watch"] {
            assert!(can_i(&cluster, verb, resource, scope), "{verb} {resource}");
        }
        for verb in ["create", "update", "patch", "delete", "deletecollection"] {
            assert!(!can_i(&cluster, verb, resource, scope), "{verb} {resource}");
        }
    }
    // The mesh config: the one ConfigMap, read only.
    for verb in ["get", "list", "watch"] {
        assert!(can_i(
            &cluster,
            verb,
            "configmaps/istio",
            &["-n", "istio-system"]
        ));
    }
    assert!(!can_i(
        &cluster,
        "update",
        "configmaps/istio",
        &["-n", "istio-system"]
    ));
    assert!(!can_i(
        &cluster,
        "list",
        "configmaps",
        &["-n", "istio-system"]
    ));
    assert!(!can_i(
        &cluster,
        "get",
        "configmaps/other",
        &["-n", "istio-system"]
    ));
    // Nothing else: no writes anywhere, no subresources, no escalation. (`can-i` reads
    // `pods/log` as the pod named log: subresources go in --subresource.)
    for (verb, resource, subresource) in [
        ("create", "pods", "exec"),
        ("get", "pods", "log"),
        ("patch", "pods", "status"),
        ("create", "pods", "eviction"),
        ("update", "serviceentries.networking.istio.io", "status"),
        ("patch", "namespaces", "finalize"),
        ("get", "nodes", ""),
        ("get", "nodes", "proxy"),
        ("list", "services", ""),
        ("list", "endpoints", ""),
        ("list", "serviceaccounts", ""),
        ("create", "serviceaccounts", "token"),
        ("create", "events", ""),
        ("create", "tokenreviews.authentication.k8s.io", ""),
        ("list", "daemonsets.apps", ""),
        (
            "create",
            "customresourcedefinitions.apiextensions.k8s.io",
            "",
        ),
        ("bind", "clusterroles.rbac.authorization.k8s.io", ""),
        ("escalate", "clusterroles.rbac.authorization.k8s.io", ""),
        ("impersonate", "users", ""),
        ("*", "*", ""),
    ] {
        let sub = format!("--subresource={subresource}");
        let scope: &[&str] = if subresource.is_empty() {
            &["-A"]
        } else {
            &["-A", &sub]
        };
        assert!(
            !can_i(&cluster, verb, resource, scope),
            "{verb} {resource} {subresource}"
        );
    }

    // Real requests with the agent's token, as its watchers will make them.
    let as_agent = |args: &[&str]| cluster.kubectl(args).user(&agent()).run();
    as_agent(&[
        "get",
        "pods",
        "-A",
        "--field-selector",
        "spec.nodeName=node-1",
    ])
    .expect_success("pods of one node");
    as_agent(&[
        "get",
        "serviceentries,destinationrules,authorizationpolicies",
        "-A",
    ])
    .expect_success("the Istio objects");
    // A list and a watch of the ConfigMap by name are allowed (the field selector names it)...
    as_agent(&[
        "get",
        "--raw",
        "/api/v1/namespaces/istio-system/configmaps?fieldSelector=metadata.name%3Distio",
    ])
    .expect_success("listing the istio ConfigMap by name");
    as_agent(&[
        "get",
        "--raw",
        "/api/v1/namespaces/istio-system/configmaps?watch=1&timeoutSeconds=1\
         &fieldSelector=metadata.name%3Distio",
    ])
    .expect_success("watching the istio ConfigMap by name");
    // ...all of them are not.
    let out = as_agent(&["get", "configmaps", "-n", "istio-system"]);
    assert!(
        !out.success() && out.stderr.contains("forbidden"),
        "{out:?}"
    );
    let out = as_agent(&["create", "configmap", "x", "-n", "istio-system"]);
    assert!(
        !out.success() && out.stderr.contains("forbidden"),
        "{out:?}"
    );
    let out = as_agent(&["delete", "namespace", "istio-system"]);
    assert!(
        !out.success() && out.stderr.contains("forbidden"),
        "{out:?}"
    );
}

#[test]
fn deploy_helm_install_then_upgrades_scope_secret_access() {
    if !(require_helm() && require_control_plane()) {
        return;
    }
    let cluster = Cluster::builder().service_account(AGENT.0, AGENT.1).start();
    for ns in ["team-a", "team-b"] {
        cluster.kubectl(&["create", "namespace", ns]).ok();
    }
    // A cluster with Istio keeps its own CRDs: --skip-crds installs none.
    let out = Chart::egress().install(&cluster, &["--skip-crds"]);
    assert!(out.success(), "helm install --skip-crds: {out:?}");
    assert!(
        out.stdout
            .contains("one agent per node in namespace egress-system"),
        "helm prints the chart's NOTES: {out:?}"
    );
    assert!(
        !cluster
            .kubectl(&["get", "crd", "serviceentries.networking.istio.io"])
            .run()
            .success(),
        "--skip-crds installed a CRD"
    );
    assert_eq!(
        cluster.get(
            "daemonset",
            "egress-system",
            "egress",
            "{.metadata.labels.app\\.kubernetes\\.io/managed-by}"
        ),
        "Helm"
    );
    let secrets = |ns: &str| can_i(&cluster, "watch", "secrets", &["-n", ns]);
    assert!(
        secrets("team-a") && secrets("team-b"),
        "rbac.secrets=cluster"
    );
    assert!(can_i(&cluster, "list", "secrets", &["-A"]));

    let out = Chart::egress()
        .set("rbac.secrets=namespaces")
        .set("rbac.secretNamespaces={team-a}")
        .install(&cluster, &[]);
    assert!(out.success(), "helm upgrade to namespaces: {out:?}");
    assert!(secrets("team-a"), "team-a is listed");
    assert!(!secrets("team-b"), "team-b is not");
    assert!(!can_i(&cluster, "list", "secrets", &["-A"]));
    for verb in ["get", "list", "watch"] {
        assert!(can_i(&cluster, verb, "secrets", &["-n", "team-a"]));
    }
    for verb in ["create", "update", "delete"] {
        assert!(!can_i(&cluster, verb, "secrets", &["-n", "team-a"]));
    }

    let out = Chart::egress()
        .set("rbac.secrets=none")
        .install(&cluster, &[]);
    assert!(out.success(), "helm upgrade to none: {out:?}");
    assert!(
        !secrets("team-a") && !secrets("team-b"),
        "rbac.secrets=none"
    );
    // The rest of the agent's reads are untouched by the Secret scope.
    assert!(can_i(&cluster, "watch", "pods", &["-A"]));
    assert!(can_i(
        &cluster,
        "get",
        "configmaps/istio",
        &["-n", "istio-system"]
    ));

    // Without --skip-crds a fresh install brings the CRDs (a cluster without Istio).
    let out = Chart::egress().install(&cluster, &["--reuse-values"]);
    assert!(out.success(), "helm upgrade: {out:?}");
    let out = Chart::egress().helm(&[
        "uninstall",
        "egress",
        "-n",
        "egress-system",
        "--kubeconfig",
        &cluster.kubeconfig().to_string_lossy(),
    ]);
    assert!(out.success(), "helm uninstall: {out:?}");
    let out = Chart::egress().install(&cluster, &[]);
    assert!(out.success(), "helm install: {out:?}");
    cluster.eventually("the CRDs helm installed are Established", || {
        cluster
            .kubectl(&[
                "get",
                "crd",
                "serviceentries.networking.istio.io",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Established\")].status}",
            ])
            .run()
            .stdout
            == "True"
    });
}

/// Every argument the DaemonSet passes is one `egress run` accepts: clap refuses an unknown
/// flag or a bad value before it gets to `--help`.
#[test]
fn deploy_daemonset_args_are_what_egress_run_accepts() {
    if !(require_helm() && require_binary()) {
        return;
    }
    let docs = Chart::egress()
        .set("cgroupRoot=/sys/fs/cgroup/kubepods.slice")
        .render();
    let (_, container) = pod_and_container(&docs);
    let args: Vec<String> = args(container)
        .iter()
        .map(|a| a.replace("$(HOST_IP)", "127.0.0.1"))
        .collect();
    let out = run_bounded(
        std::process::Command::new(egress_bin())
            .args(&args)
            .arg("--help"),
        std::time::Duration::from_secs(10),
    );
    assert!(out.success(), "egress {args:?} --help: {out:?}");
}
