//! `egress status`: what is pinned, attached and counted, read from the pins alone (no load).
use std::{fmt, path::Path};

use aya::{
    maps::{HashMap, MapData, PerCpuArray, lpm_trie::LpmTrie},
    programs::{
        links::{FdLink, PinnedLink},
        loaded_programs,
    },
};
use egress_common::{
    Config, IdentityAnchor, Origin, PeerKey, ServiceKey4, ServiceKey6, ServiceValue, SockKey,
    VERDICT_DENY, VerdictKey, VerdictValue, names,
};

use super::{BpfError, loader::LINKS_DIR, maps::open_pinned};

pub struct LinkStatus {
    pub program: &'static str,
    /// `None` when the link is not pinned (capture is not attached for this hook).
    pub ids: Option<(u32, u32)>,
}

pub struct MapStatus {
    pub name: &'static str,
    /// Entry count, or why it could not be read.
    pub entries: Result<usize, String>,
}

/// One cached verdict, decoded.
pub struct VerdictStatus {
    pub identity_id: u64,
    /// The anchor cgroup's path, when it still exists.
    pub identity_path: Option<std::path::PathBuf>,
    pub service_id: u32,
    pub port: u16,
    pub deny: bool,
    pub generation: u64,
    pub age: std::time::Duration,
}

pub struct Status {
    pub pin_dir: std::path::PathBuf,
    pub links: Vec<LinkStatus>,
    /// Loaded programs named `eg_*`, with their ids (all users of this host, not only ours).
    pub programs: Vec<(u32, String)>,
    pub maps: Vec<MapStatus>,
    pub counters: Result<Vec<(&'static str, u64)>, String>,
    /// The kernel's current policy generation.
    pub generation: Option<u64>,
    pub verdicts: Vec<VerdictStatus>,
}

pub fn status(pin_dir: &Path) -> Result<Status, BpfError> {
    let links_dir = pin_dir.join(LINKS_DIR);
    let links = names::PROGRAMS
        .iter()
        .map(|program| {
            let ids = PinnedLink::from_pin(links_dir.join(program))
                .ok()
                .and_then(|link| FdLink::from(link).info().ok())
                .map(|info| (info.id(), info.program_id()));
            LinkStatus { program, ids }
        })
        .collect();
    let programs = loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|p| {
            let name = p.name_as_str()?.to_owned();
            name.starts_with("eg_").then_some((p.id(), name))
        })
        .collect();
    let maps = names::MAPS
        .iter()
        .map(|name| MapStatus {
            name,
            entries: count_entries(pin_dir, name).map_err(|e| e.to_string()),
        })
        .collect();
    let counters = open_pinned(pin_dir, names::MAP_STATS)
        .and_then(|m| {
            PerCpuArray::<MapData, u64>::try_from(m).map_err(BpfError::map(names::MAP_STATS))
        })
        .map(|stats| super::maps::read_counters(&stats))
        .map_err(|e| e.to_string());
    let generation = open_pinned(pin_dir, names::MAP_CONFIG)
        .ok()
        .and_then(|m| aya::maps::Array::<MapData, Config>::try_from(m).ok())
        .and_then(|a| a.get(&0, 0).ok())
        .map(|c| c.generation);
    let verdicts = read_verdicts(pin_dir);
    Ok(Status {
        pin_dir: pin_dir.to_owned(),
        links,
        programs,
        maps,
        counters,
        generation,
        verdicts,
    })
}

fn read_verdicts(pin_dir: &Path) -> Vec<VerdictStatus> {
    let Ok(map) = open_pinned(pin_dir, names::MAP_VERDICTS) else {
        return Vec::new();
    };
    let Ok(map) = HashMap::<MapData, VerdictKey, VerdictValue>::try_from(map) else {
        return Vec::new();
    };
    let now = super::maps::monotonic_ns();
    let entries: Vec<(VerdictKey, VerdictValue)> = map.iter().filter_map(Result::ok).collect();
    let mut paths = std::collections::HashMap::new();
    if !entries.is_empty()
        && let Ok(root) = crate::cgroup::cgroup2_mount()
    {
        let wanted: std::collections::HashSet<u64> =
            entries.iter().map(|(k, _)| k.identity_id).collect();
        find_cgroups(&root, &wanted, 0, &mut paths);
    }
    entries
        .into_iter()
        .map(|(k, v)| VerdictStatus {
            identity_id: k.identity_id,
            identity_path: paths.get(&k.identity_id).cloned(),
            service_id: k.service_id,
            port: k.port,
            deny: v.verdict == VERDICT_DENY,
            generation: v.generation,
            age: std::time::Duration::from_nanos(now.saturating_sub(v.created_ns)),
        })
        .collect()
}

/// cgroup id -> path for the wanted ids (a bounded walk of the cgroup2 tree).
fn find_cgroups(
    dir: &Path,
    wanted: &std::collections::HashSet<u64>,
    depth: usize,
    out: &mut std::collections::HashMap<u64, std::path::PathBuf>,
) {
    if depth > 16 || out.len() == wanted.len() {
        return;
    }
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = entry.path();
        if let Ok(id) = crate::cgroup::id(&path)
            && wanted.contains(&id)
        {
            out.insert(id, path.clone());
        }
        find_cgroups(&path, wanted, depth + 1, out);
    }
}

fn count_entries(pin_dir: &Path, name: &'static str) -> Result<usize, BpfError> {
    let map = open_pinned(pin_dir, name)?;
    let err = BpfError::map(name);
    Ok(match name {
        names::MAP_SERVICES4 => LpmTrie::<MapData, ServiceKey4, ServiceValue>::try_from(map)
            .map_err(err)?
            .keys()
            .count(),
        names::MAP_SERVICES6 => LpmTrie::<MapData, ServiceKey6, ServiceValue>::try_from(map)
            .map_err(err)?
            .keys()
            .count(),
        names::MAP_ORIGINS => HashMap::<MapData, u64, Origin>::try_from(map)
            .map_err(err)?
            .keys()
            .count(),
        names::MAP_PEERS => HashMap::<MapData, PeerKey, Origin>::try_from(map)
            .map_err(err)?
            .keys()
            .count(),
        names::MAP_IDENTITIES => HashMap::<MapData, u64, IdentityAnchor>::try_from(map)
            .map_err(err)?
            .keys()
            .count(),
        names::MAP_VERDICTS => HashMap::<MapData, VerdictKey, VerdictValue>::try_from(map)
            .map_err(err)?
            .keys()
            .count(),
        names::MAP_SHORTCUTS => HashMap::<MapData, SockKey, u32>::try_from(map)
            .map_err(err)?
            .keys()
            .count(),
        names::MAP_SOCKS => aya::maps::SockHash::<MapData, SockKey>::try_from(map)
            .map_err(err)?
            .keys()
            .count(),
        // Arrays have a fixed size; report their length.
        _ => match map {
            aya::maps::Map::Array(data) | aya::maps::Map::PerCpuArray(data) => {
                data.info().map(|i| i.max_entries() as usize).map_err(err)?
            }
            _ => 0,
        },
    })
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "pin directory: {}", self.pin_dir.display())?;
        writeln!(f, "links:")?;
        for link in &self.links {
            match link.ids {
                Some((link_id, prog_id)) => writeln!(
                    f,
                    "  {:<16} attached  link {link_id}  program {prog_id}",
                    link.program
                )?,
                None => writeln!(f, "  {:<16} not pinned", link.program)?,
            }
        }
        writeln!(f, "programs loaded (eg_*):")?;
        for (id, name) in &self.programs {
            writeln!(f, "  {id:<8} {name}")?;
        }
        writeln!(f, "maps:")?;
        for map in &self.maps {
            match &map.entries {
                Ok(n) => writeln!(f, "  {:<16} {n} entries", map.name)?,
                Err(e) => writeln!(f, "  {:<16} unavailable: {e}", map.name)?,
            }
        }
        writeln!(f, "counters:")?;
        match &self.counters {
            Ok(counters) => {
                for (name, value) in counters {
                    writeln!(f, "  {name:<24} {value}")?;
                }
            }
            Err(e) => writeln!(f, "  unavailable: {e}")?,
        }
        match self.generation {
            Some(g) => writeln!(f, "verdict cache (policy generation {g}):")?,
            None => writeln!(f, "verdict cache:")?,
        }
        if self.verdicts.is_empty() {
            writeln!(f, "  (empty)")?;
        }
        for v in &self.verdicts {
            let path = v
                .identity_path
                .as_ref()
                .map_or_else(|| "(gone)".to_owned(), |p| p.display().to_string());
            let current = if Some(v.generation) == self.generation {
                "current"
            } else {
                "stale"
            };
            writeln!(
                f,
                "  identity {} {path}  service {}  port {}  {}  generation {} ({current})  age {:.1}s",
                v.identity_id,
                v.service_id,
                v.port,
                if v.deny { "DENY" } else { "ALLOW" },
                v.generation,
                v.age.as_secs_f64()
            )?;
        }
        Ok(())
    }
}
