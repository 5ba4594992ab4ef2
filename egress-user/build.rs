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
    strip_dwarf(&Path::new(&out_dir).join("egress"))?;
    link_order();
    Ok(())
}

/// The file beside this build script that `cargo xtask link-order` writes: the functions that
/// ran while `egress run` served the bench's load under callgrind, hottest first, one mangled
/// name per line (`#` starts a comment).
const LINK_ORDER: &str = "link-order.txt";

/// Release builds for x86_64-unknown-linux-gnu link the `egress` binary with
/// `--symbol-ordering-file` [`LINK_ORDER`]: the 2 MiB of functions the waypoint runs sit
/// together at the start of `.text` instead of being spread over its 13.5 MiB, so far fewer
/// pages of the binary are faulted in (RssFile 15 MiB -> 7.4 MiB, docs/benchmarks.md). Symbols the
/// file names that the build no longer has are skipped without a warning; a stale file only
/// orders fewer functions. `EGRESS_LINK_ORDER=off` turns it off. Other targets and builds with a
/// linker of their own (`-C linker=...`, `target.<triple>.linker`) link as before: the default
/// there may be GNU ld, which has no such option.
fn link_order() {
    println!("cargo:rerun-if-env-changed=EGRESS_LINK_ORDER");
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default();
    let file = Path::new(&manifest_dir).join(LINK_ORDER);
    println!("cargo:rerun-if-changed={}", file.display());
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let switch = var("EGRESS_LINK_ORDER");
    if var("PROFILE") != "release" || matches!(switch.as_str(), "off" | "0" | "false") {
        return;
    }
    if var("TARGET") != "x86_64-unknown-linux-gnu" {
        return;
    }
    let rustflags = var("CARGO_ENCODED_RUSTFLAGS");
    let own_linker = rustflags.split('\x1f').any(|flag| {
        ["linker=", "linker-flavor", "linker-features"]
            .iter()
            .any(|f| flag.contains(f))
    });
    if std::env::var_os("RUSTC_LINKER").is_some() || own_linker {
        println!(
            "cargo:warning=a linker of your own is set: {LINK_ORDER} is not applied \
             (EGRESS_LINK_ORDER=off silences this)"
        );
        return;
    }
    if !file.is_file() {
        println!(
            "cargo:warning={} is missing: the binary links unordered",
            file.display()
        );
        return;
    }
    println!(
        "cargo:rustc-link-arg-bin=egress=-Wl,--symbol-ordering-file={}",
        file.display()
    );
    println!("cargo:rustc-link-arg-bin=egress=-Wl,--no-warn-symbol-ordering");
    // RELR: the 45k relative relocations of a PIE in 13 KB instead of 1 MB of `.rela.dyn`, which
    // ld.so reads at every start (1.4 MB less RSS). The binary then needs glibc 2.36 (LLD adds
    // the GLIBC_ABI_DT_RELR version), so only where the building glibc has it.
    if var("HOST") == var("TARGET") && glibc_at_least(2, 36) {
        println!("cargo:rustc-link-arg-bin=egress=-Wl,-z,pack-relative-relocs");
    }
}

/// Whether the glibc of the building machine (`getconf GNU_LIBC_VERSION`: `glibc 2.36`) is at
/// least `major.minor`; false when that cannot be told.
fn glibc_at_least(major: u32, minor: u32) -> bool {
    let Ok(output) = std::process::Command::new("getconf")
        .arg("GNU_LIBC_VERSION")
        .output()
    else {
        return false;
    };
    let text = String::from_utf8_lossy(&output.stdout);
    let version = text.trim().strip_prefix("glibc ").unwrap_or_default();
    let mut parts = version.split('.').map(|part| part.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
    }
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
