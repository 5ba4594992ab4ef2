//! Network namespaces. The kernel keys every client ip:port by the client's network namespace
//! cookie (loopback addresses and ports repeat across namespaces, one per Kubernetes pod); the
//! waypoint learns a listener's namespace by the same cookie.
//!
//! The agent opens sockets inside a pod's namespace: a socket belongs to the namespace it was
//! created in for life (bind, connect and everything after use that namespace, from any
//! thread), so only `socket()` has to run there. [`NetnsSockets`] is a thread that entered the
//! pod's namespace once and makes sockets there on request, for the agent's (host-namespace)
//! threads — tokio workers never change namespace. The waypoint's upstream connections still
//! leave from the agent's namespace; a pod's forwarded DNS queries leave from the pod's.
use std::{
    fs::File,
    io,
    net::{SocketAddr, SocketAddrV4, TcpListener, UdpSocket},
    os::fd::{AsFd as _, AsRawFd},
    path::{Path, PathBuf},
    sync::mpsc,
    thread,
};

use socket2::{Domain, Socket, Type};
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
    #[error("creating a socket in the network namespace {path}")]
    Socket {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the thread making sockets in the network namespace {path} failed to run")]
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
/// enters it, makes the socket, and exits, so no thread of the caller ever changes namespace.
pub fn listen_in(netns: &Path, addr: SocketAddrV4) -> Result<NetnsListener, NetnsError> {
    let sockets = NetnsSockets::enter(netns)?;
    Ok(NetnsListener {
        listener: sockets.tcp_listener(addr)?,
        cookie: sockets.cookie(),
    })
}

/// Stack of a [`NetnsSockets`] thread: it only makes sockets.
const FACTORY_STACK: usize = 64 * 1024;
/// Backlog of the listeners made in a namespace.
const BACKLOG: i32 = 1024;

/// One request to a [`NetnsSockets`] thread: a socket of this domain and type, and where the
/// answer goes.
struct Request {
    domain: Domain,
    kind: Type,
    reply: Reply,
}

enum Reply {
    /// A caller outside the runtime, or on it for a moment (opening a pod's listeners).
    Blocking(mpsc::SyncSender<io::Result<Socket>>),
    /// An async caller (a forwarded DNS query).
    Async(tokio::sync::oneshot::Sender<io::Result<Socket>>),
}

/// Makes sockets in one network namespace: a dedicated thread entered it once (`setns`) and
/// makes each socket there on request; the sockets are handed back non-blocking and
/// close-on-exec. The thread ends when this is dropped (and its last request answered).
#[derive(Debug)]
pub struct NetnsSockets {
    path: PathBuf,
    requests: mpsc::Sender<Request>,
    cookie: u64,
}

impl NetnsSockets {
    /// Starts a thread in the network namespace `netns` (a `/proc/<pid>/ns/net` or
    /// `/run/netns/<name>` file), and reads the namespace's cookie from a first socket.
    pub fn enter(netns: &Path) -> Result<Self, NetnsError> {
        let path = netns.to_owned();
        let file = File::open(&path).map_err(|source| NetnsError::Open {
            path: path.clone(),
            source,
        })?;
        let (requests, incoming) = mpsc::channel::<Request>();
        let (entered_tx, entered) = mpsc::sync_channel::<io::Result<()>>(1);
        thread::Builder::new()
            .name("egress-netns".into())
            .stack_size(FACTORY_STACK)
            .spawn(move || {
                // SAFETY: setns on a namespace fd this thread holds open; it changes only this
                // thread's namespace, and this thread only makes sockets.
                let rc = unsafe { libc::setns(file.as_fd().as_raw_fd(), libc::CLONE_NEWNET) };
                let entered = if rc == 0 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                };
                let ok = entered.is_ok();
                let _ = entered_tx.send(entered);
                drop(file);
                if !ok {
                    return;
                }
                // Ends when every sender is gone.
                while let Ok(request) = incoming.recv() {
                    let socket = Socket::new(request.domain, request.kind, None)
                        .and_then(|s| s.set_nonblocking(true).map(|()| s));
                    match request.reply {
                        Reply::Blocking(reply) => {
                            let _ = reply.send(socket);
                        }
                        Reply::Async(reply) => {
                            let _ = reply.send(socket);
                        }
                    }
                }
            })
            .map_err(|source| NetnsError::Thread {
                path: path.clone(),
                source,
            })?;
        match entered.recv() {
            Ok(Ok(())) => {}
            Ok(Err(source)) => return Err(NetnsError::Enter { path, source }),
            Err(_) => {
                return Err(NetnsError::Thread {
                    path,
                    source: io::Error::other("exited before entering the namespace"),
                });
            }
        }
        let mut sockets = Self {
            path,
            requests,
            cookie: 0,
        };
        let probe = sockets.socket_blocking(Domain::IPV4, Type::DGRAM)?;
        sockets.cookie = netns_cookie(&probe).map_err(|source| NetnsError::Cookie {
            path: sockets.path.clone(),
            source,
        })?;
        Ok(sockets)
    }

    /// The namespace's cookie (what the kernel programs see for its sockets).
    pub fn cookie(&self) -> u64 {
        self.cookie
    }

    /// The namespace file this was entered through.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A new socket in the namespace (non-blocking), for an async caller.
    pub async fn socket(&self, domain: Domain, kind: Type) -> io::Result<Socket> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.send(domain, kind, Reply::Async(reply))?;
        answer.await.map_err(|_| self.gone())?
    }

    /// A new socket in the namespace (non-blocking); waits for the thread (a syscall's time).
    fn socket_blocking(&self, domain: Domain, kind: Type) -> Result<Socket, NetnsError> {
        let (reply, answer) = mpsc::sync_channel(1);
        let made = self
            .send(domain, kind, Reply::Blocking(reply))
            .and_then(|()| answer.recv().map_err(|_| self.gone())?);
        made.map_err(|source| NetnsError::Socket {
            path: self.path.clone(),
            source,
        })
    }

    fn send(&self, domain: Domain, kind: Type, reply: Reply) -> io::Result<()> {
        self.requests
            .send(Request {
                domain,
                kind,
                reply,
            })
            .map_err(|_| self.gone())
    }

    fn gone(&self) -> io::Error {
        io::Error::other(format!(
            "the thread in the network namespace {} is gone",
            self.path.display()
        ))
    }

    /// A TCP listener on `addr` in the namespace (non-blocking, ready for
    /// `tokio::net::TcpListener::from_std`).
    pub fn tcp_listener(&self, addr: SocketAddrV4) -> Result<TcpListener, NetnsError> {
        let socket = self.socket_blocking(Domain::IPV4, Type::STREAM)?;
        socket
            .set_reuse_address(true)
            .and_then(|()| socket.bind(&SocketAddr::V4(addr).into()))
            .and_then(|()| socket.listen(BACKLOG))
            .map_err(|source| self.bind_error(addr, source))?;
        Ok(socket.into())
    }

    /// A UDP socket bound to `addr` in the namespace (non-blocking, ready for
    /// `tokio::net::UdpSocket::from_std`).
    pub fn udp_socket(&self, addr: SocketAddrV4) -> Result<UdpSocket, NetnsError> {
        let socket = self.socket_blocking(Domain::IPV4, Type::DGRAM)?;
        socket
            .bind(&SocketAddr::V4(addr).into())
            .map_err(|source| self.bind_error(addr, source))?;
        Ok(socket.into())
    }

    fn bind_error(&self, addr: SocketAddrV4, source: io::Error) -> NetnsError {
        NetnsError::Bind {
            addr,
            path: self.path.clone(),
            source,
        }
    }
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
