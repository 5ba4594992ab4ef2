//! Test peers written against real Python libraries from PyPI (`websockets`, `grpcio`, `h2`),
//! in the venv `cargo xtask prereqs` makes (`target/http-venv`, or `EGRESS_HTTP_VENV`).
use std::{
    fs,
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

/// The venv's Python.
pub fn http_venv_python() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::env::var_os("EGRESS_HTTP_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/http-venv"))
        .join("bin/python")
}

/// Whether the venv's Python imports every one of `modules`. When not, this prints why and
/// returns `false`, or panics under `EGRESS_REQUIRE_PRIV=1`.
#[must_use]
pub fn require_python_modules(modules: &[&str]) -> bool {
    let python = http_venv_python();
    let imports = modules
        .iter()
        .map(|m| format!("import {m}"))
        .collect::<Vec<_>>()
        .join("; ");
    let ok = Command::new(&python)
        .args(["-c", &imports])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let missing = if ok {
        vec![]
    } else {
        vec![format!(
            "{} cannot import {} (cargo xtask prereqs installs them)",
            python.display(),
            modules.join(", ")
        )]
    };
    crate::environment::skip_unless_empty(&missing)
}

/// A Python server (`script` run with `args`, then the address it must listen on as its last
/// two arguments: ip and port) on 127.0.0.1; what it writes to its log file is
/// [`PythonServer::log`]. Stopped (by pid) when dropped.
pub struct PythonServer {
    addr: SocketAddr,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl PythonServer {
    /// Starts `script`; it gets `LOG_FILE IP PORT` as arguments.
    pub fn start(script: &str) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let log = dir.path().join("server.log");
        fs::write(&log, "").expect("server log");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let stderr = fs::File::create(dir.path().join("stderr")).expect("stderr file");
        let child = Command::new(http_venv_python())
            .args(["-c", script])
            .arg(&log)
            .args(["127.0.0.1", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("starting the Python server");
        let mut server = Self {
            addr,
            child,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!(
                    "the Python server exited ({status}): {}",
                    fs::read_to_string(server._dir.path().join("stderr")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the Python server did not listen on {addr} within 30s"
            );
            thread::sleep(Duration::from_millis(100));
        }
        server
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The lines the server logged so far.
    pub fn log(&self) -> Vec<String> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for PythonServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
