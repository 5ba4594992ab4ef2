//! Map definitions. All maps carry BTF (`#[btf_map]`) so `bpftool map dump` prints field names.
use aya_ebpf::{
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
    macros::{btf_map, map},
    maps::SockHash,
};
use egress_common::{
    ALLOWED_MAX, AllowKey4, Config, DnsConfig, IDENTITIES_MAX, IdentityAnchor, ORIGINS_MAX, Origin,
    PeerKey, SERVICES_MAX, SOCKS_MAX, ServiceKey4, ServiceKey6, ServiceValue, SockKey,
    VERDICTS_MAX, VerdictKey, VerdictValue, stats,
};

#[btf_map]
pub static EG_SERVICES4_V1: LpmTrie<ServiceKey4, ServiceValue, { SERVICES_MAX as usize }> =
    LpmTrie::new();

#[btf_map]
pub static EG_SERVICES6_V1: LpmTrie<ServiceKey6, ServiceValue, { SERVICES_MAX as usize }> =
    LpmTrie::new();

#[btf_map]
pub static EG_ORIGINS_V1: LruHashMap<u64, Origin, { ORIGINS_MAX as usize }> = LruHashMap::new();

#[btf_map]
pub static EG_PEERS_V2: LruHashMap<PeerKey, Origin, { ORIGINS_MAX as usize }> = LruHashMap::new();

#[btf_map]
pub static EG_CONFIG_V1: Array<Config, 1> = Array::new();

#[btf_map]
pub static EG_IDENTITY_V1: HashMap<u64, IdentityAnchor, { IDENTITIES_MAX as usize }> =
    HashMap::new();

#[btf_map]
pub static EG_VERDICTS_V1: LruHashMap<VerdictKey, VerdictValue, { VERDICTS_MAX as usize }> =
    LruHashMap::new();

#[btf_map]
pub static EG_ALLOWED4_V1: LpmTrie<AllowKey4, u32, { ALLOWED_MAX as usize }> = LpmTrie::new();

/// The kernel cannot attach BTF to a sockhash, so this one map is a legacy definition.
#[map]
pub static EG_SOCKS_V2: SockHash<SockKey> = SockHash::with_max_entries(SOCKS_MAX, 0);

#[btf_map]
pub static EG_SHORTCUT_V2: LruHashMap<SockKey, u32, { SOCKS_MAX as usize }> = LruHashMap::new();

#[btf_map]
pub static EG_STATS_V4: PerCpuArray<u64, { stats::COUNT as usize }> = PerCpuArray::new();

#[btf_map]
pub static EG_DNS_V1: Array<DnsConfig, 1> = Array::new();

#[btf_map]
pub static EG_DNSPEERS_V1: LruHashMap<PeerKey, Origin, { ORIGINS_MAX as usize }> =
    LruHashMap::new();

/// The DNS listener, if DNS capture is on.
#[inline(always)]
pub fn dns_config() -> Option<DnsConfig> {
    let dns = EG_DNS_V1.get(0)?;
    if dns.flags & egress_common::DNS_F_CAPTURE == 0 {
        return None;
    }
    Some(*dns)
}

/// Counts one occurrence of `reason` on this CPU.
#[inline(always)]
pub fn count(reason: u32) {
    if let Some(slot) = EG_STATS_V4.get_ptr_mut(reason) {
        // SAFETY: per-CPU slot, and BPF programs are not preempted on one CPU mid-update.
        unsafe { *slot += 1 };
    }
}

/// Whether the config says ENROLLED_ONLY (Kubernetes mode: capture acts only on tasks below an
/// anchor with `IDENTITY_F_ENROLLED`). Read whether or not the config is READY, so that a node's
/// unenrolled pods are left alone also before the agent has written the rest.
#[inline(always)]
pub fn enrolled_only() -> bool {
    EG_CONFIG_V1
        .get(0)
        .is_some_and(|c| c.flags & egress_common::CONFIG_F_ENROLLED_ONLY != 0)
}

/// The waypoint's configuration, if it has been written.
#[inline(always)]
pub fn config() -> Option<Config> {
    let config = EG_CONFIG_V1.get(0)?;
    if config.flags & egress_common::CONFIG_F_READY == 0 {
        return None;
    }
    Some(*config)
}
