//! cgroup/connect4 and cgroup/connect6: send ServiceEntry traffic to the waypoint.
//!
//! The decision for one destination:
//! - not a ServiceEntry address and port: untouched;
//! - Kubernetes mode (`CONFIG_F_ENROLLED_ONLY`) and the task is below no enrolled anchor (not a
//!   pod of the mesh): untouched, also where REGISTRY_ONLY would refuse;
//! - from the waypoint's own cgroup (by cgroup id, which a workload cannot forge): untouched;
//! - no waypoint configured yet, origin not recordable, UDP, or an IPv6 ServiceEntry: refused
//!   (fail closed: never a direct path);
//! - otherwise the origin is recorded by socket cookie and the destination becomes the waypoint.
//!
//! Each decision is also logged through aya-log (`egress run --kernel-log`). The log statements
//! test aya-log's `AYA_LOG_LEVEL`, a read-only global the loader sets before load: with the log
//! off it is 0, the verifier sees a constant and removes the log code, so the hot path runs the
//! same instructions as without logging (see the README for how that was measured).
use core::net::{Ipv4Addr, Ipv6Addr};

use aya_ebpf::{
    EbpfContext as _,
    btf_maps::lpm_trie::Key,
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, bpf_get_socket_cookie,
    },
    programs::SockAddrContext,
};
use aya_log_ebpf::info;
use egress_common::{
    AllowKey4, CONFIG_F_REGISTRY_ONLY, Config, FAMILY_INET, FAMILY_INET6, IDENTITY_F_CACHEABLE,
    IDENTITY_F_ENROLLED, MAX_CGROUP_LEVEL, Origin, SERVICE_F_SHARED, SERVICE_KEY_PORT_BITS,
    ServiceKey4, ServiceKey6, ServiceValue, VERDICT_DENY, VerdictKey, stats,
};

use crate::maps::{
    EG_ALLOWED4_V1, EG_IDENTITY_V1, EG_ORIGINS_V1, EG_SERVICES4_V1, EG_SERVICES6_V1,
    EG_VERDICTS_V1, config, count, enrolled_only,
};

const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;

/// `::ffff:0:0/96` prefix word, as stored (network order) in `user_ip6[2]`.
pub const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// Port from a `user_port` field: a network-order u16 in the low half of a u32.
#[inline(always)]
pub fn port_bytes(user_port: u32) -> [u8; 2] {
    (user_port as u16).to_ne_bytes()
}

#[inline(always)]
pub fn lookup4(addr: [u8; 4], port: [u8; 2]) -> Option<ServiceValue> {
    let key = Key::new(
        SERVICE_KEY_PORT_BITS + 32,
        ServiceKey4 {
            port,
            _pad: [0; 2],
            addr,
        },
    );
    EG_SERVICES4_V1.get(&key).copied()
}

/// An identity anchor: a registered cgroup and its `IDENTITY_F_*` flags.
#[derive(Clone, Copy)]
struct Anchor {
    /// cgroup id, 0 for none.
    id: u64,
    flags: u32,
}

impl Anchor {
    /// Verdicts for it may be cached.
    #[inline(always)]
    fn cacheable(&self) -> bool {
        self.flags & IDENTITY_F_CACHEABLE != 0
    }

    /// An enrolled workload (Kubernetes mode captures only these).
    #[inline(always)]
    fn enrolled(&self) -> bool {
        self.flags & IDENTITY_F_ENROLLED != 0
    }
}

/// The identity anchor of the current task: the deepest of its cgroup's ancestors (itself
/// included) that userspace registered as carrying an identity. Id 0 and no flags when none is
/// registered.
#[inline(always)]
fn identity_anchor() -> Anchor {
    let mut anchor = Anchor { id: 0, flags: 0 };
    for level in 0..MAX_CGROUP_LEVEL {
        // SAFETY: helper without preconditions (Linux >= 5.7 for sock_addr programs).
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
        if id == 0 {
            // Deeper than the task's own cgroup.
            break;
        }
        // SAFETY: value copied out at once.
        if let Some(found) = unsafe { EG_IDENTITY_V1.get(id) } {
            anchor = Anchor {
                id,
                flags: found.flags,
            };
        }
    }
    anchor
}

/// Kubernetes mode: the current task is below no enrolled anchor, so capture leaves it alone
/// (counted). Host mode: never. Callers ask only where capture would act (a ServiceEntry
/// destination, a REGISTRY_ONLY refusal), so a plain connect never pays for the ancestor walk.
#[inline(always)]
pub fn left_alone() -> bool {
    if !enrolled_only() || identity_anchor().enrolled() {
        return false;
    }
    count(stats::NOT_ENROLLED);
    true
}

/// A cached deny for (anchor, service, port) of the current generation refuses the connect.
/// Entries of another generation are stale: ignored and removed (the waypoint decides again).
#[inline(always)]
fn cached_deny(config: &Config, identity_id: u64, service_id: u32, port: u16) -> bool {
    let key = VerdictKey {
        identity_id,
        service_id,
        port,
        _pad: 0,
    };
    let Some(verdict) = EG_VERDICTS_V1.get_ptr(key) else {
        return false;
    };
    // SAFETY: pointer from a successful lookup; copied out at once.
    let verdict = unsafe { *verdict };
    if verdict.generation != config.generation {
        let _ = EG_VERDICTS_V1.remove(key);
        count(stats::VERDICT_STALE);
        return false;
    }
    verdict.verdict == VERDICT_DENY
}

/// A destination that is no ServiceEntry address: untouched, unless REGISTRY_ONLY refuses it
/// (the waypoint's own connects and the allowed CIDRs excepted). `port` (network order) is only
/// logged.
#[inline(always)]
pub fn not_a_service4(addr: [u8; 4], port: [u8; 2]) -> Result<Action, ()> {
    if let Some(config) = config()
        && config.flags & CONFIG_F_REGISTRY_ONLY != 0
    {
        // SAFETY: helper without preconditions.
        let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
        let allowed = EG_ALLOWED4_V1
            .get(&Key::new(32, AllowKey4 { addr }))
            .is_some();
        if cgroup_id != config.waypoint_cgroup_id && !allowed {
            if left_alone() {
                info!(
                    &(),
                    "passed reason=not_enrolled dst={}:{} cgroup={}",
                    Ipv4Addr::from(addr),
                    u16::from_be_bytes(port),
                    cgroup_id
                );
                return Ok(Action::Untouched);
            }
            count(stats::REFUSED_REGISTRY_ONLY);
            info!(
                &(),
                "refused reason=registry_only dst={}:{} cgroup={}",
                Ipv4Addr::from(addr),
                u16::from_be_bytes(port),
                cgroup_id
            );
            return Err(());
        }
    }
    count(stats::PASSED);
    info!(
        &(),
        "passed reason=not_a_service_entry dst={}:{}",
        Ipv4Addr::from(addr),
        u16::from_be_bytes(port)
    );
    Ok(Action::Untouched)
}

/// What to do with a connect to an IPv4 destination (plain or v4-mapped).
pub enum Action {
    Untouched,
    Redirect { addr: [u8; 4], port: u16 },
}

#[inline(always)]
fn decide4(
    ctx: &SockAddrContext,
    sock_type: u32,
    addr: [u8; 4],
    port: [u8; 2],
    family: u16,
) -> Result<Action, ()> {
    let Some(service) = lookup4(addr, port) else {
        return not_a_service4(addr, port);
    };
    let port_host = u16::from_be_bytes(port);
    let dst = Ipv4Addr::from(addr);
    // Kubernetes mode: only enrolled pods are captured. The anchor found here is the one the
    // origin records.
    let enrolled = if enrolled_only() {
        let anchor = identity_anchor();
        if !anchor.enrolled() {
            count(stats::NOT_ENROLLED);
            info!(
                &(),
                "passed reason=not_enrolled dst={}:{} anchor={}", dst, port_host, anchor.id
            );
            return Ok(Action::Untouched);
        }
        Some(anchor)
    } else {
        None
    };
    let Some(config) = config() else {
        count(stats::REFUSED_NO_WAYPOINT);
        info!(&(), "refused reason=no_waypoint dst={}:{}", dst, port_host);
        return Err(());
    };
    // SAFETY: helper without preconditions, allowed for cgroup sock_addr programs.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    if cgroup_id == config.waypoint_cgroup_id {
        count(stats::EXEMPT_WAYPOINT);
        info!(
            &(),
            "exempt reason=waypoint_cgroup dst={}:{} cgroup={}", dst, port_host, cgroup_id
        );
        return Ok(Action::Untouched);
    }
    if sock_type == SOCK_DGRAM {
        // The waypoint proxies TCP only; a UDP flow (QUIC, say) to a ServiceEntry port would be
        // a bypass, so it is refused and the client falls back to TCP.
        count(stats::REFUSED_UDP);
        info!(
            &(),
            "refused reason=udp dst={}:{} cgroup={}", dst, port_host, cgroup_id
        );
        return Err(());
    }
    if sock_type != SOCK_STREAM {
        count(stats::PASSED);
        info!(
            &(),
            "passed reason=not_tcp dst={}:{} cgroup={}", dst, port_host, cgroup_id
        );
        return Ok(Action::Untouched);
    }
    let anchor = match enrolled {
        Some(anchor) => anchor,
        None => identity_anchor(),
    };
    let identity_id = anchor.id;
    let shared = service.flags & SERVICE_F_SHARED != 0;
    if anchor.cacheable()
        && !shared
        && cached_deny(&config, identity_id, service.service_id, port_host)
    {
        // An L4-decidable deny learnt earlier: refused before a packet is sent or the waypoint
        // wakes up.
        count(stats::REFUSED_VERDICT);
        info!(
            &(),
            "refused reason=verdict_cache dst={}:{} identity={} service={} port={}",
            dst,
            port_host,
            identity_id,
            service.service_id,
            port_host
        );
        return Err(());
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let origin = Origin {
        cgroup_id,
        identity_id,
        dst_addr: addr,
        dst_port: port_host,
        family,
        service_id: service.service_id,
        pid: (pid_tgid >> 32) as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
    };
    // SAFETY: the context is a valid bpf_sock_addr for this program type.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if EG_ORIGINS_V1.insert(cookie, origin, 0).is_err() {
        count(stats::REFUSED_ORIGIN_FULL);
        info!(
            &(),
            "refused reason=origin_full dst={}:{} cgroup={}", dst, port_host, cgroup_id
        );
        return Err(());
    }
    info!(
        &(),
        "redirected dst={}:{} cgroup={} identity={} service={}",
        dst,
        port_host,
        cgroup_id,
        identity_id,
        service.service_id
    );
    Ok(Action::Redirect {
        addr: config.waypoint_addr,
        port: config.waypoint_port,
    })
}

pub fn connect4(ctx: &SockAddrContext) -> Result<(), ()> {
    // SAFETY: the kernel hands every cgroup sock_addr program a valid context.
    let sa = unsafe { &mut *ctx.sock_addr };
    let addr = sa.user_ip4.to_ne_bytes();
    let port = port_bytes(sa.user_port);
    if let Some(dns) = crate::dns::redirect(ctx, sa.type_, addr, port, FAMILY_INET) {
        sa.user_ip4 = u32::from_ne_bytes(dns.addr);
        sa.user_port = u32::from(dns.port.to_be());
        return Ok(());
    }
    match decide4(ctx, sa.type_, addr, port, FAMILY_INET)? {
        Action::Untouched => {}
        Action::Redirect { addr, port } => {
            sa.user_ip4 = u32::from_ne_bytes(addr);
            sa.user_port = u32::from(port.to_be());
            count(stats::REDIRECTED4);
        }
    }
    Ok(())
}

pub fn connect6(ctx: &SockAddrContext) -> Result<(), ()> {
    // SAFETY: as in connect4.
    let sa = unsafe { &mut *ctx.sock_addr };
    let ip6 = [
        sa.user_ip6[0],
        sa.user_ip6[1],
        sa.user_ip6[2],
        sa.user_ip6[3],
    ];
    let port = port_bytes(sa.user_port);
    if ip6[0] == 0 && ip6[1] == 0 && ip6[2] == V4_MAPPED_WORD {
        // `::ffff:a.b.c.d` reaches the IPv4 address: exactly the connect4 decision.
        let addr = ip6[3].to_ne_bytes();
        if let Some(dns) = crate::dns::redirect(ctx, sa.type_, addr, port, FAMILY_INET6) {
            sa.user_ip6[3] = u32::from_ne_bytes(dns.addr);
            sa.user_port = u32::from(dns.port.to_be());
            return Ok(());
        }
        match decide4(ctx, sa.type_, addr, port, FAMILY_INET6)? {
            Action::Untouched => {}
            Action::Redirect { addr, port } => {
                // user_ip6 only accepts 4-byte stores, one word at a time.
                sa.user_ip6[0] = 0;
                sa.user_ip6[1] = 0;
                sa.user_ip6[2] = V4_MAPPED_WORD;
                sa.user_ip6[3] = u32::from_ne_bytes(addr);
                sa.user_port = u32::from(port.to_be());
                count(stats::REDIRECTED6_MAPPED);
            }
        }
        return Ok(());
    }
    if lookup6(ip6, port).is_none() {
        return not_a_service6(ip6, port);
    }
    if left_alone() {
        info!(
            &(),
            "passed reason=not_enrolled dst=[{}]:{}",
            ipv6(ip6),
            u16::from_be_bytes(port)
        );
        return Ok(());
    }
    // SAFETY: as above.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    if config().is_some_and(|c| c.waypoint_cgroup_id == cgroup_id) {
        count(stats::EXEMPT_WAYPOINT);
        info!(
            &(),
            "exempt reason=waypoint_cgroup dst=[{}]:{} cgroup={}",
            ipv6(ip6),
            u16::from_be_bytes(port),
            cgroup_id
        );
        return Ok(());
    }
    // IPv6 upstreams are not proxied yet: refusing is the only answer that is not a bypass.
    count(stats::REFUSED_IPV6);
    info!(
        &(),
        "refused reason=ipv6_service_entry dst=[{}]:{} cgroup={}",
        ipv6(ip6),
        u16::from_be_bytes(port),
        cgroup_id
    );
    Err(())
}

/// An address from `user_ip6` words, as network-order bytes.
#[inline(always)]
fn ip6_bytes(ip6: [u32; 4]) -> [u8; 16] {
    let mut addr = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let word = ip6[i].to_ne_bytes();
        addr[i * 4] = word[0];
        addr[i * 4 + 1] = word[1];
        addr[i * 4 + 2] = word[2];
        addr[i * 4 + 3] = word[3];
        i += 1;
    }
    addr
}

/// For the log.
#[inline(always)]
fn ipv6(ip6: [u32; 4]) -> Ipv6Addr {
    Ipv6Addr::from(ip6_bytes(ip6))
}

/// The ServiceEntry at an IPv6 address (words as in `user_ip6`) and port, if any.
#[inline(always)]
pub fn lookup6(ip6: [u32; 4], port: [u8; 2]) -> Option<ServiceValue> {
    let addr = ip6_bytes(ip6);
    let key = Key::new(
        SERVICE_KEY_PORT_BITS + 128,
        ServiceKey6 {
            port,
            _pad: [0; 2],
            addr,
        },
    );
    EG_SERVICES6_V1.get(&key).copied()
}

/// An IPv6 destination that is no ServiceEntry address: untouched, unless REGISTRY_ONLY
/// refuses it. IPv6 has no allow list yet; only `::1` stays reachable. `port` is only logged.
#[inline(always)]
pub fn not_a_service6(ip6: [u32; 4], port: [u8; 2]) -> Result<(), ()> {
    let loopback =
        ip6[0] == 0 && ip6[1] == 0 && ip6[2] == 0 && ip6[3] == u32::from_ne_bytes([0, 0, 0, 1]);
    if !loopback
        && let Some(config) = config()
        && config.flags & CONFIG_F_REGISTRY_ONLY != 0
    {
        // SAFETY: helper without preconditions.
        let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
        if cgroup_id != config.waypoint_cgroup_id {
            if left_alone() {
                info!(
                    &(),
                    "passed reason=not_enrolled dst=[{}]:{} cgroup={}",
                    ipv6(ip6),
                    u16::from_be_bytes(port),
                    cgroup_id
                );
                return Ok(());
            }
            count(stats::REFUSED_REGISTRY_ONLY);
            info!(
                &(),
                "refused reason=registry_only dst=[{}]:{} cgroup={}",
                ipv6(ip6),
                u16::from_be_bytes(port),
                cgroup_id
            );
            return Err(());
        }
    }
    count(stats::PASSED);
    info!(
        &(),
        "passed reason=not_a_service_entry dst=[{}]:{}",
        ipv6(ip6),
        u16::from_be_bytes(port)
    );
    Ok(())
}
