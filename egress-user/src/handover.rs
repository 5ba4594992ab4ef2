//! Listener hand-over from a running `egress run` to its successor, as Envoy's hot restart
//! passes its listen sockets: the successor receives the very sockets (`SCM_RIGHTS` over a unix
//! socket), so there is never a moment in which the address has no listener, and no connection
//! waits in the accept queue of a socket that is about to close (closing a listener resets
//! those; `SO_REUSEPORT` plus `net.ipv4.tcp_migrate_req` would migrate them, but that sysctl
//! is a netns-wide setting and Linux ≥ 5.14 only).
//!
//! The exchange, over the abstract unix socket `@egress/handover/<listen addr>` (abstract
//! names live in the network namespace of the listener they name, and vanish with the process:
//! nothing is left behind by a `kill -9`):
//!
//! 1. the successor connects and names its pin directory; each side checks the other runs as
//!    its own effective uid (a process that could receive the waypoint listener would receive
//!    the captured connections), and the running one that the pins are its own (a run on
//!    other pins would not find the origins of the connections: it gets "address in use");
//! 2. the running process sends `L` with the waypoint and admin listeners, stops accepting
//!    (connects queue in the shared backlog) and releases the name;
//! 3. the successor starts, serves, takes the name and sends `R`: the old process then drains.
//!    Should the successor go away without `R` (it failed to start), the old one accepts
//!    again and offers the listeners anew.
use std::{
    ffi::OsString,
    io::{self, Write as _},
    mem,
    net::{SocketAddr, SocketAddrV4, TcpListener},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        linux::net::SocketAddrExt,
        unix::{
            ffi::{OsStrExt as _, OsStringExt as _},
            net::{SocketAddr as UnixAddr, UnixListener as StdUnixListener, UnixStream},
        },
    },
    path::{Path, PathBuf},
    time::Duration,
};

use thiserror::Error;
use tokio::{
    io::{AsyncReadExt, Interest},
    net::{UnixListener, UnixStream as AsyncUnixStream},
};
use tracing::{debug, info, warn};

/// How long a successor waits for the listeners once connected.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// The most descriptors one hand-over carries.
const MAX_FDS: usize = 4;
/// Byte that carries the listeners.
const LISTENERS: u8 = b'L';
/// Byte the successor sends once it serves.
const READY: u8 = b'R';

/// Longest pin directory path a successor may name.
const MAX_PINS_LEN: usize = 4096;
/// How long the running process waits for a successor to name its pins.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Error)]
pub enum HandoverError {
    #[error("the process offering the listeners on {name} runs as uid {uid}, not as this one")]
    Untrusted { name: String, uid: u32 },
    #[error("receiving the listeners over {name}")]
    Receive {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("{name} handed over no listener on {listen}")]
    NoListener { name: String, listen: SocketAddrV4 },
}

/// The abstract socket name for the waypoint listener on `listen`.
fn name(listen: SocketAddrV4) -> String {
    format!("egress/handover/{listen}")
}

fn address(listen: SocketAddrV4) -> io::Result<UnixAddr> {
    UnixAddr::from_abstract_name(name(listen).as_bytes())
}

/// Listeners a successor received from the running process.
pub struct Inherited {
    pub waypoint: TcpListener,
    /// `None` when the running process's admin listener is on another address.
    pub admin: Option<TcpListener>,
    pub predecessor: Predecessor,
}

/// The process the listeners came from, waiting for this one to serve.
pub struct Predecessor {
    stream: UnixStream,
}

impl Predecessor {
    /// Tells the predecessor this process serves now: it stops for good and drains.
    pub fn release(mut self) {
        if let Err(error) = self.stream.write_all(&[READY]) {
            // It is gone already (drained, killed): nothing is waiting for the word.
            debug!(%error, "the predecessor is gone");
        }
    }
}

/// Takes the listeners over from an `egress run` serving `listen`, if one is. `Ok(None)`: none
/// is (bind them as usual).
pub fn take_over(
    listen: SocketAddrV4,
    admin: SocketAddr,
    pins: &Path,
) -> Result<Option<Inherited>, HandoverError> {
    let name = name(listen);
    let receive = |source| HandoverError::Receive {
        name: name.clone(),
        source,
    };
    let stream = match address(listen).and_then(|addr| UnixStream::connect_addr(&addr)) {
        Ok(stream) => stream,
        Err(error) => {
            debug!(%error, %name, "no running egress offers its listeners");
            return Ok(None);
        }
    };
    let uid = peer_uid(stream.as_raw_fd()).map_err(receive)?;
    if uid != effective_uid() {
        return Err(HandoverError::Untrusted { name, uid });
    }
    (&stream).write_all(&request(pins)).map_err(receive)?;
    stream
        .set_read_timeout(Some(RECEIVE_TIMEOUT))
        .map_err(receive)?;
    let (byte, fds) = recv_fds(stream.as_raw_fd()).map_err(receive)?;
    if byte != Some(LISTENERS) {
        // It runs on other pins, another successor was first, or it began to drain.
        debug!(%name, "the running egress handed nothing over");
        return Ok(None);
    }
    let mut waypoint = None;
    let mut admin_listener = None;
    for fd in fds {
        let Some(listener) = listening_tcp(fd) else {
            continue;
        };
        match listener.local_addr() {
            Ok(SocketAddr::V4(addr)) if addr == listen => waypoint = Some(listener),
            Ok(addr) if addr == admin => admin_listener = Some(listener),
            Ok(addr) => debug!(%addr, "not a listener this process wants; closed"),
            Err(_) => {}
        }
    }
    let Some(waypoint) = waypoint else {
        return Err(HandoverError::NoListener { name, listen });
    };
    info!(%listen, admin = admin_listener.is_some(), "took the listeners over from the running egress");
    Ok(Some(Inherited {
        waypoint,
        admin: admin_listener,
        predecessor: Predecessor { stream },
    }))
}

/// `fd` as a TCP listener, if it is a listening TCP socket.
fn listening_tcp(fd: OwnedFd) -> Option<TcpListener> {
    let accepting = sockopt_int(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_ACCEPTCONN).ok()?;
    let kind = sockopt_int(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_TYPE).ok()?;
    let protocol = sockopt_int(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PROTOCOL).ok()?;
    (accepting == 1 && kind == libc::SOCK_STREAM && protocol == libc::IPPROTO_TCP)
        .then(|| TcpListener::from(fd))
}

/// The running process's side: offers its listeners to one successor at a time.
pub struct Offer {
    listener: UnixListener,
    name: String,
    pins: PathBuf,
}

/// Who answered an [`Offer`]: a successor holding the listeners, starting up.
pub struct Successor {
    stream: AsyncUnixStream,
}

/// How a successor's start-up ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It serves: stop for good and drain.
    Ready,
    /// It went away without serving: accept again.
    Gone,
}

impl Offer {
    /// Takes the name for `listen`, for successors on the pins `pins`. Fails while another
    /// process holds it.
    pub fn new(listen: SocketAddrV4, pins: &Path) -> io::Result<Self> {
        let listener = StdUnixListener::bind_addr(&address(listen)?)?;
        listener.set_nonblocking(true)?;
        Ok(Self {
            listener: UnixListener::from_std(listener)?,
            name: name(listen),
            pins: canonical(pins),
        })
    }

    /// As [`Offer::new`], retrying for a moment: a predecessor that just handed over releases
    /// the name right after.
    pub async fn take(listen: SocketAddrV4, pins: &Path) -> Option<Self> {
        let mut last = None;
        for _ in 0..20 {
            match Self::new(listen, pins) {
                Ok(offer) => return Some(offer),
                Err(error) => last = Some(error),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Some(error) = last {
            warn!(%error, name = %name(listen), "cannot offer the listeners: a later egress run will not be able to take over without a gap");
        }
        None
    }

    /// Waits for a successor run by this uid on the same pins and hands it `listeners`.
    pub async fn successor(&self, listeners: &[RawFd]) -> Successor {
        loop {
            let mut stream = match self.listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) => {
                    warn!(%error, name = %self.name, "accepting a successor failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            match peer_uid(stream.as_raw_fd()) {
                Ok(uid) if uid == effective_uid() => {}
                Ok(uid) => {
                    warn!(uid, name = %self.name, "refused to hand the listeners to another uid");
                    continue;
                }
                Err(error) => {
                    warn!(%error, "reading the credentials of a successor failed");
                    continue;
                }
            }
            match tokio::time::timeout(REQUEST_TIMEOUT, read_request(&mut stream)).await {
                Ok(Ok(pins)) if pins == self.pins => {}
                Ok(Ok(pins)) => {
                    warn!(
                        name = %self.name,
                        theirs = %pins.display(),
                        ours = %self.pins.display(),
                        "an egress run on other pins asked for the listeners; refused"
                    );
                    continue;
                }
                Ok(Err(error)) => {
                    debug!(%error, "a successor sent no request");
                    continue;
                }
                Err(_) => {
                    debug!("a successor sent no request in time");
                    continue;
                }
            }
            let sent = stream
                .async_io(Interest::WRITABLE, || {
                    send_fds(stream.as_raw_fd(), LISTENERS, listeners)
                })
                .await;
            match sent {
                Ok(()) => return Successor { stream },
                Err(error) => warn!(%error, "handing the listeners over failed"),
            }
        }
    }
}

impl Successor {
    /// Waits until the successor serves or goes away.
    pub async fn outcome(&mut self) -> Outcome {
        let mut byte = [0u8; 1];
        match self.stream.read(&mut byte).await {
            Ok(1) if byte[0] == READY => Outcome::Ready,
            _ => Outcome::Gone,
        }
    }
}

/// What a successor sends first: the length of its pin directory path (u16, big-endian), then
/// the path.
fn request(pins: &Path) -> Vec<u8> {
    let pins = canonical(pins);
    let path = pins.as_os_str().as_bytes();
    let path = &path[..path.len().min(MAX_PINS_LEN)];
    let mut request = (path.len() as u16).to_be_bytes().to_vec();
    request.extend_from_slice(path);
    request
}

/// `path` with symlinks and `.`/`..` resolved, so that two spellings of one pin directory agree.
fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
}

async fn read_request(stream: &mut AsyncUnixStream) -> io::Result<PathBuf> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await?;
    let len = usize::from(u16::from_be_bytes(len));
    if len > MAX_PINS_LEN {
        return Err(io::Error::other("pin directory path too long"));
    }
    let mut path = vec![0u8; len];
    stream.read_exact(&mut path).await?;
    Ok(PathBuf::from(OsString::from_vec(path)))
}

fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The uid of the process at the other end of a connected unix socket (`SO_PEERCRED`, as the
/// kernel recorded it at connect/listen).
fn peer_uid(fd: RawFd) -> io::Result<u32> {
    let mut cred: libc::ucred = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a writable ucred of `len` bytes; `fd` is open for the call.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

fn sockopt_int(fd: RawFd, level: libc::c_int, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` is a writable int of `len` bytes; `fd` is open for the call.
    let rc = unsafe { libc::getsockopt(fd, level, name, (&raw mut value).cast(), &mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// Control-message buffer for up to [`MAX_FDS`] descriptors, aligned for `cmsghdr`.
#[repr(C, align(8))]
struct Control([u8; 64]);

/// Sends `byte` with `fds` attached (`SCM_RIGHTS`: the receiver gets its own descriptors of the
/// same sockets).
fn send_fds(sock: RawFd, byte: u8, fds: &[RawFd]) -> io::Result<()> {
    assert!(fds.len() <= MAX_FDS, "at most {MAX_FDS} descriptors");
    let mut data = [byte];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    let mut control = Control([0; 64]);
    let payload = mem::size_of_val(fds) as u32;
    // SAFETY: CMSG_SPACE is arithmetic.
    let space = unsafe { libc::CMSG_SPACE(payload) } as usize;
    assert!(space <= control.0.len());
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: `msg` points at `control`, which has room for one header and `fds` (checked
    // above); CMSG_DATA may be unaligned for an int, so the descriptors are written unaligned.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(payload) as usize;
        let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
        for (i, fd) in fds.iter().enumerate() {
            data.add(i).write_unaligned(*fd);
        }
    }
    // SAFETY: `msg` and everything it points at live across the call.
    let sent = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
    match sent {
        1 => Ok(()),
        -1 => Err(io::Error::last_os_error()),
        _ => Err(io::Error::other("short send")),
    }
}

/// Receives one byte and the descriptors attached to it (close-on-exec). `None`: the peer
/// closed without sending.
fn recv_fds(sock: RawFd) -> io::Result<(Option<u8>, Vec<OwnedFd>)> {
    let mut data = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    let mut control = Control([0; 64]);
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg.msg_controllen = control.0.len();
    // SAFETY: `msg` and the buffers it points at live across the call.
    let received = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if received < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `msg.msg_control` with `msg_controllen` bytes of control
    // messages; the CMSG_* macros walk exactly those. Every SCM_RIGHTS descriptor is new and
    // owned by this process from here on.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for i in 0..bytes / mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other("descriptors truncated"));
    }
    Ok(((received == 1).then_some(data[0]), fds))
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    #[test]
    fn listeners_travel_as_the_same_socket() {
        let (a, b) = UnixStream::pair().expect("a socket pair");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        send_fds(a.as_raw_fd(), LISTENERS, &[listener.as_raw_fd()]).expect("send");
        let (byte, fds) = recv_fds(b.as_raw_fd()).expect("receive");
        assert_eq!(byte, Some(LISTENERS));
        assert_eq!(fds.len(), 1);
        let received = listening_tcp(fds.into_iter().next().expect("one fd")).expect("a listener");
        assert_eq!(received.local_addr().expect("addr"), addr);
        // The original is closed: the socket lives on in the received descriptor, with what
        // queued in its backlog.
        let client = std::net::TcpStream::connect(addr).expect("connect");
        drop(listener);
        let (accepted, peer) = received.accept().expect("accept on the received listener");
        assert_eq!(peer, client.local_addr().expect("client addr"));
        drop(accepted);
    }

    #[test]
    fn only_listening_tcp_sockets_are_taken() {
        let (a, _b) = UnixStream::pair().expect("a socket pair");
        assert!(listening_tcp(OwnedFd::from(a)).is_none());
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        assert!(listening_tcp(OwnedFd::from(udp)).is_none());
    }

    #[test]
    fn a_closed_peer_sends_nothing() {
        let (a, b) = UnixStream::pair().expect("a socket pair");
        drop(a);
        let (byte, fds) = recv_fds(b.as_raw_fd()).expect("receive");
        assert_eq!(byte, None);
        assert!(fds.is_empty());
    }

    #[tokio::test]
    async fn a_successor_takes_the_listeners_over_and_says_when_it_serves() {
        let waypoint = TcpListener::bind("127.0.0.1:0").expect("bind");
        let SocketAddr::V4(listen) = waypoint.local_addr().expect("addr") else {
            unreachable!("bound on IPv4")
        };
        let admin = TcpListener::bind("127.0.0.1:0").expect("bind admin");
        let admin_addr = admin.local_addr().expect("admin addr");
        let offer = Offer::new(listen, Path::new("/pins")).expect("offer");
        let fds = [waypoint.as_raw_fd(), admin.as_raw_fd()];
        let offering = async { offer.successor(&fds).await };
        let taking = tokio::task::spawn_blocking(move || {
            take_over(listen, admin_addr, Path::new("/pins")).expect("take over")
        });
        let (mut successor, inherited) = tokio::join!(offering, taking);
        let inherited = inherited.expect("joined").expect("listeners");
        assert_eq!(
            inherited.waypoint.local_addr().expect("addr"),
            waypoint.local_addr().expect("addr")
        );
        assert_eq!(
            inherited
                .admin
                .as_ref()
                .map(|l| l.local_addr().expect("addr")),
            Some(admin_addr)
        );
        inherited.predecessor.release();
        assert_eq!(successor.outcome().await, Outcome::Ready);
    }

    #[tokio::test]
    async fn a_successor_that_goes_away_is_gone() {
        let waypoint = TcpListener::bind("127.0.0.1:0").expect("bind");
        let SocketAddr::V4(listen) = waypoint.local_addr().expect("addr") else {
            unreachable!("bound on IPv4")
        };
        let offer = Offer::new(listen, Path::new("/pins")).expect("offer");
        let fds = [waypoint.as_raw_fd()];
        let offering = async { offer.successor(&fds).await };
        let taking = tokio::task::spawn_blocking(move || {
            take_over(
                listen,
                "127.0.0.1:1".parse().expect("addr"),
                Path::new("/pins"),
            )
            .expect("take over")
        });
        let (mut successor, inherited) = tokio::join!(offering, taking);
        drop(inherited);
        assert_eq!(successor.outcome().await, Outcome::Gone);
    }

    #[tokio::test]
    async fn a_run_on_other_pins_gets_nothing() {
        let waypoint = TcpListener::bind("127.0.0.1:0").expect("bind");
        let SocketAddr::V4(listen) = waypoint.local_addr().expect("addr") else {
            unreachable!("bound on IPv4")
        };
        let offer = Offer::new(listen, Path::new("/pins")).expect("offer");
        let fds = [waypoint.as_raw_fd()];
        let taking = tokio::task::spawn_blocking(move || {
            take_over(
                listen,
                "127.0.0.1:1".parse().expect("addr"),
                Path::new("/other"),
            )
            .expect("take over")
        });
        let offering = tokio::time::timeout(Duration::from_millis(500), offer.successor(&fds));
        let (offered, taken) = tokio::join!(offering, taking);
        assert!(offered.is_err(), "nothing was handed over");
        assert!(taken.expect("joined").is_none());
    }

    #[test]
    fn nothing_to_take_over_without_a_running_process() {
        let listen: SocketAddrV4 = "127.0.0.1:9".parse().expect("addr");
        assert!(
            take_over(
                listen,
                "127.0.0.1:1".parse().expect("addr"),
                Path::new("/pins")
            )
            .expect("no error")
            .is_none()
        );
    }
}
