//! VIPs for ServiceEntry hosts (design §11): istiod's `status.addresses` when present, else our
//! own from 240.240.0.0/16, under istiod's eligibility rules (resolution ≠ NONE, no
//! `spec.addresses`, label `networking.istio.io/enable-autoallocate-ip` ≠ `false`).
//!
//! Ours are deterministic: the slot is a hash of (namespace, name, host), so two nodes and a
//! restart agree for the same set of ServiceEntries; a collision goes to the next free slot, in
//! the order of the keys (sorted), which is the same everywhere too.
use std::{
    collections::{BTreeMap, HashSet},
    net::{IpAddr, Ipv4Addr},
};

use crate::config::{ConfigSet, Resolution, ServiceEntry};

/// The VIP range: 240.240.0.0/16 (class E, never routed).
const BASE: [u8; 2] = [240, 240];

/// Whether istiod would allocate a VIP for this ServiceEntry.
pub fn eligible(se: &ServiceEntry) -> bool {
    se.resolution != Resolution::None && se.addresses.is_empty() && se.auto_allocate
}

/// FNV-1a, 32 bits: stable across builds and platforms (unlike `DefaultHasher`).
fn fnv1a(bytes: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for b in bytes {
        hash ^= u32::from(*b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

fn slot_addr(slot: u16) -> Ipv4Addr {
    let [hi, lo] = slot.to_be_bytes();
    Ipv4Addr::new(BASE[0], BASE[1], hi, lo)
}

/// Usable slots: not .0.0 nor .255.255 (network and broadcast look-alikes).
fn usable(slot: u16) -> bool {
    slot != 0 && slot != u16::MAX
}

/// The VIPs of every eligible ServiceEntry host, keyed by (namespace, name, host). A wildcard
/// host gets one VIP like any other host.
pub fn allocate(config: &ConfigSet) -> BTreeMap<(String, String, String), Vec<IpAddr>> {
    let mut out = BTreeMap::new();
    let mut taken: HashSet<u16> = HashSet::new();
    let mut ours = Vec::new();
    for se in config.service_entries.iter().filter(|se| eligible(se)) {
        for host in &se.hosts {
            let key = (se.namespace.clone(), se.name.clone(), host.clone());
            if se.status_addresses.is_empty() {
                ours.push(key);
            } else {
                for ip in &se.status_addresses {
                    if let IpAddr::V4(v4) = ip
                        && v4.octets()[..2] == BASE
                    {
                        taken.insert(u16::from_be_bytes([v4.octets()[2], v4.octets()[3]]));
                    }
                }
                out.insert(key, se.status_addresses.clone());
            }
        }
    }
    ours.sort();
    ours.dedup();
    for key in ours {
        let text = format!("{}/{}/{}", key.0, key.1, key.2);
        let mut slot = (fnv1a(text.as_bytes()) & 0xffff) as u16;
        // Bounded: at most every slot once.
        let mut found = None;
        for _ in 0..=u16::MAX as u32 {
            if usable(slot) && !taken.contains(&slot) {
                found = Some(slot);
                break;
            }
            slot = slot.wrapping_add(1);
        }
        let Some(slot) = found else {
            tracing::warn!(host = %key.2, "no VIP left in 240.240.0.0/16");
            continue;
        };
        taken.insert(slot);
        out.insert(key, vec![IpAddr::V4(slot_addr(slot))]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_stable_and_in_range() {
        let a = fnv1a(b"default/httpbin/httpbin.org");
        assert_eq!(a, fnv1a(b"default/httpbin/httpbin.org"));
        let ip = slot_addr((a & 0xffff) as u16);
        assert_eq!(ip.octets()[..2], BASE);
        assert!(!usable(0) && !usable(u16::MAX) && usable(1));
    }

    #[test]
    fn many_hosts_get_distinct_vips_and_the_same_ones_every_time() {
        let yaml: String = (0..3000)
            .map(|i| {
                format!(
                    "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: s{i}}}\n\
                     spec:\n  hosts: [h{i}.test]\n  ports: [{{number: 80, protocol: HTTP, name: http}}]\n  \
                     resolution: DNS\n---\n"
                )
            })
            .collect();
        let config =
            crate::config::parse_str(std::path::Path::new("t.yaml"), &yaml).expect("valid");
        let first = allocate(&config);
        assert_eq!(first.len(), 3000);
        let distinct: HashSet<&Vec<IpAddr>> = first.values().collect();
        assert_eq!(distinct.len(), 3000, "collisions go to distinct slots");
        assert_eq!(allocate(&config), first, "deterministic");
    }
}
