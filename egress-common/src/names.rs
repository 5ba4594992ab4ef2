//! Program and map names. The kernel truncates object names to 15 characters, so every name here
//! fits in 15 and carries the project prefix (`eg_` for programs, `EG_` for maps). A map whose layout
//! changes gets a new version suffix so start-up never reuses an incompatible pin.

/// cgroup/connect4: ServiceEntry destinations are rewritten to the waypoint.
pub const PROG_CONNECT4: &str = "eg_connect4";
/// cgroup/connect6: v4-mapped destinations behave like connect4; IPv6 ServiceEntry addresses are refused.
pub const PROG_CONNECT6: &str = "eg_connect6";
/// sockops: re-keys the origin by the client's (ip, port) once the connection is established.
pub const PROG_SOCKOPS: &str = "eg_sockops";
/// cgroup/getpeername4: the application sees the address it dialled.
pub const PROG_GETPEERNAME4: &str = "eg_getpeername4";
/// cgroup/getpeername6: same for v4-mapped IPv6 sockets.
pub const PROG_GETPEERNAME6: &str = "eg_getpeername6";

/// cgroup/sendmsg4: unconnected UDP gets the connect4 decision (REGISTRY_ONLY, no datagram to
/// a ServiceEntry port).
pub const PROG_SENDMSG4: &str = "eg_sendmsg4";
/// cgroup/sendmsg6: same for IPv6 sockets (v4-mapped destinations as sendmsg4).
pub const PROG_SENDMSG6: &str = "eg_sendmsg6";
/// sk_msg on the sockhash: redirects a message to the peer socket's ingress queue. Attached to
/// the sockhash (not to a cgroup, so not in [`PROGRAMS`]); each start replaces it.
pub const PROG_SKMSG: &str = "eg_skmsg";

/// cgroup/recvmsg4: a DNS reply from the DNS listener shows the resolver the application asked
/// as its source.
pub const PROG_RECVMSG4: &str = "eg_recvmsg4";
/// cgroup/recvmsg6: same for v4-mapped IPv6 sockets.
pub const PROG_RECVMSG6: &str = "eg_recvmsg6";
/// cgroup_skb/egress: records the client (netns, ip, port) of a DNS datagram headed for the DNS
/// listener, with the resolver its socket asked (a connected UDP socket has no local port yet
/// at connect time, so connect4 cannot).
pub const PROG_DNS_EGRESS: &str = "eg_dns_egress";

/// Every program, in attach order.
pub const PROGRAMS: [&str; 10] = [
    PROG_CONNECT4,
    PROG_CONNECT6,
    PROG_SENDMSG4,
    PROG_SENDMSG6,
    PROG_SOCKOPS,
    PROG_GETPEERNAME4,
    PROG_GETPEERNAME6,
    PROG_RECVMSG4,
    PROG_RECVMSG6,
    PROG_DNS_EGRESS,
];

/// LPM trie: (port, IPv4 prefix) -> ServiceEntry port.
pub const MAP_SERVICES4: &str = "EG_SERVICES4_V1";
/// LPM trie: (port, IPv6 prefix) -> ServiceEntry port (refused until IPv6 upstreams are supported).
pub const MAP_SERVICES6: &str = "EG_SERVICES6_V1";
/// LRU hash: socket cookie -> origin, written by connect4/connect6, read by getpeername.
pub const MAP_ORIGINS: &str = "EG_ORIGINS_V1";
/// LRU hash: client (ip, port) -> origin, written by sockops, read by the waypoint on accept.
/// (V2: the key holds the client's network namespace cookie.)
pub const MAP_PEERS: &str = "EG_PEERS_V2";
/// Array with one entry: where the waypoint listens and which cgroup it runs in.
pub const MAP_CONFIG: &str = "EG_CONFIG_V1";
/// Per-CPU array of counters indexed by [`crate::stats`] reasons (V4: 20 counters).
pub const MAP_STATS: &str = "EG_STATS_V4";

/// Array with one entry: the DNS listener and whether DNS capture is on.
pub const MAP_DNS: &str = "EG_DNS_V1";
/// LRU hash: DNS client (netns, ip, port) of a redirected datagram -> origin (the resolver it
/// asked), written by cgroup_skb egress, read by the DNS listener.
pub const MAP_DNS_PEERS: &str = "EG_DNSPEERS_V1";

/// Hash: cgroup id -> identity anchor (a cgroup that carries an identity).
pub const MAP_IDENTITIES: &str = "EG_IDENTITY_V1";
/// LRU hash: (identity anchor, service, port) -> cached L4-decidable verdict + generation.
pub const MAP_VERDICTS: &str = "EG_VERDICTS_V1";

/// LPM trie: IPv4 CIDRs a REGISTRY_ONLY cgroup may still reach (DNS resolvers, loopback).
pub const MAP_ALLOWED4: &str = "EG_ALLOWED4_V1";

/// Sockhash of accelerated app↔waypoint sockets, with the sk_msg program attached. Pinned like
/// the others: the kernel detaches a sockhash's programs when its last pin and descriptor go.
/// (V2: the key holds the sockets' network namespace cookie.)
pub const MAP_SOCKS: &str = "EG_SOCKS_V2";
/// LRU hash: the application's end of an app↔waypoint connection -> whether sk_msg may take the
/// short-cut ([`crate::SHORTCUT_PAIRED`]) or the connection stays on TCP (V2: keyed with the
/// network namespace cookie, as the sockhash).
pub const MAP_SHORTCUTS: &str = "EG_SHORTCUT_V2";

/// Every map, for pinning, status and cleanup.
pub const MAPS: [&str; 13] = [
    MAP_SERVICES4,
    MAP_SERVICES6,
    MAP_ORIGINS,
    MAP_PEERS,
    MAP_CONFIG,
    MAP_STATS,
    MAP_IDENTITIES,
    MAP_VERDICTS,
    MAP_ALLOWED4,
    MAP_SOCKS,
    MAP_SHORTCUTS,
    MAP_DNS,
    MAP_DNS_PEERS,
];

/// Maps an earlier version pinned under a name no longer used (their layout changed). Start-up
/// and cleanup remove their pins; programs still attached from the earlier run keep their own
/// reference until their links are replaced.
pub const RETIRED_MAPS: [&str; 6] = [
    // 15 counters (13 before the sockmap short-cut, under the same name).
    "EG_STATS_V1",
    // 16 counters (before `not_enrolled`).
    "EG_STATS_V2",
    // 17 counters (before the DNS counters).
    "EG_STATS_V3",
    // Keys without the network namespace cookie.
    "EG_PEERS_V1",
    "EG_SOCKS_V1",
    "EG_SHORTCUT_V1",
];
