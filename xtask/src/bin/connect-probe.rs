//! `connect-probe --addr IP:PORT --count N --mode kernel|waypoint`: N sequential TCP connects to
//! a denied destination, each timed until the deny is observed, as JSON on stdout.
//!
//! - `kernel`: the deny is `connect()` failing with EPERM (the kernel verdict cache refused it).
//!   A connect that succeeds, or fails any other way, counts as an error.
//! - `waypoint`: the deny is the connect succeeding (to the waypoint) and the first `read()`
//!   returning EOF or a reset (the waypoint closes a denied TCP connection). Data, a timeout or
//!   a failed connect count as errors.
//!
//! Only errors' times are left out of the percentiles. std only, so it starts fast and measures
//! nothing but the syscalls.
use std::{
    collections::BTreeMap,
    io::{ErrorKind, Read as _},
    net::{SocketAddr, TcpStream},
    process::ExitCode,
    time::{Duration, Instant},
};

const USAGE: &str = "usage: connect-probe --addr IP:PORT --count N --mode kernel|waypoint \
                     [--timeout-ms MS (1000)] [--max-seconds S (300)]";
/// EPERM on Linux.
const EPERM: i32 = 1;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Kernel,
    Waypoint,
}

struct Args {
    addr: SocketAddr,
    count: usize,
    mode: Mode,
    timeout: Duration,
    max: Duration,
}

fn parse() -> Result<Args, String> {
    let mut addr = None;
    let mut count = None;
    let mut mode = None;
    let mut timeout = Duration::from_millis(1000);
    let mut max = Duration::from_secs(300);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" => addr = Some(value()?.parse().map_err(|e| format!("--addr: {e}"))?),
            "--count" => count = Some(value()?.parse().map_err(|e| format!("--count: {e}"))?),
            "--mode" => {
                mode = Some(match value()?.as_str() {
                    "kernel" => Mode::Kernel,
                    "waypoint" => Mode::Waypoint,
                    other => return Err(format!("--mode: {other:?} is not kernel|waypoint")),
                })
            }
            "--timeout-ms" => {
                timeout = Duration::from_millis(
                    value()?.parse().map_err(|e| format!("--timeout-ms: {e}"))?,
                )
            }
            "--max-seconds" => {
                max = Duration::from_secs(
                    value()?
                        .parse()
                        .map_err(|e| format!("--max-seconds: {e}"))?,
                )
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Args {
        addr: addr.ok_or("--addr is required")?,
        count: count.ok_or("--count is required")?,
        mode: mode.ok_or("--mode is required")?,
        timeout,
        max,
    })
}

/// One connect: `Ok(elapsed)` when the deny was observed as `mode` expects, `Err(kind)` otherwise.
fn attempt(args: &Args) -> Result<Duration, String> {
    let start = Instant::now();
    let connected = TcpStream::connect_timeout(&args.addr, args.timeout);
    match (args.mode, connected) {
        (Mode::Kernel, Err(e)) if e.raw_os_error() == Some(EPERM) => Ok(start.elapsed()),
        (Mode::Kernel, Err(e)) => Err(format!("connect: {}", kind(&e))),
        (Mode::Kernel, Ok(_)) => Err("connected".to_owned()),
        (Mode::Waypoint, Err(e)) => Err(format!("connect: {}", kind(&e))),
        (Mode::Waypoint, Ok(mut stream)) => {
            stream
                .set_read_timeout(Some(args.timeout))
                .map_err(|e| format!("set_read_timeout: {}", kind(&e)))?;
            let mut buf = [0u8; 512];
            match stream.read(&mut buf) {
                Ok(0) => Ok(start.elapsed()),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => Ok(start.elapsed()),
                Ok(_) => Err("data received".to_owned()),
                Err(e) => Err(format!("read: {}", kind(&e))),
            }
        }
    }
}

fn kind(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => format!("os error {code} ({:?})", e.kind()),
        None => format!("{:?}", e.kind()),
    }
}

/// The `p`-th percentile (nearest rank) of sorted microseconds.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(args) => args,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("connect-probe: {message}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let mut micros = Vec::with_capacity(args.count);
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    let mut attempted = 0;
    while attempted < args.count && started.elapsed() < args.max {
        attempted += 1;
        match attempt(&args) {
            Ok(elapsed) => micros.push(elapsed.as_nanos() as f64 / 1000.0),
            Err(kind) => *errors.entry(kind).or_default() += 1,
        }
    }
    let wall = started.elapsed();
    micros.sort_by(f64::total_cmp);
    let error_total: usize = errors.values().sum();
    let error_kinds: Vec<String> = errors
        .iter()
        .map(|(kind, n)| format!("{}: {n}", json_string(kind)))
        .collect();
    let mean = if micros.is_empty() {
        0.0
    } else {
        micros.iter().sum::<f64>() / micros.len() as f64
    };
    println!(
        "{{\"mode\": {}, \"addr\": {}, \"requested\": {}, \"count\": {attempted}, \
         \"denied\": {}, \"errors\": {error_total}, \"error_kinds\": {{{}}}, \
         \"p50_us\": {:.2}, \"p90_us\": {:.2}, \"p99_us\": {:.2}, \"max_us\": {:.2}, \
         \"min_us\": {:.2}, \"mean_us\": {mean:.2}, \"wall_s\": {:.3}}}",
        json_string(match args.mode {
            Mode::Kernel => "kernel",
            Mode::Waypoint => "waypoint",
        }),
        json_string(&args.addr.to_string()),
        args.count,
        micros.len(),
        error_kinds.join(", "),
        percentile(&micros, 50.0),
        percentile(&micros, 90.0),
        percentile(&micros, 99.0),
        micros.last().copied().unwrap_or(0.0),
        micros.first().copied().unwrap_or(0.0),
        wall.as_secs_f64(),
    );
    if attempted < args.count {
        eprintln!(
            "connect-probe: stopped after {attempted} of {} connects ({:?} limit)",
            args.count, args.max
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
