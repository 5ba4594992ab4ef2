//! iptables REDIRECT capture for the comparison scenarios of `cargo xtask bench` (I: our
//! waypoint, V: Envoy): what a sidecar's init container does, scoped to the benchmark's targets.
//!
//! Each [`Redirect`] owns one private chain in the `nat` table, `EGB-<pid>-<n>`, jumped to from
//! `OUTPUT` for TCP, with one `REDIRECT` rule per (address, port). Drop removes the jump, flushes
//! and deletes the chain. A chain left behind by a run that was killed (SIGKILL skips Drop) is
//! removed by the next [`Redirect::install`] once the pid in its name is gone.
//!
//! REDIRECT in `OUTPUT` rewrites the destination to the local host (127.0.0.1 for loopback
//! traffic) and the given port; the proxy listening there reads the address the client dialled
//! with `getsockopt(SO_ORIGINAL_DST)` (the test below does too).
use std::{
    net::Ipv4Addr,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, bail};

use crate::cmd::{self, on_path, step};

/// Prefix of every chain we create; the rest is `<pid>-<n>`. iptables allows 28 characters.
const CHAIN_PREFIX: &str = "EGB-";
/// Numbers the chains of one process.
static NEXT_CHAIN: AtomicU32 = AtomicU32::new(0);

/// A private `nat` chain redirecting TCP connects to some (address, port) pairs to a local port.
/// Drop removes every rule and the chain (best effort; failures are printed, not fatal).
#[derive(Debug)]
pub struct Redirect {
    chain: String,
    /// Whether `-N chain` succeeded (so Drop must `-F`/`-X` it).
    created: bool,
    /// Whether the `OUTPUT -> chain` jump is in place (so Drop must `-D` it).
    jumped: bool,
}

impl Redirect {
    /// REDIRECT TCP connects to each (addr, port) to `to_port`, in a private nat chain (name
    /// includes our pid) jumped to from OUTPUT.
    ///
    /// The jump goes first in OUTPUT so nothing before it can divert the benchmark's traffic.
    /// Connects the proxy itself makes are redirected too when they go to one of `targets`: give
    /// the proxy an upstream that is not among them.
    pub fn install(targets: &[(Ipv4Addr, u16)], to_port: u16) -> anyhow::Result<Redirect> {
        if targets.is_empty() {
            bail!("a Redirect needs at least one (address, port) to capture");
        }
        if to_port == 0 {
            bail!("cannot redirect to port 0");
        }
        if let Some((addr, _)) = targets.iter().find(|(_, port)| *port == 0) {
            bail!("target {addr}:0 has no port");
        }
        remove_stale_chains();
        let chain = format!(
            "{CHAIN_PREFIX}{}-{}",
            std::process::id(),
            NEXT_CHAIN.fetch_add(1, Ordering::Relaxed)
        );
        // Drop cleans up whatever part of the installation succeeded.
        let mut redirect = Redirect {
            chain,
            created: false,
            jumped: false,
        };
        iptables(&["-N", &redirect.chain])?;
        redirect.created = true;
        // All rules in one `iptables-restore --noflush` transaction: one call per rule costs
        // seconds per thousand rules (each call rewrites the whole table).
        let mut batch = String::from("*nat\n");
        for (addr, port) in targets {
            batch.push_str(&format!(
                "-A {} -p tcp -d {addr}/32 --dport {port} -j REDIRECT --to-ports {to_port}\n",
                redirect.chain
            ));
        }
        batch.push_str("COMMIT\n");
        iptables_restore(&batch).with_context(|| {
            format!(
                "adding {} REDIRECT rule(s) to port {to_port} in {}",
                targets.len(),
                redirect.chain
            )
        })?;
        let mut jump = vec!["-I", "OUTPUT", "1"];
        jump.extend(redirect.jump_spec());
        iptables(&jump)?;
        redirect.jumped = true;
        Ok(redirect)
    }

    /// The chain's name (`EGB-<pid>-<n>`).
    #[cfg(test)]
    pub fn chain(&self) -> &str {
        &self.chain
    }

    /// The match of the OUTPUT rule that jumps to our chain (the same for -I and -D).
    fn jump_spec(&self) -> [&str; 4] {
        ["-p", "tcp", "-j", &self.chain]
    }
}

impl Drop for Redirect {
    fn drop(&mut self) {
        if self.jumped {
            let mut delete = vec!["-D", "OUTPUT"];
            delete.extend(self.jump_spec());
            if let Err(e) = iptables(&delete) {
                eprintln!("removing the OUTPUT jump to {}: {e:#}", self.chain);
            }
        }
        if self.created {
            for op in ["-F", "-X"] {
                if let Err(e) = iptables(&[op, &self.chain]) {
                    eprintln!("removing nat chain {}: {e:#}", self.chain);
                }
            }
        }
    }
}

/// apt-get installs iptables if `iptables` is missing (DEBIAN_FRONTEND=noninteractive), then
/// checks that the nat table can be listed (the kernel has NAT support and we may use it).
pub fn ensure_installed() -> anyhow::Result<()> {
    if !on_path("iptables") {
        if !cmd::is_root() {
            bail!("iptables is missing: run `apt-get install -y iptables` as root");
        }
        if !on_path("apt-get") {
            bail!("iptables is missing and there is no apt-get here: install it by hand");
        }
        step("installing iptables (Debian; about 20 seconds)");
        let apt = |args: &[&str]| {
            let mut command = Command::new("apt-get");
            command.env("DEBIAN_FRONTEND", "noninteractive").args(args);
            command
        };
        cmd::run(&mut apt(&["update", "-q"]))?;
        cmd::run(&mut apt(&[
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "iptables",
        ]))?;
        if !on_path("iptables") {
            bail!("apt-get installed iptables but `iptables` is still not on PATH");
        }
    }
    iptables_output(&["-S", "OUTPUT"]).context("iptables cannot list the nat table")?;
    Ok(())
}

/// `iptables -w -t nat ARGS`; an error carries the command line and what iptables said.
/// Applies `rules` (iptables-save syntax) without flushing what is there.
fn iptables_restore(rules: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut command = Command::new("iptables-restore");
    command.args(["-w", "--noflush"]);
    let line = cmd::display(&command);
    let mut child = command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{line}`"))?;
    let written = child
        .stdin
        .take()
        .map(|mut stdin| stdin.write_all(rules.as_bytes()));
    let output = child
        .wait_with_output()
        .with_context(|| format!("waiting for `{line}`"))?;
    if let Some(Err(e)) = written {
        bail!("writing the rules to `{line}`: {e}");
    }
    if !output.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

fn iptables(args: &[&str]) -> anyhow::Result<()> {
    iptables_output(args).map(drop)
}

fn iptables_output(args: &[&str]) -> anyhow::Result<String> {
    let mut command = Command::new("iptables");
    // -w: wait for the xtables lock instead of failing when another iptables runs.
    command.args(["-w", "-t", "nat"]).args(args);
    let line = cmd::display(&command);
    let output = command
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("could not start `{line}`"))?;
    if !output.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Removes our chains whose process is gone (a run killed before its Drop), with their jumps.
fn remove_stale_chains() {
    let Ok(rules) = iptables_output(&["-S"]) else {
        return;
    };
    for chain in stale_chains(&rules, |pid| {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
    }) {
        eprintln!("removing nat chain {chain}, left behind by a process that is gone");
        // Every jump to it, however many were left.
        while iptables(&["-D", "OUTPUT", "-p", "tcp", "-j", &chain]).is_ok() {}
        let _ = iptables(&["-F", &chain]);
        if let Err(e) = iptables(&["-X", &chain]) {
            eprintln!("removing nat chain {chain}: {e:#}");
        }
    }
}

/// The names of our chains in `iptables -S` output whose pid `alive` says is gone.
fn stale_chains(rules: &str, alive: impl Fn(u32) -> bool) -> Vec<String> {
    rules
        .lines()
        .filter_map(|line| line.strip_prefix("-N "))
        .filter(|chain| {
            chain
                .strip_prefix(CHAIN_PREFIX)
                .and_then(|rest| rest.split_once('-'))
                .and_then(|(pid, n)| Some((pid.parse::<u32>().ok()?, n.parse::<u32>().ok()?)))
                .is_some_and(|(pid, _)| !alive(pid))
        })
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read as _, Write as _},
        net::{SocketAddrV4, TcpListener, TcpStream},
        os::fd::AsRawFd as _,
        thread,
        time::Duration,
    };

    use super::*;

    /// The address a redirected connection was dialled to (`getsockopt(SOL_IP, SO_ORIGINAL_DST)`),
    /// as a proxy behind [`Redirect`] reads it. An error for a connection that was not redirected
    /// by NAT (ENOENT).
    fn original_dst(conn: &TcpStream) -> std::io::Result<SocketAddrV4> {
        // SAFETY: zeroed sockaddr_in is a valid value; getsockopt writes at most `len` bytes into it.
        let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: the fd is open for the lifetime of `conn`; addr and len point to live locals.
        let rc = unsafe {
            libc::getsockopt(
                conn.as_raw_fd(),
                libc::SOL_IP,
                libc::SO_ORIGINAL_DST,
                (&raw mut addr).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
            u16::from_be(addr.sin_port),
        ))
    }

    #[test]
    fn stale_chains_are_ours_and_dead() {
        let rules = "-P OUTPUT ACCEPT\n-N EGB-100-0\n-N EGB-200-3\n-N EGB-x-1\n-N OTHER-100-0\n\
                     -A OUTPUT -p tcp -j EGB-100-0\n";
        assert_eq!(stale_chains(rules, |pid| pid == 200), vec!["EGB-100-0"]);
        assert!(stale_chains(rules, |_| true).is_empty());
    }

    /// Rules of the nat table that mention `chain`.
    fn rules_naming(chain: &str) -> Vec<String> {
        iptables_output(&["-S"])
            .expect("iptables -t nat -S")
            .lines()
            .filter(|line| line.contains(chain))
            .map(str::to_owned)
            .collect()
    }

    /// Needs root and iptables: a connect to 127.89.0.1:80 lands on a listener on 127.0.0.1,
    /// which sees the original destination; after Drop nothing of ours is left in the nat table.
    #[test]
    #[ignore = "needs root and iptables; run with --ignored"]
    fn redirect_reaches_local_listener_and_drop_removes_rules() {
        ensure_installed().expect("iptables usable");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a listener");
        let port = listener.local_addr().expect("local addr").port();
        let target = (Ipv4Addr::new(127, 89, 0, 1), 80);
        let redirect = Redirect::install(&[target], port).expect("install the redirect");
        let chain = redirect.chain().to_owned();
        let rules = rules_naming(&chain);
        assert!(
            rules.iter().any(|r| r.starts_with("-A OUTPUT")),
            "jump missing: {rules:?}"
        );
        assert!(
            rules
                .iter()
                .any(|r| r.contains("--to-ports") && r.contains("127.89.0.1")),
            "redirect rule missing: {rules:?}"
        );

        // Two connections: a std client that checks the original destination, then curl.
        let server = thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept");
            let original = original_dst(&conn).expect("SO_ORIGINAL_DST");
            conn.write_all(format!("hello via {original}").as_bytes())
                .expect("write");
            drop(conn);
            let (mut conn, _) = listener.accept().expect("accept curl");
            conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut request = [0u8; 1024];
            let _ = conn.read(&mut request).expect("read curl's request");
            let body = format!(
                "hello curl via {}",
                original_dst(&conn).expect("SO_ORIGINAL_DST")
            );
            write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .expect("write the response");
        });
        let mut client =
            TcpStream::connect_timeout(&"127.89.0.1:80".parse().unwrap(), Duration::from_secs(2))
                .expect("connect to the captured address");
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let mut reply = String::new();
        client.read_to_string(&mut reply).expect("read the reply");
        assert_eq!(reply, "hello via 127.89.0.1:80");
        let curl = Command::new("curl")
            .args(["-s", "--max-time", "5", "http://127.89.0.1/"])
            .output()
            .expect("run curl");
        server.join().expect("server thread");
        assert_eq!(
            String::from_utf8_lossy(&curl.stdout),
            "hello curl via 127.89.0.1:80"
        );

        drop(redirect);
        assert_eq!(rules_naming(&chain), Vec::<String>::new());
    }
}
