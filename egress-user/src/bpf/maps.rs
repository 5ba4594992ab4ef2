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
    CONFIG_F_READY, Config, Origin, PeerKey, SERVICE_KEY_PORT_BITS, ServiceKey4, ServiceKey6,
    ServiceValue, names, stats,
};

use super::BpfError;
use crate::{config::IpNet, model::OriginSource};

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
    config: Mutex<Array<MapData, Config>>,
    stats: PerCpuArray<MapData, u64>,
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
    pub(super) fn take(ebpf: &mut aya::Ebpf) -> Result<Self, BpfError> {
        let mut take =
            |name: &'static str| ebpf.take_map(name).ok_or(BpfError::MissingMap { name });
        Ok(Self {
            services4: Mutex::new(typed(names::MAP_SERVICES4, take(names::MAP_SERVICES4)?)?),
            services6: Mutex::new(typed(names::MAP_SERVICES6, take(names::MAP_SERVICES6)?)?),
            peers: Mutex::new(typed(names::MAP_PEERS, take(names::MAP_PEERS)?)?),
            config: Mutex::new(typed(names::MAP_CONFIG, take(names::MAP_CONFIG)?)?),
            stats: typed(names::MAP_STATS, take(names::MAP_STATS)?)?,
        })
    }

    pub(super) fn set_waypoint(&self, addr: SocketAddrV4, cgroup_id: u64) -> Result<(), BpfError> {
        let config = Config {
            waypoint_cgroup_id: cgroup_id,
            waypoint_addr: addr.ip().octets(),
            waypoint_port: addr.port(),
            flags: CONFIG_F_READY,
        };
        lock(&self.config)
            .set(0, config, 0)
            .map_err(BpfError::map(names::MAP_CONFIG))
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

    pub(super) fn take_origin(&self, peer: SocketAddrV4) -> Option<Origin> {
        let key = PeerKey {
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

fn sync_trie<K>(
    name: &'static str,
    trie: &mut LpmTrie<MapData, K, ServiceValue>,
    want: &[(Key<K>, ServiceValue)],
) -> Result<(), BpfError>
where
    K: aya::Pod + Eq + std::hash::Hash,
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding a map handle leaves the map itself consistent (the kernel owns it).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl OriginSource for super::Capture {
    fn origin(&self, peer: SocketAddr) -> Option<Origin> {
        match peer {
            SocketAddr::V4(v4) => self.maps.take_origin(v4),
            // A v4-mapped client shows up as IPv4 on our IPv4 listener; anything else was not
            // redirected by us.
            SocketAddr::V6(v6) => v6
                .ip()
                .to_ipv4_mapped()
                .and_then(|ip| self.maps.take_origin(SocketAddrV4::new(ip, v6.port()))),
        }
    }
}
