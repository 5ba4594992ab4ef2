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

/// Where a redirected connection was headed and who opened it, as the kernel saw it in connect().
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    /// cgroup v2 id of the connecting task (the inode number of its cgroup directory).
    pub cgroup_id: u64,
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

/// The client end of a redirected connection, as the waypoint sees it on accept.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PeerKey {
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
    /// Waypoint listener address, network byte order.
    pub waypoint_addr: [u8; 4],
    /// Waypoint listener port, host byte order.
    pub waypoint_port: u16,
    /// `CONFIG_F_*` bits.
    pub flags: u16,
}

/// The config entry has been written; until then ServiceEntry destinations are refused.
pub const CONFIG_F_READY: u16 = 1;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)], Copy, and have no implicit padding.
    unsafe impl aya::Pod for super::ServiceKey4 {}
    unsafe impl aya::Pod for super::ServiceKey6 {}
    unsafe impl aya::Pod for super::ServiceValue {}
    unsafe impl aya::Pod for super::Origin {}
    unsafe impl aya::Pod for super::PeerKey {}
    unsafe impl aya::Pod for super::Config {}
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
        assert_eq!(size_of::<Origin>(), 32);
        assert_eq!(size_of::<PeerKey>(), 8);
        assert_eq!(size_of::<Config>(), 16);
    }

    #[test]
    fn names_fit_the_kernel_limit() {
        for name in crate::names::PROGRAMS
            .iter()
            .chain(crate::names::MAPS.iter())
        {
            assert!(name.len() <= 15, "{name} is longer than 15 characters");
        }
    }
}
