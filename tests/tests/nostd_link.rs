//! Builds `tests/nostd-link` (a freestanding binary: `#![no_std]`,
//! `#![no_main]`, its own `_start`, linked `-nostartfiles -nostdlib
//! -static`), runs it, and checks that ring-core linked without libc or std.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn build() -> PathBuf {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("nostd-link");
    let target_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("nostd-link");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let start = Instant::now();
    let out = Command::new(cargo)
        .current_dir(&crate_dir)
        .args(["build", "--release", "--offline", "--manifest-path"])
        .arg(crate_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        // Flags meant for the hosted test build (coverage, sanitizers, a
        // cross target) do not apply to a freestanding binary.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "building nostd-link failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("nostd-link built in {:?}", start.elapsed());
    target_dir.join("release").join("nostd-link")
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Program header types of a little-endian ELF64 executable, after
/// checking it is one.
fn elf_program_headers(elf: &[u8]) -> (u16, Vec<u32>) {
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(elf[4], 2, "not ELF64");
    assert_eq!(elf[5], 1, "not little-endian");
    let e_type = u16_at(elf, 16);
    let phoff = u64_at(elf, 32) as usize;
    let phentsize = u16_at(elf, 54) as usize;
    let phnum = u16_at(elf, 56) as usize;
    let types = (0..phnum)
        .map(|i| u32_at(elf, phoff + i * phentsize))
        .collect();
    (e_type, types)
}

#[test]
fn freestanding_binary_links_runs_and_uses_no_libc() {
    let bin = build();

    // It runs, and its exit status is the result of its checks.
    let status = Command::new(&bin).status().expect("run nostd-link");
    assert_eq!(status.code(), Some(0), "nostd-link reported a failed check");
    let status = Command::new(&bin)
        .arg("sabotage")
        .status()
        .expect("run nostd-link");
    assert_eq!(
        status.code(),
        Some(7),
        "with one received byte corrupted, the comparison must fail"
    );

    // A static executable: no interpreter (dynamic loader), no dynamic
    // section, hence no shared libc.
    let elf = std::fs::read(&bin).unwrap();
    let (e_type, phdrs) = elf_program_headers(&elf);
    const ET_EXEC: u16 = 2;
    const PT_DYNAMIC: u32 = 2;
    const PT_INTERP: u32 = 3;
    assert_eq!(e_type, ET_EXEC, "expected a non-PIE executable");
    assert!(!phdrs.is_empty());
    assert!(
        !phdrs.contains(&PT_INTERP),
        "binary asks for a dynamic loader"
    );
    assert!(!phdrs.contains(&PT_DYNAMIC), "binary has a dynamic section");
    for needle in [&b"GLIBC_"[..], b"__libc_start_main", b"libc.so"] {
        assert!(
            !elf.windows(needle.len()).any(|w| w == needle),
            "binary mentions {}",
            String::from_utf8_lossy(needle)
        );
    }

    // Symbols: nothing undefined, nothing from std or libc, and ring-core
    // really is in there.
    let nm = |args: &[&str]| {
        let out = Command::new("nm")
            .args(args)
            .arg(&bin)
            .output()
            .expect("nm (binutils) is needed for this test");
        assert!(out.status.success(), "nm failed");
        String::from_utf8(out.stdout).unwrap()
    };
    let undefined = nm(&["-u"]);
    assert_eq!(undefined.trim(), "", "undefined symbols: {undefined}");
    let symbols = nm(&[]);
    for line in symbols.lines() {
        let name = line.rsplit(' ').next().unwrap_or("");
        assert!(
            !name.contains("3std") && !name.contains("libc") && !name.contains("GLIBC"),
            "std or libc symbol linked in: {name}"
        );
    }
    assert!(
        symbols.contains("ring_core") && symbols.contains("serve_flat"),
        "ring-core's vchan is not in the binary"
    );
}
