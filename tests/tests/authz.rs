//! AuthorizationPolicy at the waypoint, end to end: real curl in cgroups, the real kernel
//! programs, a real upstream. The seed walkthrough exactly: `default/sa/sleep` may only GET /get
//! on the ServiceEntry, `default/sa/admin` may do anything.
use std::{
    net::{IpAddr, Ipv4Addr},
    thread,
};

use egress_tests::*;

const SE_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 77, 0, 2));

fn start(upstream: &Upstream, policy: &str) -> (Dataplane, String) {
    let se = yaml::static_service_entry("httpbin", "httpbin.test", SE_IP, 80, upstream.addr());
    let dp = Dataplane::builder()
        .service_entry(&se)
        .config(policy)
        .start();
    (dp, se)
}

const RESOLVE: &str = "httpbin.test:80:127.77.0.2";

#[test]
fn the_seed_walkthrough_allows_and_denies_per_request() {
    if !require_privileges() {
        return;
    }
    let upstream = Upstream::http();
    let (dp, _) = start(&upstream, yaml::SEED_POLICY);

    let get = dp
        .exec("default", "sleep")
        .curl(&["-sS", "-i", "--resolve", RESOLVE, "http://httpbin.test/get"])
        .expect_success("sleep GET /get");
    assert_eq!(get.http_status(), Some(200), "{get:?}");

    let post = dp
        .exec("default", "sleep")
        .curl(&[
            "-sS",
            "-i",
            "-X",
            "POST",
            "-d",
            "x",
            "--resolve",
            RESOLVE,
            "http://httpbin.test/post",
        ])
        .expect_success("sleep POST /post");
    assert_eq!(post.http_status(), Some(403), "{post:?}");
    assert_eq!(post.body(), "RBAC: access denied", "{post:?}");
    assert_eq!(post.header("via").as_deref(), Some("1.1 egress-waypoint"));

    let admin = dp
        .exec("default", "admin")
        .curl(&[
            "-sS",
            "-i",
            "-X",
            "POST",
            "-d",
            "x",
            "--resolve",
            RESOLVE,
            "http://httpbin.test/post",
        ])
        .expect_success("admin POST /post");
    assert_eq!(admin.http_status(), Some(200), "{admin:?}");

    let paths: Vec<String> = upstream.hits().iter().map(|h| h.path.clone()).collect();
    assert_eq!(
        paths,
        ["/get", "/post"],
        "the denied request never reached the upstream"
    );

    let denied = dp.access_log_line("rbac_access_denied");
    assert!(
        denied.contains("\"POST /post HTTP/1.1\" 403")
            && denied.contains("rbac_access_denied_matched_policy[none]")
            && denied.ends_with("spiffe://cluster.local/ns/default/sa/sleep"),
        "{denied}"
    );
    let allowed = dp.access_log_line("\"GET /get");
    assert!(allowed.contains(" 200 "), "{allowed}");

    // Another identity: no ALLOW rule names it, whatever the request — an L4-decidable deny,
    // which `egress exec` has the dataplane cache before the first connect: refused in the
    // kernel (EPERM), never reaching the waypoint.
    let other = dp.exec("default", "nobody").curl(&[
        "-sS",
        "-i",
        "--resolve",
        RESOLVE,
        "http://httpbin.test/get",
    ]);
    assert_eq!(other.code, Some(7), "refused in connect(): {other:?}");
    assert!(dp.bpf_counter("refused_verdict_cache") >= 1, "{other:?}");
}

#[test]
fn an_allowed_then_a_denied_request_on_one_keep_alive_connection() {
    if !require_privileges() {
        return;
    }
    let upstream = Upstream::http();
    let (dp, _) = start(&upstream, yaml::SEED_POLICY);
    let w = "%{http_code} %{num_connects}\\n";
    let out = dp
        .exec("default", "sleep")
        .curl(&[
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            w,
            "--resolve",
            RESOLVE,
            "http://httpbin.test/get",
            "--next",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            w,
            "--resolve",
            RESOLVE,
            "-X",
            "POST",
            "http://httpbin.test/post",
            "--next",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            w,
            "--resolve",
            RESOLVE,
            "http://httpbin.test/get",
        ])
        .expect_success("three requests on one connection");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines,
        ["200 1", "403 0", "200 0"],
        "one connection (num_connects 0 after the first); the second request denied: {out:?}"
    );
}

#[test]
fn policy_reloads_under_load_fail_only_what_the_policy_denies() {
    if !require_privileges() {
        return;
    }
    let upstream = Upstream::http();
    let (dp, se) = start(&upstream, yaml::SEED_POLICY);
    let sleep_only = yaml::sleep_only_policy();
    let admin_status = |dp: &Dataplane| {
        dp.exec("default", "admin")
            .http_code(&[
                "-X",
                "POST",
                "--resolve",
                RESOLVE,
                "http://httpbin.test/post",
            ])
            .stdout
    };
    assert_eq!(admin_status(&dp), "200");

    // Bounded load: 2 x 1000 allowed requests (one keep-alive connection; a new connection per
    // request), while the policy is swapped back and forth by file and by SIGHUP.
    const N: usize = 1000;
    let url = "http://httpbin.test/get";
    let urls: Vec<&str> = std::iter::repeat_n(url, N).collect();
    let reloads_before = dp.log_count("configuration reloaded");
    let (keep_alive, per_connection, reloads) = thread::scope(|s| {
        let load = |close: bool| {
            let dp = &dp;
            let urls = &urls;
            s.spawn(move || {
                let mut args = vec!["-sS", "-w", "%{http_code}\\n", "--resolve", RESOLVE];
                if close {
                    args.extend(["-H", "Connection: close"]);
                }
                // `-o` applies to one URL: every URL gets its own.
                for url in urls {
                    args.extend(["-o", "/dev/null", url]);
                }
                dp.exec("default", "sleep").curl(&args)
            })
        };
        let a = load(false);
        let b = load(true);
        let mut reloads = 0;
        while !(a.is_finished() && b.is_finished()) && reloads < 20 {
            let policy = if reloads % 2 == 0 {
                sleep_only.as_str()
            } else {
                yaml::SEED_POLICY
            };
            dp.write_config(&[&se, policy]);
            if reloads % 5 != 4 {
                dp.sighup(); // otherwise the file watcher notices within 2s
            }
            reloads += 1;
            dp.wait_for_log("configuration reloaded", reloads_before + reloads);
        }
        (
            a.join().expect("load thread"),
            b.join().expect("load thread"),
            reloads,
        )
    });
    for out in [&keep_alive, &per_connection] {
        let codes: Vec<&str> = out.stdout.lines().collect();
        assert_eq!(codes.len(), N, "every request answered: {out:?}");
        let failed: Vec<&&str> = codes.iter().filter(|c| **c != "200").collect();
        assert!(
            failed.is_empty(),
            "allowed requests failed during reloads: {failed:?}"
        );
    }
    assert!(
        reloads >= 2,
        "the load overlapped at least two reloads ({reloads})"
    );

    // The last policy written decides now (the loop may have left it in force already, so wait
    // for the SIGHUP to be handled, whether it changed anything or not).
    let hangups = dp.log_count("reason=\"SIGHUP\"");
    dp.write_config(&[&se, &sleep_only]);
    dp.sighup();
    dp.wait_for_log("reason=\"SIGHUP\"", hangups + 1);
    // Denied: 403 from the waypoint, or (admin can never be allowed under this policy, an
    // L4-decidable deny) refused by the kernel verdict cache before connecting ("000").
    let denied = |status: String| status == "403" || status == "000";
    assert!(
        denied(admin_status(&dp)),
        "the sleep-only policy is in force"
    );

    // An invalid new set is rejected and the previous one keeps serving.
    let rejected_before = dp.log_count("configuration rejected");
    dp.write_config(&[
        &se,
        &yaml::SEED_POLICY.replace("action: ALLOW", "action: PERMIT"),
    ]);
    dp.sighup();
    dp.wait_for_log("configuration rejected", rejected_before + 1);
    assert!(denied(admin_status(&dp)), "still the sleep-only policy");
    let get = dp
        .exec("default", "sleep")
        .http_code(&["--resolve", RESOLVE, url]);
    assert_eq!(get.stdout, "200");
}
