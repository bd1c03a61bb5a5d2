//! Builds the C harnesses in `c/` that host the real peer implementations
//! (libxenvchan from Debian `libxen-dev`, DPDK's VMBus ring from Debian
//! `libdpdk-dev`) and links them into the test crate.
//!
//! A missing system library is a build failure that says which Debian
//! package to install; `scripts/test` installs them. The pure-Rust tests
//! live in `tests/model` (package `ring-model-tests`), which needs none.

use std::path::{Path, PathBuf};
use std::process::Command;

/// One harness: its C file, the system archive it links, and the Debian
/// package that ships that archive.
struct Harness {
    source: &'static str,
    archive: &'static str,
    /// The pkg-config name that knows the archive's directory.
    pkg_config: &'static str,
    package: &'static str,
}

const HARNESSES: &[Harness] = &[
    Harness {
        source: "c/xen_peer.c",
        archive: "xenvchan",
        pkg_config: "xenvchan",
        package: "libxen-dev",
    },
    Harness {
        source: "c/dpdk_peer.c",
        archive: "rte_bus_vmbus",
        pkg_config: "libdpdk",
        package: "libdpdk-dev",
    },
];

/// Where the system's static libraries live: what pkg-config says for
/// `pc_name` if it can, else the C compiler's multiarch directory
/// (`/usr/lib/<triplet>` on Debian), else `/usr/lib`.
fn lib_dir(pc_name: &str) -> PathBuf {
    let ask = |cmd: &str, args: &[&str]| -> Option<String> {
        let out = Command::new(cmd).args(args).output().ok()?;
        let text = String::from_utf8(out.stdout).ok()?;
        let text = text.trim();
        (out.status.success() && !text.is_empty()).then(|| text.to_owned())
    };
    if let Some(dir) = ask("pkg-config", &["--variable=libdir", pc_name]) {
        return PathBuf::from(dir);
    }
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    if let Some(triplet) = ask(&cc, &["-print-multiarch"]) {
        return Path::new("/usr/lib").join(triplet);
    }
    PathBuf::from("/usr/lib")
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    for h in HARNESSES {
        println!("cargo:rerun-if-changed={}", h.source);
        if !Path::new(h.source).exists() {
            continue;
        }
        let dir = lib_dir(h.pkg_config);
        let archive = dir.join(format!("lib{}.a", h.archive));
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
        println!("cargo:rustc-link-search=native={}", dir.display());
        println!("cargo:rustc-link-lib=static={}", h.archive);
    }
}
