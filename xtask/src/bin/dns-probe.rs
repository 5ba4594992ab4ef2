//! `dns-probe --server IP:PORT --name NAME --count N [--expect IP] [--timeout-ms MS]
//! [--max-seconds S]`: N sequential DNS queries (A, recursion desired) over one connected UDP
//! socket, as glibc's stub resolver asks, each timed from `send()` until its answer arrived;
//! one JSON line on stdout.
//!
//! Queries and answers are encoded and decoded with hickory-proto. An answer counts only when
//! its id is the query's, its rcode is NOERROR and (with `--expect`) one of its A records is
//! that address; anything else is counted as `wrong`, a query without an answer in time as a
//! `timeout` (a late answer to it is dropped when it arrives). Only good answers' times go into
//! the percentiles. The run stops at `--max-seconds` or after 50 timeouts, whichever is first.
use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    process::ExitCode,
    str::FromStr as _,
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{Name, RData, RecordType, rdata::A},
};
use serde_json::json;

const USAGE: &str = "usage: dns-probe --server IP:PORT --name NAME --count N [--expect IP] \
                     [--timeout-ms MS (1000)] [--max-seconds S (120)]";
/// A probe that met this many timeouts measures a broken path, not a slow one: it stops.
const MAX_TIMEOUTS: usize = 50;

struct Args {
    server: SocketAddr,
    name: Name,
    count: usize,
    expect: Option<Ipv4Addr>,
    timeout: Duration,
    max: Duration,
}

fn parse() -> Result<Args, String> {
    let mut server = None;
    let mut name = None;
    let mut count = None;
    let mut expect = None;
    let mut timeout = Duration::from_millis(1000);
    let mut max = Duration::from_secs(120);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--server" => {
                let v = value()?;
                server = Some(v.parse().map_err(|e| format!("--server {v:?}: {e}"))?);
            }
            "--name" => {
                let v = value()?;
                let fqdn = format!("{}.", v.trim_end_matches('.'));
                name = Some(Name::from_str(&fqdn).map_err(|e| format!("--name {v:?}: {e}"))?);
            }
            "--count" => {
                let v = value()?;
                count = Some(v.parse().map_err(|e| format!("--count {v:?}: {e}"))?);
            }
            "--expect" => {
                let v = value()?;
                expect = Some(v.parse().map_err(|e| format!("--expect {v:?}: {e}"))?);
            }
            "--timeout-ms" => {
                let v = value()?;
                timeout = Duration::from_millis(
                    v.parse().map_err(|e| format!("--timeout-ms {v:?}: {e}"))?,
                );
            }
            "--max-seconds" => {
                let v = value()?;
                max = Duration::from_secs(
                    v.parse().map_err(|e| format!("--max-seconds {v:?}: {e}"))?,
                );
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Args {
        server: server.ok_or("--server is required")?,
        name: name.ok_or("--name is required")?,
        count: count.ok_or("--count is required")?,
        expect,
        timeout,
        max,
    })
}

/// What became of one query.
enum Outcome {
    Answered(Duration),
    Wrong(String),
    Timeout,
}

fn ask(socket: &UdpSocket, args: &Args, id: u16, buf: &mut [u8]) -> Result<Outcome, String> {
    let mut query = Message::new(id, MessageType::Query, OpCode::Query);
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(args.name.clone(), RecordType::A));
    let bytes = query
        .to_vec()
        .map_err(|e| format!("encoding the query: {e}"))?;
    let started = Instant::now();
    socket
        .send(&bytes)
        .map_err(|e| format!("send to {}: {e}", args.server))?;
    loop {
        let left = args.timeout.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Ok(Outcome::Timeout);
        }
        socket
            .set_read_timeout(Some(left))
            .map_err(|e| format!("setting the read timeout: {e}"))?;
        let len = match socket.recv(buf) {
            Ok(len) => len,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(Outcome::Timeout);
            }
            Err(e) => return Ok(Outcome::Wrong(format!("recv: {e}"))),
        };
        let elapsed = started.elapsed();
        let Ok(reply) = Message::from_vec(&buf[..len]) else {
            return Ok(Outcome::Wrong(
                "an answer hickory-proto cannot decode".into(),
            ));
        };
        if reply.metadata.id != id {
            // A late answer to an earlier query that timed out.
            continue;
        }
        if reply.metadata.response_code != ResponseCode::NoError {
            return Ok(Outcome::Wrong(format!(
                "rcode {}",
                reply.metadata.response_code
            )));
        }
        if let Some(expect) = args.expect
            && !reply.answers.iter().any(|r| r.data == RData::A(A(expect)))
        {
            return Ok(Outcome::Wrong(format!("no A record {expect}")));
        }
        return Ok(Outcome::Answered(elapsed));
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

fn main() -> ExitCode {
    let args = match parse() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("dns-probe: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let socket = match UdpSocket::bind("0.0.0.0:0").and_then(|s| {
        s.connect(args.server)?;
        Ok(s)
    }) {
        Ok(socket) => socket,
        Err(e) => {
            eprintln!("dns-probe: a UDP socket connected to {}: {e}", args.server);
            return ExitCode::from(1);
        }
    };
    let started = Instant::now();
    let mut buf = vec![0u8; 4096];
    let mut times = Vec::with_capacity(args.count);
    let (mut timeouts, mut wrong) = (0usize, 0usize);
    let mut first_wrong = None;
    let mut sent = 0usize;
    for i in 0..args.count {
        if started.elapsed() >= args.max || timeouts >= MAX_TIMEOUTS {
            break;
        }
        sent += 1;
        match ask(&socket, &args, i as u16, &mut buf) {
            Ok(Outcome::Answered(d)) => times.push(d.as_secs_f64() * 1e6),
            Ok(Outcome::Timeout) => timeouts += 1,
            Ok(Outcome::Wrong(why)) => {
                wrong += 1;
                first_wrong.get_or_insert(why);
            }
            Err(e) => {
                eprintln!("dns-probe: {e}");
                return ExitCode::from(1);
            }
        }
    }
    times.sort_by(f64::total_cmp);
    let mean = if times.is_empty() {
        0.0
    } else {
        times.iter().sum::<f64>() / times.len() as f64
    };
    println!(
        "{}",
        json!({
            "server": args.server.to_string(),
            "name": args.name.to_string(),
            "count": args.count,
            "sent": sent,
            "answered": times.len(),
            "timeouts": timeouts,
            "wrong": wrong,
            "first_wrong": first_wrong,
            "timeout_ms": args.timeout.as_millis() as u64,
            "seconds": started.elapsed().as_secs_f64(),
            "p50_us": percentile(&times, 50.0),
            "p90_us": percentile(&times, 90.0),
            "p99_us": percentile(&times, 99.0),
            "min_us": times.first().copied().unwrap_or(0.0),
            "max_us": times.last().copied().unwrap_or(0.0),
            "mean_us": mean,
        })
    );
    ExitCode::SUCCESS
}
