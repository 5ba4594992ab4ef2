//! The layout of every map's key and value, as data: size and each field's name, offset and size.
//!
//! A pinned map outlives the binary that created it, so a new binary must never reuse a pin whose
//! layout it does not share. The rule (design §3): a map whose key or value layout changes gets a
//! new version suffix (`_V2`). [`MAPS`] is what this build's layouts are; `layouts.txt` beside this
//! crate's manifest records, for every versioned name ever released, the layout it stood for, and
//! a unit test fails when the two disagree under one name. The privileged libbpf cross-check
//! (`tests/tests/libbpf.rs`) compares the same table with the BTF the kernel holds for the pins.
use core::mem::{offset_of, size_of};

use crate::{
    AllowKey4, Config, DnsConfig, IdentityAnchor, Origin, PeerKey, ServiceKey4, ServiceKey6,
    ServiceValue, SockKey, VerdictKey, VerdictValue, names,
};

/// One named field of a struct.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: &'static str,
    pub offset: usize,
    pub size: usize,
}

/// A key or value type: its name as BTF spells it (`u64` for a primitive), size and fields
/// (none for a primitive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub name: &'static str,
    pub size: usize,
    pub fields: &'static [Field],
}

/// How the kernel stores a map's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyForm {
    /// The key is the type itself.
    Plain,
    /// LPM trie: the kernel key is `{ prefix_len: u32, data: K }` (aya's `Key<K>`).
    LpmPrefixed,
}

/// One map by its versioned name, with its key and value layouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapLayout {
    pub map: &'static str,
    pub key_form: KeyForm,
    pub key: Layout,
    pub value: Layout,
    /// The kernel keeps BTF for the key and value (every map but the sockhash).
    pub btf: bool,
}

impl MapLayout {
    /// Key size as the kernel sees it (`bpf_map_info::key_size`).
    pub const fn kernel_key_size(&self) -> usize {
        match self.key_form {
            KeyForm::Plain => self.key.size,
            KeyForm::LpmPrefixed => size_of::<u32>() + self.key.size,
        }
    }
}

/// Size of the pointee of a raw pointer (for a field's size in a const).
#[doc(hidden)]
pub const fn pointee_size<T>(_: *const T) -> usize {
    size_of::<T>()
}

/// `layout!(Type { field, ... })` for a struct, `layout!(u64)` for a primitive.
macro_rules! layout {
    ($ty:ident { $($field:ident),* $(,)? }) => {
        Layout {
            name: stringify!($ty),
            size: size_of::<$ty>(),
            fields: &[$(Field {
                name: stringify!($field),
                offset: offset_of!($ty, $field),
                size: {
                    let probe = core::mem::MaybeUninit::<$ty>::uninit();
                    // SAFETY: only a pointer to the field is formed, nothing is read.
                    pointee_size(unsafe { &raw const (*probe.as_ptr()).$field })
                },
            }),*],
        }
    };
    ($ty:ident) => {
        Layout {
            name: stringify!($ty),
            size: size_of::<$ty>(),
            fields: &[],
        }
    };
}

const SERVICE_KEY4: Layout = layout!(ServiceKey4 { port, _pad, addr });
const SERVICE_KEY6: Layout = layout!(ServiceKey6 { port, _pad, addr });
const SERVICE_VALUE: Layout = layout!(ServiceValue { service_id, flags });
const ORIGIN: Layout = layout!(Origin {
    cgroup_id,
    identity_id,
    dst_addr,
    dst_port,
    family,
    service_id,
    pid,
    uid,
    gid,
});
const PEER_KEY: Layout = layout!(PeerKey {
    netns_cookie,
    addr,
    port,
    _pad,
});
const CONFIG: Layout = layout!(Config {
    waypoint_cgroup_id,
    generation,
    waypoint_addr,
    waypoint_port,
    flags,
});
const DNS_CONFIG: Layout = layout!(DnsConfig { addr, port, flags });
const IDENTITY_ANCHOR: Layout = layout!(IdentityAnchor { flags, _pad });
const VERDICT_KEY: Layout = layout!(VerdictKey {
    identity_id,
    service_id,
    port,
    _pad,
});
const VERDICT_VALUE: Layout = layout!(VerdictValue {
    generation,
    verdict,
    _pad,
    created_ns,
});
const ALLOW_KEY4: Layout = layout!(AllowKey4 { addr });
const SOCK_KEY: Layout = layout!(SockKey {
    netns_cookie,
    local_ip4,
    remote_ip4,
    local_port,
    remote_port,
});
const U32: Layout = layout!(u32);
const U64: Layout = layout!(u64);

const fn map(map: &'static str, key_form: KeyForm, key: Layout, value: Layout) -> MapLayout {
    MapLayout {
        map,
        key_form,
        key,
        value,
        btf: true,
    }
}

/// Every map of [`names::MAPS`], in that order, with the layouts this build gives it.
pub const MAPS: [MapLayout; names::MAPS.len()] = [
    map(
        names::MAP_SERVICES4,
        KeyForm::LpmPrefixed,
        SERVICE_KEY4,
        SERVICE_VALUE,
    ),
    map(
        names::MAP_SERVICES6,
        KeyForm::LpmPrefixed,
        SERVICE_KEY6,
        SERVICE_VALUE,
    ),
    map(names::MAP_ORIGINS, KeyForm::Plain, U64, ORIGIN),
    map(names::MAP_PEERS, KeyForm::Plain, PEER_KEY, ORIGIN),
    map(names::MAP_CONFIG, KeyForm::Plain, U32, CONFIG),
    // Per-CPU: the value is one u64 per CPU.
    map(names::MAP_STATS, KeyForm::Plain, U32, U64),
    map(names::MAP_IDENTITIES, KeyForm::Plain, U64, IDENTITY_ANCHOR),
    map(
        names::MAP_VERDICTS,
        KeyForm::Plain,
        VERDICT_KEY,
        VERDICT_VALUE,
    ),
    map(names::MAP_ALLOWED4, KeyForm::LpmPrefixed, ALLOW_KEY4, U32),
    // The kernel refuses BTF for a sockhash; its value is the socket (a u32 fd from userspace).
    MapLayout {
        btf: false,
        ..map(names::MAP_SOCKS, KeyForm::Plain, SOCK_KEY, U32)
    },
    // SHORTCUT_PAIRED or SHORTCUT_TCP, by the application's end of the connection.
    map(names::MAP_SHORTCUTS, KeyForm::Plain, SOCK_KEY, U32),
    map(names::MAP_DNS, KeyForm::Plain, U32, DNS_CONFIG),
    map(names::MAP_DNS_PEERS, KeyForm::Plain, PEER_KEY, ORIGIN),
];

/// The layout of one map by name.
pub fn map_layout(name: &str) -> Option<&'static MapLayout> {
    MAPS.iter().find(|m| m.map == name)
}

impl core::fmt::Display for Layout {
    /// `Origin(40){cgroup_id@0+8,identity_id@8+8,...}`, or `u64(8)`: one line, for the
    /// recorded table.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}({})", self.name, self.size)?;
        if !self.fields.is_empty() {
            f.write_str("{")?;
            for (i, field) in self.fields.iter().enumerate() {
                if i > 0 {
                    f.write_str(",")?;
                }
                write!(f, "{}@{}+{}", field.name, field.offset, field.size)?;
            }
            f.write_str("}")?;
        }
        Ok(())
    }
}

impl core::fmt::Display for MapLayout {
    /// One line of `layouts.txt`: `EG_ORIGINS_V1 key=u64(8) value=Origin(40){...}`.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let lpm = match self.key_form {
            KeyForm::Plain => "",
            KeyForm::LpmPrefixed => "lpm:",
        };
        write!(f, "{} key={lpm}{} value={}", self.map, self.key, self.value)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{collections::BTreeMap, format, string::String, vec::Vec};

    use super::*;

    /// Every versioned name ever released, with the layout it stands for.
    const RECORDED: &str = include_str!("../layouts.txt");

    fn recorded() -> BTreeMap<&'static str, &'static str> {
        RECORDED
            .lines()
            .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
            .map(|line| (line.split(' ').next().unwrap_or_default(), line))
            .collect()
    }

    #[test]
    fn every_map_has_a_layout() {
        let mapped: Vec<&str> = MAPS.iter().map(|m| m.map).collect();
        assert_eq!(mapped, names::MAPS, "MAPS follows names::MAPS");
    }

    /// The versioning rule: a layout change without a new `_V<n>` name fails here.
    #[test]
    fn a_versioned_name_keeps_its_layout() {
        let recorded = recorded();
        let mut problems = Vec::<String>::new();
        for map in &MAPS {
            let now = format!("{map}");
            match recorded.get(map.map) {
                Some(line) if *line == now => {}
                Some(line) => problems.push(format!(
                    "{} changed layout without a new version suffix:\n  recorded: {line}\n  now:      {now}\n  \
                     bump the suffix in egress-common/src/names.rs (and the kernel map) and record the new \
                     name in egress-common/layouts.txt; keep the old line",
                    map.map
                )),
                None => problems.push(format!(
                    "{} is not recorded: add this line to egress-common/layouts.txt:\n  {now}",
                    map.map
                )),
            }
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    #[test]
    fn layouts_cover_every_byte() {
        for map in &MAPS {
            for layout in [map.key, map.value] {
                // Sorted by offset: a field missing from `layout!` shows as a gap.
                let mut fields: Vec<&Field> = layout.fields.iter().collect();
                fields.sort_by_key(|f| f.offset);
                let mut end = 0;
                for field in fields {
                    assert_eq!(
                        field.offset, end,
                        "{}: a gap before {}",
                        layout.name, field.name
                    );
                    end = field.offset + field.size;
                }
                if !layout.fields.is_empty() {
                    assert_eq!(end, layout.size, "{}: padding at the end", layout.name);
                }
            }
        }
    }
}
