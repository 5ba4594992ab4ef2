//! What a privileged test needs from the machine, and what to do when it is missing: skip with a
//! message on a developer's machine, fail under `EGRESS_REQUIRE_PRIV=1` (CI) so a suite that could
//! not run never shows as green.
use std::{io::Write as _, path::PathBuf};

/// Whether privileged tests can run here. When they cannot, this prints why and returns `false`
/// (the test returns early), or panics with the reason when `EGRESS_REQUIRE_PRIV=1`.
#[must_use]
pub fn require_privileges() -> bool {
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("not running as root".to_owned());
    }
    if cgroup2_mount().is_none() {
        missing.push("no cgroup2 filesystem in /proc/mounts".to_owned());
    }
    missing.extend(binary_missing());
    for tool in ["curl", "bpftool"] {
        if !on_path(tool) {
            missing.push(format!(
                "`{tool}` is not on PATH (cargo xtask prereqs installs it)"
            ));
        }
    }
    skip_unless_empty(&missing)
}

/// Whether the programs `tools` are installed (on PATH, or in /usr/sbin where Debian puts
/// daemons such as dnsmasq). When one is missing, this prints why and returns `false`, or panics
/// under `EGRESS_REQUIRE_PRIV=1`.
#[must_use]
pub fn require_tools(tools: &[&str]) -> bool {
    let missing: Vec<String> = tools
        .iter()
        .filter(|tool| find_tool(tool).is_none())
        .map(|tool| format!("`{tool}` is not installed (cargo xtask prereqs installs it)"))
        .collect();
    skip_unless_empty(&missing)
}

/// Where `tool` is: on PATH, else in /usr/sbin or /sbin.
pub fn find_tool(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

/// Whether a Kubernetes control plane (kube-apiserver, etcd, kubectl) is available for
/// [`Cluster::start`](crate::Cluster::start): from `KUBEBUILDER_ASSETS`, or the cache `cargo xtask
/// prereqs` builds. When not, this prints why and returns `false`, or panics under
/// `EGRESS_REQUIRE_PRIV=1`, so the Kubernetes suite never skips silently in CI. Needs no root.
#[must_use]
pub fn require_control_plane() -> bool {
    let missing: Vec<String> = crate::cluster::control_plane_assets()
        .err()
        .into_iter()
        .chain(
            find_tool("curl")
                .is_none()
                .then(|| "`curl` is not installed".to_owned()),
        )
        .collect();
    skip_unless_empty(&missing)
}

/// Whether helm is available for [`Chart`](crate::Chart) (`EGRESS_HELM`, or the cache `cargo
/// xtask prereqs` fills). When not, this prints why and returns `false`, or panics under
/// `EGRESS_REQUIRE_PRIV=1`. Needs no root.
#[must_use]
pub fn require_helm() -> bool {
    skip_unless_empty(
        &crate::helm::helm_bin()
            .err()
            .into_iter()
            .collect::<Vec<_>>(),
    )
}

/// Whether kubernetes-validate is available (`EGRESS_KUBERNETES_VALIDATE`, or the cache `cargo
/// xtask prereqs` fills); else prints why and returns `false`, or panics under
/// `EGRESS_REQUIRE_PRIV=1`.
#[must_use]
pub fn require_kubernetes_validate() -> bool {
    skip_unless_empty(
        &crate::helm::kubernetes_validate_bin()
            .err()
            .into_iter()
            .collect::<Vec<_>>(),
    )
}

/// Whether `EGRESS_BIN` names the binary, for tests that need it but not root.
#[must_use]
pub fn require_binary() -> bool {
    skip_unless_empty(&binary_missing().into_iter().collect::<Vec<_>>())
}

/// The `egress` binary under test, from `EGRESS_BIN`.
pub fn egress_bin() -> PathBuf {
    std::env::var_os("EGRESS_BIN")
        .map(PathBuf::from)
        .expect("EGRESS_BIN is set (call require_privileges or require_binary first)")
}

/// The cgroup2 mount point, from /proc/mounts (hybrid hosts mount it at
/// `/sys/fs/cgroup/unified`, others at `/sys/fs/cgroup`).
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_source, target, kind) = (fields.next()?, fields.next()?, fields.next()?);
        // Mount points with spaces are octal-escaped; ours never have them.
        (kind == "cgroup2").then(|| PathBuf::from(target))
    })
}

fn binary_missing() -> Option<String> {
    match std::env::var_os("EGRESS_BIN") {
        None => Some("EGRESS_BIN is not set (`cargo xtask test` sets it)".to_owned()),
        Some(bin) if !PathBuf::from(&bin).is_file() => Some(format!(
            "EGRESS_BIN={} is not a file",
            PathBuf::from(bin).display()
        )),
        Some(_) => None,
    }
}

pub(crate) fn skip_unless_empty(missing: &[String]) -> bool {
    if missing.is_empty() {
        return true;
    }
    let reasons = missing.join("; ");
    if std::env::var_os("EGRESS_REQUIRE_PRIV").is_some_and(|v| v == "1") {
        panic!("this test must run (EGRESS_REQUIRE_PRIV=1) but cannot: {reasons}");
    }
    // Straight to the stderr handle, not eprintln!: libtest captures the macros, and a skip that
    // nobody sees is how a suite that never ran passes for green.
    let _ = writeln!(
        std::io::stderr(),
        "skipping privileged test {}: {reasons} (set EGRESS_REQUIRE_PRIV=1 to fail instead)",
        std::thread::current().name().unwrap_or("?")
    );
    false
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}
