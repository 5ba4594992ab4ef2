//! `egress status` in Kubernetes mode: the enrolled pods, read from the running agent's admin
//! endpoint (`/pods`), since only the agent knows which pod a listener and anchor belong to.
use std::{
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use super::PodStatus;

const TIMEOUT: Duration = Duration::from_secs(2);

/// The enrolled pods of the agent whose admin endpoint is `admin`; `None` when nothing answers
/// there or it is not in Kubernetes mode.
pub fn fetch(admin: SocketAddr) -> Option<Vec<PodStatus>> {
    let mut stream = TcpStream::connect_timeout(&admin, TIMEOUT).ok()?;
    stream.set_read_timeout(Some(TIMEOUT)).ok()?;
    write!(stream, "GET /pods HTTP/1.0\r\nHost: {admin}\r\n\r\n").ok()?;
    let mut response = Vec::new();
    stream.take(16 << 20).read_to_end(&mut response).ok()?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n")?;
    if head.split_whitespace().nth(1) != Some("200") {
        return None;
    }
    let value: serde_json::Value = serde_json::from_str(body).ok()?;
    if value["kubernetes"] != true {
        return None;
    }
    serde_json::from_value(value["pods"].clone()).ok()
}

/// One line per pod: `ns/name  principal  netns <cookie>  listener <addr>  [dns <addr>]` (or what
/// it waits for).
pub fn render(pods: &[PodStatus]) -> String {
    let mut out = String::from("enrolled pods:\n");
    if pods.is_empty() {
        out.push_str("  (none)\n");
    }
    for pod in pods {
        let _ = write!(out, "  {}/{}  {}", pod.namespace, pod.name, pod.principal);
        match (pod.netns_cookie, pod.listener) {
            (Some(cookie), Some(listener)) => {
                let _ = write!(out, "  netns {cookie}  listener {listener}");
                if let Some(dns) = pod.dns_listener {
                    let _ = write!(out, "  dns {dns}");
                }
            }
            _ => {
                let waiting = pod.waiting_for.as_deref().unwrap_or("its listener");
                let _ = write!(out, "  not served yet (waiting for {waiting})");
            }
        }
        let _ = writeln!(out, "  uid {}", pod.uid);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_served_and_waiting_pods() {
        let served = PodStatus {
            namespace: "default".into(),
            name: "sleep".into(),
            uid: "u1".into(),
            principal: "cluster.local/ns/default/sa/sleep".into(),
            cgroup: None,
            netns_cookie: Some(4097),
            listener: Some("127.0.0.1:15001".parse().expect("addr")),
            dns_listener: Some("127.0.0.1:15053".parse().expect("addr")),
            waiting_for: None,
        };
        let waiting = PodStatus {
            name: "new".into(),
            uid: "u2".into(),
            netns_cookie: None,
            listener: None,
            dns_listener: None,
            waiting_for: Some("a process in its cgroup".into()),
            ..served.clone()
        };
        let text = render(&[served, waiting]);
        assert!(text.contains("default/sleep  cluster.local/ns/default/sa/sleep  netns 4097  listener 127.0.0.1:15001  dns 127.0.0.1:15053"), "{text}");
        assert!(
            text.contains("default/new") && text.contains("waiting for a process in its cgroup"),
            "{text}"
        );
    }

    #[test]
    fn the_json_of_an_agent_without_pod_dns_still_reads() {
        let old = r#"{"namespace":"default","name":"sleep","uid":"u1",
            "principal":"cluster.local/ns/default/sa/sleep","cgroup":null,"netns_cookie":4097,
            "listener":"127.0.0.1:15001","waiting_for":null}"#;
        let pod: PodStatus = serde_json::from_str(old).expect("an older agent's /pods entry");
        assert_eq!(pod.dns_listener, None);
        assert_eq!(pod.netns_cookie, Some(4097));
    }
}
