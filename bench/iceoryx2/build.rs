//! Puts the iceoryx2 version this crate's Cargo.lock resolved into
//! `ICEORYX2_VERSION`, for the report's header line.

fn main() {
    println!("cargo:rerun-if-changed=Cargo.lock");
    let lock = std::fs::read_to_string("Cargo.lock").unwrap_or_default();
    let mut lines = lock.lines();
    let mut version = "unknown".to_owned();
    while let Some(l) = lines.next() {
        if l.trim() == "name = \"iceoryx2\"" {
            if let Some(v) = lines
                .next()
                .and_then(|v| v.trim().strip_prefix("version = \""))
                .and_then(|v| v.strip_suffix('"'))
            {
                version = v.to_owned();
            }
            break;
        }
    }
    println!("cargo:rustc-env=ICEORYX2_VERSION={version}");
}
