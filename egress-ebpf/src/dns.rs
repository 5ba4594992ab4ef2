//! DNS capture (`--dns-capture on`): a captured task's DNS goes to the dataplane's DNS listener,
//! which answers ServiceEntry hosts with their VIPs and forwards everything else to the
//! resolver the task asked.
//!
//! - connect4 (UDP and TCP) and sendmsg4 (unconnected UDP) to port 53: the resolver is recorded
//!   as the socket's origin (`EG_ORIGINS_V1`, by cookie, `service_id` [`DNS_SERVICE_ID`]) and
//!   the destination rewritten to the listener. The same for v4-mapped destinations of IPv6
//!   sockets. Pure IPv6 resolvers are left alone (no IPv6 listener yet).
//! - getpeername (peername.rs) reports the resolver for a connected socket, from the origin.
//! - recvmsg4/6: a datagram from the listener shows the recorded resolver as its source, so the
//!   application sees the reply from the server it asked (Linux >= 4.20... cgroup bpf_link 5.7).
//! - TCP: sockops re-keys the origin by the client's (netns, ip, port) into `EG_PEERS_V2`, as
//!   for the waypoint; the DNS listener takes it from there on accept.
//! - UDP: a connected socket gets its local port only after connect4 ran, so cgroup_skb egress
//!   records the client (netns, ip, port) of each datagram headed for the listener in
//!   `EG_DNSPEERS_V1`; the listener looks the resolver up by the datagram's source.
//!
//! The waypoint's own cgroup is exempt (its forwarded queries go to the real resolver, also
//! those it sends from a pod's netns). Kubernetes mode (`CONFIG_F_ENROLLED_ONLY`): only a task
//! below an enrolled anchor (`IDENTITY_F_ENROLLED`) is redirected, as for the waypoint
//! ([`left_alone`]); a pod that is not enrolled keeps its DNS untouched. The listener address
//! is the same in every pod: the agent opens one in each enrolled pod's netns.
use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_cgroup_id, bpf_get_netns_cookie, bpf_get_socket_cookie},
    programs::{SkBuffContext, SockAddrContext},
};
use aya_log_ebpf::info;
use core::net::Ipv4Addr;
use egress_common::{DNS_PORT, DNS_SERVICE_ID, DnsConfig, Origin, PeerKey, stats};

use crate::{
    connect::{V4_MAPPED_WORD, left_alone},
    maps::{EG_DNSPEERS_V1, EG_ORIGINS_V1, config, count, dns_config},
};

const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
const IPPROTO_UDP: u8 = 17;

/// If this connect or send goes to the DNS port and DNS capture applies, records the resolver
/// and returns the listener to rewrite the destination to. `port` is network-order bytes.
#[inline(always)]
pub fn redirect(
    ctx: &SockAddrContext,
    sock_type: u32,
    addr: [u8; 4],
    port: [u8; 2],
    family: u16,
) -> Option<DnsConfig> {
    if u16::from_be_bytes(port) != DNS_PORT || (sock_type != SOCK_DGRAM && sock_type != SOCK_STREAM)
    {
        return None;
    }
    let dns = dns_config()?;
    // SAFETY: helper without preconditions, allowed for cgroup sock_addr programs.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    if config().is_some_and(|c| c.waypoint_cgroup_id == cgroup_id) {
        // The waypoint's own lookups (and its forwarded queries) go to the real resolver.
        return None;
    }
    if left_alone() {
        return None;
    }
    let origin = Origin {
        cgroup_id,
        identity_id: 0,
        dst_addr: addr,
        dst_port: DNS_PORT,
        family,
        service_id: DNS_SERVICE_ID,
        pid: 0,
        uid: 0,
        gid: 0,
    };
    // SAFETY: the context is a valid bpf_sock_addr for this program type.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if EG_ORIGINS_V1.insert(cookie, origin, 0).is_err() {
        // Without the origin the reply could not be attributed: leave the query alone.
        return None;
    }
    count(stats::DNS_REDIRECTED);
    info!(
        &(),
        "dns redirected resolver={}:53 cgroup={} tcp={}",
        Ipv4Addr::from(addr),
        cgroup_id,
        (sock_type == SOCK_STREAM) as u32
    );
    Some(dns)
}

/// The resolver recorded for this socket, if it is a DNS socket redirected by us.
#[inline(always)]
fn dns_origin(ctx: &SockAddrContext) -> Option<Origin> {
    // SAFETY: the context is a valid bpf_sock_addr for this program type.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let origin = EG_ORIGINS_V1.get_ptr(cookie)?;
    // SAFETY: pointer from a successful lookup; copied out at once.
    let origin = unsafe { *origin };
    (origin.service_id == DNS_SERVICE_ID).then_some(origin)
}

/// Whether `addr` (network order), `user_port` (network order in the low half) is the listener.
#[inline(always)]
fn from_listener(dns: &DnsConfig, addr: [u8; 4], user_port: u32) -> bool {
    addr == dns.addr && (user_port as u16) == dns.port.to_be()
}

pub fn recvmsg4(ctx: &SockAddrContext) {
    let Some(dns) = dns_config() else {
        return;
    };
    // SAFETY: valid context, see above.
    let sa = unsafe { &mut *ctx.sock_addr };
    if !from_listener(&dns, sa.user_ip4.to_ne_bytes(), sa.user_port) {
        return;
    }
    let Some(origin) = dns_origin(ctx) else {
        return;
    };
    sa.user_ip4 = u32::from_ne_bytes(origin.dst_addr);
    sa.user_port = u32::from(origin.dst_port.to_be());
    count(stats::DNS_REPLY_RESTORED);
}

pub fn recvmsg6(ctx: &SockAddrContext) {
    let Some(dns) = dns_config() else {
        return;
    };
    // SAFETY: valid context, see above.
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.user_ip6[0] != 0 || sa.user_ip6[1] != 0 || sa.user_ip6[2] != V4_MAPPED_WORD {
        return;
    }
    if !from_listener(&dns, sa.user_ip6[3].to_ne_bytes(), sa.user_port) {
        return;
    }
    let Some(origin) = dns_origin(ctx) else {
        return;
    };
    sa.user_ip6[3] = u32::from_ne_bytes(origin.dst_addr);
    sa.user_port = u32::from(origin.dst_port.to_be());
    count(stats::DNS_REPLY_RESTORED);
}

/// cgroup_skb egress: a UDP datagram headed for the DNS listener from a socket we redirected:
/// its client (netns, ip, port) → the resolver, for the listener. Every packet passes.
pub fn egress(ctx: &SkBuffContext) {
    let Some(dns) = dns_config() else {
        return;
    };
    // IPv4 header: version/ihl at 0, protocol at 9, source at 12, destination at 16.
    let Ok(vihl) = ctx.load::<u8>(0) else {
        return;
    };
    if vihl >> 4 != 4 {
        return;
    }
    let Ok(proto) = ctx.load::<u8>(9) else {
        return;
    };
    if proto != IPPROTO_UDP {
        return;
    }
    let Ok(dst) = ctx.load::<[u8; 4]>(16) else {
        return;
    };
    if dst != dns.addr {
        return;
    }
    let ihl = usize::from(vihl & 0x0f) * 4;
    if ihl < 20 {
        return;
    }
    let Ok(ports) = ctx.load::<[u8; 4]>(ihl) else {
        return;
    };
    if u16::from_be_bytes([ports[2], ports[3]]) != dns.port {
        return;
    }
    let Ok(src) = ctx.load::<[u8; 4]>(12) else {
        return;
    };
    // SAFETY: the context is a valid __sk_buff for this program type.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(origin) = EG_ORIGINS_V1.get_ptr(cookie) else {
        return;
    };
    // SAFETY: pointer from a successful lookup; copied out at once.
    let origin = unsafe { *origin };
    if origin.service_id != DNS_SERVICE_ID {
        return;
    }
    // SAFETY: as above (cgroup_skb may ask for the netns cookie since Linux 5.x).
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let key = PeerKey {
        netns_cookie,
        addr: src,
        port: u16::from_be_bytes([ports[0], ports[1]]),
        _pad: 0,
    };
    if EG_DNSPEERS_V1.insert(key, origin, 0).is_ok() {
        count(stats::DNS_PEER_RECORDED);
    }
}
