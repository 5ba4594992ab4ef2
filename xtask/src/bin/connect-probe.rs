//! `connect-probe --addr IP:PORT --count N --mode kernel|waypoint [--send] [--cpu C]`: N
//! sequential TCP connects to a denied destination, each timed, as one JSON line on stdout.
//!
//! Two spans per connect, both reported:
//! - **deny**: what the policy costs the caller.
//!   - `kernel`: the `connect()` syscall alone, which must fail with EPERM (the kernel verdict
//!     cache refused it). A connect that succeeds, or fails any other way, is an error.
//!   - `waypoint`: from `connect()` until the deny is seen: the connect succeeds (to the proxy)
//!     and the first `read()` returns EOF or a reset. With `--send`, one small request line is
//!     written first (a proxy that decides on the first byte, like Envoy's RBAC network filter,
//!     needs it). Data, a timeout or a failed connect are errors.
//! - **full**: from `socket()` to the end of `close()`.
//!
//! Only errors' times are left out of the percentiles. Raw syscalls through libc, so nothing but
//! the syscalls is timed; `--cpu` pins the probe to one CPU first.
use std::{
    collections::BTreeMap,
    net::{SocketAddr, SocketAddrV4},
    process::ExitCode,
    time::{Duration, Instant},
};

const USAGE: &str = "usage: connect-probe --addr IP:PORT --count N --mode kernel|waypoint \
                     [--send] [--cpu C] [--timeout-ms MS (1000)] [--max-seconds S (300)]";
/// What `--send` writes: the start of an HTTP request, enough for any first-byte decision.
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\n";

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Kernel,
    Waypoint,
}

struct Args {
    addr: SocketAddrV4,
    count: usize,
    mode: Mode,
    send: bool,
    cpu: Option<usize>,
    timeout: Duration,
    max: Duration,
}

fn parse() -> Result<Args, String> {
    let mut addr = None;
    let mut count = None;
    let mut mode = None;
    let mut send = false;
    let mut cpu = None;
    let mut timeout = Duration::from_millis(1000);
    let mut max = Duration::from_secs(300);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" => {
                addr = Some(match value()?.parse() {
                    Ok(SocketAddr::V4(a)) => a,
                    Ok(SocketAddr::V6(a)) => return Err(format!("--addr: {a} is not IPv4")),
                    Err(e) => return Err(format!("--addr: {e}")),
                })
            }
            "--count" => count = Some(value()?.parse().map_err(|e| format!("--count: {e}"))?),
            "--mode" => {
                mode = Some(match value()?.as_str() {
                    "kernel" => Mode::Kernel,
                    "waypoint" => Mode::Waypoint,
                    other => return Err(format!("--mode: {other:?} is not kernel|waypoint")),
                })
            }
            "--send" => send = true,
            "--cpu" => cpu = Some(value()?.parse().map_err(|e| format!("--cpu: {e}"))?),
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
        send,
        cpu,
        timeout,
        max,
    })
}

/// A socket that is closed when dropped.
struct Socket(libc::c_int);

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: the fd is ours and closed once.
        unsafe { libc::close(self.0) };
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// "Operation not permitted (os error 1)".
fn name(code: i32) -> String {
    std::io::Error::from_raw_os_error(code).to_string()
}

/// `connect()` and, in waypoint mode, `send()`/`read()` until the deny; the deny span.
fn deny(args: &Args, fd: &Socket, sockaddr: &libc::sockaddr_in) -> Result<Duration, String> {
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let start = Instant::now();
    // SAFETY: sockaddr is a valid sockaddr_in of `len` bytes.
    let rc = unsafe { libc::connect(fd.0, (sockaddr as *const libc::sockaddr_in).cast(), len) };
    let connect_errno = if rc == 0 { 0 } else { errno() };
    match args.mode {
        Mode::Kernel => {
            let elapsed = start.elapsed();
            match connect_errno {
                libc::EPERM => Ok(elapsed),
                0 => Err("connected".to_owned()),
                code => Err(format!("connect: {}", name(code))),
            }
        }
        Mode::Waypoint => {
            if connect_errno != 0 {
                return Err(format!("connect: {}", name(connect_errno)));
            }
            if args.send {
                // SAFETY: REQUEST is valid for its length; MSG_NOSIGNAL: no SIGPIPE.
                let n = unsafe {
                    libc::send(
                        fd.0,
                        REQUEST.as_ptr().cast(),
                        REQUEST.len(),
                        libc::MSG_NOSIGNAL,
                    )
                };
                if n < 0 {
                    return match errno() {
                        // Closed before our request went out: the deny, seen early.
                        libc::EPIPE | libc::ECONNRESET => Ok(start.elapsed()),
                        code => Err(format!("send: {}", name(code))),
                    };
                }
            }
            let mut buf = [0u8; 512];
            // SAFETY: buf is valid for its length.
            let n = unsafe { libc::read(fd.0, buf.as_mut_ptr().cast(), buf.len()) };
            match n {
                0 => Ok(start.elapsed()),
                n if n > 0 => Err("data received".to_owned()),
                _ => match errno() {
                    libc::ECONNRESET => Ok(start.elapsed()),
                    libc::EAGAIN => Err("read: timeout".to_owned()),
                    code => Err(format!("read: {}", name(code))),
                },
            }
        }
    }
}

/// One connect: (deny span, full span) when the deny was observed as `mode` expects.
fn attempt(args: &Args, sockaddr: &libc::sockaddr_in) -> Result<(Duration, Duration), String> {
    let start = Instant::now();
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!("socket: {}", name(errno())));
    }
    let fd = Socket(fd);
    // SO_SNDTIMEO bounds a blocking connect(), SO_RCVTIMEO the read.
    let tv = libc::timeval {
        tv_sec: args.timeout.as_secs() as libc::time_t,
        tv_usec: args.timeout.subsec_micros() as libc::suseconds_t,
    };
    for opt in [libc::SO_SNDTIMEO, libc::SO_RCVTIMEO] {
        // SAFETY: tv is a valid timeval for this option.
        unsafe {
            libc::setsockopt(
                fd.0,
                libc::SOL_SOCKET,
                opt,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
    }
    let denied = deny(args, &fd, sockaddr);
    drop(fd);
    let full = start.elapsed();
    denied.map(|d| (d, full))
}

/// Pins this process to `cpu`.
fn pin(cpu: usize) -> Result<(), String> {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(format!("--cpu {cpu}: {}", name(errno())));
        }
    }
    Ok(())
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

/// `"NAME_p50_us": .., "NAME_p90_us": .., ...` of sorted microseconds.
fn spans(name: &str, sorted: &[f64]) -> String {
    let mean = if sorted.is_empty() {
        0.0
    } else {
        sorted.iter().sum::<f64>() / sorted.len() as f64
    };
    format!(
        "\"{name}_p50_us\": {:.2}, \"{name}_p90_us\": {:.2}, \"{name}_p99_us\": {:.2}, \
         \"{name}_max_us\": {:.2}, \"{name}_min_us\": {:.2}, \"{name}_mean_us\": {mean:.2}",
        percentile(sorted, 50.0),
        percentile(sorted, 90.0),
        percentile(sorted, 99.0),
        sorted.last().copied().unwrap_or(0.0),
        sorted.first().copied().unwrap_or(0.0),
    )
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
    if let Some(cpu) = args.cpu
        && let Err(message) = pin(cpu)
    {
        eprintln!("connect-probe: {message}");
        return ExitCode::from(2);
    }
    // SAFETY: sockaddr_in is plain data.
    let mut sockaddr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sockaddr.sin_family = libc::AF_INET as libc::sa_family_t;
    sockaddr.sin_port = args.addr.port().to_be();
    sockaddr.sin_addr.s_addr = u32::from(*args.addr.ip()).to_be();

    let started = Instant::now();
    let mut deny_us = Vec::with_capacity(args.count);
    let mut full_us = Vec::with_capacity(args.count);
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    let mut attempted = 0;
    while attempted < args.count && started.elapsed() < args.max {
        attempted += 1;
        match attempt(&args, &sockaddr) {
            Ok((deny, full)) => {
                deny_us.push(deny.as_nanos() as f64 / 1000.0);
                full_us.push(full.as_nanos() as f64 / 1000.0);
            }
            Err(kind) => *errors.entry(kind).or_default() += 1,
        }
    }
    let wall = started.elapsed();
    deny_us.sort_by(f64::total_cmp);
    full_us.sort_by(f64::total_cmp);
    let error_total: usize = errors.values().sum();
    let error_kinds: Vec<String> = errors
        .iter()
        .map(|(kind, n)| format!("{}: {n}", json_string(kind)))
        .collect();
    // SAFETY: sched_getcpu has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    println!(
        "{{\"mode\": {}, \"addr\": {}, \"send\": {}, \"cpu\": {cpu}, \"requested\": {}, \
         \"count\": {attempted}, \"denied\": {}, \"errors\": {error_total}, \
         \"error_kinds\": {{{}}}, {}, {}, \"wall_s\": {:.3}}}",
        json_string(match args.mode {
            Mode::Kernel => "kernel",
            Mode::Waypoint => "waypoint",
        }),
        json_string(&args.addr.to_string()),
        args.send,
        args.count,
        deny_us.len(),
        error_kinds.join(", "),
        spans("deny", &deny_us),
        spans("full", &full_us),
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
