//! Syscalls per request of a proxy: `strace -c -f -p PID` attached to every thread of the proxy
//! during a load phase of its own, after all measured phases of the configuration (tracing
//! slows the proxy down severalfold, so it never runs while requests/s, latency or CPU are
//! measured), divided by the requests the load generator completed in that phase.
//!
//! When strace is missing, cannot attach (ptrace refused) or prints no summary, the count is
//! reported as not measured, with the reason, instead of a number.
use std::{
    fs,
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use super::{check_interrupted, load::LoadRun};
use crate::cmd;

/// How long strace may take to attach to every thread of the proxy.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long strace may take to detach and write its summary after SIGINT.
const DETACH_TIMEOUT: Duration = Duration::from_secs(30);

/// What one traced phase counted.
#[derive(Clone, Debug)]
pub struct SyscallCount {
    /// All syscalls of all the proxy's threads during the phase.
    pub calls: u64,
    /// Requests the load generator completed in the phase.
    pub requests: u64,
    /// The syscalls strace counted most often: (name, calls), most first.
    pub top: Vec<(String, u64)>,
}

impl SyscallCount {
    pub fn per_request(&self) -> f64 {
        self.calls as f64 / self.requests.max(1) as f64
    }

    pub fn json(&self) -> Value {
        json!({
            "calls": self.calls,
            "requests": self.requests,
            "per_request": self.per_request(),
            "top": self.top.iter().map(|(name, n)| json!([name, n])).collect::<Vec<_>>(),
        })
    }
}

/// strace as a guard: Drop kills it (by pid) when it is still running.
struct Strace(Child);

impl Drop for Strace {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Traces `pid` while `load` runs. `Ok(Err(reason))`: not measured, and why; `Err`: interrupted.
pub fn count(
    pid: u32,
    logs: &Path,
    name: &str,
    load: impl FnOnce() -> anyhow::Result<LoadRun>,
) -> anyhow::Result<Result<SyscallCount, String>> {
    if !cmd::on_path("strace") {
        return Ok(Err("strace is not installed".to_owned()));
    }
    let summary = logs.join(format!("{name}-strace.txt"));
    let stderr = logs.join(format!("{name}-strace.log"));
    let _ = fs::remove_file(&summary);
    let log = match fs::File::create(&stderr) {
        Ok(log) => log,
        Err(e) => return Ok(Err(format!("creating {}: {e}", stderr.display()))),
    };
    let mut command = Command::new("strace");
    command
        .args(["-c", "-f", "-o"])
        .arg(&summary)
        .args(["-p", &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0);
    println!("    $ {}", cmd::display(&command));
    let child = match command.spawn() {
        Ok(child) => child,
        Err(e) => return Ok(Err(format!("could not start strace: {e}"))),
    };
    let mut tracer = Strace(child);
    let tracer_pid = tracer.0.id();
    let read_log = || fs::read_to_string(&stderr).unwrap_or_default();
    // Wait until every thread of the proxy is traced, so the phase is counted whole.
    let deadline = Instant::now() + ATTACH_TIMEOUT;
    loop {
        check_interrupted()?;
        if let Ok(Some(status)) = tracer.0.try_wait() {
            return Ok(Err(format!(
                "strace exited ({status}) before it attached to pid {pid}: {}",
                read_log().trim()
            )));
        }
        if all_threads_traced_by(pid, tracer_pid) {
            break;
        }
        if Instant::now() >= deadline {
            return Ok(Err(format!(
                "strace did not attach to every thread of pid {pid} within {ATTACH_TIMEOUT:?}: {}",
                read_log().trim()
            )));
        }
        thread::sleep(Duration::from_millis(20));
    }
    let run = load();
    // SIGINT: strace detaches and writes the summary.
    // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
    unsafe { libc::kill(tracer_pid as libc::pid_t, libc::SIGINT) };
    let deadline = Instant::now() + DETACH_TIMEOUT;
    let status = loop {
        if let Ok(Some(status)) = tracer.0.try_wait() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    check_interrupted()?;
    let run = match run {
        Ok(run) => run,
        Err(e) => return Ok(Err(format!("the traced load run failed: {e:#}"))),
    };
    if let Err(e) = run.check("traced keep-alive run") {
        return Ok(Err(format!("{e:#}")));
    }
    if status.is_none() {
        return Ok(Err(format!(
            "strace did not detach within {DETACH_TIMEOUT:?} after SIGINT"
        )));
    }
    let text = fs::read_to_string(&summary).unwrap_or_default();
    match parse_summary(&text) {
        Some((calls, top)) => Ok(Ok(SyscallCount {
            calls,
            requests: run.requests,
            top,
        })),
        None => Ok(Err(format!(
            "strace wrote no summary table to {} ({}): {}",
            summary.display(),
            text.trim(),
            read_log().trim()
        ))),
    }
}

/// Whether every thread of `pid` (its /proc tasks) is traced by `tracer`.
fn all_threads_traced_by(pid: u32, tracer: u32) -> bool {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let mut any = false;
    for task in tasks.flatten() {
        let status = fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let traced = status
            .lines()
            .find_map(|line| line.strip_prefix("TracerPid:"))
            .and_then(|v| v.trim().parse::<u32>().ok())
            == Some(tracer);
        if !traced {
            return false;
        }
        any = true;
    }
    any
}

/// `strace -c`'s table: the `total` row's calls and the per-syscall rows by calls (most
/// first, at most 10). Columns: % time, seconds, usecs/call, calls, [errors], syscall.
fn parse_summary(text: &str) -> Option<(u64, Vec<(String, u64)>)> {
    let mut total = None;
    let mut rows = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 5 || fields[0].parse::<f64>().is_err() {
            continue;
        }
        let (Some(name), Ok(calls)) = (fields.last(), fields[3].parse::<u64>()) else {
            continue;
        };
        if *name == "total" {
            total = Some(calls);
        } else {
            rows.push(((*name).to_owned(), calls));
        }
    }
    rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    rows.truncate(10);
    total.map(|t| (t, rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strace_summary_total_and_top_rows() {
        let text = "\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 41.20    0.012000           3      4000           writev
 30.00    0.009000           2      4200      1200 recvfrom
 20.00    0.006000           1      6000           epoll_wait
  8.80    0.002600          13       200           accept4
------ ----------- ----------- --------- --------- ----------------
100.00    0.029600           2     14400      1200 total
";
        let (total, top) = parse_summary(text).expect("a summary");
        assert_eq!(total, 14400);
        assert_eq!(top[0], ("epoll_wait".to_owned(), 6000));
        assert_eq!(top[1], ("recvfrom".to_owned(), 4200));
        assert_eq!(top.len(), 4);
        assert!(
            parse_summary("strace: attach: ptrace(PTRACE_SEIZE, 1): Operation not permitted\n")
                .is_none()
        );
        let count = SyscallCount {
            calls: 14400,
            requests: 1200,
            top,
        };
        assert_eq!(count.per_request(), 12.0);
    }
}
