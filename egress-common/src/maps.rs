//! Map keys and values. Addresses are stored as bytes in network order (`[u8; 4]`/`[u8; 16]`) so an
//! LPM trie matches them bit by bit from the most significant end; ports are host order `u16`
//! except inside LPM keys, where they are network-order bytes that precede the address.

/// Capacity of the ServiceEntry address maps.
pub const SERVICES_MAX: u32 = 65_536;
/// Capacity of the origin and peer LRU maps: concurrent redirected connections per node.
pub const ORIGINS_MAX: u32 = 131_072;

/// `Origin::family` for a connection from an IPv4 socket.
pub const FAMILY_INET: u16 = 2;
/// `Origin::family` for a connection from an IPv6 socket to a v4-mapped address.
pub const FAMILY_INET6: u16 = 10;

/// LPM trie data for IPv4 ServiceEntry addresses. The prefix length covers `port` and `_pad`
/// (32 bits) plus the address prefix, so a CIDR matches only on its own port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceKey4 {
    /// Destination port, network byte order.
    pub port: [u8; 2],
    /// Always zero.
    pub _pad: [u8; 2],
    /// Destination address, network byte order.
    pub addr: [u8; 4],
}

/// LPM trie data for IPv6 ServiceEntry addresses (layout as [`ServiceKey4`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceKey6 {
    pub port: [u8; 2],
    pub _pad: [u8; 2],
    pub addr: [u8; 16],
}

/// Bits of an LPM prefix that the port and padding take before the address starts.
pub const SERVICE_KEY_PORT_BITS: u32 = 32;

/// What a ServiceEntry address and port map to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceValue {
    /// Index of the (ServiceEntry, port) in the waypoint's table; it travels in the origin.
    pub service_id: u32,
    /// `SERVICE_F_*` bits.
    pub flags: u32,
}

/// The ServiceEntry port is spoken as HTTP by the waypoint (otherwise it is spliced).
pub const SERVICE_F_HTTP: u32 = 1;
/// Several ServiceEntries share this address and port (only the Host header tells them apart):
/// no verdict is ever cached for it.
pub const SERVICE_F_SHARED: u32 = 2;

/// Where a redirected connection was headed and who opened it, as the kernel saw it in connect().
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    /// cgroup v2 id of the connecting task (the inode number of its cgroup directory).
    pub cgroup_id: u64,
    /// The identity anchor: the deepest ancestor cgroup (or the cgroup itself) registered in the
    /// identities map, 0 when none is. Verdicts are cached per anchor.
    pub identity_id: u64,
    /// Destination the application dialled, network byte order.
    pub dst_addr: [u8; 4],
    /// Destination port the application dialled, host byte order.
    pub dst_port: u16,
    /// `FAMILY_INET` or `FAMILY_INET6` (a v4-mapped destination).
    pub family: u16,
    /// `ServiceValue::service_id` of the matched ServiceEntry port.
    pub service_id: u32,
    /// Thread group id (the process id) of the connecting task.
    pub pid: u32,
    /// Real uid of the connecting task.
    pub uid: u32,
    /// Real gid of the connecting task.
    pub gid: u32,
}

/// The client end of a redirected connection, as the waypoint sees it on accept. Loopback
/// addresses and ports repeat across network namespaces (one per Kubernetes pod), so the key
/// names the client's namespace too.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PeerKey {
    /// Network namespace cookie of the client socket (`bpf_get_netns_cookie`, the value
    /// `SO_NETNS_COOKIE` reads on the waypoint's listener in that namespace).
    pub netns_cookie: u64,
    /// Client address, network byte order.
    pub addr: [u8; 4],
    /// Client port, host byte order.
    pub port: u16,
    pub _pad: u16,
}

/// The single entry of the config map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// cgroup v2 id of the waypoint's own cgroup: its connects are never redirected.
    pub waypoint_cgroup_id: u64,
    /// Current policy generation: cached verdicts of any other generation are ignored.
    pub generation: u64,
    /// Waypoint listener address, network byte order.
    pub waypoint_addr: [u8; 4],
    /// Waypoint listener port, host byte order.
    pub waypoint_port: u16,
    /// `CONFIG_F_*` bits.
    pub flags: u16,
}

/// The config entry has been written; until then ServiceEntry destinations are refused.
pub const CONFIG_F_READY: u16 = 1;

/// REGISTRY_ONLY (Istio's `outboundTrafficPolicy.mode`): from the captured cgroup, a connect to
/// a destination that is no ServiceEntry address is refused unless an allowed CIDR covers it.
pub const CONFIG_F_REGISTRY_ONLY: u16 = 2;

/// Messages between a captured application and the waypoint skip the TCP/IP stack: sockops
/// puts both ends of an HTTP connection into the sockhash, and sk_msg hands each message straight
/// to the peer socket (`--sockmap on`).
pub const CONFIG_F_SOCKMAP: u16 = 4;

/// Kubernetes mode: only tasks whose deepest identity anchor carries [`IDENTITY_F_ENROLLED`]
/// are captured (their connects redirected, REGISTRY_ONLY applied); every other task on the
/// node is left alone. Without it (host mode) the whole attached cgroup is captured.
pub const CONFIG_F_ENROLLED_ONLY: u16 = 8;

/// The DNS listener (`egress run --dns-listen`), the single entry of `EG_DNS_V1`. With
/// [`DNS_F_CAPTURE`], connects (UDP and TCP) and unconnected UDP sends to port 53 from captured
/// tasks are rewritten to it, and recvmsg4 restores a reply's source to the resolver the
/// application asked.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsConfig {
    /// Listener address, network byte order.
    pub addr: [u8; 4],
    /// Listener port, host byte order.
    pub port: u16,
    /// `DNS_F_*` bits.
    pub flags: u16,
}

/// DNS capture is on (`--dns-capture on`) and the listener is up.
pub const DNS_F_CAPTURE: u16 = 1;

/// The DNS port the kernel captures.
pub const DNS_PORT: u16 = 53;

/// `Origin::service_id` of a DNS socket redirected to the DNS listener: its `dst_*` is the
/// resolver the application asked. No ServiceEntry port has this id.
pub const DNS_SERVICE_ID: u32 = u32::MAX;

/// Capacity of the sockhash (two entries per accelerated connection).
pub const SOCKS_MAX: u32 = 65_536;

// The short-cut of one app↔waypoint connection (`EG_SHORTCUT_V2`), keyed by the application's
// end (a `SockKey` as sockops sees the application's socket), is reset when that socket is
// established. The first to write it after the reset decides for the connection's life: the
// waypoint's end, once both ends are in the sockhash, `SHORTCUT_PAIRED`; anything else
// `SHORTCUT_TCP`. sk_msg redirects only on `SHORTCUT_PAIRED`.

/// Both ends are in the sockhash as this connection's sockets: sk_msg may redirect.
pub const SHORTCUT_PAIRED: u32 = 1;
/// The connection stays on the TCP path in both directions (an end is missing from the sockhash,
/// or a message went by TCP before the pair was complete).
pub const SHORTCUT_TCP: u32 = 2;

/// A socket in the sockhash, by its network namespace, its own end and its peer's, as sock_ops
/// and sk_msg see them (both ends of an app↔waypoint connection share the namespace).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockKey {
    /// Network namespace cookie of the socket (`bpf_get_netns_cookie`).
    pub netns_cookie: u64,
    /// Local IPv4 address, network byte order.
    pub local_ip4: u32,
    /// Remote IPv4 address, network byte order.
    pub remote_ip4: u32,
    /// Local port, host byte order.
    pub local_port: u32,
    /// Remote port, host byte order.
    pub remote_port: u32,
}

impl SockKey {
    /// The key of the socket at the other end of the same connection.
    pub const fn reversed(&self) -> Self {
        SockKey {
            netns_cookie: self.netns_cookie,
            local_ip4: self.remote_ip4,
            remote_ip4: self.local_ip4,
            local_port: self.remote_port,
            remote_port: self.local_port,
        }
    }
}

/// Capacity of the REGISTRY_ONLY allow list.
pub const ALLOWED_MAX: u32 = 1_024;

/// LPM trie data of the REGISTRY_ONLY allow list (IPv4, any port).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AllowKey4 {
    /// Network byte order.
    pub addr: [u8; 4],
}

/// How deep below the cgroup2 root connect4 looks for an identity anchor.
pub const MAX_CGROUP_LEVEL: u32 = 16;

/// Capacity of the identity anchor map.
pub const IDENTITIES_MAX: u32 = 16_384;
/// Capacity of the verdict cache (LRU: eviction only costs speed).
pub const VERDICTS_MAX: u32 = 65_536;

/// A cgroup that carries an identity (a service-account directory, a mapped unit). Value of the
/// identities map; the key is the cgroup id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdentityAnchor {
    /// `IDENTITY_F_*` bits.
    pub flags: u32,
    pub _pad: u32,
}

/// Verdicts for this anchor may be cached (it has a principal).
pub const IDENTITY_F_CACHEABLE: u32 = 1;
/// The anchor is an enrolled workload (a Kubernetes pod): with [`CONFIG_F_ENROLLED_ONLY`], only
/// tasks below such an anchor are captured.
pub const IDENTITY_F_ENROLLED: u32 = 2;

/// Key of the verdict cache: identity anchor, service and port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VerdictKey {
    /// Identity anchor cgroup id.
    pub identity_id: u64,
    pub service_id: u32,
    /// ServiceEntry port, host byte order.
    pub port: u16,
    pub _pad: u16,
}

/// A cached L4-decidable verdict.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerdictValue {
    /// Policy generation the verdict was decided under; any other generation makes it stale.
    pub generation: u64,
    /// `VERDICT_*`.
    pub verdict: u32,
    pub _pad: u32,
    /// When it was written (CLOCK_MONOTONIC, nanoseconds), for `egress status`.
    pub created_ns: u64,
}

/// The connect is refused in the kernel (EPERM).
pub const VERDICT_DENY: u32 = 1;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)], Copy, and have no implicit padding.
    unsafe impl aya::Pod for super::ServiceKey4 {}
    unsafe impl aya::Pod for super::ServiceKey6 {}
    unsafe impl aya::Pod for super::ServiceValue {}
    unsafe impl aya::Pod for super::Origin {}
    unsafe impl aya::Pod for super::PeerKey {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::IdentityAnchor {}
    unsafe impl aya::Pod for super::AllowKey4 {}
    unsafe impl aya::Pod for super::VerdictKey {}
    unsafe impl aya::Pod for super::VerdictValue {}
    unsafe impl aya::Pod for super::SockKey {}
    unsafe impl aya::Pod for super::DnsConfig {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<ServiceKey4>(), 8);
        assert_eq!(size_of::<ServiceKey6>(), 20);
        assert_eq!(size_of::<ServiceValue>(), 8);
        assert_eq!(size_of::<Origin>(), 40);
        assert_eq!(size_of::<PeerKey>(), 16);
        assert_eq!(size_of::<Config>(), 24);
        assert_eq!(size_of::<IdentityAnchor>(), 8);
        assert_eq!(size_of::<VerdictKey>(), 16);
        assert_eq!(size_of::<VerdictValue>(), 24);
        assert_eq!(size_of::<SockKey>(), 24);
        assert_eq!(size_of::<DnsConfig>(), 8);
    }

    #[test]
    fn a_reversed_sock_key_keeps_its_namespace() {
        let key = SockKey {
            netns_cookie: 7,
            local_ip4: 1,
            remote_ip4: 2,
            local_port: 3,
            remote_port: 4,
        };
        let peer = key.reversed();
        assert_eq!(
            (peer.netns_cookie, peer.local_ip4, peer.remote_port),
            (7, 2, 3)
        );
        assert_eq!(peer.reversed(), key);
    }

    #[test]
    fn names_fit_the_kernel_limit() {
        for name in crate::names::PROGRAMS
            .iter()
            .chain(crate::names::MAPS.iter())
            .chain(crate::names::RETIRED_MAPS.iter())
        {
            assert!(name.len() <= 15, "{name} is longer than 15 characters");
        }
    }
}
