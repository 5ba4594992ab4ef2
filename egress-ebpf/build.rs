//! Rebuild the kernel programs when bpf-linker changes (a new LLVM may produce different code).
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
