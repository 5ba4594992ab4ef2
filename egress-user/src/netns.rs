//! Network namespaces. The kernel keys every client ip:port by the client's network namespace
//! cookie (loopback addresses and ports repeat across namespaces, one per Kubernetes pod); the
//! waypoint learns a listener's namespace by the same cookie.
use std::{io, os::fd::AsRawFd};

/// `SO_NETNS_COOKIE` (Linux >= 5.14), not in every libc crate release yet.
const SO_NETNS_COOKIE: libc::c_int = 71;

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
}
