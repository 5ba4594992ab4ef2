//! `egress status`: what is pinned, attached and counted, read from the pins alone (no load).
use std::{fmt, path::Path};

use aya::{
    maps::{HashMap, MapData, PerCpuArray, lpm_trie::LpmTrie},
    programs::{
        links::{FdLink, PinnedLink},
        loaded_programs,
    },
};
use egress_common::{Origin, PeerKey, ServiceKey4, ServiceKey6, ServiceValue, names};

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

pub struct Status {
    pub pin_dir: std::path::PathBuf,
    pub links: Vec<LinkStatus>,
    /// Loaded programs named `eg_*`, with their ids (all users of this host, not only ours).
    pub programs: Vec<(u32, String)>,
    pub maps: Vec<MapStatus>,
    pub counters: Result<Vec<(&'static str, u64)>, String>,
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
    Ok(Status {
        pin_dir: pin_dir.to_owned(),
        links,
        programs,
        maps,
        counters,
    })
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
        Ok(())
    }
}
