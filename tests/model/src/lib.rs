//! Shared helpers for the pure-Rust tests (here, in `tests/`) and for the
//! interop tests of `ring-tests`, which re-exports them: a proptest
//! configuration that keeps shrunk failures in the workspace, a seeded
//! byte stream, and a deadline that turns a hang into a failure.
//!
//! This package links no C library, so `cargo test -p ring-model-tests`
//! runs on a machine without libxen-dev or libdpdk-dev.

use proptest::test_runner::{Config, FileFailurePersistence};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// A proptest configuration that keeps shrunk failures in the workspace's
/// `proptest-regressions/NAME.txt`, so they are committed and replayed.
pub fn proptest_config(name: &'static str, cases: u32) -> Config {
    let path: &'static str = Box::leak(
        format!(
            "{}/../../proptest-regressions/{name}.txt",
            env!("CARGO_MANIFEST_DIR")
        )
        .into_boxed_str(),
    );
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

/// A deadline for a test that waits on other threads or processes: if the
/// guard is still alive after `limit`, the whole test process exits with a
/// line naming the test, so a lost wake-up or a hang fails the run instead
/// of stalling it. Dropping the guard (the test finished, or panicked)
/// disarms it.
#[must_use = "the deadline is disarmed when the guard is dropped"]
pub struct Deadline {
    done: Arc<(Mutex<bool>, Condvar)>,
}

impl Deadline {
    /// Arms a deadline of `limit` for the test called `what`.
    pub fn new(what: &'static str, limit: Duration) -> Self {
        let done = Arc::new((Mutex::new(false), Condvar::new()));
        let watch = done.clone();
        std::thread::spawn(move || {
            let (lock, cv) = &*watch;
            let guard = lock.lock().unwrap_or_else(|p| p.into_inner());
            let (finished, _) = cv
                .wait_timeout_while(guard, limit, |finished| !*finished)
                .unwrap_or_else(|p| p.into_inner());
            if !*finished {
                eprintln!(
                    "{what}: still running after {limit:?} (a lost wake-up or a hang): failing"
                );
                std::process::exit(101);
            }
        });
        Deadline { done }
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        let (lock, cv) = &*self.done;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_all();
    }
}
