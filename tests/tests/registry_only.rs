//! REGISTRY_ONLY (Istio's `outboundTrafficPolicy.mode`, done in the kernel): from the captured
//! cgroup, a connect to anything that is no ServiceEntry address is refused with EPERM, except
//! the allowed CIDRs; ServiceEntry traffic works; processes outside the cgroup are unaffected.
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
