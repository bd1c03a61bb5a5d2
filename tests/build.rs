//! Builds the C harnesses in `c/` that host the real peer implementations
//! (libxenvchan from Debian `libxen-dev`, DPDK's VMBus ring from Debian
//! `libdpdk-dev`) and links them into the test crate.
//!
//! A missing system library is a build failure that says which Debian
//! package to install; `scripts/test` installs them.

use std::path::Path;

/// One harness: its C file, the system archive it links, and the Debian
/// package that ships that archive.
struct Harness {
    source: &'static str,
    archive: &'static str,
    package: &'static str,
}

const HARNESSES: &[Harness] = &[
    Harness {
        source: "c/xen_peer.c",
        archive: "xenvchan",
        package: "libxen-dev",
    },
    Harness {
        source: "c/dpdk_peer.c",
        archive: "rte_bus_vmbus",
        package: "libdpdk-dev",
    },
];

const LIB_DIR: &str = "/usr/lib/x86_64-linux-gnu";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    for h in HARNESSES {
        println!("cargo:rerun-if-changed={}", h.source);
        if !Path::new(h.source).exists() {
            continue;
        }
        let archive = Path::new(LIB_DIR).join(format!("lib{}.a", h.archive));
        if !archive.exists() {
            panic!(
                "{} is missing: install the Debian package `{}` (apt-get install {}), \
                 or run scripts/test, which installs it",
                archive.display(),
                h.package,
                h.package
            );
        }
        let name = Path::new(h.source)
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("harness");
        cc::Build::new()
            .file(h.source)
            .warnings(true)
            .flag_if_supported("-Wno-unused-parameter")
            .compile(name);
        println!("cargo:rustc-link-search=native={LIB_DIR}");
        println!("cargo:rustc-link-lib=static={}", h.archive);
    }
}
