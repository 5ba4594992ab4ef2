//! `cargo xtask fuzz`: builds the cargo-fuzz targets in `fuzz/` with the pinned nightly
//! (libFuzzer, AddressSanitizer) and runs each for a fixed time, one after the other.
//!
//! Each run starts from the committed seed corpus (`fuzz/corpus/TARGET`, read only) plus what
//! earlier runs found (`target/fuzz/corpus/TARGET`, where new inputs go), so the committed
//! corpus changes only by hand. A crash, a timeout or a leak stops that target; the rest still
//! run, and the task fails at the end naming every artifact.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::{
    Workspace,
    cmd::{self, step},
    prereqs::{self, NIGHTLY},
};

/// Every fuzz target, in the order they run (`fuzz/fuzz_targets/NAME.rs`).
pub const TARGETS: [&str; 4] = ["framing", "normalize", "config", "policy"];

/// Longest time one input may take before libFuzzer calls it a hang (seconds).
const INPUT_TIMEOUT_SECONDS: u32 = 10;

pub struct FuzzOptions {
    pub seconds: u32,
    /// Empty: all of [`TARGETS`].
    pub targets: Vec<String>,
}

/// What one target's run came to.
struct Outcome {
    target: String,
    seconds: f64,
    stats: Stats,
    /// The input libFuzzer saved when the target failed.
    failure: Option<String>,
}

#[derive(Default)]
struct Stats {
    executions: Option<u64>,
    per_second: Option<u64>,
    coverage: Option<String>,
    corpus: Option<String>,
    peak_rss_mb: Option<u64>,
}

pub fn fuzz(ws: &Workspace, options: &FuzzOptions) -> anyhow::Result<()> {
    // The nightly, and bpf-linker: egress-user's build script compiles the kernel programs.
    prereqs::install()?;
    prereqs::cargo_fuzz()?;
    let targets: Vec<&str> = if options.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        options.targets.iter().map(String::as_str).collect()
    };
    let target_dir = ws.target_dir().join("fuzz");
    let started = Instant::now();
    step(&format!(
        "building the fuzz targets ({NIGHTLY}, libFuzzer, AddressSanitizer; a few minutes the \
         first time)"
    ));
    cmd::run(&mut cargo_fuzz(ws, "build", &target_dir))?;
    println!("    built in {:.0}s", started.elapsed().as_secs_f64());

    let mut outcomes = Vec::new();
    for (i, target) in targets.iter().enumerate() {
        step(&format!(
            "fuzzing {target} for {} s ({} of {})",
            options.seconds,
            i + 1,
            targets.len()
        ));
        outcomes.push(run_target(ws, &target_dir, target, options.seconds)?);
    }

    println!();
    println!(
        "    {:<10} {:>6} {:>10} {:>8} {:>10} {:>12} {:>8}  result",
        "target", "time", "execs", "exec/s", "coverage", "corpus", "rss MiB"
    );
    for o in &outcomes {
        let show = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
        println!(
            "    {:<10} {:>5.0}s {:>10} {:>8} {:>10} {:>12} {:>8}  {}",
            o.target,
            o.seconds,
            show(o.stats.executions),
            show(o.stats.per_second),
            o.stats.coverage.as_deref().unwrap_or("-"),
            o.stats.corpus.as_deref().unwrap_or("-"),
            show(o.stats.peak_rss_mb),
            if o.failure.is_some() { "FAILED" } else { "ok" }
        );
    }
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.failure.is_some()).collect();
    if !failed.is_empty() {
        println!();
        for o in &failed {
            let artifact = o.failure.as_deref().unwrap_or_default();
            println!("    {}: {artifact}", o.target);
            println!(
                "      reproduce:   cargo +{NIGHTLY} fuzz run --fuzz-dir fuzz --target-dir {} {} {artifact}",
                display_relative(ws, &target_dir),
                o.target
            );
            println!(
                "      once fixed, keep it as a regression case: cp {artifact} fuzz/corpus/{}/",
                o.target
            );
        }
        bail!(
            "{} of {} fuzz targets failed: {}",
            failed.len(),
            outcomes.len(),
            failed
                .iter()
                .map(|o| o.target.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    step(&format!(
        "every fuzz target ran {} s without a failure ({:.0}s in all)",
        options.seconds,
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// `cargo +NIGHTLY fuzz SUBCOMMAND --fuzz-dir fuzz --target-dir DIR`, from the workspace root.
fn cargo_fuzz(ws: &Workspace, subcommand: &str, target_dir: &Path) -> Command {
    let mut cargo = Command::new("cargo");
    cargo
        .arg(format!("+{NIGHTLY}"))
        .args(["fuzz", subcommand, "--fuzz-dir", "fuzz", "--target-dir"])
        .arg(target_dir)
        .current_dir(&ws.root);
    // `cargo run` gave xtask its package's CARGO_MANIFEST_DIR, CARGO_PKG_*, ...; build scripts
    // (ring's, through cc) rerun when those change, so a `cargo fuzz` run by hand would rebuild
    // everything after this one, and the other way round. Build in a plain cargo environment.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
            "CARGO_PRIMARY_",
        ]
        .iter()
        .any(|prefix| key.starts_with(prefix))
        {
            cargo.env_remove(key.as_ref());
        }
    }
    cargo
}

fn run_target(
    ws: &Workspace,
    target_dir: &Path,
    target: &str,
    seconds: u32,
) -> anyhow::Result<Outcome> {
    let corpus = target_dir.join("corpus").join(target);
    let artifacts = target_dir.join("artifacts").join(target);
    let logs = target_dir.join("logs");
    for dir in [&corpus, &artifacts, &logs] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let seeds = ws.root.join("fuzz/corpus").join(target);
    let log_path = logs.join(format!("{target}.log"));
    let mut log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;

    let mut run = cargo_fuzz(ws, "run", target_dir);
    run.arg(target)
        .arg(&corpus)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECONDS}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    println!("    $ {}", cmd::display(&run));
    let started = Instant::now();
    let mut child = run
        .spawn()
        .with_context(|| format!("could not start cargo fuzz run {target}"))?;
    // libFuzzer writes everything to stderr; cargo's own lines too. Show the milestones, keep
    // all of it in the log.
    let stdout = child.stdout.take().expect("piped");
    let stdout_thread = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });
    let mut stats = Stats::default();
    let mut failure = None;
    let mut failing = false;
    let stderr = child.stderr.take().expect("piped");
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        writeln!(log, "{line}").ok();
        stats.read(&line);
        if let Some(path) = line
            .split_once("Test unit written to ")
            .map(|(_, path)| path.trim().to_owned())
        {
            failure = Some(path);
        }
        failing |= line.contains("ERROR: libFuzzer")
            || line.contains("panicked at")
            || line.starts_with("==") && line.contains("ERROR:");
        if failing
            || line.contains("INITED")
            || line.contains("pulse")
            || line.contains("DONE")
            || line.starts_with("error")
            || line.contains("Test unit written")
        {
            println!("    [{:>4.0}s] {line}", started.elapsed().as_secs_f64());
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for cargo fuzz run {target}"))?;
    for line in stdout_thread.join().unwrap_or_default() {
        writeln!(log, "{line}").ok();
    }
    let seconds = started.elapsed().as_secs_f64();
    if !status.success() && failure.is_none() {
        // No artifact: the run itself failed (build, arguments). The log says why.
        bail!(
            "cargo fuzz run {target} failed ({status}) without a crash artifact; see {}",
            log_path.display()
        );
    }
    if let Some(path) = &failure {
        failure = Some(display_relative(ws, Path::new(path)));
    }
    Ok(Outcome {
        target: target.to_owned(),
        seconds,
        stats,
        failure,
    })
}

impl Stats {
    /// Picks the figures out of libFuzzer's status and final-stats lines.
    fn read(&mut self, line: &str) {
        let number = |s: &str| s.trim().parse::<u64>().ok();
        if let Some(v) = line.strip_prefix("stat::number_of_executed_units:") {
            self.executions = number(v);
        } else if let Some(v) = line.strip_prefix("stat::average_exec_per_sec:") {
            self.per_second = number(v);
        } else if let Some(v) = line.strip_prefix("stat::peak_rss_mb:") {
            self.peak_rss_mb = number(v);
        } else if line.starts_with('#') {
            // `#12345  NEW    cov: 1234 ft: 5678 corp: 90/12Kb ...`
            let mut words = line.split_whitespace();
            while let Some(word) = words.next() {
                match word {
                    "cov:" => self.coverage = words.next().map(str::to_owned),
                    "corp:" => self.corpus = words.next().map(str::to_owned),
                    _ => {}
                }
            }
        }
    }
}

fn display_relative(ws: &Workspace, path: &Path) -> String {
    path.strip_prefix(&ws.root)
        .map(PathBuf::from)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}
