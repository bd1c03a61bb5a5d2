//! Links the binary freestanding: no C runtime start files, no libc, no
//! dynamic loader. Scoped to this crate's binaries only.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    for arg in ["-nostartfiles", "-nostdlib", "-static", "-no-pie"] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
}
