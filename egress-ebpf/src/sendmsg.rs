//! cgroup/sendmsg4 and cgroup/sendmsg6: the connect decision for unconnected UDP.
//!
//! A `sendto()`/`sendmsg()` with a destination address never calls connect(), so without these
//! hooks every datagram would bypass REGISTRY_ONLY (and reach ServiceEntry addresses directly).
//! The kernel runs them for each UDP send that names a destination (Linux >= 4.18; attached
//! through a cgroup `bpf_link`, >= 5.7). The decision mirrors connect4/connect6 for a UDP socket:
//! - a ServiceEntry address and port: refused, since the waypoint proxies TCP only and no
//!   ServiceEntry port is served over UDP (fail closed); the waypoint's own cgroup is exempt;
//! - Kubernetes mode (`CONFIG_F_ENROLLED_ONLY`), a task below no enrolled anchor: untouched;
//! - anything else: untouched, unless REGISTRY_ONLY refuses it (allowed CIDRs, such as the
//!   resolv.conf nameservers, and the waypoint excepted).
//!
//! The address is rewritten only for DNS (port 53, `--dns-capture on`, see dns.rs): to the DNS
//! listener. Otherwise there is nothing to redirect a datagram to.
use aya_ebpf::{helpers::bpf_get_current_cgroup_id, programs::SockAddrContext};
use aya_log_ebpf::info;
use egress_common::{FAMILY_INET, FAMILY_INET6, stats};

/// sendmsg hooks run for UDP sockets only.
const SOCK_DGRAM: u32 = 2;

use crate::{
    connect::{
        V4_MAPPED_WORD, left_alone, lookup4, lookup6, not_a_service4, not_a_service6, port_bytes,
    },
    maps::{config, count},
};

/// A datagram to a ServiceEntry address and port: only the waypoint's own sends go through.
/// `port` (network order) is only logged.
#[inline(always)]
fn service_datagram(port: [u8; 2]) -> Result<(), ()> {
    let port = u16::from_be_bytes(port);
    if left_alone() {
        info!(&(), "passed reason=not_enrolled udp_port={}", port);
        return Ok(());
    }
    let Some(config) = config() else {
        count(stats::REFUSED_NO_WAYPOINT);
        info!(&(), "refused reason=no_waypoint udp_port={}", port);
        return Err(());
    };
    // SAFETY: helper without preconditions, allowed for cgroup sock_addr programs.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    if cgroup_id == config.waypoint_cgroup_id {
        count(stats::EXEMPT_WAYPOINT);
        info!(
            &(),
            "exempt reason=waypoint_cgroup udp_port={} cgroup={}", port, cgroup_id
        );
        return Ok(());
    }
    count(stats::REFUSED_UDP);
    info!(
        &(),
        "refused reason=udp udp_port={} cgroup={}", port, cgroup_id
    );
    Err(())
}

#[inline(always)]
fn datagram4(addr: [u8; 4], port: [u8; 2]) -> Result<(), ()> {
    match lookup4(addr, port) {
        Some(_) => service_datagram(port),
        None => not_a_service4(addr, port).map(|_| ()),
    }
}

pub fn sendmsg4(ctx: &SockAddrContext) -> Result<(), ()> {
    // SAFETY: the kernel hands every cgroup sock_addr program a valid context.
    let sa = unsafe { &mut *ctx.sock_addr };
    let addr = sa.user_ip4.to_ne_bytes();
    let port = port_bytes(sa.user_port);
    if let Some(dns) = crate::dns::redirect(ctx, SOCK_DGRAM, addr, port, FAMILY_INET) {
        sa.user_ip4 = u32::from_ne_bytes(dns.addr);
        sa.user_port = u32::from(dns.port.to_be());
        return Ok(());
    }
    datagram4(addr, port)
}

pub fn sendmsg6(ctx: &SockAddrContext) -> Result<(), ()> {
    // SAFETY: as in sendmsg4.
    let sa = unsafe { &mut *ctx.sock_addr };
    let ip6 = [
        sa.user_ip6[0],
        sa.user_ip6[1],
        sa.user_ip6[2],
        sa.user_ip6[3],
    ];
    let port = port_bytes(sa.user_port);
    if ip6[0] == 0 && ip6[1] == 0 && ip6[2] == V4_MAPPED_WORD {
        // `::ffff:a.b.c.d` reaches the IPv4 address: exactly the sendmsg4 decision. (udpv6
        // hands such sends to the IPv4 path, where sendmsg4 sees them first; this keeps the
        // decision right whichever hook runs.)
        let addr = ip6[3].to_ne_bytes();
        if let Some(dns) = crate::dns::redirect(ctx, SOCK_DGRAM, addr, port, FAMILY_INET6) {
            sa.user_ip6[3] = u32::from_ne_bytes(dns.addr);
            sa.user_port = u32::from(dns.port.to_be());
            return Ok(());
        }
        return datagram4(addr, port);
    }
    match lookup6(ip6, port) {
        Some(_) => service_datagram(port),
        None => not_a_service6(ip6, port),
    }
}
