//! Types shared by the kernel programs (`egress-ebpf`) and the `egress` binary.
//!
//! Everything here is `#[repr(C)]`, `Copy`, with explicit padding and no `bool` or Rust enums,
//! so the kernel and userspace agree byte for byte and `bpftool map dump` can print named fields
//! from BTF.
#![no_std]

pub mod layout;
pub mod maps;
pub mod names;
pub mod stats;

pub use maps::*;
