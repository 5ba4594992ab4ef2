//! Reasons counted in the per-CPU stats map. The kernel counts outcomes instead of logging them;
//! `egress status` and the metrics endpoint read them back by index.

/// connect4 rewrote an IPv4 ServiceEntry destination to the waypoint.
pub const REDIRECTED4: u32 = 0;
/// connect6 rewrote a v4-mapped (`::ffff:a.b.c.d`) ServiceEntry destination to the waypoint.
pub const REDIRECTED6_MAPPED: u32 = 1;
/// A connect, or an unconnected UDP send, to a destination that is no ServiceEntry address went
/// through untouched.
pub const PASSED: u32 = 2;
/// A connect (or UDP send) from the waypoint's own cgroup went through untouched.
pub const EXEMPT_WAYPOINT: u32 = 3;
/// A connect to an IPv6 ServiceEntry address was refused (IPv6 upstreams are not supported yet).
pub const REFUSED_IPV6: u32 = 4;
/// A connect (or UDP send) to a ServiceEntry address was refused because no waypoint is
/// configured.
pub const REFUSED_NO_WAYPOINT: u32 = 5;
/// A connect to a ServiceEntry address was refused because its origin could not be recorded.
pub const REFUSED_ORIGIN_FULL: u32 = 6;
/// A UDP connect or send to a ServiceEntry address and port was refused (the waypoint proxies
/// TCP only).
pub const REFUSED_UDP: u32 = 7;
/// sockops recorded an established redirected connection for the waypoint's accept.
pub const PEER_RECORDED: u32 = 8;
/// getpeername rewrote the peer back to the address the application dialled.
pub const PEERNAME_REWRITTEN: u32 = 9;

/// A connect was refused in the kernel by a cached L4-decidable deny (EPERM).
pub const REFUSED_VERDICT: u32 = 10;
/// A cached verdict of an older policy generation was found, ignored and removed.
pub const VERDICT_STALE: u32 = 11;

/// REGISTRY_ONLY: a connect, or an unconnected UDP send (sendmsg4/6), to a destination that is
/// no ServiceEntry address was refused.
pub const REFUSED_REGISTRY_ONLY: u32 = 12;

/// sockops put a socket of an accelerated app↔waypoint connection into the sockhash.
pub const SOCKMAP_INSERTED: u32 = 13;
/// sk_msg handed a message straight to the peer socket (the TCP/IP stack was skipped).
pub const SOCKMAP_REDIRECTED: u32 = 14;
/// The waypoint's end of an accelerated connection could not be paired with the application's:
/// a socket of an earlier connection with the same 4-tuple still held a sockhash key, or the
/// application's first message went by TCP. The connection stays on the TCP path.
pub const SOCKMAP_UNPAIRED: u32 = 15;

/// Kubernetes mode (`CONFIG_F_ENROLLED_ONLY`): a connect or UDP send that capture would have
/// acted on (a ServiceEntry destination, or a REGISTRY_ONLY refusal) came from a task below no
/// enrolled anchor, and was left alone.
pub const NOT_ENROLLED: u32 = 16;

/// A connect (UDP or TCP) or an unconnected UDP send to port 53 was rewritten to the DNS
/// listener (`--dns-capture on`).
pub const DNS_REDIRECTED: u32 = 17;
/// recvmsg restored a DNS reply's source from the DNS listener to the resolver the application
/// asked.
pub const DNS_REPLY_RESTORED: u32 = 18;
/// A redirected DNS datagram's client (netns, ip, port) was recorded for the DNS listener.
pub const DNS_PEER_RECORDED: u32 = 19;

/// Size of the stats array.
pub const COUNT: u32 = 20;

/// Counter names for output, indexed by reason (prometheus-friendly snake case).
pub const NAMES: [&str; COUNT as usize] = [
    "redirected_ipv4",
    "redirected_ipv4_mapped",
    "passed",
    "exempt_waypoint",
    "refused_ipv6",
    "refused_no_waypoint",
    "refused_origin_full",
    "refused_udp",
    "peer_recorded",
    "peername_rewritten",
    "refused_verdict_cache",
    "verdict_stale",
    "refused_registry_only",
    "sockmap_inserted",
    "sockmap_redirected",
    "sockmap_unpaired",
    "not_enrolled",
    "dns_redirected",
    "dns_reply_restored",
    "dns_peer_recorded",
];
