//! Kubernetes mode's pods (issue 11): the node agent (`egress run --kubernetes`) against a real
//! kube-apiserver and etcd, pods made of a Pod object, a network namespace and a kubepods-layout
//! cgroup named by the Pod's UID (`tests/src/pod.rs`), real curl inside them. The upstream
//! stand-in listens in the host netns on loopback; the agent connects to it from its own netns.
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    thread,
    time::{Duration, Instant},
};

use egress_tests::*;

/// How long a pod may take to be served after it appears (the agent retries in ≤ 250 ms steps).
const SERVED_WITHIN: Duration = Duration::from_secs(15);

/// A ServiceEntry address of this test process (loopback, so it exists in every netns).
fn se_addr(n: u8) -> IpAddr {
    let pid = std::process::id();
    IpAddr::V4(Ipv4Addr::new(127, 77, (pid % 250) as u8 + 1, n))
}

/// `kubectl apply`: Istio's CRDs, namespace `default` enrolled (`istio.io/dataplane-mode=ambient`)
/// and bound to the waypoint (`istio.io/use-waypoint=waypoint`), the ServiceEntry `httpbin` at
/// `address:port` forwarding to `upstream`, and the seed's policy on it (`default/sleep` may GET
/// /get, `default/admin` anything).
fn apply_seed(cluster: &Cluster, address: IpAddr, port: u16, upstream: SocketAddr) {
    cluster.install_istio_crds();
    label_namespace(cluster, "default", "istio.io/dataplane-mode=ambient");
    label_namespace(cluster, "default", "istio.io/use-waypoint=waypoint");
    cluster.apply(&yaml::static_service_entry(
        "httpbin",
        "httpbin.test",
        address,
        port,
        upstream,
    ));
    cluster.apply(yaml::SEED_POLICY);
}

/// The agent of `node`, serving `node`'s pods with the configuration from the API server.
fn agent(node: &Node<'_>) -> Dataplane {
    Dataplane::builder().node_agent(node).start()
}

/// `curl` arguments for `http://httpbin.test{path}` at `address:80`.
fn url_args(address: IpAddr, path: &str) -> Vec<String> {
    vec![
        "--resolve".into(),
        format!("httpbin.test:80:{address}"),
        format!("http://httpbin.test{path}"),
    ]
}

/// Waits until the agent lists `pod` on `/pods` with an open listener.
#[track_caller]
fn wait_served(agent: &Dataplane, pod: &Pod<'_, '_>) {
    let deadline = Instant::now() + SERVED_WITHIN;
    loop {
        let pods = agent.pods();
        let entry: Option<serde_json::Value> = serde_json::from_str::<serde_json::Value>(&pods)
            .ok()
            .and_then(|v| {
                v["pods"]
                    .as_array()?
                    .iter()
                    .find(|p| p["uid"] == pod.uid())
                    .cloned()
            });
        if entry.as_ref().is_some_and(|e| e["netns_cookie"].is_u64()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pod {} not served within {SERVED_WITHIN:?}; /pods: {pods}",
            pod.id()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn curl_in(pod: &Pod<'_, '_>, method: &str, address: IpAddr, path: &str, extra: &[&str]) -> Output {
    let url = url_args(address, path);
    let mut args: Vec<&str> = vec!["-sS", "-i", "-X", method];
    args.extend_from_slice(extra);
    args.extend(url.iter().map(String::as_str));
    pod.curl(&args)
}

fn label_namespace(cluster: &Cluster, namespace: &str, label: &str) {
    cluster
        .kubectl(&["label", "namespace", namespace, label, "--overwrite"])
        .ok();
}

#[test]
fn kube_pods_enrolled_pods_are_served_in_their_netns_with_their_principal() {
    if !require_privileges() || !require_control_plane() {
        return;
    }
    let cluster = Cluster::start();
    let node = Node::new(&cluster);
    let upstream = Upstream::http();
    let address = se_addr(1);
    apply_seed(&cluster, address, 80, upstream.addr());
    let agent = agent(&node);
    let sleep = node
        .pod("default", "sleep")
        .service_account("sleep")
        .start();
    let admin = node
        .pod("default", "admin")
        .service_account("admin")
        .start();
    wait_served(&agent, &sleep);
    wait_served(&agent, &admin);

    let get = curl_in(&sleep, "GET", address, "/get", &[]);
    assert_eq!(get.http_status(), Some(200), "{get:?}");
    assert_eq!(
        get.header("via").as_deref(),
        Some("1.1 egress-waypoint"),
        "{get:?}"
    );
    let post = curl_in(&sleep, "POST", address, "/post", &[]);
    assert_eq!(post.http_status(), Some(403), "{post:?}");
    assert_eq!(post.body(), "RBAC: access denied", "{post:?}");
    let post = curl_in(&admin, "POST", address, "/post", &[]);
    assert_eq!(post.http_status(), Some(200), "{post:?}");

    let line = agent.access_log_line("\"GET /get HTTP/1.1\" 200");
    assert!(
        line.ends_with("spiffe://cluster.local/ns/default/sa/sleep"),
        "{line}"
    );
    let line = agent.access_log_line("\"POST /post HTTP/1.1\" 200");
    assert!(
        line.ends_with("spiffe://cluster.local/ns/default/sa/admin"),
        "{line}"
    );

    // `egress status` shows the enrolled pods (from the admin endpoint).
    let status = agent.egress(&[
        "status",
        "--bpffs",
        &agent.pin_dir().to_string_lossy(),
        "--admin",
        &agent.admin_addr().to_string(),
    ]);
    assert!(status.success(), "{status:?}");
    for (pod, principal) in [(&sleep, "sa/sleep"), (&admin, "sa/admin")] {
        let row = status
            .stdout
            .lines()
            .find(|l| l.contains(&pod.id()))
            .unwrap_or_else(|| panic!("{} not in egress status:\n{}", pod.id(), status.stdout));
        assert!(row.contains(principal) && row.contains("netns"), "{row}");
    }
}

#[test]
fn kube_pods_two_pods_on_the_same_local_port_are_told_apart() {
    if !require_privileges() || !require_control_plane() {
        return;
    }
    let cluster = Cluster::start();
    let node = Node::new(&cluster);
    let upstream = Upstream::http();
    let address = se_addr(2);
    apply_seed(&cluster, address, 80, upstream.addr());
    let agent = agent(&node);
    let sleep = node
        .pod("default", "sleep")
        .service_account("sleep")
        .start();
    let admin = node
        .pod("default", "admin")
        .service_account("admin")
        .start();
    wait_served(&agent, &sleep);
    wait_served(&agent, &admin);

    // Both apps bind one local port (loopback ports repeat across pods; a new one each round,
    // the last round's is in TIME_WAIT): the kernel keys each redirected client by its netns
    // cookie, so each connection keeps its own pod's identity, also when both are in flight.
    for round in 0..4u16 {
        let port = (40000 + round).to_string();
        let local = ["--local-port", port.as_str()];
        let (denied, allowed) = thread::scope(|s| {
            let a = s.spawn(|| curl_in(&sleep, "POST", address, "/post", &local));
            let b = s.spawn(|| curl_in(&admin, "POST", address, "/post", &local));
            (
                a.join().expect("sleep's curl"),
                b.join().expect("admin's curl"),
            )
        });
        assert_eq!(denied.http_status(), Some(403), "round {round}: {denied:?}");
        assert_eq!(
            allowed.http_status(),
            Some(200),
            "round {round}: {allowed:?}"
        );
    }
    let lines = agent.access_log_lines_at_least(8);
    let from = |sa: &str| {
        lines
            .iter()
            .filter(|l| l.ends_with(&format!("spiffe://cluster.local/ns/default/sa/{sa}")))
            .count()
    };
    assert_eq!(
        (from("sleep"), from("admin")),
        (4, 4),
        "{}",
        lines.join("\n")
    );
    for round in 0..4u16 {
        let client = format!("127.0.0.1:{} ", 40000 + round);
        assert_eq!(
            lines.iter().filter(|l| l.contains(&client)).count(),
            2,
            "both pods' clients on {client}:\n{}",
            lines.join("\n")
        );
    }
}

#[test]
fn kube_pods_not_enrolled_opted_out_and_host_network_pods_are_untouched() {
    if !require_privileges() || !require_control_plane() {
        return;
    }
    let cluster = Cluster::start();
    cluster.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: plain}\n");
    let node = Node::new(&cluster);
    let upstream = Upstream::http();
    let address = se_addr(3);
    // What a connect left alone reaches: a stand-in on the ServiceEntry address itself, in the
    // host netns (for the hostNetwork pod) and in each other pod's netns.
    let direct = Upstream::http_at(SocketAddr::new(address, 0));
    let se_port = direct.port();
    apply_seed(&cluster, address, se_port, upstream.addr());
    let agent = agent(&node);
    let enrolled = node
        .pod("default", "sleep")
        .service_account("sleep")
        .start();
    let plain = node.pod("plain", "sleep").service_account("sleep").start();
    let opted_out = node
        .pod("default", "legacy")
        .service_account("sleep")
        .label("istio.io/dataplane-mode", "none")
        .start();
    let host = node
        .pod("default", "node-exporter")
        .service_account("sleep")
        .host_network()
        .start();
    wait_served(&agent, &enrolled);
    let url = format!("http://{address}:{se_port}/get");
    let served = enrolled.curl(&["-sS", "-i", &url]);
    assert_eq!(
        served.header("via").as_deref(),
        Some("1.1 egress-waypoint"),
        "{served:?}"
    );

    let stand_ins: Vec<Upstream> = [&plain, &opted_out]
        .iter()
        .map(|pod| pod.upstream_at(SocketAddr::new(address, se_port)))
        .collect();
    for (pod, stand_in) in [
        (&plain, &stand_ins[0]),
        (&opted_out, &stand_ins[1]),
        (&host, &direct),
    ] {
        let out = pod.curl(&["-sS", "-i", &url]);
        assert_eq!(out.http_status(), Some(200), "{}: {out:?}", pod.id());
        assert_eq!(
            out.header("via"),
            None,
            "{} went through the waypoint: {out:?}",
            pod.id()
        );
        assert_eq!(
            stand_in.hits().len(),
            1,
            "{} reached its stand-in directly",
            pod.id()
        );
    }
    let pods = agent.pods();
    for pod in [&plain, &opted_out, &host] {
        assert!(
            !pods.contains(pod.uid()),
            "{} is not enrolled: {pods}",
            pod.id()
        );
    }
    assert!(pods.contains(enrolled.uid()), "{pods}");
    assert_eq!(
        upstream.hits().len(),
        1,
        "only the enrolled pod's request was proxied"
    );
}

/// The pod cgroup ids in the agent's pinned anchor map (`bpftool map dump`).
fn anchors(agent: &Dataplane) -> String {
    let map = std::fs::read_dir(agent.pin_dir())
        .expect("the pin directory")
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("EG_IDENTITY"))
        })
        .expect("the identity anchor map is pinned");
    let out = agent.bpftool(&["-j", "map", "dump", "pinned", &map.to_string_lossy()]);
    assert!(out.success(), "{out:?}");
    out.stdout
}

#[test]
fn kube_pods_deleted_pods_lose_listener_and_anchor_and_a_killed_agent_fails_closed_then_readopts() {
    if !require_privileges() || !require_control_plane() {
        return;
    }
    let cluster = Cluster::start();
    let node = Node::new(&cluster);
    let upstream = Upstream::http();
    let address = se_addr(4);
    apply_seed(&cluster, address, 80, upstream.addr());
    let mut agent = agent(&node);
    let sleep = node
        .pod("default", "sleep")
        .service_account("sleep")
        .start();
    let mut gone = node.pod("default", "gone").service_account("sleep").start();
    wait_served(&agent, &sleep);
    wait_served(&agent, &gone);
    let dump = anchors(&agent);
    assert!(dump.contains(&gone.cgroup_id().to_string()), "{dump}");

    // Deleted: its listener closes (an SE connect in it is refused) and its anchor goes.
    gone.delete();
    let deadline = Instant::now() + SERVED_WITHIN;
    while agent.pods().contains(gone.uid()) {
        assert!(Instant::now() < deadline, "still served: {}", agent.pods());
        thread::sleep(Duration::from_millis(50));
    }
    let dump = anchors(&agent);
    assert!(
        !dump.contains(&format!("{}", gone.cgroup_id())),
        "anchor left: {dump}"
    );
    let after = curl_in(&gone, "GET", address, "/get", &[]);
    assert_eq!(after.header("via"), None, "{after:?}");
    assert!(
        !after.success(),
        "nothing listens in a deleted pod: {after:?}"
    );

    // SIGKILL: the pinned programs keep capturing the enrolled pod; nothing listens: refused.
    agent.kill();
    let refused = curl_in(&sleep, "GET", address, "/get", &[]);
    assert_eq!(refused.code, Some(7), "curl: couldn't connect: {refused:?}");
    let hits = upstream.hits().len();

    // Restarted: it re-lists, re-adopts, serves; each program attached once.
    agent.restart();
    wait_served(&agent, &sleep);
    let get = curl_in(&sleep, "GET", address, "/get", &[]);
    assert_eq!(get.http_status(), Some(200), "{get:?}");
    assert_eq!(upstream.hits().len(), hits + 1);
    let attached = agent.bpftool(&["-j", "cgroup", "show", &node.pod_root().to_string_lossy()]);
    assert!(attached.success(), "{attached:?}");
    let programs: serde_json::Value =
        serde_json::from_str(&attached.stdout).expect("bpftool -j cgroup show is JSON");
    let names: Vec<&str> = programs
        .as_array()
        .expect("a list of attached programs")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    let mut unique = names.clone();
    unique.sort_unstable();
    unique.dedup();
    assert!(!names.is_empty(), "{}", attached.stdout);
    assert_eq!(
        names.len(),
        unique.len(),
        "a program attached twice: {names:?}"
    );
}
