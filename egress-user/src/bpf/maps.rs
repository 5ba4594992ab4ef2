//! Typed handles on the pinned maps.
use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr, SocketAddrV4},
    path::Path,
    sync::Mutex,
};

use aya::maps::{
    Array, HashMap, Map, MapData, PerCpuArray,
    lpm_trie::{Key, LpmTrie},
};
use egress_common::{
    AllowKey4, CONFIG_F_READY, CONFIG_F_REGISTRY_ONLY, Config, DNS_F_CAPTURE, DnsConfig,
    IdentityAnchor, Origin, PeerKey, SERVICE_KEY_PORT_BITS, ServiceKey4, ServiceKey6, ServiceValue,
    VERDICT_DENY, VerdictKey, VerdictValue, names, stats,
};

use super::BpfError;
use super::OriginSource;
use crate::config::IpNet;

/// One kernel service-map entry: an address or CIDR on one port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceRoute {
    pub net: IpNet,
    pub port: u16,
    pub value: ServiceValue,
}

pub(super) struct Maps {
    services4: Mutex<LpmTrie<MapData, ServiceKey4, ServiceValue>>,
    services6: Mutex<LpmTrie<MapData, ServiceKey6, ServiceValue>>,
    peers: Mutex<HashMap<MapData, PeerKey, Origin>>,
    config: Mutex<(Array<MapData, Config>, Config)>,
    stats: PerCpuArray<MapData, u64>,
    identities: Mutex<HashMap<MapData, u64, IdentityAnchor>>,
    verdicts: Mutex<HashMap<MapData, VerdictKey, VerdictValue>>,
    allowed4: Mutex<LpmTrie<MapData, AllowKey4, u32>>,
    dns: Mutex<Array<MapData, DnsConfig>>,
    dns_peers: Mutex<HashMap<MapData, PeerKey, Origin>>,
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of `bpf_ktime_get_ns`.
pub(super) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

fn typed<T>(name: &'static str, map: Map) -> Result<T, BpfError>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    T::try_from(map).map_err(BpfError::map(name))
}

/// Opens a pinned map without loading anything.
pub(super) fn open_pinned(pin_dir: &Path, name: &'static str) -> Result<Map, BpfError> {
    let path = pin_dir.join(name);
    let data = MapData::from_pin(&path).map_err(|source| BpfError::OpenPinned {
        what: format!("map {name}"),
        path: path.clone(),
        source: std::io::Error::other(source.to_string()),
    })?;
    Map::from_map_data(data).map_err(BpfError::map(name))
}

impl Maps {
    /// Handles on the maps `egress __install` pinned under `pin_dir`.
    pub(super) fn open(pin_dir: &Path) -> Result<Self, BpfError> {
        let open = |name: &'static str| open_pinned(pin_dir, name);
        Ok(Self {
            services4: Mutex::new(typed(names::MAP_SERVICES4, open(names::MAP_SERVICES4)?)?),
            services6: Mutex::new(typed(names::MAP_SERVICES6, open(names::MAP_SERVICES6)?)?),
            peers: Mutex::new(typed(names::MAP_PEERS, open(names::MAP_PEERS)?)?),
            config: Mutex::new({
                let map: Array<MapData, Config> =
                    typed(names::MAP_CONFIG, open(names::MAP_CONFIG)?)?;
                // Start from what is pinned, so a restart keeps REGISTRY_ONLY (and the rest) in
                // force until the new run has decided otherwise.
                let current = map.get(&0, 0).unwrap_or_default();
                (map, current)
            }),
            stats: typed(names::MAP_STATS, open(names::MAP_STATS)?)?,
            identities: Mutex::new(typed(names::MAP_IDENTITIES, open(names::MAP_IDENTITIES)?)?),
            verdicts: Mutex::new(typed(names::MAP_VERDICTS, open(names::MAP_VERDICTS)?)?),
            allowed4: Mutex::new(typed(names::MAP_ALLOWED4, open(names::MAP_ALLOWED4)?)?),
            dns: Mutex::new(typed(names::MAP_DNS, open(names::MAP_DNS)?)?),
            dns_peers: Mutex::new(typed(names::MAP_DNS_PEERS, open(names::MAP_DNS_PEERS)?)?),
        })
    }

    /// REGISTRY_ONLY on or off, with the IPv4 CIDRs that stay reachable. The allow list is
    /// written before the mode is switched on, so nothing allowed is ever refused in between.
    pub(super) fn set_outbound_policy(
        &self,
        registry_only: bool,
        allowed: &[IpNet],
    ) -> Result<(), BpfError> {
        let want: Vec<(Key<AllowKey4>, u32)> = allowed
            .iter()
            .filter_map(|net| match net.addr {
                IpAddr::V4(a) => Some((
                    Key::new(u32::from(net.prefix_len), AllowKey4 { addr: a.octets() }),
                    1,
                )),
                IpAddr::V6(_) => None,
            })
            .collect();
        sync_trie(names::MAP_ALLOWED4, &mut lock(&self.allowed4), &want)?;
        self.write_config(|c| {
            if registry_only {
                c.flags |= CONFIG_F_REGISTRY_ONLY;
            } else {
                c.flags &= !CONFIG_F_REGISTRY_ONLY;
            }
        })
    }

    fn write_config(&self, update: impl FnOnce(&mut Config)) -> Result<(), BpfError> {
        let mut guard = lock(&self.config);
        let (map, current) = &mut *guard;
        let mut next = *current;
        update(&mut next);
        map.set(0, next, 0)
            .map_err(BpfError::map(names::MAP_CONFIG))?;
        *current = next;
        Ok(())
    }

    /// Turns the sk_msg short-cut of app↔waypoint HTTP connections on or off (new connections).
    pub(super) fn set_sockmap(&self, on: bool) -> Result<(), BpfError> {
        self.write_config(|c| {
            if on {
                c.flags |= egress_common::CONFIG_F_SOCKMAP;
            } else {
                c.flags &= !egress_common::CONFIG_F_SOCKMAP;
            }
        })
    }

    /// Enrollment-only capture (Kubernetes mode) on or off: with it, connect and sendmsg act only
    /// for tasks below an anchor registered as enrolled.
    pub(super) fn set_enrolled_only(&self, on: bool) -> Result<(), BpfError> {
        self.write_config(|c| {
            if on {
                c.flags |= egress_common::CONFIG_F_ENROLLED_ONLY;
            } else {
                c.flags &= !egress_common::CONFIG_F_ENROLLED_ONLY;
            }
        })
    }

    /// A new policy generation: every cached verdict of another one is stale from now on.
    pub(super) fn set_generation(&self, generation: u64) -> Result<(), BpfError> {
        self.write_config(|c| c.generation = generation)
    }

    /// Makes the identity anchors exactly `anchors` (cgroup id, flags), enrolled ones apart:
    /// those (Kubernetes pods) are registered and removed one by one ([`Maps::insert_anchor`],
    /// [`Maps::remove_anchor`]) by whoever follows the pods, and a sync leaves them alone.
    pub(super) fn sync_anchors(&self, anchors: &[(u64, u32)]) -> Result<(), BpfError> {
        let name = names::MAP_IDENTITIES;
        let mut map = lock(&self.identities);
        for (id, flags) in anchors {
            map.insert(
                id,
                IdentityAnchor {
                    flags: *flags,
                    _pad: 0,
                },
                0,
            )
            .map_err(BpfError::map(name))?;
        }
        let wanted: HashSet<u64> = anchors.iter().map(|(id, _)| *id).collect();
        let stale: Vec<u64> = map
            .iter()
            .filter_map(Result::ok)
            .filter(|(id, anchor)| {
                !wanted.contains(id) && anchor.flags & egress_common::IDENTITY_F_ENROLLED == 0
            })
            .map(|(id, _)| id)
            .collect();
        for id in stale {
            map.remove(&id).map_err(BpfError::map(name))?;
        }
        Ok(())
    }

    /// Registers (or updates) one identity anchor.
    pub(super) fn insert_anchor(&self, cgroup_id: u64, flags: u32) -> Result<(), BpfError> {
        lock(&self.identities)
            .insert(cgroup_id, IdentityAnchor { flags, _pad: 0 }, 0)
            .map_err(BpfError::map(names::MAP_IDENTITIES))
    }

    /// Removes one identity anchor and then every verdict cached for it, so a cgroup id the
    /// kernel reuses never inherits them. Returns how many verdicts were removed. An anchor
    /// that is not registered is fine.
    pub(super) fn remove_anchor(&self, cgroup_id: u64) -> Result<usize, BpfError> {
        match lock(&self.identities).remove(&cgroup_id) {
            Ok(()) => {}
            Err(source) if not_found(&source) => {}
            Err(source) => {
                return Err(BpfError::Map {
                    name: names::MAP_IDENTITIES,
                    source,
                });
            }
        }
        let mut verdicts = lock(&self.verdicts);
        let keys: Vec<VerdictKey> = verdicts
            .keys()
            .filter_map(Result::ok)
            .filter(|key| key.identity_id == cgroup_id)
            .collect();
        let mut removed = 0;
        for key in keys {
            // Already gone (evicted, or removed by connect4 as stale) is fine.
            if verdicts.remove(&key).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Caches a deny. A full LRU evicts its oldest entry: only speed is lost.
    pub(super) fn deny(&self, key: VerdictKey, generation: u64) -> Result<(), BpfError> {
        let value = VerdictValue {
            generation,
            verdict: VERDICT_DENY,
            _pad: 0,
            created_ns: monotonic_ns(),
        };
        lock(&self.verdicts)
            .insert(key, value, 0)
            .map_err(BpfError::map(names::MAP_VERDICTS))
    }

    /// Removes the verdicts of other generations (connect4 also drops them as it meets them).
    /// Returns how many entries are left.
    pub(super) fn sweep_verdicts(&self, generation: u64) -> Result<usize, BpfError> {
        let mut map = lock(&self.verdicts);
        let entries: Vec<(VerdictKey, VerdictValue)> = map.iter().filter_map(Result::ok).collect();
        let mut left = 0;
        for (key, value) in entries {
            if value.generation == generation {
                left += 1;
            } else {
                // Already gone (evicted, or removed by connect4) is fine.
                let _ = map.remove(&key);
            }
        }
        Ok(left)
    }

    /// Cached verdicts, for metrics.
    pub(super) fn verdict_entries(&self) -> usize {
        lock(&self.verdicts).keys().count()
    }

    pub(super) fn set_waypoint(&self, addr: SocketAddrV4, cgroup_id: u64) -> Result<(), BpfError> {
        self.write_config(|c| {
            c.waypoint_cgroup_id = cgroup_id;
            c.waypoint_addr = addr.ip().octets();
            c.waypoint_port = addr.port();
            c.flags |= CONFIG_F_READY;
        })
    }

    /// Makes the service maps hold exactly `routes`: new and changed entries are written first,
    /// then stale ones removed, so an address that stays never goes missing in between.
    pub(super) fn sync_services(&self, routes: &[ServiceRoute]) -> Result<(), BpfError> {
        let mut want4 = Vec::new();
        let mut want6 = Vec::new();
        for route in routes {
            let port = route.port.to_be_bytes();
            match route.net.addr {
                IpAddr::V4(addr) => want4.push((
                    Key::new(
                        SERVICE_KEY_PORT_BITS + u32::from(route.net.prefix_len),
                        ServiceKey4 {
                            port,
                            _pad: [0; 2],
                            addr: addr.octets(),
                        },
                    ),
                    route.value,
                )),
                IpAddr::V6(addr) => want6.push((
                    Key::new(
                        SERVICE_KEY_PORT_BITS + u32::from(route.net.prefix_len),
                        ServiceKey6 {
                            port,
                            _pad: [0; 2],
                            addr: addr.octets(),
                        },
                    ),
                    route.value,
                )),
            }
        }
        sync_trie(names::MAP_SERVICES4, &mut lock(&self.services4), &want4)?;
        sync_trie(names::MAP_SERVICES6, &mut lock(&self.services6), &want6)
    }

    pub(super) fn counters(&self) -> Vec<(&'static str, u64)> {
        read_counters(&self.stats)
    }

    pub(super) fn set_dns(&self, listen: SocketAddrV4, on: bool) -> Result<(), BpfError> {
        let value = DnsConfig {
            addr: listen.ip().octets(),
            port: listen.port(),
            flags: if on { DNS_F_CAPTURE } else { 0 },
        };
        lock(&self.dns)
            .set(0, value, 0)
            .map_err(BpfError::map(names::MAP_DNS))
    }

    /// Not one-shot: a UDP client socket sends many queries from one port; the entry is
    /// rewritten by each datagram and ages out of the LRU.
    pub(super) fn dns_peer(&self, netns_cookie: u64, peer: SocketAddrV4) -> Option<Origin> {
        let key = PeerKey {
            netns_cookie,
            addr: peer.ip().octets(),
            port: peer.port(),
            _pad: 0,
        };
        lock(&self.dns_peers).get(&key, 0).ok()
    }

    pub(super) fn take_origin(&self, netns_cookie: u64, peer: SocketAddrV4) -> Option<Origin> {
        let key = PeerKey {
            netns_cookie,
            addr: peer.ip().octets(),
            port: peer.port(),
            _pad: 0,
        };
        let mut peers = lock(&self.peers);
        let origin = peers.get(&key, 0).ok()?;
        // One-shot: a later, direct connection that happens to reuse this client port must never
        // inherit this connection's identity.
        let _ = peers.remove(&key);
        Some(origin)
    }
}

pub(super) fn read_counters(stats: &PerCpuArray<MapData, u64>) -> Vec<(&'static str, u64)> {
    stats::NAMES
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let total = stats
                .get(&(i as u32), 0)
                .map(|values| values.iter().sum())
                .unwrap_or(0);
            (*name, total)
        })
        .collect()
}

/// Makes an LPM trie hold exactly `want`: new and changed entries first, then stale ones removed.
fn sync_trie<K, V>(
    name: &'static str,
    trie: &mut LpmTrie<MapData, K, V>,
    want: &[(Key<K>, V)],
) -> Result<(), BpfError>
where
    K: aya::Pod + Eq + std::hash::Hash,
    V: aya::Pod,
{
    for (key, value) in want {
        trie.insert(key, *value, 0).map_err(BpfError::map(name))?;
    }
    let wanted: HashSet<(u32, K)> = want
        .iter()
        .map(|(k, _)| (k.prefix_len(), k.data()))
        .collect();
    let stale: Vec<Key<K>> = trie
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !wanted.contains(&(k.prefix_len(), k.data())))
        .collect();
    for key in stale {
        trie.remove(&key).map_err(BpfError::map(name))?;
    }
    Ok(())
}

/// A delete of a key the map does not hold (`ENOENT`).
fn not_found(error: &aya::maps::MapError) -> bool {
    match error {
        aya::maps::MapError::KeyNotFound => true,
        aya::maps::MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding a map handle leaves the map itself consistent (the kernel owns it).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl OriginSource for super::Capture {
    fn origin(&self, netns_cookie: u64, peer: SocketAddr) -> Option<Origin> {
        match peer {
            SocketAddr::V4(v4) => self.maps.take_origin(netns_cookie, v4),
            // A v4-mapped client shows up as IPv4 on our IPv4 listener; anything else was not
            // redirected by us.
            SocketAddr::V6(v6) => v6.ip().to_ipv4_mapped().and_then(|ip| {
                self.maps
                    .take_origin(netns_cookie, SocketAddrV4::new(ip, v6.port()))
            }),
        }
    }
}

/// Registers one identity anchor in a running dataplane's pinned map (`egress exec` does this
/// for its service-account cgroup before the command starts, so the first connection already
/// carries the identity the kernel caches verdicts for). `Ok(false)` when nothing is pinned.
pub fn register_anchor(pin_dir: &Path, cgroup_id: u64) -> Result<bool, BpfError> {
    if !pin_dir.join(names::MAP_IDENTITIES).exists() {
        return Ok(false);
    }
    let map = open_pinned(pin_dir, names::MAP_IDENTITIES)?;
    let mut map: HashMap<MapData, u64, IdentityAnchor> = typed(names::MAP_IDENTITIES, map)?;
    map.insert(
        cgroup_id,
        IdentityAnchor {
            flags: egress_common::IDENTITY_F_CACHEABLE,
            _pad: 0,
        },
        0,
    )
    .map_err(BpfError::map(names::MAP_IDENTITIES))?;
    Ok(true)
}
