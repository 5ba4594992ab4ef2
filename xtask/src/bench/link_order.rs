//! `cargo xtask link-order`: which functions of the release `egress` binary the waypoint runs,
//! hottest first, written to `egress-user/link-order.txt` for the linker.
//!
//! The binary has 13.5 MiB of `.text`; start-up and the request path touch about 2 MiB of it,
//! spread over nearly every page, so the kernel faults in (and counts as RSS) almost all of it.
//! egress-user/build.rs hands the file to LLD as `--symbol-ordering-file` in release builds, which
//! packs those functions together at the start of `.text`.
//!
//! How the list is made: the bench's E setup (nginx on loopback, the seed ServiceEntries and
//! policy, `egress run --workers 1`) with the waypoint under `valgrind --tool=callgrind`, driven
//! through start-up, plain and TLS-originated requests, denies, the admin endpoints, DNS, keep-
//! alive and per-request load and a SIGTERM drain. callgrind counts every instruction, so a
//! function that runs once (start-up) is listed as surely as the hot loop; sampling would miss it.
use std::{
    collections::{HashMap, HashSet},
    fmt::Write as _,
    fs,
    net::UdpSocket,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{
    Env, Plan, cgroup2_mount, check_interrupted,
    dataplane::{Capture, Dataplane, DataplaneOptions},
    http::seed_config,
    http_get, install_signal_handlers,
    load::{self, Client, Target},
    nginx::{Nginx, TLS_HOST},
    remove_dir_all, run_logged, tools,
};
use crate::{
    Workspace,
    cmd::{self, step},
    prereqs, tasks,
};

/// Where the order file lives, relative to the workspace root (build.rs reads it from there).
pub const ORDER_FILE: &str = "egress-user/link-order.txt";
/// `nm` reads the binary's symbols (also for `--check`).
const BINUTILS: &[(&str, Option<&str>)] = &[("binutils", Some("nm"))];
/// The profiler, beyond the bench's [`tools::DEBIAN_LOAD`].
const VALGRIND: &[(&str, Option<&str>)] = &[("valgrind", Some("valgrind"))];
/// callgrind runs the waypoint some 50 times slower: SIGTERM's drain and the profile dump get
/// this long.
const EXIT_GRACE: Duration = Duration::from_secs(120);
/// One curl request, under callgrind.
const CURL_TIMEOUT: Duration = Duration::from_secs(60);

pub struct LinkOrderOptions {
    /// Only report how much of the committed file the current release build still has.
    pub check: bool,
    /// Length of each load-generator run.
    pub seconds: u64,
}

pub fn link_order(ws: &Workspace, opts: &LinkOrderOptions) -> anyhow::Result<()> {
    let file = ws.root.join(ORDER_FILE);
    let egress = tasks::build(ws, true)?;
    prereqs::debian_packages(BINUTILS)?;
    let symbols = text_symbols(&egress)?;
    let previous = fs::read_to_string(&file).unwrap_or_default();
    let previous: Vec<&str> = order_names(&previous).collect();
    if opts.check {
        let found: Vec<&&str> = previous
            .iter()
            .filter(|name| symbols.contains_key(**name))
            .collect();
        let bytes: u64 = found.iter().map(|name| symbols[**name]).sum();
        println!(
            "{} of the {} functions in {ORDER_FILE} are in {} ({:.0}%, {:.2} MiB of its {:.2} MiB \
             of functions); run `cargo xtask link-order` when that drops after a dependency or \
             toolchain update",
            found.len(),
            previous.len(),
            egress.display(),
            percent(found.len(), previous.len()),
            mib(bytes),
            mib(symbols.values().sum()),
        );
        return Ok(());
    }
    if !cmd::is_root() {
        bail!(
            "`cargo xtask link-order` runs `egress run` (it attaches BPF programs to a cgroup) and \
             needs root: run `sudo -E cargo xtask link-order` (or as root); `--check` does not"
        );
    }
    install_signal_handlers();
    prereqs::debian_packages(&[tools::DEBIAN_LOAD, VALGRIND].concat())?;
    let out = ws.target_dir().join("link-order");
    remove_dir_all(&out);
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let profile = out.join("callgrind.out");
    let started = Instant::now();
    run_profile(&egress, &out, &profile, opts.seconds)?;
    let text = fs::read_to_string(&profile)
        .with_context(|| format!("reading callgrind's profile {}", profile.display()))?;
    let object = fs::canonicalize(&egress).unwrap_or(egress.clone());
    let ran = callgrind_functions(&text, &object.to_string_lossy());
    let ordered: Vec<&(String, u64)> = ran
        .iter()
        .filter(|(name, _)| symbols.contains_key(name))
        .collect();
    if ordered.len() < 100 {
        bail!(
            "callgrind saw only {} functions of {} run (of {} in its profile): the profile run \
             did not exercise the waypoint; see {}",
            ordered.len(),
            object.display(),
            ran.len(),
            out.display()
        );
    }
    let bytes: u64 = ordered.iter().map(|(name, _)| symbols[name]).sum();
    let kept = previous.iter().copied().collect::<HashSet<_>>();
    let already = ordered
        .iter()
        .filter(|(name, _)| kept.contains(name.as_str()))
        .count();
    let rustc = cmd::probe(Command::new("rustc").arg("--version")).unwrap_or_default();
    let mut body = format!(
        "# The functions of the release `egress` binary that ran while `egress run` served the\n\
         # bench's E setup under callgrind (start-up, plain and TLS-originated requests, denies,\n\
         # the admin endpoints, DNS, keep-alive and per-request load, SIGTERM), hottest first.\n\
         # egress-user/build.rs passes this file to the linker (--symbol-ordering-file) so they\n\
         # sit together at the start of .text. Written by `cargo xtask link-order` with\n\
         # {rustc}: {} functions, {:.2} MiB of {:.2} MiB.\n",
        ordered.len(),
        mib(bytes),
        mib(symbols.values().sum()),
        rustc = rustc.trim(),
    );
    for (name, _) in &ordered {
        let _ = writeln!(body, "{name}");
    }
    fs::write(&file, body).with_context(|| format!("writing {}", file.display()))?;
    step(&format!(
        "wrote {ORDER_FILE}: {} functions ({:.2} MiB of the binary's {:.2} MiB of functions), {} \
         of them in the previous file ({:.0}%), in {:.0} s; the next release build links in \
         that order",
        ordered.len(),
        mib(bytes),
        mib(symbols.values().sum()),
        already,
        percent(already, ordered.len()),
        started.elapsed().as_secs_f64()
    ));
    remove_dir_all(&out);
    Ok(())
}

/// nginx, then `egress run` under callgrind with the seed config, then the load; returns once
/// callgrind has written `profile`.
fn run_profile(egress: &Path, out: &Path, profile: &Path, seconds: u64) -> anyhow::Result<()> {
    let tools = tools::Tools {
        nginx: tools::which("nginx")?,
        wrk: tools::which("wrk")?,
        oha: PathBuf::from("oha"),
        envoy: PathBuf::from("envoy"),
        versions: serde_json::Value::Null,
    };
    let help = cmd::probe(Command::new(egress).args(["run", "--help"])).unwrap_or_default();
    let env = Env {
        egress: egress.to_owned(),
        probe: PathBuf::new(),
        dns_probe: PathBuf::new(),
        cgroup_root: cgroup2_mount().context("no cgroup2 filesystem in /proc/mounts")?,
        out: out.to_owned(),
        plan: Plan {
            quick: true,
            rounds: 1,
            run_seconds: seconds,
            rates: [0, 0],
            sweep: Vec::new(),
            deny_count: 0,
            dns_count: 0,
            configs: Vec::new(),
        },
        egress_workers: help.contains("--workers"),
        egress_capture: help.contains("--capture"),
        egress_kubernetes: help.contains("--kubernetes"),
        egress_dns: help.contains("--dns-listen"),
        tools,
    };
    step("starting nginx and `egress run` under callgrind (about 20 s to ready)");
    let nginx = Nginx::start(&env.tools.nginx, "nginx")?;
    let wrapper = [
        "valgrind".to_owned(),
        "--tool=callgrind".to_owned(),
        "--demangle=no".to_owned(),
        "--dump-instr=no".to_owned(),
        format!("--callgrind-out-file={}", profile.display()),
        format!("--log-file={}", out.join("valgrind.log").display()),
    ];
    let mut dp = Dataplane::start_wrapped(
        &env,
        &DataplaneOptions {
            name: "link-order",
            config: seed_config(&nginx),
            capture: Capture::Ebpf,
            verdict_cache: true,
            workers: Some(1),
            cpus: Some(super::SERVER_CPU),
            sockmap: true,
        },
        &wrapper,
    )?;
    step("requests: plain, TLS-originated, denied; admin endpoints; DNS");
    let curl = tools::which("curl")?;
    let log = out.join("curl.log");
    let request = |url: &str, host: Option<&str>, extra: &[&str]| -> anyhow::Result<u16> {
        let mut command = Client::Captured(&dp).command(&curl);
        command.args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "50",
        ]);
        if let Some(host) = host {
            command.args(["-H", &format!("Host: {host}")]);
        }
        command.args(extra).arg(url);
        let output = run_logged(&mut command, &log, CURL_TIMEOUT)?;
        Ok(output.trim().parse().unwrap_or(0))
    };
    let plain = format!("http://{}/get", super::http::VIP);
    let tls = format!("http://{}/get", super::http::VIP_TLS);
    let expect = |what: &str, got: u16, want: u16| -> anyhow::Result<()> {
        if got != want {
            bail!(
                "{what}: egress answered {got}, not {want}; see {}",
                log.display()
            );
        }
        Ok(())
    };
    for _ in 0..3 {
        expect(
            "plain GET /get",
            request(&plain, Some(super::http::HOST), &[])?,
            200,
        )?;
        expect("TLS GET /get", request(&tls, Some(TLS_HOST), &[])?, 200)?;
    }
    expect(
        "POST /get",
        request(&plain, Some(super::http::HOST), &["-X", "POST"])?,
        403,
    )?;
    let nope = format!("http://{}/nope", super::http::VIP);
    expect(
        "GET /nope",
        request(&nope, Some(super::http::HOST), &[])?,
        403,
    )?;
    for path in ["/stats/prometheus", "/config_dump", "/healthz/ready"] {
        let (status, _) = http_get(dp.admin, path)?;
        expect(path, status, 200)?;
    }
    if let Some(dns) = dp.dns {
        for (name, qtype) in [
            (super::http::HOST, hickory_proto::rr::RecordType::A),
            (TLS_HOST, hickory_proto::rr::RecordType::A),
            (super::http::HOST, hickory_proto::rr::RecordType::AAAA),
        ] {
            dns_query(dns, name, qtype)?;
        }
    }
    let targets = [
        (
            "plain",
            Target {
                url: plain.clone(),
                host: super::http::HOST.to_owned(),
            },
        ),
        (
            "TLS",
            Target {
                url: tls.clone(),
                host: TLS_HOST.to_owned(),
            },
        ),
    ];
    for (what, target, connections, close) in [
        ("plain keep-alive", &targets[0].1, 16, false),
        ("plain keep-alive", &targets[0].1, 64, false),
        ("TLS keep-alive", &targets[1].1, 16, false),
        ("plain Connection: close", &targets[0].1, 16, true),
        ("TLS Connection: close", &targets[1].1, 4, true),
    ] {
        check_interrupted()?;
        step(&format!(
            "wrk {what}, {connections} connections, {seconds} s"
        ));
        let run = load::wrk(
            &env,
            &Client::Captured(&dp),
            target,
            connections,
            close,
            seconds,
            &out.join("wrk.log"),
        )?;
        println!(
            "    {} requests ({:.0}/s under callgrind)",
            run.requests,
            run.rps()
        );
        run.check(what)?;
    }
    step("SIGTERM: the drain, then callgrind writes its profile");
    let status = dp.terminate(EXIT_GRACE)?;
    drop(dp);
    drop(nginx);
    if !profile.is_file() {
        bail!(
            "egress run exited ({status}) but callgrind wrote no {}; its log: {}",
            profile.display(),
            fs::read_to_string(out.join("valgrind.log")).unwrap_or_default()
        );
    }
    Ok(())
}

/// One DNS query over UDP; any well-formed answer will do (the point is the code it runs).
fn dns_query(
    server: std::net::SocketAddr,
    name: &str,
    qtype: hickory_proto::rr::RecordType,
) -> anyhow::Result<()> {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    let mut query = Message::new(0x5eed, MessageType::Query, OpCode::Query);
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(
        hickory_proto::rr::Name::from_ascii(name).context("a DNS name")?,
        qtype,
    ));
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.set_read_timeout(Some(Duration::from_secs(30)))?;
    socket.send_to(&query.to_vec()?, server)?;
    let mut buf = [0u8; 1500];
    let (len, _) = socket
        .recv_from(&mut buf)
        .with_context(|| format!("no DNS answer from {server} for {name} {qtype}"))?;
    Message::from_vec(&buf[..len]).with_context(|| format!("the DNS answer for {name} {qtype}"))?;
    Ok(())
}

/// The names an order file lists: its lines without comments and blanks.
fn order_names(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
}

/// Defined function symbols of `binary` and their sizes, from `nm`.
fn text_symbols(binary: &Path) -> anyhow::Result<HashMap<String, u64>> {
    let output = Command::new("nm")
        .args(["--defined-only", "--print-size"])
        .arg(binary)
        .output()
        .context("running nm")?;
    if !output.status.success() {
        bail!(
            "nm {} failed: {}",
            binary.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(parse_nm(&String::from_utf8_lossy(&output.stdout)))
}

/// `nm --defined-only --print-size` lines `ADDRESS SIZE TYPE NAME`: the text symbols (t, T, W).
fn parse_nm(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_address, size, kind, name) = (
                fields.next()?,
                fields.next()?,
                fields.next()?,
                fields.next()?,
            );
            matches!(kind, "t" | "T" | "W" | "w")
                .then(|| Some((name.to_owned(), u64::from_str_radix(size, 16).ok()?)))
                .flatten()
        })
        .collect()
}

/// The functions of `object` that ran in a callgrind profile (written with `--dump-instr=no`,
/// names compressed or not), with their self cost, hottest first; ties by name, so the same
/// profile always gives the same file.
fn callgrind_functions(text: &str, object: &str) -> Vec<(String, u64)> {
    /// `(id) name` defines an id, `(id)` refers to one, anything else is a plain name.
    fn resolve(table: &mut HashMap<String, String>, value: &str) -> String {
        let Some(rest) = value.strip_prefix('(') else {
            return value.to_owned();
        };
        let Some((id, name)) = rest.split_once(')') else {
            return value.to_owned();
        };
        let name = name.trim();
        if name.is_empty() {
            table.get(id).cloned().unwrap_or_default()
        } else {
            table.insert(id.to_owned(), name.to_owned());
            name.to_owned()
        }
    }
    let mut objects = HashMap::new();
    let mut names = HashMap::new();
    let mut cost: HashMap<(String, String), u64> = HashMap::new();
    let mut current: Option<(String, String)> = None;
    let mut object_now = String::new();
    let mut after_calls = false;
    for line in text.lines() {
        if let Some(value) = line.strip_prefix("ob=") {
            object_now = resolve(&mut objects, value);
        } else if let Some(value) = line.strip_prefix("cob=") {
            resolve(&mut objects, value);
        } else if let Some(value) = line.strip_prefix("fn=") {
            let key = (object_now.clone(), resolve(&mut names, value));
            cost.entry(key.clone()).or_default();
            current = Some(key);
        } else if let Some(value) = line.strip_prefix("cfn=") {
            resolve(&mut names, value);
        } else if line.starts_with("calls=") {
            after_calls = true;
        } else if line.starts_with(|c: char| c.is_ascii_digit() || "+-*".contains(c)) {
            // The line after `calls=` is the call's inclusive cost, not the function's own.
            if std::mem::take(&mut after_calls) {
                continue;
            }
            let events = line
                .split_whitespace()
                .nth(1)
                .and_then(|n| n.parse::<u64>().ok());
            if let (Some(key), Some(events)) = (&current, events) {
                *cost.entry(key.clone()).or_default() += events;
            }
        }
    }
    let mut ran: Vec<(String, u64)> = cost
        .into_iter()
        .filter(|((ob, _), _)| ob == object)
        .map(|((_, name), events)| (name, events))
        .collect();
    ran.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    ran
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn percent(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callgrind_names_are_resolved_and_call_costs_are_not_self_costs() {
        let profile = "\
version: 1
events: Ir
ob=(1) /bin/egress
fl=(1) ???
fn=(1) hot
0 100
+1 50
cob=(2) /lib/libc.so.6
cfn=(2) memcpy
calls=3 0
0 1000
fn=(3) cold
0 5
ob=(2)
fn=(2)
0 900
ob=(1)
fn=(1)
0 10
totals: 1065
";
        assert_eq!(
            callgrind_functions(profile, "/bin/egress"),
            [("hot".to_owned(), 160), ("cold".to_owned(), 5)]
        );
        assert_eq!(
            callgrind_functions(profile, "/lib/libc.so.6"),
            [("memcpy".to_owned(), 900)]
        );
    }

    #[test]
    fn nm_gives_text_symbols_with_sizes() {
        let symbols = parse_nm(
            "0000000000001000 0000000000000020 T main\n\
             0000000000002000 0000000000000010 t _ZN3foo3bar17h0123456789abcdefE\n\
             0000000000003000 0000000000000008 D data\n\
             0000000000004000 T no_size\n",
        );
        assert_eq!(symbols.len(), 2);
        assert_eq!(symbols["main"], 0x20);
        assert_eq!(symbols["_ZN3foo3bar17h0123456789abcdefE"], 0x10);
    }

    #[test]
    fn order_files_skip_comments_and_blanks() {
        let names: Vec<&str> = order_names("# header\n\nfoo\n  bar  \n#baz\n").collect();
        assert_eq!(names, ["foo", "bar"]);
    }
}
