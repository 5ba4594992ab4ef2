//! cgroup v2 and bpffs plumbing: find the cgroup2 mount (never assumed: hybrid hosts mount it at
//! `/sys/fs/cgroup/unified`), create and enter cgroups, read cgroup ids, mount bpffs when missing.
use std::{
    ffi::CString,
    fs, io,
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum CgroupError {
    #[error("no cgroup2 filesystem is mounted (looked in /proc/mounts)")]
    NoCgroup2,
    #[error("reading /proc/mounts")]
    Mounts(#[source] io::Error),
    #[error(
        "no kubelet pod cgroup root (kubepods.slice or kubepods) below {mount}; name it with --cgroup"
    )]
    NoPodRoot { mount: PathBuf },
    #[error("reading this process's cgroup from /proc/self/cgroup")]
    Own(#[source] io::Error),
    #[error("{path} is not on a cgroup2 filesystem")]
    NotCgroup2 { path: PathBuf },
    #[error("creating cgroup {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("moving pid {pid} into cgroup {path}")]
    Enter {
        path: PathBuf,
        pid: u32,
        #[source]
        source: io::Error,
    },
    #[error("reading the cgroup id of {path}")]
    Id {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("mounting bpffs at {path}")]
    MountBpffs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Mount points of a filesystem type, from /proc/mounts.
fn mounts_of(fs_type: &str) -> Result<Vec<PathBuf>, CgroupError> {
    let mounts = fs::read_to_string("/proc/mounts").map_err(CgroupError::Mounts)?;
    Ok(mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let _source = fields.next()?;
            let target = fields.next()?;
            let kind = fields.next()?;
            (kind == fs_type).then(|| PathBuf::from(unescape_mount_path(target)))
        })
        .collect())
}

/// /proc/mounts escapes space, tab, newline and backslash as octal.
fn unescape_mount_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v as char);
            i += 4;
        } else {
            out.push(bytes[i] as char);
            i += 1;
        }
    }
    out
}

/// The cgroup2 mount point (the first one listed).
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    mounts_of("cgroup2")?
        .into_iter()
        .next()
        .ok_or(CgroupError::NoCgroup2)
}

/// The cgroup this process is in (its cgroup2 path from /proc/self/cgroup, on the mount).
pub fn own() -> Result<PathBuf, CgroupError> {
    let mount = cgroup2_mount()?;
    let text = fs::read_to_string("/proc/self/cgroup").map_err(CgroupError::Own)?;
    let rel = text
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .ok_or_else(|| CgroupError::Own(io::Error::other("no cgroup2 (0::) line")))?;
    Ok(mount.join(rel.trim_start_matches('/')))
}

/// The default captured cgroup: `<cgroup2 mount>/egress`.
pub fn default_captured_cgroup() -> Result<PathBuf, CgroupError> {
    Ok(cgroup2_mount()?.join("egress"))
}

/// Checks that `path` lies on the cgroup2 mount.
pub fn ensure_on_cgroup2(path: &Path) -> Result<(), CgroupError> {
    let mounts = mounts_of("cgroup2")?;
    if mounts.iter().any(|m| path.starts_with(m)) {
        Ok(())
    } else {
        Err(CgroupError::NotCgroup2 {
            path: path.to_owned(),
        })
    }
}

/// Creates a cgroup directory (and its parents) if missing.
pub fn create(path: &Path) -> Result<(), CgroupError> {
    fs::create_dir_all(path).map_err(|source| CgroupError::Create {
        path: path.to_owned(),
        source,
    })
}

/// Moves a process (0 = the caller) into a cgroup. In cgroup v2 this moves all its threads.
pub fn enter(path: &Path, pid: u32) -> Result<(), CgroupError> {
    fs::write(path.join("cgroup.procs"), pid.to_string()).map_err(|source| CgroupError::Enter {
        path: path.to_owned(),
        pid,
        source,
    })
}

/// The cgroup id of a cgroup directory: its inode number on cgroupfs, which is what
/// `bpf_get_current_cgroup_id()` returns for tasks inside it.
pub fn id(path: &Path) -> Result<u64, CgroupError> {
    fs::metadata(path)
        .map(|m| m.ino())
        .map_err(|source| CgroupError::Id {
            path: path.to_owned(),
            source,
        })
}

/// Removes a cgroup directory and its descendants, bottom-up. Fails (and leaves the rest) if a
/// cgroup still has processes.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    for entry in fs::read_dir(path)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_tree(&entry.path())?;
        }
    }
    fs::remove_dir(path)
}

/// What [`remove_captured`] did.
#[derive(Debug, Default)]
pub struct Removal {
    /// cgroup directories removed.
    pub removed: usize,
    /// Directories left because processes (or cgroups not of egress's making) are in them.
    pub left: Vec<PathBuf>,
}

/// Removes the cgroups egress made under a captured cgroup — `egress-waypoint` and the
/// `ns/NS/sa/SA/exec-*` tree of `egress exec` — bottom-up, then `captured` itself when nothing
/// else is left in it. A cgroup that still has processes stays, and is reported.
pub fn remove_captured(captured: &Path, waypoint_dir: &str) -> Removal {
    let mut removal = Removal::default();
    for made in [captured.join(waypoint_dir), captured.join("ns")] {
        if made.is_dir() {
            remove_each(&made, &mut removal);
        }
    }
    if captured.is_dir() {
        match fs::remove_dir(captured) {
            Ok(()) => removal.removed += 1,
            Err(_) => removal.left.push(captured.to_owned()),
        }
    }
    removal
}

/// Bottom-up, going on past a directory that cannot be removed.
fn remove_each(dir: &Path, removal: &mut Removal) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_each(&entry.path(), removal);
            }
        }
    }
    match fs::remove_dir(dir) {
        Ok(()) => removal.removed += 1,
        Err(_) => removal.left.push(dir.to_owned()),
    }
}

/// Ensures a bpffs is mounted at or above `dir` and creates `dir`. Mounts one at
/// `/sys/fs/bpf` when none is (bpffs is not mounted at boot on every host).
pub fn ensure_bpffs(dir: &Path) -> Result<(), CgroupError> {
    let mounts = mounts_of("bpf")?;
    if !mounts.iter().any(|m| dir.starts_with(m)) {
        let target = Path::new("/sys/fs/bpf");
        if !dir.starts_with(target) {
            return Err(CgroupError::MountBpffs {
                path: dir.to_owned(),
                source: io::Error::other("not below a bpffs mount, and not below /sys/fs/bpf"),
            });
        }
        mount_bpffs(target)?;
    }
    fs::create_dir_all(dir).map_err(|source| CgroupError::MountBpffs {
        path: dir.to_owned(),
        source,
    })
}

fn mount_bpffs(target: &Path) -> Result<(), CgroupError> {
    let err = |source| CgroupError::MountBpffs {
        path: target.to_owned(),
        source,
    };
    fs::create_dir_all(target).map_err(err)?;
    let c_target = CString::new(target.as_os_str().as_bytes())
        .map_err(io::Error::other)
        .map_err(err)?;
    let fstype = c"bpf";
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            c_target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(err(io::Error::last_os_error()));
    }
    tracing::info!(path = %target.display(), "mounted bpffs");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_octal_in_mount_paths() {
        assert_eq!(unescape_mount_path(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(
            unescape_mount_path("/sys/fs/cgroup/unified"),
            "/sys/fs/cgroup/unified"
        );
    }
}
