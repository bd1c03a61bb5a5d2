//! Shared helpers for the cross-crate tests in `tests/tests/`.

pub mod dpdk;
pub mod xen;

use proptest::test_runner::{Config, FileFailurePersistence};

/// A proptest configuration that keeps shrunk failures in the workspace's
/// `proptest-regressions/NAME.txt`, so they are committed and replayed.
///
/// Integration tests run with the `tests/` package as working directory.
pub fn proptest_config(name: &'static str, cases: u32) -> Config {
    let path: &'static str =
        Box::leak(format!("../proptest-regressions/{name}.txt").into_boxed_str());
    Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(path))),
        ..Config::default()
    }
}

/// A deterministic byte stream for checksummed transfers: byte `i` of the
/// stream seeded with `seed`.
pub fn stream_byte(seed: u64, i: u64) -> u8 {
    let mut x = seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^= x >> 29;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    (x >> 32) as u8
}
