//! The small things users hit at the command line (issue 14): a closed pipe ends a command
//! normally, `egress exec` never runs a command uncaptured, and uninstall leaves no cgroups.
use std::{
    fs,
    io::Read as _,
    process::{Command, Stdio},
};

use egress_tests::*;

fn running_dataplane() -> (Upstream, Dataplane) {
    let upstream = Upstream::http();
    let se = yaml::service_entry("httpbin", "httpbin.test", upstream.addr());
    let dp = Dataplane::builder().service_entry(&se).start();
    (upstream, dp)
}

/// `egress status | head -1`: the reader goes away after one line (here: before the first),
/// and egress exits 0 without a panic.
#[test]
fn a_closed_stdout_ends_status_and_check_without_a_panic() {
    if !require_privileges() {
        return;
    }
    let (_upstream, dp) = running_dataplane();
    let pins = dp.pin_dir().to_string_lossy().into_owned();
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples").to_owned();
    for args in [
        vec!["status", "--bpffs", pins.as_str()],
        vec!["check", "--config", config.as_str()],
    ] {
        let (reader, writer) = std::io::pipe().expect("a pipe");
        drop(reader);
        let mut child = Command::new(egress_bin())
            .args(&args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning egress");
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut stderr)
            .expect("reading stderr");
        let status = child.wait().expect("waiting for egress");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        if args[0] == "status" {
            assert!(status.success(), "{args:?}: {status} {stderr}");
        }
    }
}

#[test]
fn exec_refuses_to_run_a_command_that_would_not_be_captured() {
    if !require_privileges() {
        return;
    }
    let (_upstream, dp) = running_dataplane();
    let marker = tempfile::tempdir().expect("a temporary directory");
    let ran = marker.path().join("ran");
    let touch = ["touch", ran.to_str().expect("utf-8 path")];
    let cgroup = dp.cgroup().to_string_lossy().into_owned();
    let pins = dp.pin_dir().to_string_lossy().into_owned();
    let exec = |cgroup: &str, pins: &str| {
        let mut args = vec![
            "exec",
            "--cgroup",
            cgroup,
            "--bpffs",
            pins,
            "-n",
            "default",
            "--service-account",
            "sleep",
            "--",
        ];
        args.extend_from_slice(&touch);
        dp.egress(&args)
    };

    // The pins of no running dataplane.
    let out = exec(&cgroup, "/sys/fs/bpf/egress-test-none");
    assert!(!out.success(), "{out:?}");
    assert!(out.stderr.contains("no capture is pinned"), "{out:?}");
    assert!(!ran.exists(), "the command did not run");

    // A cgroup the running dataplane does not capture.
    let other = cgroup2_mount()
        .expect("a cgroup2 mount")
        .join(format!("egress-test-{}-uncaptured", std::process::id()));
    fs::create_dir_all(&other).expect("creating an uncaptured cgroup");
    let out = exec(other.to_str().expect("utf-8 path"), &pins);
    let _ = fs::remove_dir(&other);
    assert!(!out.success(), "{out:?}");
    assert!(out.stderr.contains("attached to another cgroup"), "{out:?}");
    assert!(!ran.exists(), "the command did not run");

    // The captured cgroup: it runs.
    let out = exec(&cgroup, &pins);
    assert!(out.success(), "{out:?}");
    assert!(ran.exists());
    fs::remove_file(&ran).expect("removing the marker");

    // After uninstall: refused, and the cgroups egress made are gone.
    let out = dp.egress(&["uninstall", "--bpffs", &pins, "--cgroup", &cgroup]);
    assert!(out.success(), "{out:?}");
    assert!(out.stdout.contains("removed"), "{out:?}");
    assert!(
        !dp.cgroup().join("ns").exists(),
        "exec's cgroups were removed: {out:?}"
    );
    let out = exec(&cgroup, &pins);
    assert!(!out.success(), "{out:?}");
    assert!(!ran.exists(), "the command did not run after uninstall");
}
