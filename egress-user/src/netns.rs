//! Network namespaces: the cookie the kernel tells them apart by, and listeners opened inside a
//! pod's namespace (ztunnel's in-pod model, design §10). A socket belongs to the namespace it was
//! created in for life, so the agent enters a pod's namespace on a throwaway thread, binds there,
//! and hands the listener back to its own (host-namespace) threads; connections it makes upstream
//! still leave from the agent's namespace.
use std::{
    fs::File,
    io,
    net::{SocketAddrV4, TcpListener},
    os::fd::{AsFd as _, AsRawFd},
    path::{Path, PathBuf},
    thread,
};

use thiserror::Error;

/// `SO_NETNS_COOKIE` (Linux ≥ 5.14): the cookie of the namespace a socket belongs to, the value
/// `bpf_get_netns_cookie()` returns for it in the kernel programs.
const SO_NETNS_COOKIE: libc::c_int = 71;

#[derive(Debug, Error)]
pub enum NetnsError {
    #[error("opening the network namespace {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("entering the network namespace {path} (setns; needs CAP_SYS_ADMIN)")]
    Enter {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("binding {addr} in the network namespace {path}")]
    Bind {
        addr: SocketAddrV4,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "reading the network namespace cookie of the listener in {path} (SO_NETNS_COOKIE, Linux >= 5.14)"
    )]
    Cookie {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the thread binding in the network namespace {path} failed to run")]
    Thread {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The network namespace cookie of a socket (`SO_NETNS_COOKIE`).
pub fn netns_cookie(fd: &impl AsRawFd) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` is a writable u64 of `len` bytes; the fd is open for the call.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// The network namespace of a process, as `<proc>/<pid>/ns/net`.
pub fn of_process(proc: &Path, pid: u32) -> PathBuf {
    proc.join(pid.to_string()).join("ns").join("net")
}

/// A listener bound inside another network namespace, and that namespace's cookie.
#[derive(Debug)]
pub struct NetnsListener {
    /// Non-blocking, ready for `tokio::net::TcpListener::from_std`.
    pub listener: TcpListener,
    pub cookie: u64,
}

/// Binds and listens on `addr` inside the network namespace `netns` (a `/proc/<pid>/ns/net` or
/// `/run/netns/<name>` file). The namespace file is opened by the caller's thread; a new thread
/// enters it, binds, and exits, so no thread of the caller ever changes namespace.
pub fn listen_in(netns: &Path, addr: SocketAddrV4) -> Result<NetnsListener, NetnsError> {
    let path = netns.to_owned();
    let file = File::open(&path).map_err(|source| NetnsError::Open {
        path: path.clone(),
        source,
    })?;
    let thread_path = path.clone();
    let bound = thread::Builder::new()
        .name("egress-netns".into())
        .spawn(move || -> Result<TcpListener, NetnsError> {
            // SAFETY: setns on a namespace fd this thread holds open; it changes only this
            // thread's namespace, and the thread exits right after binding.
            let rc = unsafe { libc::setns(file.as_fd().as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(NetnsError::Enter {
                    path: thread_path,
                    source: io::Error::last_os_error(),
                });
            }
            TcpListener::bind(addr).map_err(|source| NetnsError::Bind {
                addr,
                path: thread_path,
                source,
            })
        })
        .map_err(|source| NetnsError::Thread {
            path: path.clone(),
            source,
        })?
        .join()
        .map_err(|_| NetnsError::Thread {
            path: path.clone(),
            source: io::Error::other("panicked"),
        })??;
    let cookie = netns_cookie(&bound).map_err(|source| NetnsError::Cookie {
        path: path.clone(),
        source,
    })?;
    bound
        .set_nonblocking(true)
        .map_err(|source| NetnsError::Bind { addr, path, source })?;
    Ok(NetnsListener {
        listener: bound,
        cookie,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_of_a_socket_in_this_namespace_is_stable() {
        let a = TcpListener::bind("127.0.0.1:0").expect("bind");
        let b = TcpListener::bind("127.0.0.1:0").expect("bind");
        match (netns_cookie(&a), netns_cookie(&b)) {
            (Ok(x), Ok(y)) => {
                assert_eq!(x, y, "one namespace, one cookie");
                assert_ne!(x, 0);
            }
            // Kernels before 5.14 have no SO_NETNS_COOKIE.
            (Err(e), _) => assert_eq!(e.raw_os_error(), Some(libc::ENOPROTOOPT), "{e}"),
            (_, Err(e)) => panic!("{e}"),
        }
    }

    #[test]
    fn a_missing_namespace_is_named_in_the_error() {
        let err = listen_in(
            Path::new("/nonexistent/ns/net"),
            SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 0),
        )
        .expect_err("no such namespace");
        assert!(err.to_string().contains("/nonexistent/ns/net"), "{err}");
    }
}
