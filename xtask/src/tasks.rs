//! The tasks behind `cargo xtask build | run | test`.
use std::{os::unix::process::CommandExt as _, path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

use crate::{
    Workspace,
    cmd::{self, step},
    kube, prereqs,
};

/// `cargo build -p egress-user`, after the prerequisites.
pub fn build(ws: &Workspace, release: bool) -> anyhow::Result<PathBuf> {
    prereqs::install()?;
    step(&format!(
        "building egress{}",
        if release { " (release)" } else { "" }
    ));
    let mut cargo = cargo(ws);
    cargo.args(["build", "-p", "egress-user"]);
    if release {
        cargo.arg("--release");
    }
    cmd::run(&mut cargo)?;
    let binary = ws
        .target_dir()
        .join(if release { "release" } else { "debug" })
        .join("egress");
    if !binary.is_file() {
        bail!("the build succeeded but {} is not there", binary.display());
    }
    Ok(binary)
}

/// Builds, then replaces this process with `egress run --config examples ARGS...`, so Ctrl-C
/// and exit codes belong to egress.
pub fn run(ws: &Workspace, args: &[String]) -> anyhow::Result<()> {
    if !cmd::is_root() {
        bail!(
            "`egress run` attaches BPF programs to a cgroup and needs root: \
             run `sudo -E cargo xtask run` (or as root)"
        );
    }
    let binary = build(ws, false)?;
    let mut egress = Command::new(&binary);
    egress
        .arg("run")
        .arg("--config")
        .arg(ws.root.join("examples"))
        .args(args)
        .current_dir(&ws.root);
    step(&format!("running {}", cmd::display(&egress)));
    let err = egress.exec();
    Err(err).with_context(|| format!("could not exec {}", binary.display()))
}

/// Which parts of `cargo xtask test` to run.
pub struct TestPlan {
    pub lint: bool,
    pub unit: bool,
    pub e2e: bool,
    pub e2e_args: Vec<String>,
}

/// fmt, clippy, unit tests, build, privileged end-to-end tests: in that order, stopping at the
/// first failure.
pub fn test(ws: &Workspace, plan: &TestPlan) -> anyhow::Result<()> {
    prereqs::install()?;
    if plan.lint {
        step("checking formatting (cargo fmt --check)");
        cmd::run(cargo(ws).args(["fmt", "--all", "--", "--check"]))?;
        // The fuzz targets are a workspace of their own (built on nightly by `cargo xtask fuzz`).
        cmd::run(cargo(ws).args(["fmt", "--manifest-path", "fuzz/Cargo.toml", "--", "--check"]))?;
        step("linting (cargo clippy -D warnings)");
        cmd::run(cargo(ws).args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    if plan.unit {
        // The default members only: the privileged suite and the kernel crate are not among them
        // (`--workspace` would pull egress-tests in without EGRESS_BIN).
        // egress-user's unit tests include the fuzz seed corpora (`egress::fuzzing`).
        step("unit tests (cargo test, default members, no root needed; fuzz seed corpora)");
        cmd::run(cargo(ws).arg("test"))?;
    }
    if plan.e2e {
        // Here and not in `prereqs::install`: only the end-to-end suite needs a control plane,
        // and building one (once) should not hold up `cargo xtask build` or `run`.
        let control_plane = kube::control_plane()?;
        // The deploy tests render the Helm chart and validate what it renders.
        let helm = prereqs::helm()?;
        let kubernetes_validate = prereqs::kubernetes_validate()?;
        step("building the egress binary for the end-to-end tests");
        let mut build = cargo(ws);
        cmd::run(build.args(["build", "-p", "egress-user"]))?;
        let binary = ws.target_dir().join("debug/egress");
        if !binary.is_file() {
            bail!("the build succeeded but {} is not there", binary.display());
        }
        if !cmd::is_root() {
            println!(
                "    note: not root; the privileged tests will skip (or fail with \
                 EGRESS_REQUIRE_PRIV=1)"
            );
        }
        step("privileged end-to-end tests (cargo test -p egress-tests)");
        let mut e2e = cargo(ws);
        e2e.args(["test", "-p", "egress-tests"])
            .env("EGRESS_BIN", &binary)
            .env("KUBEBUILDER_ASSETS", &control_plane)
            .env("EGRESS_HELM", &helm)
            .env("EGRESS_KUBERNETES_VALIDATE", &kubernetes_validate);
        if !plan.e2e_args.is_empty() {
            e2e.arg("--").args(&plan.e2e_args);
        }
        cmd::run(&mut e2e)?;
    }
    step("all requested checks passed");
    Ok(())
}

/// `cargo`, run from the workspace root through rustup's proxy on PATH, so `+toolchain` works and
/// nested builds pick their own toolchains.
fn cargo(ws: &Workspace) -> Command {
    let mut cargo = Command::new("cargo");
    cargo.current_dir(&ws.root);
    cargo
}
