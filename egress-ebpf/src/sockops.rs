//! sockops: when a redirected connection is established, re-key its origin by the client's
//! (netns, ip, port) — the only thing the waypoint knows about the socket it accepts (it knows
//! the namespace by the listener that accepted it). Loopback addresses and ports repeat across
//! network namespaces (one per Kubernetes pod), so every key with an ip:port holds the netns
//! cookie too (`bpf_get_netns_cookie` in sock_ops: Linux >= 5.15).
//! ACTIVE_ESTABLISHED runs before the client's final ACK is sent, so the entry exists before
//! the waypoint can accept the connection.
//!
//! With `CONFIG_F_SOCKMAP`, both ends of an HTTP connection between a captured application and
//! the waypoint also go into the sockhash (the application's at ACTIVE_ESTABLISHED, the
//! waypoint's accepted socket at PASSIVE_ESTABLISHED), where sk_msg short-cuts their messages —
//! only once the waypoint's end has paired them in `EG_SHORTCUT_V2`.
//!
//! Why pairing: the sockhash is keyed by 4-tuple, but an entry lives as long as its socket is
//! open, not as long as its connection holds the 4-tuple. Since Linux 6.2 (no sockmap unhash
//! handler; backported to stable kernels) a socket that was reset stays in the map until its
//! owner calls close(), so that it
//! can still read what was queued to it. A client that reuses its local port connects again
//! while the waypoint's socket of the last connection is in CLOSE_WAIT: its SYN draws a
//! challenge ACK, its RST resets that socket, and the new connection is accepted with the same
//! 4-tuple while the old socket still holds the key. Without pairing, the new connection's
//! request was redirected into the old socket, answered there, and the reply lost.
use aya_ebpf::{
    EbpfContext as _,
    bindings::bpf_sock_ops,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    maps::lpm_trie::Key,
    programs::SockOpsContext,
};
use egress_common::{
    CONFIG_F_SOCKMAP, Config, Origin, PeerKey, SERVICE_F_HTTP, SERVICE_KEY_PORT_BITS,
    SHORTCUT_PAIRED, SHORTCUT_TCP, ServiceKey4, SockKey, stats,
};

use crate::maps::{
    EG_ORIGINS_V1, EG_PEERS_V2, EG_SERVICES4_V1, EG_SHORTCUT_V2, EG_SOCKS_V2, config, count,
};

const BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB: u32 = 4;
const BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB: u32 = 5;
/// `BPF_ANY`: create or replace.
pub const BPF_ANY: u64 = 0;
/// `BPF_NOEXIST`: only create. A socket already in the sockhash keeps its entry, also a stale
/// one of an earlier connection with the same 4-tuple (the new connection then stays on TCP):
/// replacing it would drop that socket's psock, and with it the redirected bytes its owner has
/// not read yet.
pub const BPF_NOEXIST: u64 = 1;

pub fn sockops(ctx: &SockOpsContext) {
    match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => active_established(ctx),
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => passive_established(ctx),
        _ => {}
    }
}

fn active_established(ctx: &SockOpsContext) {
    // SAFETY: the context is a valid bpf_sock_ops for this program type.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(origin) = EG_ORIGINS_V1.get_ptr(cookie) else {
        return;
    };
    // SAFETY: pointer from a successful lookup; copied out at once.
    let origin = unsafe { *origin };
    let netns_cookie = netns_cookie(ctx);
    let key = PeerKey {
        netns_cookie,
        // local_ip4 is the IPv4 source address, also for a v6 socket talking to a v4-mapped peer.
        addr: ctx.local_ip4().to_ne_bytes(),
        port: ctx.local_port() as u16,
        _pad: 0,
    };
    if EG_PEERS_V2.insert(key, origin, 0).is_ok() {
        count(stats::PEER_RECORDED);
    }
    let own = sock_key(ctx, netns_cookie);
    // A new connection with this 4-tuple: forget what an earlier one decided, before this socket
    // can be found in the sockhash under the key.
    let _ = EG_SHORTCUT_V2.remove(&own);
    let inserted =
        config().is_some_and(|config| accelerated(&config, &origin)) && insert_socket(ctx, own);
    if !inserted {
        // The waypoint's end must not pair with a socket that is not this one.
        let _ = EG_SHORTCUT_V2.insert(&own, &SHORTCUT_TCP, BPF_ANY);
    }
}

/// The waypoint's end of a connection an application opened: into the sockhash too, when the
/// application's end is accelerated.
fn passive_established(ctx: &SockOpsContext) {
    let Some(config) = config() else {
        return;
    };
    if config.flags & CONFIG_F_SOCKMAP == 0
        || ctx.local_ip4().to_ne_bytes() != config.waypoint_addr
        || ctx.local_port() != u32::from(config.waypoint_port)
    {
        return;
    }
    // The accepted socket lives in its listener's namespace, which is the client's.
    let netns_cookie = netns_cookie(ctx);
    let client = PeerKey {
        netns_cookie,
        addr: ctx.remote_ip4().to_ne_bytes(),
        port: remote_port(ctx.remote_port()),
        _pad: 0,
    };
    let Some(origin) = EG_PEERS_V2.get_ptr(&client) else {
        return;
    };
    // SAFETY: pointer from a successful lookup; copied out at once.
    let origin = unsafe { *origin };
    if !accelerated(&config, &origin) {
        return;
    }
    let own = sock_key(ctx, netns_cookie);
    let app_end = own.reversed();
    // Paired only when both ends went into the sockhash as themselves and the application has
    // sent nothing by TCP yet (sk_msg claims the entry first then): from here on every byte in
    // both directions takes the short-cut, so none can overtake bytes still on the TCP path.
    let paired = insert_socket(ctx, own)
        && EG_SHORTCUT_V2
            .insert(&app_end, &SHORTCUT_PAIRED, BPF_NOEXIST)
            .is_ok();
    if !paired {
        let _ = EG_SHORTCUT_V2.insert(&app_end, &SHORTCUT_TCP, BPF_ANY);
        count(stats::SOCKMAP_UNPAIRED);
    }
}

/// Only HTTP services, which the waypoint reads with read(2) alone. TCP and TLS ports are
/// peeked (MSG_PEEK for the ClientHello) and copied through; they stay on the plain TCP path,
/// which keeps the short-cut to the one access pattern its tests cover.
fn accelerated(config: &Config, origin: &Origin) -> bool {
    if config.flags & CONFIG_F_SOCKMAP == 0 {
        return false;
    }
    let key = Key::new(
        SERVICE_KEY_PORT_BITS + 32,
        ServiceKey4 {
            port: origin.dst_port.to_be_bytes(),
            _pad: [0; 2],
            addr: origin.dst_addr,
        },
    );
    EG_SERVICES4_V1
        .get(&key)
        .is_some_and(|service| service.flags & SERVICE_F_HTTP != 0)
}

/// The cookie of the socket's network namespace (never 0; Linux >= 5.15 for sock_ops).
#[inline(always)]
fn netns_cookie(ctx: &SockOpsContext) -> u64 {
    // SAFETY: the context is a valid bpf_sock_ops for this program type.
    unsafe { bpf_get_netns_cookie(ctx.as_ptr()) }
}

/// This socket's key in the sockhash: its namespace, its own end, then its peer's.
fn sock_key(ctx: &SockOpsContext, netns_cookie: u64) -> SockKey {
    SockKey {
        netns_cookie,
        local_ip4: ctx.local_ip4(),
        remote_ip4: ctx.remote_ip4(),
        local_port: ctx.local_port(),
        remote_port: u32::from(remote_port(ctx.remote_port())),
    }
}

/// Puts the socket into the sockhash under `key`, unless the key is taken.
fn insert_socket(ctx: &SockOpsContext, mut key: SockKey) -> bool {
    // SAFETY: the context pointer is the program's bpf_sock_ops.
    let ops = unsafe { &mut *(ctx.as_ptr() as *mut bpf_sock_ops) };
    let inserted = EG_SOCKS_V2.update(&mut key, ops, BPF_NOEXIST).is_ok();
    if inserted {
        count(stats::SOCKMAP_INSERTED);
    }
    inserted
}

/// sock_ops and sk_msg give the remote port in network byte order, in the upper half of the
/// u32 on little-endian machines (the lower half on others): host order here.
#[inline(always)]
pub fn remote_port(raw: u32) -> u16 {
    let network = if raw > 0xffff { raw >> 16 } else { raw };
    u16::from_be(network as u16)
}
