//! Link arguments for the shared library: the soname and the symbol
//! version every libxenvchan function carries in Xen 4.17's library.

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rerun-if-changed=libxenvchan.map");
    println!("cargo:rustc-cdylib-link-arg=-Wl,--undefined-version");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libxenvchan.so.4.17");
    println!("cargo:rustc-cdylib-link-arg=-Wl,--version-script={dir}/libxenvchan.map");
}
