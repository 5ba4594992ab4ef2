//! Builds the kernel programs (`egress-ebpf`) for the BPF target with the pinned nightly and
//! bpf-linker, and leaves the object in OUT_DIR for `include_bytes_aligned!`.
//! `cargo xtask` installs the toolchain first; a bare `cargo build` without it fails here with
//! aya-build's message.
use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

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
    aya_build::build_ebpf([package], Toolchain::Custom(BPF_TOOLCHAIN))
}
