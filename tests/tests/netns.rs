//! Network namespaces (Kubernetes mode, one per pod). Loopback addresses and ports repeat across
//! namespaces, so the kernel keys every redirected client by (netns cookie, ip, port); a
//! namespace where no waypoint listens fails closed; and enrollment-only capture leaves every
//! task below no enrolled anchor alone.
//!
//! The agent's per-pod listeners come with Kubernetes mode; until then these tests put a plain
//! listener of their own where the agent's would be, in namespaces they make, and check what
//! the real kernel programs did. Addresses inside the namespaces are from 198.18.0.0/15.
use std::{
    io::{BufRead, BufReader, ErrorKind},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use egress_tests::*;

/// The ServiceEntry address the namespaces' clients dial (routed nowhere).
const SE_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const SE_PORT: u16 = 80;
/// The local port the clients of both namespaces bind.
const CLIENT_PORT: u16 = 40000;
/// Bound on every wait for a listener.
const WAIT: Duration = Duration::from_secs(5);
/// How long a listener that must stay silent is watched.
const QUIET: Duration = Duration::from_millis(300);
/// Bound on `ip` and `bpftool` commands.
const TOOL_TIMEOUT: Duration = Duration::from_secs(10);

/// Curl with time bounds, through an uncaptured `ip netns exec` when run by a workload.
const CURL: [&str; 6] = ["curl", "-sS", "--connect-timeout", "5", "--max-time", "10"];

fn tool(program: &str, args: &[&str]) -> Output {
    run_bounded(Command::new(program).args(args), TOOL_TIMEOUT)
}

/// A network namespace the test made, with `lo` up; deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Self {
        let name = format!("egress-test-{}-{tag}", std::process::id());
        // A namespace of a killed earlier run of this test process id is replaced.
        let _ = tool("ip", &["netns", "del", &name]);
        tool("ip", &["netns", "add", &name]).expect_success("ip netns add");
        let netns = Netns { name };
        tool("ip", &["-n", &netns.name, "link", "set", "lo", "up"]).expect_success("lo up");
        netns
    }

    /// Puts `addr` on the namespace's `lo`, so that it is reachable there.
    fn add_address(&self, addr: Ipv4Addr) {
        tool(
            "ip",
            &[
                "-n",
                &self.name,
                "addr",
                "add",
                &format!("{addr}/32"),
                "dev",
                "lo",
            ],
        )
        .expect_success("ip addr add");
    }

    /// `netns exec NAME ARGS...`: the arguments of `ip` that run ARGS in this namespace.
    fn exec<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut all = vec!["netns", "exec", self.name.as_str()];
        all.extend_from_slice(args);
        all
    }

    /// A TCP listener on `addr` inside this namespace, started by the test (in no captured
    /// cgroup).
    fn listen(&self, addr: SocketAddrV4) -> NsListener {
        NsListener::start(self, addr)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let out = tool("ip", &["netns", "del", &self.name]);
        if !out.success() {
            eprintln!("removing network namespace {} failed: {out:?}", self.name);
        }
    }
}

/// Listens, prints its namespace's cookie (`SO_NETNS_COOKIE`), then one line per accepted
/// connection, which it closes, without an answer, once it has read what the client sent (so
/// the client sees an orderly close, not a reset). Exits on its own after a minute should it
/// be leaked.
const LISTENER: &str = r#"
import signal, socket, struct, sys
signal.alarm(60)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(64)
print("cookie", struct.unpack("Q", s.getsockopt(socket.SOL_SOCKET, 71, 8))[0], flush=True)
while True:
    c, peer = s.accept()
    print("accepted", peer[0], peer[1], flush=True)
    c.settimeout(2)
    try:
        c.recv(65536)
    except OSError:
        pass
    c.close()
"#;

/// A listener process in a namespace and what it reported.
struct NsListener {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// The namespace's cookie, as `SO_NETNS_COOKIE` reads it on the listener.
    cookie: u64,
}

impl NsListener {
    fn start(netns: &Netns, addr: SocketAddrV4) -> Self {
        let (ip, port) = (addr.ip().to_string(), addr.port().to_string());
        let mut child = Command::new("ip")
            .args(netns.exec(&["python3", "-c", LISTENER, &ip, &port]))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting a listener in the namespace");
        let stdout = child.stdout.take().expect("the listener's stdout");
        let (send, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let mut listener = NsListener {
            child,
            lines,
            cookie: 0,
        };
        let first = listener
            .next_line()
            .expect("the listener reports its cookie");
        listener.cookie = first
            .strip_prefix("cookie ")
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("not a cookie line: {first}"));
        listener
    }

    fn next_line(&self) -> Option<String> {
        self.lines.recv_timeout(WAIT).ok()
    }

    /// The peer of the next accepted connection.
    #[track_caller]
    fn accepted(&self) -> SocketAddrV4 {
        let line = self
            .next_line()
            .expect("the listener accepted a connection in time");
        let mut words = line.split_whitespace().skip(1);
        let ip = words.next().and_then(|w| w.parse().ok());
        let port = words.next().and_then(|w| w.parse().ok());
        match (ip, port) {
            (Some(ip), Some(port)) => SocketAddrV4::new(ip, port),
            _ => panic!("not an accept line: {line}"),
        }
    }

    #[track_caller]
    fn assert_nothing_accepted(&self) {
        if let Ok(line) = self.lines.recv_timeout(QUIET) {
            panic!("the listener accepted a connection it must never see: {line}");
        }
    }
}

impl Drop for NsListener {
    fn drop(&mut self) {
        // Our own child (ip netns exec execs python3 in place).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The netns cookie of the test process's own (the host's) network namespace.
fn host_cookie() -> u64 {
    let socket = TcpListener::bind("127.0.0.1:0").expect("a socket in the host namespace");
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: a writable u64 of `len` bytes; the socket is open for the call.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::SOL_SOCKET,
            71, // SO_NETNS_COOKIE
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    assert_eq!(
        rc,
        0,
        "SO_NETNS_COOKIE: {}",
        std::io::Error::last_os_error()
    );
    cookie
}

fn listen_addr(dp: &Dataplane) -> SocketAddrV4 {
    match dp.listen_addr() {
        SocketAddr::V4(addr) => addr,
        other => panic!("the dataplane listens on IPv4, not {other}"),
    }
}

fn dataplane() -> Dataplane {
    Dataplane::builder()
        .service_entry(&yaml::service_entry(
            "external",
            "external.test",
            SocketAddr::new(SE_ADDR.into(), SE_PORT),
        ))
        .start()
}

/// One entry of the kernel's peer map, from bpftool's BTF-formatted dump.
#[derive(Debug, PartialEq, Eq)]
struct Peer {
    netns_cookie: u64,
    addr: Vec<u64>,
    port: u64,
    dst_addr: Vec<u64>,
    dst_port: u64,
}

fn peers(dp: &Dataplane) -> Vec<Peer> {
    let map = dp.pin_dir().join(egress_common::names::MAP_PEERS);
    let dump = tool(
        "bpftool",
        &["-j", "map", "dump", "pinned", &map.to_string_lossy()],
    )
    .expect_success("bpftool map dump");
    let entries: serde_json::Value = serde_json::from_str(&dump.stdout).expect("bpftool JSON");
    let number = |v: &serde_json::Value, field: &str| {
        v[field]
            .as_u64()
            .unwrap_or_else(|| panic!("no number {field} in {v}"))
    };
    let bytes = |v: &serde_json::Value, field: &str| -> Vec<u64> {
        v[field]
            .as_array()
            .unwrap_or_else(|| panic!("no array {field} in {v}"))
            .iter()
            .filter_map(serde_json::Value::as_u64)
            .collect()
    };
    entries
        .as_array()
        .expect("a JSON array of entries")
        .iter()
        .map(|entry| {
            // With BTF, bpftool puts the named fields under "formatted".
            let entry = entry.get("formatted").unwrap_or(entry);
            let (key, value) = (&entry["key"], &entry["value"]);
            Peer {
                netns_cookie: number(key, "netns_cookie"),
                addr: bytes(key, "addr"),
                port: number(key, "port"),
                dst_addr: bytes(value, "dst_addr"),
                dst_port: number(value, "dst_port"),
            }
        })
        .collect()
}

#[test]
fn clients_of_two_namespaces_on_one_local_port_are_recorded_apart() {
    if !require_privileges() || !require_tools(&["ip", "bpftool", "python3", "curl"]) {
        return;
    }
    let dp = dataplane();
    let listen = listen_addr(&dp);
    let (a, b) = (Netns::new("a"), Netns::new("b"));
    // Where the agent's listener in each pod's namespace will be.
    let (in_a, in_b) = (a.listen(listen), b.listen(listen));
    let host = host_cookie();
    assert!(
        in_a.cookie != in_b.cookie && in_a.cookie != host && in_b.cookie != host,
        "three namespaces, three cookies: a {} b {} host {host}",
        in_a.cookie,
        in_b.cookie
    );

    let local_port = CLIENT_PORT.to_string();
    let url = format!("http://{SE_ADDR}:{SE_PORT}/");
    for (netns, listener) in [(&a, &in_a), (&b, &in_b)] {
        let mut args = CURL.to_vec();
        args.extend(["--local-port", &local_port, &url]);
        let out = dp.exec("default", "sleep").run("ip", &netns.exec(&args));
        // Rewritten to the listener of the client's own namespace, which closes without a word.
        assert_eq!(
            out.code,
            Some(52),
            "connected, then an empty reply: {out:?}"
        );
        assert_eq!(
            listener.accepted(),
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, CLIENT_PORT),
            "the listener in {} saw the client",
            netns.name
        );
    }

    // Same client address and port twice, told apart by the namespace (nothing took these
    // entries: the agent's listener would, on accept).
    let peers = peers(&dp);
    for listener in [&in_a, &in_b] {
        let want = Peer {
            netns_cookie: listener.cookie,
            addr: vec![127, 0, 0, 1],
            port: u64::from(CLIENT_PORT),
            dst_addr: SE_ADDR.octets().iter().map(|&b| u64::from(b)).collect(),
            dst_port: u64::from(SE_PORT),
        };
        assert!(peers.contains(&want), "no peer entry {want:?} in {peers:?}");
    }
}

#[test]
fn a_namespace_without_a_waypoint_listener_is_refused_never_direct() {
    if !require_privileges() || !require_tools(&["ip", "python3", "curl"]) {
        return;
    }
    let dp = dataplane();
    let netns = Netns::new("c");
    // In this namespace the ServiceEntry address is reachable directly.
    netns.add_address(SE_ADDR);
    let direct = netns.listen(SocketAddrV4::new(SE_ADDR, SE_PORT));
    let url = format!("http://{SE_ADDR}:{SE_PORT}/");
    let mut args = CURL.to_vec();
    args.push(&url);

    // Outside the captured cgroup, a client of the namespace gets there.
    let control = tool("ip", &netns.exec(&args));
    assert_eq!(
        control.code,
        Some(52),
        "reached the direct listener: {control:?}"
    );
    direct.accepted();

    // Captured: rewritten to the waypoint address, where nothing listens in this namespace.
    let redirected = dp.bpf_counter("redirected_ipv4");
    let out = dp.exec("default", "sleep").run("ip", &netns.exec(&args));
    assert_eq!(out.code, Some(7), "connection refused: {out:?}");
    assert_eq!(dp.bpf_counter("redirected_ipv4"), redirected + 1);
    direct.assert_nothing_accepted();
}

// --- Enrollment-only capture, at the kernel level ---------------------------------------------
//
// Kubernetes mode switches it on and registers each enrolled pod's cgroup as an anchor with
// IDENTITY_F_ENROLLED. Without Kubernetes (and without a user-facing switch for it), this test
// loads the real programs with `egress __install` and writes those two map entries itself, as
// the agent does through `Capture::set_enrolled_only` and `Capture::register_anchor`.

/// The kernel programs attached to a cgroup of their own, with pins of their own; removed on
/// drop.
struct Kernel {
    cgroup: PathBuf,
    pins: PathBuf,
    children: Vec<PathBuf>,
}

impl Kernel {
    fn install(tag: &str) -> Self {
        let root = cgroup2_mount().expect("a cgroup2 mount (require_privileges checks)");
        let name = format!("egress-test-{}-{tag}", std::process::id());
        let kernel = Kernel {
            cgroup: root.join(&name),
            pins: Path::new("/sys/fs/bpf").join(&name),
            children: Vec::new(),
        };
        std::fs::create_dir_all(&kernel.cgroup).expect("creating the captured cgroup");
        let (cgroup, pins) = (
            kernel.cgroup.to_string_lossy(),
            kernel.pins.to_string_lossy(),
        );
        run_bounded(
            Command::new(egress_bin()).args([
                "__install",
                "--cgroup",
                &cgroup,
                "--bpffs",
                &pins,
                "--programs",
                "attach",
                "--sockmap",
                "off",
            ]),
            TOOL_TIMEOUT * 6,
        )
        .expect_success("egress __install");
        kernel
    }

    /// A cgroup below the captured one; returns its path and id.
    fn child(&mut self, name: &str) -> (PathBuf, u64) {
        let path = self.cgroup.join(name);
        std::fs::create_dir(&path).expect("creating a child cgroup");
        self.children.push(path.clone());
        let id = std::fs::metadata(&path).expect("cgroup metadata").ino();
        (path, id)
    }

    fn update(&self, map: &str, key: &[u8], value: &[u8]) {
        let path = self.pins.join(map);
        let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>();
        let (key, value) = (hex(key), hex(value));
        let path = path.to_string_lossy();
        let mut args = vec!["map", "update", "pinned", &path, "key", "hex"];
        args.extend(key.iter().map(String::as_str));
        args.extend(["value", "hex"]);
        args.extend(value.iter().map(String::as_str));
        tool("bpftool", &args).expect_success("bpftool map update");
    }

    /// `addr` is a (non-HTTP) ServiceEntry address and port.
    fn service(&self, addr: SocketAddrV4, service_id: u32) {
        let mut key = (32u32 + 32).to_le_bytes().to_vec(); // prefix: port + pad + address
        key.extend(addr.port().to_be_bytes());
        key.extend([0, 0]);
        key.extend(addr.ip().octets());
        let mut value = service_id.to_le_bytes().to_vec();
        value.extend(0u32.to_le_bytes());
        self.update(egress_common::names::MAP_SERVICES4, &key, &value);
    }

    fn anchor(&self, cgroup_id: u64, flags: u32) {
        let mut value = flags.to_le_bytes().to_vec();
        value.extend(0u32.to_le_bytes());
        self.update(
            egress_common::names::MAP_IDENTITIES,
            &cgroup_id.to_le_bytes(),
            &value,
        );
    }

    /// The config entry: a waypoint at `waypoint` (no exempt cgroup) and these flags.
    fn config(&self, waypoint: SocketAddrV4, flags: u16) {
        let mut value = 0u64.to_le_bytes().to_vec(); // waypoint_cgroup_id
        value.extend(0u64.to_le_bytes()); // generation
        value.extend(waypoint.ip().octets());
        value.extend(waypoint.port().to_le_bytes());
        value.extend(flags.to_le_bytes());
        self.update(
            egress_common::names::MAP_CONFIG,
            &0u32.to_le_bytes(),
            &value,
        );
    }

    fn counter(&self, name: &str) -> u64 {
        let out = run_bounded(
            Command::new(egress_bin()).args(["status", "--bpffs", &self.pins.to_string_lossy()]),
            TOOL_TIMEOUT,
        )
        .expect_success("egress status");
        out.stdout
            .lines()
            .find_map(|line| {
                let mut words = line.split_whitespace();
                (words.next() == Some(name)).then(|| words.next()?.parse().ok())?
            })
            .unwrap_or_else(|| panic!("no counter {name} in {out:?}"))
    }
}

impl Drop for Kernel {
    fn drop(&mut self) {
        for child in self.children.iter().rev() {
            if let Err(e) = std::fs::remove_dir(child) {
                eprintln!("removing cgroup {} failed: {e}", child.display());
            }
        }
        let out = run_bounded(
            Command::new(egress_bin()).args([
                "uninstall",
                "--bpffs",
                &self.pins.to_string_lossy(),
                "--cgroup",
                &self.cgroup.to_string_lossy(),
            ]),
            TOOL_TIMEOUT,
        );
        if !out.success() {
            eprintln!("egress uninstall failed: {out:?}");
        }
        let _ = std::fs::remove_dir(&self.cgroup);
    }
}

/// Connects to `addr` from a process in `cgroup` and prints `connected` or the error's name.
const CLIENT: &str = r#"
import errno, socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5).close()
    print("connected")
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e)))
"#;

#[track_caller]
fn connect_from(cgroup: &Path, addr: SocketAddrV4) -> String {
    let procs = cgroup.join("cgroup.procs");
    let out = run_bounded(
        Command::new("sh").args([
            "-c",
            r#"echo $$ > "$0" && exec python3 -c "$1" "$2" "$3""#,
            &procs.to_string_lossy(),
            CLIENT,
            &addr.ip().to_string(),
            &addr.port().to_string(),
        ]),
        TOOL_TIMEOUT,
    )
    .expect_success("the client in its cgroup");
    out.stdout.trim().to_owned()
}

/// A plain listener of the test process, counting what reaches it.
struct Plain(TcpListener);

impl Plain {
    fn new() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        Plain(listener)
    }

    fn addr(&self) -> SocketAddrV4 {
        match self.0.local_addr().expect("local addr") {
            SocketAddr::V4(addr) => addr,
            other => panic!("bound IPv4, got {other}"),
        }
    }

    /// Connections queued since the last call (a connect that returned is queued already; the
    /// wait only covers a slow machine).
    fn take(&self, expect_some: bool) -> usize {
        let deadline = Instant::now() + if expect_some { WAIT } else { QUIET };
        let mut n = 0;
        loop {
            match self.0.accept() {
                Ok(_) => n += 1,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if n > 0 || Instant::now() >= deadline {
                        return n;
                    }
                    thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
    }
}

#[test]
fn with_enrolled_only_capture_a_task_below_no_enrolled_anchor_is_left_alone() {
    if !require_privileges() || !require_tools(&["bpftool", "python3"]) {
        return;
    }
    use egress_common::{
        CONFIG_F_ENROLLED_ONLY, CONFIG_F_READY, CONFIG_F_REGISTRY_ONLY, IDENTITY_F_CACHEABLE,
        IDENTITY_F_ENROLLED,
    };
    let mut kernel = Kernel::install("enrolled");
    let (enrolled, enrolled_id) = kernel.child("pod-enrolled");
    let (other, other_id) = kernel.child("pod-other");
    let (waypoint, upstream, elsewhere) = (Plain::new(), Plain::new(), Plain::new());
    kernel.service(upstream.addr(), 1);
    kernel.anchor(enrolled_id, IDENTITY_F_CACHEABLE | IDENTITY_F_ENROLLED);
    // A host-mode anchor (an identity, not enrolled) does not enroll.
    kernel.anchor(other_id, IDENTITY_F_CACHEABLE);
    kernel.config(waypoint.addr(), CONFIG_F_READY | CONFIG_F_ENROLLED_ONLY);

    assert_eq!(connect_from(&enrolled, upstream.addr()), "connected");
    assert_eq!(waypoint.take(true), 1, "the enrolled pod is redirected");
    assert_eq!(upstream.take(false), 0);

    let not_enrolled = kernel.counter("not_enrolled");
    assert_eq!(connect_from(&other, upstream.addr()), "connected");
    assert_eq!(
        upstream.take(true),
        1,
        "the other pod goes where it dialled"
    );
    assert_eq!(waypoint.take(false), 0);
    assert_eq!(kernel.counter("not_enrolled"), not_enrolled + 1);

    // REGISTRY_ONLY (nothing allowed) refuses the enrolled pod's other destinations only.
    kernel.config(
        waypoint.addr(),
        CONFIG_F_READY | CONFIG_F_ENROLLED_ONLY | CONFIG_F_REGISTRY_ONLY,
    );
    assert_eq!(connect_from(&enrolled, elsewhere.addr()), "EPERM");
    assert_eq!(connect_from(&other, elsewhere.addr()), "connected");
    assert_eq!(elsewhere.take(true), 1);

    // Without the flag (host mode) the whole attached cgroup is captured again.
    kernel.config(waypoint.addr(), CONFIG_F_READY);
    assert_eq!(connect_from(&other, upstream.addr()), "connected");
    assert_eq!(waypoint.take(true), 1, "host mode redirects every task");
    assert_eq!(upstream.take(false), 0);
}
