//! The upstream every configuration talks to: Debian's nginx, one worker, serving a 1 KiB file
//! at `/get` on a plain port and on a TLS port (a certificate for [`TLS_HOST`] from a throw-away
//! CA made with the openssl CLI). Own prefix, config and logs in a temporary directory; started
//! and stopped by pid.
use std::{
    fs,
    net::SocketAddr,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{SERVER_CPU, check_interrupted, free_ports, http_get, remove_dir_all, stop_child};
use crate::cmd;

/// The server name in the upstream's certificate (and the SNI the proxies send).
pub const TLS_HOST: &str = "upstream.bench.test";
/// Size of the `/get` body.
pub const BODY_BYTES: usize = 1024;
const READY_TIMEOUT: Duration = Duration::from_secs(10);
const OPENSSL_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Nginx {
    pub plain: SocketAddr,
    pub tls: SocketAddr,
    /// The CA that signed the TLS port's certificate.
    pub ca: PathBuf,
    dir: PathBuf,
    process: Option<Child>,
}

impl Nginx {
    pub fn start(nginx: &Path, version: &str) -> anyhow::Result<Nginx> {
        let dir = std::env::temp_dir().join(format!("egress-bench-{}-nginx", std::process::id()));
        remove_dir_all(&dir);
        for sub in ["www", "tmp", "logs"] {
            fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        let [plain, tls] = free_ports()?;
        let mut guard = Nginx {
            plain,
            tls,
            ca: dir.join("ca.pem"),
            dir: dir.clone(),
            process: None,
        };
        fs::write(dir.join("www/get"), body()).context("writing the 1 KiB body")?;
        certificates(&dir, TLS_HOST, &format!("DNS:{TLS_HOST}"))?;
        fs::write(dir.join("nginx.conf"), config(&dir, plain, tls))
            .context("writing nginx.conf")?;
        let mut command = Command::new("taskset");
        command
            .args(["-c", SERVER_CPU])
            .arg(nginx)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg(dir.join("logs/error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("logs/stderr.log"))?)
            .process_group(0);
        let line = cmd::display(&command);
        println!("    $ {line}   # {version}");
        guard.process = Some(
            command
                .spawn()
                .with_context(|| format!("could not start `{line}`"))?,
        );
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            check_interrupted()?;
            if let Some(status) = guard.process.as_mut().expect("started").try_wait()? {
                guard.process = None;
                bail!(
                    "`{line}` exited ({status}); its error log:\n{}{}",
                    fs::read_to_string(dir.join("logs/stderr.log")).unwrap_or_default(),
                    fs::read_to_string(dir.join("logs/error.log")).unwrap_or_default()
                );
            }
            match http_get(plain, "/get") {
                Ok((200, body)) if body.len() == BODY_BYTES => return Ok(guard),
                Ok((status, body)) => bail!(
                    "nginx answered /get with {status} and {} bytes, not 200 and {BODY_BYTES}",
                    body.len()
                ),
                Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
                Err(e) => bail!("nginx did not answer on {plain} within {READY_TIMEOUT:?}: {e:#}"),
            }
        }
    }

    /// The master and its workers (for CPU accounting).
    pub fn pids(&self) -> Vec<u32> {
        let Some(master) = self.process.as_ref().map(Child::id) else {
            return Vec::new();
        };
        let mut pids = vec![master];
        pids.extend(children(master));
        pids
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let workers: Vec<u32> = self.pids().into_iter().skip(1).collect();
        if let Some(mut master) = self.process.take() {
            stop_child(&mut master, Duration::from_secs(5));
        }
        // A master that had to be SIGKILLed leaves its workers behind.
        for pid in workers {
            if Path::new(&format!("/proc/{pid}")).exists() {
                // SAFETY: kill has no memory-safety preconditions; the pid is our worker.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        }
        remove_dir_all(&self.dir);
    }
}

/// Child pids of `pid` (Linux ≥ 3.5 with CONFIG_PROC_CHILDREN).
pub fn children(pid: u32) -> Vec<u32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// 1 KiB of printable text ending in a newline.
fn body() -> Vec<u8> {
    let mut body: Vec<u8> = (0..BODY_BYTES - 1)
        .map(|i| b"abcdefghijklmnopqrstuvwxyz0123456789"[i % 36])
        .collect();
    body.push(b'\n');
    body
}

fn config(dir: &Path, plain: SocketAddr, tls: SocketAddr) -> String {
    let d = dir.display();
    format!(
        "# cargo xtask bench: the upstream. One worker, no access log, keep-alive without limit.
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/logs/error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    default_type application/octet-stream;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    server {{
        listen {plain} backlog=4096;
        location = /get {{ root {d}/www; }}
    }}
    server {{
        listen {tls} ssl backlog=4096;
        ssl_certificate {d}/server.pem;
        ssl_certificate_key {d}/server-key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:bench:1m;
        location = /get {{ root {d}/www; }}
    }}
}}
"
    )
}

/// A throw-away CA (`ca.pem`) and a server certificate (`server.pem`, `server-key.pem`) for
/// `name` with `alt_names` (`DNS:x,IP:y`), EC P-256, one day, like the README's TLS walkthrough;
/// openssl's output goes to `dir/logs/openssl.log`. nginx's is for [`TLS_HOST`].
pub fn certificates(dir: &Path, name: &str, alt_names: &str) -> anyhow::Result<()> {
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let mut command = Command::new("openssl");
        command.current_dir(dir).args(args);
        let line = cmd::display(&command);
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("logs/openssl.log"))?)
            .spawn()
            .with_context(|| format!("could not start `{line}`"))?;
        let status = super::wait_bounded(&mut child, OPENSSL_TIMEOUT, &line)?;
        if !status.success() {
            bail!(
                "`{line}` failed ({status}): {}",
                fs::read_to_string(dir.join("logs/openssl.log")).unwrap_or_default()
            );
        }
        Ok(())
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-days",
        "1",
        "-subj",
        "/CN=egress-bench-ca",
        "-keyout",
        "ca-key.pem",
        "-out",
        "ca.pem",
    ]);
    run(&ca)?;
    let subject = format!("/CN={name}");
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-subj",
        &subject,
        "-keyout",
        "server-key.pem",
        "-out",
        "server.csr",
    ]);
    run(&csr)?;
    fs::write(
        dir.join("server.ext"),
        format!("subjectAltName={alt_names}\nextendedKeyUsage=serverAuth\n"),
    )?;
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca-key.pem",
        "-days",
        "1",
        "-out",
        "server.pem",
        "-extfile",
        "server.ext",
    ])
}
