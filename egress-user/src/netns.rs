//! Network namespaces. The kernel keys every client ip:port by the client's network namespace
//! cookie (loopback addresses and ports repeat across namespaces, one per Kubernetes pod); the
//! waypoint learns a listener's namespace by the same cookie.
//!
//! The agent opens listeners inside a pod's namespace: a socket belongs to the namespace it
//! was created in for life, so a throwaway thread enters the pod's namespace, binds there, and
//! hands the listener back to the agent's (host-namespace) threads; connections it makes
//! upstream still leave from the agent's namespace.
use std::{
    fs::File,
    io,
    net::{SocketAddrV4, TcpListener},
    os::fd::{AsFd as _, AsRawFd},
    path::{Path, PathBuf},
    thread,
};

use thiserror::Error;

/// `SO_NETNS_COOKIE` (Linux >= 5.14), not in every libc crate release yet.
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

/// The cookie of the network namespace `fd` (a socket) lives in: the value
/// `bpf_get_netns_cookie` gives the kernel programs for the sockets of that namespace.
pub fn netns_cookie(fd: &impl AsRawFd) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` is a writable u64 of `len` bytes; the fd is borrowed for the call.
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
    fn sockets_of_one_namespace_share_its_cookie() {
        let a = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let b = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let cookie = netns_cookie(&a).expect("SO_NETNS_COOKIE");
        assert_ne!(cookie, 0, "the kernel never hands out cookie 0");
        assert_eq!(netns_cookie(&b).expect("SO_NETNS_COOKIE"), cookie);
    }

    #[test]
    fn a_file_that_is_no_socket_is_an_error() {
        let file = std::fs::File::open("/dev/null").expect("open /dev/null");
        let error = netns_cookie(&file).expect_err("not a socket");
        assert_eq!(error.raw_os_error(), Some(libc::ENOTSOCK));
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
