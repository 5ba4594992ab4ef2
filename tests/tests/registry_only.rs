//! REGISTRY_ONLY (Istio's `outboundTrafficPolicy.mode`, done in the kernel): from the captured
//! cgroup, a connect or an unconnected UDP send to anything that is no ServiceEntry address is
//! refused with EPERM, except the allowed CIDRs; ServiceEntry traffic works; processes outside
//! the cgroup are unaffected.
use std::net::{IpAddr, Ipv4Addr};

use egress_tests::*;

#[test]
fn registry_only_refuses_non_service_entry_destinations_in_the_kernel() {
    if !require_privileges() {
        return;
    }
    let upstream = Upstream::http();
    // Not a ServiceEntry address, and outside the allow list below.
    let other = Upstream::http_on(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    let se_ip = IpAddr::V4(Ipv4Addr::new(127, 77, 0, 5));
    let dp = Dataplane::builder()
        .service_entry(&yaml::static_service_entry(
            "httpbin",
            "httpbin.test",
            se_ip,
            80,
            upstream.addr(),
        ))
        // Only 127.0.0.1 stays reachable (the default would allow all of 127.0.0.0/8).
        .args(&[
            "--outbound-policy",
            "registry-only",
            "--allow-cidr",
            "127.0.0.1/32",
        ])
        .start();

    let refused = dp
        .exec("default", "sleep")
        .curl(&["-sS", &other.url("/not-registered")]);
    assert_eq!(refused.code, Some(7), "refused in connect(): {refused:?}");
    assert!(
        refused.stderr.contains("Operation not permitted")
            || refused.stderr.contains("Couldn't connect"),
        "{refused:?}"
    );
    assert!(
        other.hits().is_empty(),
        "nothing reached the unregistered destination"
    );
    assert!(dp.bpf_counter("refused_registry_only") >= 1);

    let se = dp.exec("default", "sleep").http_code(&[
        "--resolve",
        "httpbin.test:80:127.77.0.5",
        "http://httpbin.test/get",
    ]);
    assert_eq!(se.stdout, "200", "ServiceEntry traffic works: {se:?}");

    let allowed = dp
        .exec("default", "sleep")
        .http_code(&[&upstream.url("/allowed-cidr")]);
    assert_eq!(
        allowed.stdout, "200",
        "an allowed CIDR is reachable: {allowed:?}"
    );

    let outside = curl(&[
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &other.url("/from-outside"),
    ]);
    assert_eq!(
        outside.stdout, "200",
        "processes outside the cgroup are unaffected: {outside:?}"
    );
}

#[test]
fn the_mesh_config_form_turns_registry_only_on_and_off() {
    if !require_privileges() {
        return;
    }
    let upstream = Upstream::http();
    let other = Upstream::http_on(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)));
    let se_ip = IpAddr::V4(Ipv4Addr::new(127, 77, 0, 7));
    let se = yaml::static_service_entry("httpbin", "httpbin.test", se_ip, 80, upstream.addr());
    // Istio's own form: the `istio` ConfigMap's MeshConfig.
    let mesh = |mode: &str| {
        format!(
            "apiVersion: v1
kind: ConfigMap
metadata: {{name: istio, namespace: istio-system}}
data:
  mesh: |
    outboundTrafficPolicy:
      mode: {mode}
"
        )
    };
    let dp = Dataplane::builder()
        .service_entry(&se)
        .config(&mesh("REGISTRY_ONLY"))
        .args(&["--allow-cidr", "127.0.0.1/32"])
        .start();
    let reach = |dp: &Dataplane| {
        dp.exec("default", "sleep")
            .http_code(&[&other.url("/mesh")])
    };
    let refused = reach(&dp);
    assert_eq!(
        refused.code,
        Some(7),
        "REGISTRY_ONLY from the mesh config: {refused:?}"
    );

    let hangups = dp.log_count("reason=\"SIGHUP\"");
    dp.write_config(&[&se, &mesh("ALLOW_ANY")]);
    dp.sighup();
    dp.wait_for_log("reason=\"SIGHUP\"", hangups + 1);
    let allowed = reach(&dp);
    assert_eq!(
        allowed.stdout, "200",
        "ALLOW_ANY after the reload: {allowed:?}"
    );
}

/// Unconnected UDP (`sendto` with an address, no connect()) gets the same REGISTRY_ONLY decision
/// in cgroup/sendmsg4 and sendmsg6; a datagram to a ServiceEntry port is refused (the waypoint
/// proxies TCP only); an allowed resolver still answers; processes outside the cgroup are
/// unaffected.
#[test]
fn registry_only_refuses_unconnected_udp_to_non_service_entry_destinations() {
    if !require_privileges() {
        return;
    }
    let upstream = Upstream::http();
    let se_ip = IpAddr::V4(Ipv4Addr::new(127, 77, 0, 13));
    // Not a ServiceEntry address, outside the allow list.
    let unregistered = UdpSink::bind(Ipv4Addr::new(127, 0, 0, 2));
    // Stands in for the resolv.conf nameserver: allowed, and it answers.
    let resolver = UdpSink::bind(Ipv4Addr::new(127, 0, 0, 53));
    let dp = Dataplane::builder()
        .service_entry(&yaml::static_service_entry(
            "httpbin",
            "httpbin.test",
            se_ip,
            80,
            upstream.addr(),
        ))
        .args(&[
            "--outbound-policy",
            "registry-only",
            "--allow-cidr",
            "127.0.0.1/32",
            "--allow-cidr",
            "127.0.0.53/32",
        ])
        .start();
    let refused_before = dp.bpf_counter("refused_registry_only");
    let refused_udp_before = dp.bpf_counter("refused_udp");

    let unregistered_port = unregistered.port().to_string();
    let resolver_port = resolver.port().to_string();
    let out = dp
        .exec("default", "sleep")
        .run(
            "python3",
            &[
                "-c",
                SENDTO,
                "4 127.0.0.2",
                &unregistered_port,
                "6 ::ffff:127.0.0.2",
                &unregistered_port,
                "6 2001:db8::1",
                "9",
                "4 127.77.0.13",
                "80",
                "4 127.77.0.13",
                "81",
                "4 127.0.0.53",
                &resolver_port,
            ],
        )
        .expect_success("python3 sendto in the captured cgroup");
    let results: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        results,
        [
            "EPERM",
            "EPERM",
            "EPERM",
            "EPERM",
            "EPERM",
            "reply: pong: datagram to 127.0.0.53"
        ],
        "unregistered (IPv4, v4-mapped, IPv6), ServiceEntry port, ServiceEntry address on \
         another port, allowed resolver: {out:?}"
    );
    assert!(
        unregistered.received().is_empty(),
        "no datagram reached the unregistered destination: {:?}",
        unregistered.received()
    );
    assert_eq!(
        dp.bpf_counter("refused_registry_only") - refused_before,
        4,
        "sendmsg4/sendmsg6 counted each REGISTRY_ONLY refusal"
    );
    assert_eq!(
        dp.bpf_counter("refused_udp") - refused_udp_before,
        1,
        "the datagram to the ServiceEntry port"
    );

    let outside = std::net::UdpSocket::bind("127.0.0.1:0").expect("a UDP socket outside");
    outside
        .send_to(b"from outside", ("127.0.0.2", unregistered.port()))
        .expect("sendto from outside the cgroup");
    unregistered.wait_for(b"from outside");
}

/// One unconnected UDP socket per `family address` + `port` argument pair; prints one line per
/// pair: the errno name when sendto failed, `reply: ...` when an answer came back, else `sent`.
const SENDTO: &str = r#"
import errno, socket, sys
args = sys.argv[1:]
for target, port in zip(args[::2], args[1::2]):
    family, host = target.split()
    s = socket.socket(socket.AF_INET if family == "4" else socket.AF_INET6, socket.SOCK_DGRAM)
    s.settimeout(5)
    try:
        s.sendto(("datagram to " + host).encode(), (host, int(port)))
    except OSError as e:
        print(errno.errorcode.get(e.errno, str(e.errno)))
        continue
    try:
        print("reply: " + s.recv(512).decode())
    except socket.timeout:
        print("sent")
"#;

/// A UDP socket on a loopback address that records what it receives and answers
/// `pong: <datagram>`. Its thread ends when the sink is dropped.
struct UdpSink {
    port: u16,
    received: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl UdpSink {
    fn bind(ip: Ipv4Addr) -> Self {
        use std::sync::{Arc, Mutex, atomic::AtomicBool};
        let socket = std::net::UdpSocket::bind((ip, 0)).expect("binding a UDP sink");
        socket
            .set_read_timeout(Some(std::time::Duration::from_millis(100)))
            .expect("UDP read timeout");
        let port = socket.local_addr().expect("UDP sink address").port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen, stopped) = (received.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !stopped.load(std::sync::atomic::Ordering::SeqCst) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                seen.lock().expect("UDP sink lock").push(buf[..n].to_vec());
                let mut reply = b"pong: ".to_vec();
                reply.extend_from_slice(&buf[..n]);
                let _ = socket.send_to(&reply, from);
            }
        });
        Self {
            port,
            received,
            stop,
        }
    }

    fn port(&self) -> u16 {
        self.port
    }

    fn received(&self) -> Vec<Vec<u8>> {
        self.received.lock().expect("UDP sink lock").clone()
    }

    #[track_caller]
    fn wait_for(&self, datagram: &[u8]) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !self.received().iter().any(|d| d == datagram) {
            assert!(
                std::time::Instant::now() < deadline,
                "{:?} did not arrive within 5s; received {:?}",
                String::from_utf8_lossy(datagram),
                self.received()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for UdpSink {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
