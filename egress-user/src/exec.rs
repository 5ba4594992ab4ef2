//! `egress exec --namespace NS --service-account SA -- CMD`: run CMD in the cgroup that a running
//! `egress run` attributes to `cluster.local/ns/NS/sa/SA`.
use std::{
    ffi::OsString,
    fs::{self, File},
    io,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::Command,
};

use thiserror::Error;
use tracing::warn;

use crate::{
    bpf::Attachment,
    cgroup::{self, CgroupError},
    identity::{exec_cgroup, rescan},
};

/// How long `exec` waits for the dataplane to take a new identity in.
const RESCAN_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug, Error)]
pub enum ExecError {
    #[error(
        "the captured cgroup {0} does not exist: start `egress run --cgroup {0}` first, or pass the --cgroup it uses"
    )]
    NotCaptured(PathBuf),
    #[error(
        "no capture is pinned under {pin_dir}: nothing would redirect or authorize the command's \
         connections, so it is not run. Start `egress run --cgroup {cgroup}` (with --bpffs \
         {pin_dir} if not the default), or pass the --bpffs of the running dataplane"
    )]
    NotPinned { cgroup: PathBuf, pin_dir: PathBuf },
    #[error(
        "the capture pinned under {pin_dir} is attached to another cgroup, not to {cgroup} or \
         an ancestor: the command would run uncaptured, so it is not run. Pass the --cgroup that \
         `egress run` captures"
    )]
    OtherCgroup { cgroup: PathBuf, pin_dir: PathBuf },
    #[error("checking that capture is attached to {cgroup}")]
    Attachment {
        cgroup: PathBuf,
        #[source]
        source: Box<crate::bpf::BpfError>,
    },
    #[error("invalid {what} {value:?}: {why}")]
    Name {
        what: &'static str,
        value: String,
        why: &'static str,
    },
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("opening {path}")]
    Procs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "no command given (usage: egress exec --namespace NS --service-account SA -- CMD [ARGS...])"
    )]
    NoCommand,
    #[error("running {program:?}")]
    Spawn {
        program: OsString,
        #[source]
        source: io::Error,
    },
}

/// Kubernetes names: namespaces are DNS-1123 labels, service accounts DNS-1123 subdomains.
fn check_name(what: &'static str, value: &str, allow_dots: bool) -> Result<(), ExecError> {
    let err = |why| ExecError::Name {
        what,
        value: value.to_owned(),
        why,
    };
    if value.is_empty() || value.len() > 253 || (!allow_dots && value.len() > 63) {
        return Err(err(
            "must be 1 to 63 characters (253 for a service account)",
        ));
    }
    let ok_char = |c: char| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (allow_dots && c == '.')
    };
    if !value.chars().all(ok_char) {
        return Err(err(
            "only lowercase letters, digits and '-' (and '.' in a service account) are allowed",
        ));
    }
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !edge_ok(value.chars().next()) || !edge_ok(value.chars().last()) {
        return Err(err("must start and end with a letter or digit"));
    }
    Ok(())
}

/// Runs the command and returns the exit code to exit with (128 + signal when it was killed).
pub fn exec(
    captured: &Path,
    pin_dir: &Path,
    namespace: &str,
    service_account: &str,
    command: &[OsString],
) -> Result<i32, ExecError> {
    check_name("namespace", namespace, false)?;
    check_name("service account", service_account, true)?;
    let (program, args) = command.split_first().ok_or(ExecError::NoCommand)?;
    if !captured.is_dir() {
        return Err(ExecError::NotCaptured(captured.to_owned()));
    }
    // Never run the command uncaptured while its user believes policy applies.
    let paths = || (captured.to_owned(), pin_dir.to_owned());
    match crate::bpf::attachment(pin_dir, captured) {
        Ok(Attachment::Attached) => {}
        Ok(Attachment::NotPinned) => {
            let (cgroup, pin_dir) = paths();
            return Err(ExecError::NotPinned { cgroup, pin_dir });
        }
        Ok(Attachment::OtherCgroup) => {
            let (cgroup, pin_dir) = paths();
            return Err(ExecError::OtherCgroup { cgroup, pin_dir });
        }
        Err(source) => {
            return Err(ExecError::Attachment {
                cgroup: captured.to_owned(),
                source: Box::new(source),
            });
        }
    }
    let identity_dir = exec_cgroup(captured, namespace, service_account);
    let dir = identity_dir.join(format!("exec-{}", std::process::id()));
    cgroup::create(&dir)?;
    // Tell the kernel this directory carries an identity, so verdicts can be cached for it from
    // the first connection on. Without a running dataplane there is nothing to tell.
    match cgroup::id(&identity_dir).map(|id| crate::bpf::register_anchor(pin_dir, id)) {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => {
            warn!(%error, "registering the identity with the kernel failed (only speed is lost)")
        }
        Err(error) => warn!(%error, "reading the identity cgroup id failed"),
    }
    // The running dataplane scans identities now, so the command's first connect() already
    // meets the kernel verdict cache (not the next periodic scan, up to 2 s later).
    match rescan::request(pin_dir, RESCAN_LIMIT) {
        Ok(rescan::Outcome::Done) => {}
        // Capture is attached but no waypoint runs: connects are refused (fail closed).
        Ok(rescan::Outcome::NoDataplane) => {}
        Err(error) => {
            warn!(%error, "the dataplane did not confirm the new identity (only speed is lost)")
        }
    }
    let procs_path = dir.join("cgroup.procs");
    let procs = File::options()
        .write(true)
        .open(&procs_path)
        .map_err(|source| ExecError::Procs {
            path: procs_path,
            source,
        })?;
    let fd = procs.as_raw_fd();
    let mut cmd = Command::new(program);
    cmd.args(args);
    // SAFETY: only async-signal-safe calls (write) between fork and exec. Writing "0" to
    // cgroup.procs moves the writing process, so CMD starts inside the cgroup: not one packet
    // leaves before capture applies to it.
    unsafe {
        cmd.pre_exec(move || {
            let b = b"0";
            if libc::write(fd, b.as_ptr().cast(), b.len()) != 1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let spawned = cmd.spawn();
    drop(procs);
    let mut child = match spawned {
        Ok(child) => child,
        Err(source) => {
            let _ = fs::remove_dir(&dir);
            return Err(ExecError::Spawn {
                program: program.clone(),
                source,
            });
        }
    };
    // Like system(3): the child handles ^C; we wait for it and clean up.
    // SAFETY: setting a signal disposition to SIG_IGN.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGQUIT, libc::SIG_IGN);
    }
    let status = child.wait().map_err(|source| ExecError::Spawn {
        program: program.clone(),
        source,
    })?;
    if let Err(error) = fs::remove_dir(&dir) {
        // Something CMD started is still running in it.
        warn!(%error, cgroup = %dir.display(), "leaving the exec cgroup in place");
    }
    Ok(status.code().unwrap_or_else(|| {
        use std::os::unix::process::ExitStatusExt as _;
        128 + status.signal().unwrap_or(0)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_kubernetes_rules() {
        assert!(check_name("namespace", "default", false).is_ok());
        assert!(check_name("service account", "my.sa-1", true).is_ok());
        assert!(check_name("namespace", "a.b", false).is_err());
        assert!(check_name("namespace", "../x", false).is_err());
        assert!(check_name("namespace", "-x", false).is_err());
        assert!(check_name("namespace", "", false).is_err());
        assert!(check_name("namespace", "Upper", false).is_err());
    }
}
