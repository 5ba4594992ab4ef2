//! Real DNS servers for tests, on loopback port 53 (resolv.conf nameservers have no port): a
//! Debian `dnsmasq` answering names from a hosts file the test rewrites — in the test's network
//! namespace, or inside one the test made (a pod's: reachable from there only, as a cluster DNS
//! service is) — and a resolver that never answers. Each writes a resolv.conf naming it, for
//! `egress run --resolv-conf` or a client's mount namespace. Dropping one kills its process by
//! pid and removes its files.
use std::{
    fs,
    net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use tempfile::TempDir;

use crate::environment::find_tool;

/// How long dnsmasq may take to answer its first query, or a rewritten hosts file.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// The TTL dnsmasq gives answers from its hosts file (`--local-ttl`).
pub const RESOLVER_TTL: Duration = Duration::from_secs(1);

/// dnsmasq on `<ip>:53`, authoritative for `*.test` from a hosts file.
pub struct Resolver {
    ip: Ipv4Addr,
    /// The network namespace it runs in (`None`: the test's).
    netns: Option<PathBuf>,
    files: TempDir,
    process: Child,
}

impl Resolver {
    /// Starts dnsmasq on `ip` (a loopback address no other test uses) answering `hosts`, and
    /// waits (bounded) until it answers.
    pub fn dnsmasq(ip: Ipv4Addr, hosts: &[(&str, Ipv4Addr)]) -> Self {
        Self::start(None, ip, hosts)
    }

    /// As [`Resolver::dnsmasq`], inside the network namespace `netns` (a `/run/netns/<name>`
    /// file): only clients in that namespace reach it.
    pub fn dnsmasq_in(netns: &Path, ip: Ipv4Addr, hosts: &[(&str, Ipv4Addr)]) -> Self {
        Self::start(Some(netns.to_owned()), ip, hosts)
    }

    fn start(netns: Option<PathBuf>, ip: Ipv4Addr, hosts: &[(&str, Ipv4Addr)]) -> Self {
        assert!(
            ip.is_loopback(),
            "test resolvers stay on loopback, not {ip}"
        );
        let files = tempdir("egress-test-dnsmasq-");
        fs::write(files.path().join("hosts"), hosts_file(hosts)).expect("writing the hosts file");
        write_resolv_conf(files.path(), ip);
        let log = fs::File::create(files.path().join("dnsmasq.log")).expect("creating its log");
        let dnsmasq = find_tool("dnsmasq").expect("dnsmasq (require_tools checks)");
        let mut command = match &netns {
            None => Command::new(dnsmasq),
            Some(netns) => {
                // nsenter execs dnsmasq: the child's pid is dnsmasq's.
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", netns.display()))
                    .arg("--")
                    .arg(dnsmasq);
                c
            }
        };
        let process = command
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--local=/test/",
                "--bind-interfaces",
                "--port=53",
                "--user=root",
                "--group=root",
                "--pid-file=",
                "--log-facility=-",
                "--log-queries",
            ])
            .arg(format!("--listen-address={ip}"))
            .arg(format!("--local-ttl={}", RESOLVER_TTL.as_secs()))
            .arg(format!(
                "--addn-hosts={}",
                files.path().join("hosts").display()
            ))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning the log handle"))
            .stderr(log)
            .spawn()
            .expect("starting dnsmasq");
        let resolver = Self {
            ip,
            netns,
            files,
            process,
        };
        let first = hosts.first().map(|(name, _)| *name).unwrap_or("ready.test");
        resolver.wait_until(first, |_| true, "answers its first query");
        resolver
    }

    /// A resolv.conf naming this resolver only.
    pub fn resolv_conf(&self) -> PathBuf {
        self.files.path().join("resolv.conf")
    }

    /// Rewrites the hosts file, makes dnsmasq re-read it (SIGHUP), and waits (bounded) until it
    /// answers `hosts[0]` with the new address.
    #[track_caller]
    pub fn set_hosts(&self, hosts: &[(&str, Ipv4Addr)]) {
        let path = self.files.path().join("hosts");
        let tmp = self.files.path().join("hosts.next");
        fs::write(&tmp, hosts_file(hosts)).expect("writing the hosts file");
        fs::rename(&tmp, &path).expect("replacing the hosts file");
        // SAFETY: signalling the child this fixture started and has not reaped.
        let rc = unsafe { libc::kill(self.process.id() as libc::pid_t, libc::SIGHUP) };
        assert_eq!(rc, 0, "sending SIGHUP to dnsmasq");
        if let Some((name, ip)) = hosts.first() {
            self.wait_until(name, |ips| ips == [*ip], "answers with the new address");
        }
    }

    /// The A records dnsmasq gives `name` now (`None`: no answer within a second), asked
    /// from its own network namespace.
    pub fn query(&self, name: &str) -> Option<Vec<Ipv4Addr>> {
        let server = SocketAddr::from((self.ip, 53));
        let Some(netns) = &self.netns else {
            return query_a(server, name);
        };
        thread::scope(|s| {
            s.spawn(|| {
                let file = fs::File::open(netns).ok()?;
                // SAFETY: setns on an fd this thread holds; only this scoped thread changes
                // namespace, and it ends right after the query.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return None;
                }
                query_a(server, name)
            })
            .join()
            .ok()
            .flatten()
        })
    }

    /// The address it listens on (port 53).
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// dnsmasq's log (queries included).
    pub fn log(&self) -> String {
        fs::read_to_string(self.files.path().join("dnsmasq.log")).unwrap_or_default()
    }

    #[track_caller]
    fn wait_until(&self, name: &str, ok: impl Fn(&[Ipv4Addr]) -> bool, what: &str) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(ips) = self.query(name)
                && ok(&ips)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "dnsmasq on {} never {what} ({name}) within {READY_TIMEOUT:?}; its log:\n{}",
                self.ip,
                self.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("--- dnsmasq log ---\n{}\n--- end ---", self.log());
        }
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// A nameserver on `<ip>:53` that takes every query (UDP, and TCP connections) and never
/// answers: what a resolver behind a dead link looks like to its clients.
pub struct SilentResolver {
    files: TempDir,
    _udp: UdpSocket,
    _tcp: TcpListener,
}

impl SilentResolver {
    pub fn on(ip: Ipv4Addr) -> Self {
        assert!(
            ip.is_loopback(),
            "test resolvers stay on loopback, not {ip}"
        );
        let udp = UdpSocket::bind((ip, 53)).expect("binding the silent resolver (UDP)");
        // Connections complete in the backlog and are never read.
        let tcp = TcpListener::bind((ip, 53)).expect("binding the silent resolver (TCP)");
        let files = tempdir("egress-test-silent-dns-");
        write_resolv_conf(files.path(), ip);
        Self {
            files,
            _udp: udp,
            _tcp: tcp,
        }
    }

    /// A resolv.conf naming this resolver only.
    pub fn resolv_conf(&self) -> PathBuf {
        self.files.path().join("resolv.conf")
    }
}

fn tempdir(prefix: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("creating a temporary directory")
}

fn hosts_file(hosts: &[(&str, Ipv4Addr)]) -> String {
    hosts
        .iter()
        .map(|(name, ip)| format!("{ip} {name}\n"))
        .collect()
}

fn write_resolv_conf(dir: &Path, ip: Ipv4Addr) {
    fs::write(dir.join("resolv.conf"), format!("nameserver {ip}\n")).expect("writing resolv.conf");
}

/// One DNS query for `name`'s A records over UDP; the addresses of the answer (empty for
/// NXDOMAIN or no data), or `None` when nothing came back within a second.
pub fn query_a(server: SocketAddr, name: &str) -> Option<Vec<Ipv4Addr>> {
    let socket = UdpSocket::bind("127.0.0.1:0").ok()?;
    socket.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    // Header: id, flags (RD), one question.
    let mut query = vec![0x45, 0x67, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.trim_end_matches('.').split('.') {
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]); // root, type A, class IN
    socket.send_to(&query, server).ok()?;
    let mut buf = [0u8; 512];
    let (len, _) = socket.recv_from(&mut buf).ok()?;
    let reply = &buf[..len];
    if reply.get(..2)? != [0x45, 0x67] {
        return None;
    }
    let answers = u16::from_be_bytes([reply[6], reply[7]]);
    // The question is echoed: skip it.
    let mut at = query.len();
    let mut ips = Vec::new();
    for _ in 0..answers {
        at = skip_name(reply, at)?;
        let fixed = reply.get(at..at + 10)?;
        let (rtype, rdlen) = (
            u16::from_be_bytes([fixed[0], fixed[1]]),
            usize::from(u16::from_be_bytes([fixed[8], fixed[9]])),
        );
        at += 10;
        let data = reply.get(at..at + rdlen)?;
        if rtype == 1 && rdlen == 4 {
            ips.push(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        at += rdlen;
    }
    Some(ips)
}

fn skip_name(msg: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *msg.get(at)?;
        if len & 0xc0 == 0xc0 {
            return Some(at + 2);
        }
        at += 1 + usize::from(len);
        if len == 0 {
            return Some(at);
        }
    }
}
