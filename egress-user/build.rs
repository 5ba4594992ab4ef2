//! Builds the kernel programs (`egress-ebpf`) for the BPF target with the pinned nightly and
//! bpf-linker, and leaves the object in OUT_DIR for `include_bytes_aligned!`.
//! `cargo xtask` installs the toolchain first; a bare `cargo build` without it fails here with
//! aya-build's message.
use std::path::Path;

use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;
use object::build::elf::{Builder, SectionData};

/// The nightly that builds the kernel programs (design §9).
const BPF_TOOLCHAIN: &str = "nightly-2026-05-20";

fn main() -> anyhow::Result<()> {
    // aya-build relays every line the nested cargo prints as a warning; keep only real messages.
    // SAFETY: build scripts are single-threaded.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("MetadataCommand::exec")?;
    let ebpf_package = packages
        .into_iter()
        .find(|cargo_metadata::Package { name, .. }| name.as_str() == "egress-ebpf")
        .ok_or_else(|| anyhow!("egress-ebpf package not found"))?;
    let cargo_metadata::Package {
        name,
        manifest_path,
        ..
    } = ebpf_package;
    let root_dir = manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {manifest_path}"))?;
    let package = aya_build::Package {
        name: name.as_str(),
        root_dir: root_dir.as_str(),
        ..Default::default()
    };
    aya_build::build_ebpf([package], Toolchain::Custom(BPF_TOOLCHAIN))?;
    let out_dir = std::env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?;
    strip_dwarf(&Path::new(&out_dir).join("egress"))
}

/// Removes the DWARF sections from the kernel object before it is embedded in the binary.
///
/// bpf-linker needs the debug info to emit BTF, but once `.BTF` and `.BTF.ext` exist nothing
/// reads the DWARF: aya loads maps, programs, BTF and line info from those. The DWARF is about
/// 2.5 MB of the 2.9 MB object, which the binary would carry and `egress __install` parse for
/// nothing. `llvm-objdump -g` on the unstripped object in
/// `target/*/build/egress-user-*/out/aya-build` still shows it for debugging.
fn strip_dwarf(path: &Path) -> anyhow::Result<()> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut builder = Builder::read(data.as_slice())
        .with_context(|| format!("parsing {} as ELF", path.display()))?;
    let mut removed = false;
    for section in builder.sections.iter_mut() {
        let name = section.name.as_slice();
        if [&b".debug"[..], b".rel.debug", b".rela.debug"]
            .iter()
            .any(|prefix| name.starts_with(prefix))
        {
            section.delete = true;
            removed = true;
        }
    }
    if !removed {
        return Ok(());
    }
    // bpf-linker keeps section names in `.strtab` beside the symbol names; the writer wants a
    // section-name table of its own.
    if !builder
        .sections
        .iter()
        .any(|section| matches!(section.data, SectionData::SectionString))
    {
        let shstrtab = builder.sections.add();
        shstrtab.name = b".shstrtab"[..].into();
        shstrtab.sh_type = object::elf::SHT_STRTAB;
        shstrtab.sh_addralign = 1;
        shstrtab.data = SectionData::SectionString;
    }
    let mut out = Vec::with_capacity(data.len());
    builder
        .write(&mut out)
        .with_context(|| format!("writing {} without DWARF", path.display()))?;
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}
