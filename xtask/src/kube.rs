//! A real Kubernetes control plane for the tests (design §12): kube-apiserver, etcd and kubectl in
//! one directory, the layout of controller-runtime's envtest (`KUBEBUILDER_ASSETS`).
//!
//! When `KUBEBUILDER_ASSETS` is set, that directory is used as it is. Otherwise kube-apiserver
//! 1.20.2 is built once from Debian bookworm's source package `kubernetes` (Debian ships no
//! kube-apiserver binary) and cached outside the clone, keyed by version; etcd comes from
//! Debian's `etcd-server` and kubectl from the machine. A cached build costs a second.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    cmd::{self, on_path, probe, step},
    prereqs,
};

/// The kube-apiserver version Debian bookworm's `kubernetes` source package builds.
pub const KUBE_VERSION: &str = "1.20.2";
/// Debian's Go for that source (bookworm's default Go, 1.19, is what the recipe was verified with).
const GO_BIN: &str = "/usr/lib/go-1.19/bin";
/// Where Debian's reflect2 1.0.2 lives; the vendored 1.0.1 crashes under Go ≥ 1.18 on the first
/// custom-resource write (design §12).
const REFLECT2: &str = "/usr/share/gocode/src/github.com/modern-go/reflect2";

/// The directory holding `kube-apiserver`, `etcd` and `kubectl`, providing what is missing.
/// The tests get it as `KUBEBUILDER_ASSETS`.
pub fn control_plane() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("KUBEBUILDER_ASSETS") {
        let dir = PathBuf::from(dir);
        for binary in ["kube-apiserver", "etcd", "kubectl"] {
            if !dir.join(binary).is_file() {
                bail!(
                    "KUBEBUILDER_ASSETS={} has no {binary} (it must hold kube-apiserver, etcd and kubectl)",
                    dir.display()
                );
            }
        }
        let version = apiserver_version(&dir.join("kube-apiserver"))
            .with_context(|| format!("{}/kube-apiserver --version", dir.display()))?;
        step(&format!(
            "control plane from KUBEBUILDER_ASSETS={} ({version})",
            dir.display()
        ));
        return Ok(dir);
    }

    prereqs::debian_packages(&[("etcd-server", Some("etcd"))])?;
    if !on_path("kubectl") {
        bail!("kubectl is not on PATH (install it, or set KUBEBUILDER_ASSETS)");
    }
    let dir = cache_dir().join(format!("kube-apiserver-{KUBE_VERSION}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // Two `cargo xtask` runs on one machine must not build into the same place at once.
    let _lock = Lock::take(&dir.join(".lock"))?;
    let apiserver = dir.join("kube-apiserver");
    let version = match apiserver_version(&apiserver) {
        Ok(version) => version,
        Err(_) => {
            build_apiserver(&apiserver)?;
            apiserver_version(&apiserver)
                .with_context(|| format!("the freshly built {}", apiserver.display()))?
        }
    };
    if !version.contains(&format!("v{KUBE_VERSION}")) {
        bail!(
            "{} says {version:?}, expected v{KUBE_VERSION}",
            apiserver.display()
        );
    }
    step(&format!(
        "control plane for the Kubernetes tests: {version} in {}",
        dir.display()
    ));
    // etcd and kubectl beside it, so the directory is a complete KUBEBUILDER_ASSETS.
    for binary in ["etcd", "kubectl"] {
        let target = which(binary).with_context(|| format!("{binary} is not on PATH"))?;
        let link = dir.join(binary);
        if std::fs::read_link(&link).ok().as_deref() != Some(target.as_path()) {
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&target, &link)
                .with_context(|| format!("linking {} to {}", link.display(), target.display()))?;
        }
    }
    Ok(dir)
}

/// `/var/cache/egress` as root, `$XDG_CACHE_HOME/egress` or `~/.cache/egress` otherwise: outside
/// the clone, so `cargo clean` or a fresh clone does not cost another build.
pub(crate) fn cache_dir() -> PathBuf {
    if cmd::is_root() {
        return PathBuf::from("/var/cache/egress");
    }
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join("egress")
}

/// `kube-apiserver --version`: `Kubernetes v1.20.2`.
fn apiserver_version(binary: &Path) -> anyhow::Result<String> {
    if !binary.is_file() {
        bail!("{} is not there", binary.display());
    }
    probe(Command::new(binary).arg("--version"))
        .map(|out| out.trim().to_owned())
        .with_context(|| format!("{} --version failed", binary.display()))
}

fn which(binary: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(binary))
        .find(|p| p.is_file())
}

/// Builds kube-apiserver from `apt-get source kubernetes` into `out`, in a scratch directory
/// that is removed afterwards, whatever happens.
fn build_apiserver(out: &Path) -> anyhow::Result<()> {
    prereqs::debian_packages(&[
        ("golang-1.19-go", None),
        ("dpkg-dev", Some("dpkg-source")),
        ("rsync", Some("rsync")),
        ("golang-github-modern-go-reflect2-dev", None),
    ])?;
    if !cmd::is_root() {
        bail!(
            "building kube-apiserver needs a deb-src entry and apt-get as root: run \
             `sudo -E cargo xtask prereqs`, or set KUBEBUILDER_ASSETS"
        );
    }
    deb_src()?;

    let scratch = std::env::temp_dir().join(format!("egress-kube-build-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    let result = build_in(&scratch, out);
    if let Err(error) = std::fs::remove_dir_all(&scratch) {
        println!("    note: could not remove {}: {error}", scratch.display());
    }
    result
}

fn build_in(scratch: &Path, out: &Path) -> anyhow::Result<()> {
    step(&format!(
        "fetching Debian's source package kubernetes into {}",
        scratch.display()
    ));
    cmd::run(
        Command::new("apt-get")
            .args(["source", "-q", "kubernetes"])
            .current_dir(scratch),
    )?;
    let source = std::fs::read_dir(scratch)?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.path())
        .find(|path| {
            path.is_dir()
                && path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("kubernetes-"))
        })
        .context("apt-get source kubernetes unpacked no kubernetes-* directory")?;
    if !source.to_string_lossy().contains(KUBE_VERSION) {
        bail!(
            "Debian's source is {}, not kubernetes {KUBE_VERSION}",
            source.display()
        );
    }

    let vendored = source.join("vendor/github.com/modern-go/reflect2");
    step(&format!(
        "replacing the vendored reflect2 1.0.1 with Debian's 1.0.2 ({REFLECT2})"
    ));
    std::fs::remove_dir_all(&vendored)
        .with_context(|| format!("removing {}", vendored.display()))?;
    cmd::run(Command::new("cp").arg("-rL").arg(REFLECT2).arg(&vendored))?;

    step(&format!(
        "building kube-apiserver {KUBE_VERSION} from Debian's source (about 6 minutes, once)"
    ));
    let path = format!("{GO_BIN}:{}", std::env::var("PATH").unwrap_or_default());
    let mut make = Command::new("make");
    make.arg("WHAT=cmd/kube-apiserver")
        .current_dir(&source)
        .env("PATH", path)
        .env("CGO_ENABLED", "0")
        .env("GOFLAGS", "-mod=vendor")
        .env("GOPROXY", "off");
    // Kubernetes' make keeps GOPATH and Go's build cache under _output/local/go, so both go
    // with the scratch directory.
    let gocache = source.join("_output/local/go/cache");
    run_with_heartbeat(&mut make, &scratch.join("make.log"), &gocache)?;

    let built = [
        "_output/bin/kube-apiserver",
        "_output/local/bin/linux/amd64/kube-apiserver",
    ]
    .iter()
    .map(|p| source.join(p))
    .find(|p| p.is_file())
    .context("make succeeded but no _output/bin/kube-apiserver")?;
    let partial = out.with_extension("partial");
    std::fs::copy(&built, &partial)
        .with_context(|| format!("copying {} to {}", built.display(), partial.display()))?;
    std::fs::rename(&partial, out)?;
    step(&format!("cached {}", out.display()));
    Ok(())
}

/// Runs `command` with its output in `log`, printing every 20 s how long it has run, how many
/// objects are in Go's build cache `gocache` and the last line of output, so a long build is
/// visibly alive (Kubernetes' make is silent while Go compiles) without flooding the terminal.
/// On failure the log's last 40 lines are printed.
fn run_with_heartbeat(command: &mut Command, log: &Path, gocache: &Path) -> anyhow::Result<()> {
    let line = cmd::display(command);
    println!("    $ {line}");
    println!("    (output in {}; a line every 20 s)", log.display());
    let file = std::fs::File::create(log)?;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .with_context(|| format!("could not start `{line}`"))?;
    let started = Instant::now();
    let mut last_beat = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(500));
        if last_beat.elapsed() >= Duration::from_secs(20) {
            last_beat = Instant::now();
            let elapsed = started.elapsed().as_secs();
            println!(
                "    … {}m{:02}s, {} objects built; {}",
                elapsed / 60,
                elapsed % 60,
                count_files(gocache),
                last_lines(log, 1).join("")
            );
            let _ = std::io::stdout().flush();
        }
    };
    let elapsed = started.elapsed().as_secs();
    if !status.success() {
        for l in last_lines(log, 40) {
            println!("    | {l}");
        }
        bail!("`{line}` failed after {elapsed}s: {status} (log above)");
    }
    println!("    done in {}m{:02}s", elapsed / 60, elapsed % 60);
    Ok(())
}

/// Files under `dir`, recursively (Go's cache: `xx/<hash>-a` and `-d` entries).
fn count_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => count_files(&entry.path()),
            Ok(_) => 1,
            Err(_) => 0,
        })
        .sum()
}

fn last_lines(log: &Path, n: usize) -> Vec<String> {
    let Ok(file) = std::fs::File::open(log) else {
        return Vec::new();
    };
    let lines: Vec<String> = BufReader::new(file).lines().map_while(Result::ok).collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

/// Adds deb-src entries for the machine's own Debian archive, derived from its `deb` entries for
/// the release codename (deb822 `.sources` and one-line `sources.list`), then `apt-get update`.
/// Does nothing when `apt-get source` can already find `kubernetes`.
fn deb_src() -> anyhow::Result<()> {
    let findable = Command::new("apt-cache")
        .args(["showsrc", "kubernetes"])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success() && !o.stdout.is_empty());
    if findable {
        return Ok(());
    }
    let codename = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|release| {
            release.lines().find_map(|l| {
                l.strip_prefix("VERSION_CODENAME=")
                    .map(|v| v.trim_matches('"').to_owned())
            })
        })
        .context("no VERSION_CODENAME in /etc/os-release")?;
    let mut stanzas = Vec::new();
    let dir = Path::new("/etc/apt/sources.list.d");
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "sources")
            && path.file_name().is_some_and(|n| n != DEB_SRC_FILE)
        {
            let text = std::fs::read_to_string(&path)?;
            stanzas.extend(deb822_sources(&text, &codename));
        }
    }
    if let Ok(list) = std::fs::read_to_string("/etc/apt/sources.list") {
        stanzas.extend(one_line_sources(&list, &codename));
    }
    if stanzas.is_empty() {
        bail!("found no `deb` entry for {codename} in /etc/apt to derive a deb-src entry from");
    }
    let file = dir.join(DEB_SRC_FILE);
    step(&format!(
        "adding deb-src entries for {codename} ({}), for apt-get source kubernetes",
        file.display()
    ));
    let text = format!(
        "# Written by `cargo xtask` (egress): the source packages of this machine's own Debian\n\
         # archive, for building kube-apiserver from Debian's `kubernetes` source.\n\n{}",
        stanzas.join("\n")
    );
    std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
    cmd::run(
        Command::new("apt-get")
            .args(["update", "-q"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

const DEB_SRC_FILE: &str = "egress-deb-src.sources";

/// The deb822 stanzas of `text` whose Types include `deb` and whose Suites include `codename`,
/// as `deb-src` stanzas with the same URIs, suites, components and keyring.
fn deb822_sources(text: &str, codename: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|stanza| {
            let fields: Vec<(&str, &str)> = stanza
                .lines()
                .filter(|l| !l.trim_start().starts_with('#'))
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim(), v.trim()))
                .collect();
            let get = |key: &str| {
                fields
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(key))
                    .map(|(_, v)| *v)
            };
            let types = get("Types")?;
            let suites = get("Suites")?;
            if !types.split_whitespace().any(|t| t == "deb")
                || !suites.split_whitespace().any(|s| s == codename)
                || get("Enabled").is_some_and(|e| e.eq_ignore_ascii_case("no"))
            {
                return None;
            }
            let mut out = format!("Types: deb-src\nURIs: {}\nSuites: {suites}\n", get("URIs")?);
            out.push_str(&format!("Components: {}\n", get("Components")?));
            if let Some(keyring) = get("Signed-By") {
                out.push_str(&format!("Signed-By: {keyring}\n"));
            }
            Some(out)
        })
        .collect()
}

/// One-line `deb [opts] URI SUITE COMPONENTS...` entries for `codename`, as deb822 deb-src stanzas.
fn one_line_sources(text: &str, codename: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix("deb ")?;
            let rest = match rest.trim_start().strip_prefix('[') {
                Some(opts) => opts.split_once(']')?.1,
                None => rest,
            };
            let mut words = rest.split_whitespace();
            let (uri, suite) = (words.next()?, words.next()?);
            let components: Vec<&str> = words.collect();
            (suite == codename && !components.is_empty()).then(|| {
                format!(
                    "Types: deb-src\nURIs: {uri}\nSuites: {suite}\nComponents: {}\n",
                    components.join(" ")
                )
            })
        })
        .collect()
}

/// An exclusive `flock` on a file, released when dropped.
pub(crate) struct Lock(std::fs::File);

impl Lock {
    pub(crate) fn take(path: &Path) -> anyhow::Result<Lock> {
        use std::os::fd::AsRawFd as _;
        let file =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        // SAFETY: flock on a descriptor we own; it blocks until another build finishes.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            bail!(
                "flock {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        Ok(Lock(file))
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd as _;
        // SAFETY: unlocking the descriptor we locked.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb_src_from_the_machines_deb822_sources() {
        let sources = "Types: deb\n# http://snapshot.debian.org/archive/debian/20250520T000000Z\n\
            URIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\n\
            Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
            Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n\
            Components: main\n";
        assert_eq!(
            deb822_sources(sources, "bookworm"),
            ["Types: deb-src\nURIs: http://deb.debian.org/debian\n\
              Suites: bookworm bookworm-updates\nComponents: main\n\
              Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"]
        );
    }

    #[test]
    fn deb_src_from_one_line_sources() {
        let list = "# comment\ndeb [arch=amd64] http://deb.debian.org/debian bookworm main contrib\n\
            deb http://deb.debian.org/debian-security bookworm-security main\n";
        assert_eq!(
            one_line_sources(list, "bookworm"),
            [
                "Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n\
              Components: main contrib\n"
            ]
        );
    }
}
