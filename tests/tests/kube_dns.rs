//! DNS capture for Kubernetes pods (issue 12 on issue 11's per-pod listeners): the node agent
//! opens a DNS listener inside each enrolled pod's network namespace, answers the seed's
//! host-only ServiceEntry (`hosts: [httpbin.org]`, `resolution: DNS`, no addresses, applied
//! unchanged with kubectl) with a 240.240.x.y VIP, and forwards every other name to the
//! resolver the pod asked, from the pod's namespace.
//!
//! Real parts: kube-apiserver and etcd, pods of a netns + kubepods cgroup + Pod object
//! (`tests/src/pod.rs`), dnsmasq **inside each pod's netns** on loopback (what a cluster DNS
//! service is to a pod: reachable from the pod, not from the node's loopback, so a forwarded
//! query that left from the agent's own namespace would find nobody there), a second dnsmasq in
//! the node's namespace for the agent's own resolution of `httpbin.org`, `dig` and curl through
//! glibc with the pod's own /etc/resolv.conf (a mount namespace per command).
use std::{
    net::{Ipv4Addr, SocketAddr},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use egress_tests::*;

/// Addresses of this file only (loopback). The node's resolver, for the agent's own lookups.
const NODE_RESOLVER: Ipv4Addr = Ipv4Addr::new(127, 0, 68, 1);
/// The second test's node resolver: the two tests run in parallel, each with its own dnsmasq.
const NODE_RESOLVER_2: Ipv4Addr = Ipv4Addr::new(127, 0, 68, 3);
/// Each pod's resolver, inside the pod's netns (nothing listens there in the node's).
const POD_RESOLVER: Ipv4Addr = Ipv4Addr::new(127, 0, 68, 2);
/// What the node's resolver says httpbin.org is: the stand-in, in the node's namespace.
const STAND_IN: Ipv4Addr = Ipv4Addr::new(127, 0, 68, 11);
/// What a pod's resolver says httpbin.org is (nothing listens there: a connect that went
/// direct would fail).
const POD_ANSWER: Ipv4Addr = Ipv4Addr::new(127, 0, 68, 9);
/// A name that is no ServiceEntry host, as the pods' resolver answers it.
const OTHER_NAME_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 68, 10);

const SEED_SERVICE_ENTRY: &str = include_str!("../../examples/httpbin.yaml");
const SEED_POLICY: &str = include_str!("../../examples/httpbin-authz.yaml");

/// How long a pod may take to be served after it appears (the agent retries in ≤ 250 ms steps).
const SERVED_WITHIN: Duration = Duration::from_secs(15);

/// The seed as a user applies it: namespace `default` enrolled, the seed's ServiceEntry (bound
/// by its own `istio.io/use-waypoint` label) and policy, unchanged.
fn apply_seed(cluster: &Cluster) {
    cluster.install_istio_crds();
    cluster
        .kubectl(&[
            "label",
            "namespace",
            "default",
            "istio.io/dataplane-mode=ambient",
            "--overwrite",
        ])
        .ok();
    cluster.apply(SEED_SERVICE_ENTRY);
    cluster.apply(SEED_POLICY);
}

/// The agent of `node`, resolving ServiceEntry hosts with `resolver` (in the node's netns).
fn agent(node: &Node<'_>, resolver: &Resolver) -> Dataplane {
    Dataplane::builder()
        .node_agent(node)
        .args(&["--resolv-conf", &resolver.resolv_conf().to_string_lossy()])
        .start()
}

/// A pod with a dnsmasq of its own in its netns answering `httpbin.org` and `other.test`, and
/// that resolver in its resolv.conf.
fn with_own_resolver<'n, 'c>(mut pod: Pod<'n, 'c>) -> (Pod<'n, 'c>, Resolver) {
    let resolver = pod.resolver(
        POD_RESOLVER,
        &[("httpbin.org", POD_ANSWER), ("other.test", OTHER_NAME_IP)],
    );
    pod.use_resolver(&resolver);
    (pod, resolver)
}

/// How many A queries for `name` `resolver` has logged (its own readiness check included).
fn queries(resolver: &Resolver, name: &str) -> usize {
    let needle = format!("query[A] {name} ");
    resolver
        .log()
        .lines()
        .filter(|l| l.contains(&needle))
        .count()
}

/// The `/pods` entry of `pod`, if the agent lists it.
fn pod_entry(agent: &Dataplane, pod: &Pod<'_, '_>) -> Option<serde_json::Value> {
    let pods: serde_json::Value = serde_json::from_str(&agent.pods()).ok()?;
    pods["pods"]
        .as_array()?
        .iter()
        .find(|p| p["uid"] == pod.uid())
        .cloned()
}

/// Waits until the agent lists `pod` with its waypoint and DNS listeners open.
#[track_caller]
fn wait_dns_served(agent: &Dataplane, pod: &Pod<'_, '_>) {
    let deadline = Instant::now() + SERVED_WITHIN;
    loop {
        let entry = pod_entry(agent, pod);
        if entry
            .as_ref()
            .is_some_and(|e| e["netns_cookie"].is_u64() && e["dns_listener"].is_string())
        {
            assert_eq!(
                entry.expect("checked")["dns_listener"],
                agent.dns_addr().to_string(),
                "the DNS listener is at --dns-listen in the pod"
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pod {} has no DNS listener within {SERVED_WITHIN:?}; /pods: {}",
            pod.id(),
            agent.pods()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// `dig ARGS...` in `pod` (through its resolv.conf), bounded.
fn dig(pod: &Pod<'_, '_>, args: &[&str]) -> Output {
    let mut all = vec!["+time=5", "+tries=1"];
    all.extend_from_slice(args);
    pod.run("dig", &all)
}

/// The one A record `dig +short NAME` prints in `pod`.
#[track_caller]
fn resolve(pod: &Pod<'_, '_>, extra: &[&str], name: &str) -> String {
    let mut args = vec!["+short"];
    args.extend_from_slice(extra);
    args.push(name);
    let out = dig(pod, &args).expect_success("dig +short");
    out.stdout.trim().to_owned()
}

/// The agent's threads that hold a pod's network namespace (one per pod with a DNS listener).
fn netns_threads(agent: &Dataplane) -> usize {
    let tasks =
        std::fs::read_dir(format!("/proc/{}/task", agent.pid())).expect("the agent's tasks");
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|comm| comm.trim() == "egress-netns")
        })
        .count()
}

/// The sockets listening on `port` in `pod`'s netns (`ss`, UDP and TCP), one per line.
fn listening_in(pod: &Pod<'_, '_>, port: u16) -> String {
    let netns = pod.netns_path().expect("the pod's netns");
    let out = run_bounded(
        Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .args(["--", "ss", "-H", "-l", "-n", "-t", "-u"])
            .arg(format!("sport = :{port}")),
        Duration::from_secs(10),
    )
    .expect_success("ss in the pod's netns");
    out.stdout
}

#[test]
fn kube_dns_enrolled_pods_get_vips_from_a_listener_in_their_netns_and_others_are_untouched() {
    if !require_privileges()
        || !require_control_plane()
        || !require_tools(&["dnsmasq", "dig", "unshare", "nsenter"])
    {
        return;
    }
    let cluster = Cluster::start();
    apply_seed(&cluster);
    cluster.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: plain}\n");
    let node = Node::new(&cluster);
    let upstream = Upstream::http_at(SocketAddr::from((STAND_IN, 80)));
    let node_resolver = Resolver::dnsmasq(NODE_RESOLVER, &[("httpbin.org", STAND_IN)]);
    let agent = agent(&node, &node_resolver);
    let (sleep, sleep_resolver) = with_own_resolver(
        node.pod("default", "sleep")
            .service_account("sleep")
            .start(),
    );
    // Not enrolled: `istio.io/dataplane-mode` on neither the pod nor its namespace.
    let (plain, plain_resolver) =
        with_own_resolver(node.pod("plain", "sleep").service_account("sleep").start());
    wait_dns_served(&agent, &sleep);
    assert!(agent.log_count("DNS capture on for enrolled pods") == 1);

    // The enrolled pod: the ServiceEntry host is a VIP, from the resolver it asked, TTL 30,
    // over UDP and TCP; the pod's own resolver never saw the query.
    let asked_before = queries(&sleep_resolver, "httpbin.org");
    let out = dig(&sleep, &["httpbin.org", "A"]).expect_success("dig httpbin.org");
    let text = &out.stdout;
    assert!(text.contains("status: NOERROR"), "{text}");
    assert!(
        text.contains(&format!("SERVER: {POD_RESOLVER}#53")),
        "{text}"
    );
    let answer = text
        .lines()
        .find(|l| l.starts_with("httpbin.org.") && l.contains("\tA\t"))
        .unwrap_or_else(|| panic!("an A record for httpbin.org: {text}"));
    let vip = answer.split_whitespace().last().expect("an address");
    assert!(vip.starts_with("240.240."), "{answer}");
    assert!(answer.contains("\t30\t"), "TTL 30: {answer}");
    assert_eq!(resolve(&sleep, &["+tcp"], "httpbin.org"), vip, "over TCP");
    assert_eq!(
        queries(&sleep_resolver, "httpbin.org"),
        asked_before,
        "the ServiceEntry host is answered by the agent: {}",
        sleep_resolver.log()
    );

    // A name that is no ServiceEntry host: exactly as the pod's resolver answers, over UDP and
    // TCP. That resolver is only reachable inside the pod's netns, so the forwarded queries left
    // from there (the node's resolver never saw them).
    for transport in ["+notcp", "+tcp"] {
        let asked_before = queries(&sleep_resolver, "other.test");
        assert_eq!(
            resolve(&sleep, &[transport], "other.test"),
            OTHER_NAME_IP.to_string(),
            "{transport}"
        );
        assert_eq!(
            queries(&sleep_resolver, "other.test"),
            asked_before + 1,
            "{transport}: forwarded to the pod's resolver: {}",
            sleep_resolver.log()
        );
    }
    assert!(
        !node_resolver.log().contains("other.test"),
        "a pod's query left from the node's namespace: {}",
        node_resolver.log()
    );

    // curl through glibc: the VIP is captured and proxied to what the agent's resolver says
    // httpbin.org is, with the pod's principal; POST is denied by the seed's policy.
    let get = sleep.curl(&["-sS", "-i", "http://httpbin.org/get"]);
    assert_eq!(get.http_status(), Some(200), "{get:?}");
    assert_eq!(get.header("via").as_deref(), Some("1.1 egress-waypoint"));
    let post = sleep.curl(&["-sS", "-i", "-X", "POST", "http://httpbin.org/post"]);
    assert_eq!(post.http_status(), Some(403), "{post:?}");
    assert_eq!(
        upstream.hits().len(),
        1,
        "only the allowed GET went upstream"
    );
    let line = agent.access_log_line("\"GET /get HTTP/1.1\" 200");
    assert!(line.contains(&format!("\"{STAND_IN}:80\"")), "{line}");
    assert!(line.contains(&format!(" {vip}:80 ")), "{line}");
    assert!(
        line.ends_with("spiffe://cluster.local/ns/default/sa/sleep"),
        "{line}"
    );

    // The pod that is not enrolled: its DNS is untouched (the real answer of its resolver, who
    // saw the query), and it has no listener.
    let asked_before = queries(&plain_resolver, "httpbin.org");
    assert_eq!(resolve(&plain, &[], "httpbin.org"), POD_ANSWER.to_string());
    assert_eq!(
        queries(&plain_resolver, "httpbin.org"),
        asked_before + 1,
        "{}",
        plain_resolver.log()
    );
    assert!(pod_entry(&agent, &plain).is_none(), "{}", agent.pods());
    assert_eq!(listening_in(&plain, agent.dns_addr().port()), "");

    // A process on the node: untouched.
    let out = run_bounded(
        Command::new("dig").args([
            "+time=3",
            "+tries=1",
            "+short",
            &format!("@{NODE_RESOLVER}"),
            "httpbin.org",
        ]),
        Duration::from_secs(10),
    );
    assert_eq!(out.stdout.trim(), STAND_IN.to_string(), "{out:?}");

    // `egress status` shows the pod's DNS listener.
    let status = agent.egress(&[
        "status",
        "--bpffs",
        &agent.pin_dir().to_string_lossy(),
        "--admin",
        &agent.admin_addr().to_string(),
    ]);
    let row = status
        .stdout
        .lines()
        .find(|l| l.contains(&sleep.id()))
        .unwrap_or_else(|| panic!("{} not in egress status:\n{}", sleep.id(), status.stdout));
    assert!(row.contains(&format!("dns {}", agent.dns_addr())), "{row}");
}

#[test]
fn kube_dns_a_deleted_pod_loses_its_dns_listener_and_its_lookups_are_left_alone() {
    if !require_privileges()
        || !require_control_plane()
        || !require_tools(&["dnsmasq", "dig", "unshare", "nsenter", "ss"])
    {
        return;
    }
    let cluster = Cluster::start();
    apply_seed(&cluster);
    let node = Node::new(&cluster);
    let node_resolver = Resolver::dnsmasq(NODE_RESOLVER_2, &[("httpbin.org", STAND_IN)]);
    let agent = agent(&node, &node_resolver);
    let (mut gone, _gone_resolver) =
        with_own_resolver(node.pod("default", "gone").service_account("sleep").start());
    wait_dns_served(&agent, &gone);
    let port = agent.dns_addr().port();
    let listening = listening_in(&gone, port);
    assert_eq!(
        listening.lines().count(),
        2,
        "one UDP socket and one TCP listener in the pod: {listening}"
    );
    assert!(resolve(&gone, &[], "httpbin.org").starts_with("240.240."));
    assert_eq!(
        resolve(&gone, &["+tcp"], "other.test"),
        OTHER_NAME_IP.to_string()
    );
    assert_eq!(netns_threads(&agent), 1, "one socket thread for the pod");

    // Deleted: its listeners close, the thread holding its namespace ends, and (its anchor gone)
    // its lookups go to its resolver untouched.
    gone.delete();
    let deadline = Instant::now() + SERVED_WITHIN;
    while pod_entry(&agent, &gone).is_some()
        || !listening_in(&gone, port).is_empty()
        || netns_threads(&agent) != 0
    {
        assert!(
            Instant::now() < deadline,
            "the deleted pod's DNS listener is still there: /pods {}; in its netns: {}; \
             threads: {}",
            agent.pods(),
            listening_in(&gone, port),
            netns_threads(&agent)
        );
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(resolve(&gone, &[], "httpbin.org"), POD_ANSWER.to_string());
}
