//! Host mode identity from a declarative WorkloadIdentity mapping (how a systemd unit's cgroup
//! becomes a workload): processes in the mapped cgroup are that principal, in the access log and
//! for AuthorizationPolicy, with no `egress exec` involved.
use std::{
    fs,
    net::{IpAddr, Ipv4Addr},
    process::Command,
    time::Duration,
};

use egress_tests::*;

#[test]
fn a_mapped_cgroup_is_its_declared_principal() {
    if !require_privileges() {
        return;
    }
    let upstream = Upstream::http();
    let se_ip = IpAddr::V4(Ipv4Addr::new(127, 77, 0, 3));
    let se = yaml::static_service_entry("billing-api", "billing.test", se_ip, 80, upstream.addr());
    let policy = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-billing, namespace: default}
spec:
  targetRefs: [{kind: ServiceEntry, group: networking.istio.io, name: billing-api}]
  rules:
  - from: [{source: {principals: [cluster.local/ns/payments/sa/billing]}}]
";
    // The dataplane's cgroup is only known once it runs: map a child of it, then reload.
    let dp = Dataplane::builder()
        .service_entry(&se)
        .config(policy)
        .start();
    let unit = dp.cgroup().join("system.slice").join("billing.service");
    fs::create_dir_all(&unit).expect("creating the unit's cgroup");
    let mapping = format!(
        "apiVersion: egress.dev/v1alpha1
kind: WorkloadIdentity
metadata: {{name: billing}}
spec:
  cgroup: {}
  namespace: payments
  serviceAccount: billing
",
        unit.display()
    );
    let hangups = dp.log_count("reason=\"SIGHUP\"");
    dp.write_config(&[&se, policy, &mapping]);
    dp.sighup();
    dp.wait_for_log("reason=\"SIGHUP\"", hangups + 1);

    // A process placed in the unit's cgroup the way systemd places one: by writing its pid.
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec curl -sS -i --connect-timeout 5 --max-time 10 \
         --resolve billing.test:80:127.77.0.3 http://billing.test/invoices",
        unit.display()
    );
    let out = run_bounded(
        Command::new("sh").args(["-c", &script]),
        Duration::from_secs(30),
    )
    .expect_success("curl from the mapped cgroup");
    assert_eq!(out.http_status(), Some(200), "{out:?}");
    let line = dp.access_log_line("/invoices");
    assert!(
        line.ends_with("spiffe://cluster.local/ns/payments/sa/billing"),
        "{line}"
    );

    // Any other identity is refused by the same policy: an L4-decidable deny, cached before
    // the first connect of a new `egress exec` identity, so refused in the kernel (EPERM).
    let other = dp.exec("default", "sleep").curl(&[
        "-sS",
        "-i",
        "--resolve",
        "billing.test:80:127.77.0.3",
        "http://billing.test/invoices",
    ]);
    assert_eq!(other.code, Some(7), "refused in connect(): {other:?}");
    assert!(dp.bpf_counter("refused_verdict_cache") >= 1, "{other:?}");
}
