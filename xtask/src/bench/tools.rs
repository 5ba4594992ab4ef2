//! The programs the benchmark drives, installed when missing and cached: nginx, wrk, openssl
//! and taskset from Debian, oha from crates.io (built once into `target/bench-tools`), iptables
//! through [`super::iptables::ensure_installed`], Envoy through [`super::envoy::ensure_envoy`].
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{
    Workspace,
    cmd::{self, step},
    prereqs,
};

/// oha release; 1.16 needs rustc 1.88, so it builds with the project's stable 1.95.
pub const OHA_VERSION: &str = "1.16.0";

/// Debian packages and the command that proves each is there: the upstream, the load
/// generator, the certificates, CPU pinning and the one-off requests (`cargo xtask link-order`
/// needs these too).
pub const DEBIAN_LOAD: &[(&str, Option<&str>)] = &[
    ("nginx", Some("nginx")),
    ("wrk", Some("wrk")),
    ("openssl", Some("openssl")),
    ("util-linux", Some("taskset")),
    ("curl", Some("curl")),
];

/// What only the bench needs beyond [`DEBIAN_LOAD`].
const DEBIAN: &[(&str, Option<&str>)] = &[
    // Syscalls per request: `strace -c -f -p PROXY` over a separate, traced load phase.
    ("strace", Some("strace")),
    // The DNS figure's upstream resolver (the daemon only; no service is started).
    ("dnsmasq-base", Some("dnsmasq")),
    // oha's TLS backend links the system OpenSSL (faster to build than rustls' aws-lc).
    ("libssl-dev", None),
];

/// Paths of the load generators and servers, and their versions for the record.
pub struct Tools {
    pub nginx: PathBuf,
    pub wrk: PathBuf,
    pub oha: PathBuf,
    pub envoy: PathBuf,
    pub versions: serde_json::Value,
}

/// Installs what is missing; oha only when `with_oha` (only the HTTP figures use it).
pub fn ensure(ws: &Workspace, with_oha: bool) -> anyhow::Result<Tools> {
    prereqs::debian_packages(&[DEBIAN_LOAD, DEBIAN].concat())?;
    super::iptables::ensure_installed()?;
    let oha = if with_oha {
        oha(ws)?
    } else {
        PathBuf::from("oha")
    };
    let envoy = super::envoy::ensure_envoy(ws)?;
    let nginx = which("nginx")?;
    let wrk = which("wrk")?;
    let versions = serde_json::json!({
        "nginx": version(&nginx, &["-v"]),
        "wrk": version(&wrk, &["-v"]),
        "oha": version(&oha, &["--version"]),
        "envoy": super::envoy::envoy_version(&envoy).unwrap_or_else(|e| format!("? ({e:#})")),
        "iptables": version(Path::new("iptables"), &["--version"]),
        "rustc": version(Path::new("rustc"), &["--version"]),
        "egress_commit": version(Path::new("git"), &["-C", &ws.root.to_string_lossy(), "describe", "--always", "--dirty"]),
    });
    Ok(Tools {
        nginx,
        wrk,
        oha,
        envoy,
        versions,
    })
}

/// `cargo install oha --locked` into `target/bench-tools`, unless that version is there.
fn oha(ws: &Workspace) -> anyhow::Result<PathBuf> {
    let root = ws.target_dir().join("bench-tools");
    let bin = root.join("bin/oha");
    let installed = cmd::probe(Command::new(&bin).arg("--version"));
    if installed
        .as_deref()
        .is_some_and(|v| v.split_whitespace().any(|word| word == OHA_VERSION))
    {
        return Ok(bin);
    }
    step(&format!(
        "installing oha {OHA_VERSION} (crates.io) into {} (about 3 minutes, once)",
        root.display()
    ));
    // oha 1.16 does not build without a TLS backend; native-tls (the system OpenSSL) builds in
    // a fraction of the time of the default rustls with aws-lc.
    cmd::run(
        Command::new("cargo")
            .args([
                "install",
                "oha",
                "--version",
                OHA_VERSION,
                "--locked",
                "--force",
            ])
            .args([
                "--no-default-features",
                "--features",
                "native-tls",
                "--root",
            ])
            .arg(&root),
    )?;
    if !bin.is_file() {
        bail!(
            "cargo install oha succeeded but {} is not there",
            bin.display()
        );
    }
    Ok(bin)
}

/// The absolute path of `name` on PATH.
pub fn which(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .with_context(|| format!("{name} is not on PATH even after installing it"))
}

/// The first line a tool prints about its version (stdout or stderr, whatever the exit code).
fn version(program: &Path, args: &[&str]) -> String {
    let Ok(output) = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
    else {
        return "?".to_owned();
    };
    let text = if output.stdout.is_empty() {
        output.stderr
    } else {
        output.stdout
    };
    String::from_utf8_lossy(&text)
        .lines()
        .next()
        .unwrap_or("?")
        .trim()
        .to_owned()
}
