//! sockops: when a redirected connection is established, re-key its origin by the client's
//! (ip, port) — the only thing the waypoint knows about the socket it accepts.
//! ACTIVE_ESTABLISHED runs before the client's final ACK is sent, so the entry exists before
//! the waypoint can accept the connection.
use aya_ebpf::{EbpfContext as _, helpers::bpf_get_socket_cookie, programs::SockOpsContext};
use egress_common::{PeerKey, stats};

use crate::maps::{EG_ORIGINS_V1, EG_PEERS_V1, count};

const BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB: u32 = 4;

pub fn sockops(ctx: &SockOpsContext) {
    if ctx.op() != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        return;
    }
    // SAFETY: the context is a valid bpf_sock_ops for this program type.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(origin) = EG_ORIGINS_V1.get_ptr(cookie) else {
        return;
    };
    // SAFETY: pointer from a successful lookup; copied out at once.
    let origin = unsafe { *origin };
    let key = PeerKey {
        // local_ip4 is the IPv4 source address, also for a v6 socket talking to a v4-mapped peer.
        addr: ctx.local_ip4().to_ne_bytes(),
        port: ctx.local_port() as u16,
        _pad: 0,
    };
    if EG_PEERS_V1.insert(key, origin, 0).is_ok() {
        count(stats::PEER_RECORDED);
    }
}
