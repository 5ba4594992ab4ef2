//! Pinned maps carry BTF, so libbpf tooling prints them with field names.
use egress_tests::*;

#[test]
fn bpftool_dumps_pinned_services_with_field_names() {
    if !require_privileges() {
        return;
    }
    let upstream = Upstream::http();
    let dp = Dataplane::builder()
        .service_entry(&yaml::service_entry(
            "httpbin",
            "httpbin.test",
            upstream.addr(),
        ))
        .start();

    let map = dp.pin_dir().join("EG_SERVICES4_V1");
    let dump = dp
        .bpftool(&["map", "dump", "pinned", &map.to_string_lossy()])
        .expect_success("bpftool map dump");

    assert!(dump.stdout.contains("service_id"), "named fields: {dump:?}");
    assert!(dump.stdout.contains("addr"), "named key fields: {dump:?}");
}
