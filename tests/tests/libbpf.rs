//! libbpf interoperability: libbpf — the library bpftool and most BPF tooling are built on —
//! reads what we build and pin, and agrees with `egress-common` about every map's key and value.
//!
//! - The built object (`egress __object`): libbpf parses its BTF; every BTF-defined map has the
//!   key and value types of `egress_common::layout::MAPS`, and every program has its function.
//!   `bpf_object__open_file` itself refuses the object: libbpf >= 1.0 rejects legacy `maps`
//!   section definitions, and the sockhash (aya's `#[map]`) and aya-log's `AYA_LOGS` are such.
//!   The test pins that down exactly, so the day the object opens it lists programs and maps.
//! - The pins of a running dataplane: every map and link opens by path (`bpf_obj_get`), the
//!   kernel's info names the map and its sizes, the map's BTF (loaded by id) resolves key and
//!   value to the struct names, sizes and field offsets of `egress-common`, and every link is a
//!   cgroup link to the captured cgroup running the program of its name.
use std::{
    collections::BTreeSet,
    ffi::{CStr, CString, c_void},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::fs::MetadataExt,
    },
    path::Path,
};

use egress_common::{
    layout::{self, KeyForm, Layout, MapLayout},
    names,
};
use egress_tests::*;
use libbpf_sys as bpf;

/// The maps libbpf >= 1.0 refuses to open because they are legacy `maps` section definitions:
/// the sockhash (the kernel refuses BTF for it, so it is aya's legacy `#[map]`) and aya-log's
/// ring buffer (defined inside aya-log-ebpf 0.2).
const LEGACY_MAPS: [&str; 2] = [names::MAP_SOCKS, "AYA_LOGS"];

/// A BTF object from libbpf, freed on drop.
struct Btf(*mut bpf::btf);

impl Drop for Btf {
    fn drop(&mut self) {
        // SAFETY: a btf that libbpf allocated and nothing else frees.
        unsafe { bpf::btf__free(self.0) }
    }
}

/// One BTF struct member: name, offset in bytes, type id.
struct Member {
    name: String,
    offset: usize,
    type_id: u32,
}

impl Btf {
    #[track_caller]
    fn from_kernel(id: u32) -> Self {
        // SAFETY: plain libbpf call; the result is checked.
        let btf = unsafe { bpf::btf__load_from_kernel_by_id(id) };
        assert!(
            !btf.is_null(),
            "btf__load_from_kernel_by_id({id}): {}",
            std::io::Error::last_os_error()
        );
        Self(btf)
    }

    #[track_caller]
    fn parse_elf(path: &Path) -> Self {
        let c = cstring(path);
        // SAFETY: valid C string; no .BTF.ext wanted.
        let btf = unsafe { bpf::btf__parse_elf(c.as_ptr(), std::ptr::null_mut()) };
        assert!(
            !btf.is_null(),
            "btf__parse_elf({}): {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        Self(btf)
    }

    fn ty(&self, id: u32) -> &bpf::btf_type {
        // SAFETY: libbpf returns a pointer into the btf, valid while it lives, or null.
        unsafe { bpf::btf__type_by_id(self.0, id).as_ref() }
            .unwrap_or_else(|| panic!("no BTF type {id}"))
    }

    fn kind(&self, id: u32) -> u32 {
        (self.ty(id).info >> 24) & 0x1f
    }

    fn vlen(&self, id: u32) -> usize {
        (self.ty(id).info & 0xffff) as usize
    }

    fn str(&self, offset: u32) -> String {
        // SAFETY: libbpf returns a NUL-terminated string inside the btf, or null.
        let s = unsafe { bpf::btf__name_by_offset(self.0, offset) };
        if s.is_null() {
            return String::new();
        }
        // SAFETY: as above.
        unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned()
    }

    fn name(&self, id: u32) -> String {
        self.str(self.ty(id).name_off)
    }

    /// Skips typedefs and const/volatile modifiers.
    fn resolve(&self, id: u32) -> u32 {
        // SAFETY: plain libbpf call.
        let resolved = unsafe { bpf::btf__resolve_type(self.0, id) };
        assert!(resolved > 0, "btf__resolve_type({id}) = {resolved}");
        resolved as u32
    }

    fn size(&self, id: u32) -> usize {
        // SAFETY: plain libbpf call.
        let size = unsafe { bpf::btf__resolve_size(self.0, id) };
        assert!(size >= 0, "btf__resolve_size({id}) = {size}");
        size as usize
    }

    /// The type a PTR, VAR (or modifier) points at.
    fn target(&self, id: u32) -> u32 {
        // SAFETY: for these kinds the union holds a type id.
        unsafe { self.ty(id).__bindgen_anon_1.type_ }
    }

    /// Members of a STRUCT (btf_member entries follow the btf_type).
    fn members(&self, id: u32) -> Vec<Member> {
        assert_eq!(
            self.kind(id),
            bpf::BTF_KIND_STRUCT,
            "{} is a struct",
            self.name(id)
        );
        let kflag = self.ty(id).info >> 31 == 1;
        // SAFETY: a STRUCT's vlen btf_member entries follow its btf_type in libbpf's memory.
        let members = unsafe {
            std::slice::from_raw_parts(
                (self.ty(id) as *const bpf::btf_type).add(1) as *const bpf::btf_member,
                self.vlen(id),
            )
        };
        members
            .iter()
            .map(|m| {
                let bits = if kflag {
                    m.offset & 0xff_ffff
                } else {
                    m.offset
                };
                Member {
                    name: self.str(m.name_off),
                    offset: (bits / 8) as usize,
                    type_id: m.type_,
                }
            })
            .collect()
    }

    /// The variables of a DATASEC named `section`, by name and type id (empty if none).
    fn datasec(&self, section: &str) -> Vec<(String, u32)> {
        let c = CString::new(section).expect("a section name");
        // SAFETY: plain libbpf call.
        let id = unsafe { bpf::btf__find_by_name_kind(self.0, c.as_ptr(), bpf::BTF_KIND_DATASEC) };
        if id <= 0 {
            return Vec::new();
        }
        let id = id as u32;
        // SAFETY: a DATASEC's vlen btf_var_secinfo entries follow its btf_type.
        let vars = unsafe {
            std::slice::from_raw_parts(
                (self.ty(id) as *const bpf::btf_type).add(1) as *const bpf::btf_var_secinfo,
                self.vlen(id),
            )
        };
        vars.iter()
            .map(|v| (self.name(v.type_), self.target(v.type_)))
            .collect()
    }

    fn type_count(&self) -> u32 {
        // SAFETY: plain libbpf call.
        unsafe { bpf::btf__type_cnt(self.0) }
    }

    /// Checks that BTF type `id` is `layout`: same name, size, and fields (names, offsets,
    /// sizes in offset order). Returns what differs.
    fn differences(&self, id: u32, layout: &Layout) -> Vec<String> {
        let id = self.resolve(id);
        let mut out = Vec::new();
        let (name, size) = (self.name(id), self.size(id));
        if name != layout.name || size != layout.size {
            out.push(format!(
                "BTF {name} ({size} bytes), egress-common {} ({} bytes)",
                layout.name, layout.size
            ));
            return out;
        }
        if layout.fields.is_empty() {
            return out;
        }
        let mut want: Vec<_> = layout.fields.to_vec();
        want.sort_by_key(|f| f.offset);
        let have: Vec<(String, usize, usize)> = self
            .members(id)
            .iter()
            .map(|m| (m.name.clone(), m.offset, self.size(m.type_id)))
            .collect();
        let want: Vec<(String, usize, usize)> = want
            .iter()
            .map(|f| (f.name.to_owned(), f.offset, f.size))
            .collect();
        if have != want {
            out.push(format!(
                "{name} fields: BTF {have:?}, egress-common {want:?}"
            ));
        }
        out
    }

    /// Checks a map's key type (LPM tries wrap it as `{ prefix_len, data }`).
    fn key_differences(&self, id: u32, map: &MapLayout) -> Vec<String> {
        match map.key_form {
            KeyForm::Plain => self.differences(id, &map.key),
            KeyForm::LpmPrefixed => {
                let id = self.resolve(id);
                let members = self.members(id);
                let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
                if names != ["prefix_len", "data"] || members[1].offset != 4 {
                    return vec![format!(
                        "LPM key {} is not {{prefix_len, data@4}}: {names:?}",
                        self.name(id)
                    )];
                }
                let mut out = self.differences(members[1].type_id, &map.key);
                if self.size(id) != map.kernel_key_size() {
                    out.push(format!(
                        "LPM key {} is {} bytes, want {}",
                        self.name(id),
                        self.size(id),
                        map.kernel_key_size()
                    ));
                }
                out
            }
        }
    }
}

fn cstring(path: &Path) -> CString {
    CString::new(path.as_os_str().as_encoded_bytes()).expect("a path without NUL")
}

/// `bpf_obj_get(path)`: a pinned map, link or program.
#[track_caller]
fn obj_get(path: &Path) -> OwnedFd {
    let c = cstring(path);
    // SAFETY: valid C string.
    let fd = unsafe { bpf::bpf_obj_get(c.as_ptr()) };
    assert!(
        fd >= 0,
        "bpf_obj_get({}): {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    // SAFETY: a new descriptor that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn c_name(name: &[std::os::raw::c_char]) -> String {
    let bytes: Vec<u8> = name
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[track_caller]
fn map_info(fd: &OwnedFd, what: &Path) -> bpf::bpf_map_info {
    let mut info = bpf::bpf_map_info::default();
    let mut len = size_of::<bpf::bpf_map_info>() as u32;
    // SAFETY: out-pointers to a buffer of `len` bytes.
    let rc = unsafe { bpf::bpf_map_get_info_by_fd(fd.as_raw_fd(), &mut info, &mut len) };
    assert_eq!(
        rc,
        0,
        "bpf_map_get_info_by_fd({}): {}",
        what.display(),
        std::io::Error::last_os_error()
    );
    info
}

#[track_caller]
fn link_info(fd: &OwnedFd, what: &Path) -> bpf::bpf_link_info {
    // SAFETY: all-zero is a valid bpf_link_info (plain integers and unions of them).
    let mut info: bpf::bpf_link_info = unsafe { std::mem::zeroed() };
    let mut len = size_of::<bpf::bpf_link_info>() as u32;
    // SAFETY: out-pointers to a buffer of `len` bytes.
    let rc = unsafe { bpf::bpf_link_get_info_by_fd(fd.as_raw_fd(), &mut info, &mut len) };
    assert_eq!(
        rc,
        0,
        "bpf_link_get_info_by_fd({}): {}",
        what.display(),
        std::io::Error::last_os_error()
    );
    info
}

/// The name the kernel gives program `id`.
#[track_caller]
fn program_name(id: u32) -> String {
    // SAFETY: plain libbpf call; the result is checked.
    let fd = unsafe { bpf::bpf_prog_get_fd_by_id(id) };
    assert!(
        fd >= 0,
        "bpf_prog_get_fd_by_id({id}): {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero is a valid bpf_prog_info.
    let mut info: bpf::bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut len = size_of::<bpf::bpf_prog_info>() as u32;
    // SAFETY: out-pointers to a buffer of `len` bytes.
    let rc = unsafe { bpf::bpf_prog_get_info_by_fd(fd.as_raw_fd(), &mut info, &mut len) };
    assert_eq!(rc, 0, "bpf_prog_get_info_by_fd({id})");
    c_name(&info.name)
}

/// The kernel object this `egress` loads, written to a temporary file.
fn built_object() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("egress.bpf.o");
    run_bounded(
        std::process::Command::new(egress_bin())
            .arg("__object")
            .arg("--output")
            .arg(&path),
        std::time::Duration::from_secs(10),
    )
    .expect_success("egress __object");
    (dir, path)
}

#[test]
fn libbpf_parses_the_built_object_and_its_map_types_are_egress_commons() {
    if !require_binary() {
        return;
    }
    let (_dir, object) = built_object();
    let btf = Btf::parse_elf(&object);

    // Programs: each is a BTF function of its name.
    let functions: BTreeSet<String> = (1..btf.type_count())
        .filter(|id| btf.kind(*id) == bpf::BTF_KIND_FUNC)
        .map(|id| btf.name(id))
        .collect();
    for program in names::PROGRAMS.iter().chain([&names::PROG_SKMSG]) {
        assert!(
            functions.contains(*program),
            "{program} in the object's BTF: {functions:?}"
        );
    }

    // BTF-defined maps (`.maps`): `struct { type, key: *K, value: *V, max_entries, map_flags }`.
    let btf_maps = btf.datasec(".maps");
    let mut problems = Vec::new();
    for map in layout::MAPS.iter().filter(|m| m.btf) {
        let Some((_, def)) = btf_maps.iter().find(|(name, _)| name == map.map) else {
            problems.push(format!("{} is not a BTF-defined map in .maps", map.map));
            continue;
        };
        let def = btf.resolve(*def);
        let members = btf.members(def);
        let member = |name: &str| {
            members
                .iter()
                .find(|m| m.name == name)
                .map(|m| btf.target(btf.resolve(m.type_id)))
                .unwrap_or_else(|| panic!("{}: no {name} in its definition", map.map))
        };
        for p in btf.key_differences(member("key"), map) {
            problems.push(format!("{} key: {p}", map.map));
        }
        for p in btf.differences(member("value"), &map.value) {
            problems.push(format!("{} value: {p}", map.map));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // The legacy `maps` section: only the maps that cannot be BTF-defined.
    let legacy: BTreeSet<String> = btf.datasec("maps").into_iter().map(|(n, _)| n).collect();
    let allowed: BTreeSet<String> = LEGACY_MAPS.iter().map(|s| s.to_string()).collect();
    assert!(
        legacy.is_subset(&allowed),
        "only {allowed:?} may be legacy `maps` definitions (libbpf >= 1.0 cannot open those), got {legacy:?}"
    );

    let c = cstring(&object);
    // SAFETY: valid C string, default options.
    let obj = unsafe { bpf::bpf_object__open_file(c.as_ptr(), std::ptr::null()) };
    // SAFETY: libbpf_get_error accepts any pointer libbpf returned.
    let err = unsafe { bpf::libbpf_get_error(obj as *const c_void) };
    if legacy.is_empty() {
        assert_eq!(err, 0, "libbpf opens an object without legacy maps");
    } else {
        // libbpf.c: "legacy map definitions in 'maps' section are not supported by libbpf v1.0+".
        assert_eq!(
            err,
            -i64::from(libc::ENOTSUP),
            "libbpf refuses the object only for its legacy maps {legacy:?}"
        );
        eprintln!(
            "libbpf cannot open the object (legacy `maps` section: {legacy:?}); its BTF and every map \
             in .maps were checked"
        );
        return;
    }
    // Opened: libbpf lists every program and map.
    let mut programs = BTreeSet::new();
    let mut prog = std::ptr::null_mut();
    loop {
        // SAFETY: iterating the object libbpf opened.
        prog = unsafe { bpf::bpf_object__next_program(obj, prog) };
        if prog.is_null() {
            break;
        }
        // SAFETY: a valid program of obj.
        programs.insert(
            unsafe { CStr::from_ptr(bpf::bpf_program__name(prog)) }
                .to_string_lossy()
                .into_owned(),
        );
    }
    let mut maps = BTreeSet::new();
    let mut map = std::ptr::null_mut();
    loop {
        // SAFETY: iterating the object libbpf opened.
        map = unsafe { bpf::bpf_object__next_map(obj, map) };
        if map.is_null() {
            break;
        }
        // SAFETY: a valid map of obj.
        maps.insert(
            unsafe { CStr::from_ptr(bpf::bpf_map__name(map)) }
                .to_string_lossy()
                .into_owned(),
        );
    }
    // SAFETY: closing what we opened.
    unsafe { bpf::bpf_object__close(obj) };
    for program in names::PROGRAMS.iter().chain([&names::PROG_SKMSG]) {
        assert!(programs.contains(*program), "{program} in {programs:?}");
    }
    for name in names::MAPS {
        assert!(maps.contains(name), "{name} in {maps:?}");
    }
}

#[test]
fn libbpf_reads_every_pin_and_the_kernel_btf_matches_egress_common() {
    if !require_privileges() {
        return;
    }
    let upstream = Upstream::http();
    let dp = Dataplane::builder()
        .service_entry(&yaml::service_entry(
            "httpbin",
            "httpbin.test",
            upstream.addr(),
        ))
        .start();

    // Every pin is one of ours: the maps of egress-common and the links directory.
    let mut pins: Vec<String> = std::fs::read_dir(dp.pin_dir())
        .expect("the pin directory")
        .map(|e| e.expect("a pin").file_name().to_string_lossy().into_owned())
        .collect();
    pins.sort();
    let mut expected: Vec<String> = names::MAPS
        .iter()
        .map(|m| m.to_string())
        .chain(["links".to_owned()])
        .collect();
    expected.sort();
    assert_eq!(
        pins,
        expected,
        "what is pinned under {}",
        dp.pin_dir().display()
    );

    let mut problems = Vec::new();
    for map in &layout::MAPS {
        let path = dp.pin_dir().join(map.map);
        let fd = obj_get(&path);
        let info = map_info(&fd, &path);
        let name = c_name(&info.name);
        if name != map.map {
            problems.push(format!("{}: the kernel calls it {name:?}", map.map));
        }
        if info.key_size as usize != map.kernel_key_size() {
            problems.push(format!(
                "{}: key_size {} (egress-common {})",
                map.map,
                info.key_size,
                map.kernel_key_size()
            ));
        }
        if info.value_size as usize != map.value.size {
            problems.push(format!(
                "{}: value_size {} (egress-common {})",
                map.map, info.value_size, map.value.size
            ));
        }
        if !map.btf {
            // The kernel refuses BTF for a sockhash: sizes are all there is to check.
            if info.btf_key_type_id != 0 {
                problems.push(format!("{}: unexpected BTF key", map.map));
            }
            continue;
        }
        if info.btf_id == 0 || info.btf_key_type_id == 0 || info.btf_value_type_id == 0 {
            problems.push(format!(
                "{}: no BTF (btf_id {}, key type {}, value type {})",
                map.map, info.btf_id, info.btf_key_type_id, info.btf_value_type_id
            ));
            continue;
        }
        let btf = Btf::from_kernel(info.btf_id);
        for p in btf.key_differences(info.btf_key_type_id, map) {
            problems.push(format!("{} key: {p}", map.map));
        }
        for p in btf.differences(info.btf_value_type_id, &map.value) {
            problems.push(format!("{} value: {p}", map.map));
        }
    }

    // Links: one per program, each a cgroup link to the captured cgroup.
    let cgroup_id = std::fs::metadata(dp.cgroup())
        .expect("the captured cgroup")
        .ino();
    let links_dir = dp.pin_dir().join("links");
    let mut pinned: Vec<String> = std::fs::read_dir(&links_dir)
        .expect("the links directory")
        .map(|e| {
            e.expect("a link pin")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    pinned.sort();
    let mut expected: Vec<String> = names::PROGRAMS.iter().map(|p| p.to_string()).collect();
    expected.sort();
    assert_eq!(pinned, expected, "one pinned link per program");
    for program in names::PROGRAMS {
        let path = links_dir.join(program);
        let fd = obj_get(&path);
        let info = link_info(&fd, &path);
        if info.type_ != bpf::BPF_LINK_TYPE_CGROUP {
            problems.push(format!("link {program}: type {}", info.type_));
            continue;
        }
        // SAFETY: a cgroup link's info holds the cgroup member of the union.
        let linked_cgroup = unsafe { info.__bindgen_anon_1.cgroup.cgroup_id };
        if linked_cgroup != cgroup_id {
            problems.push(format!(
                "link {program}: cgroup {linked_cgroup}, captured cgroup {cgroup_id}"
            ));
        }
        let running = program_name(info.prog_id);
        if running != program {
            problems.push(format!("link {program} runs program {running:?}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
