//! Helpers shared by the integration tests.

#![allow(dead_code)] // Each test file uses its own subset.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A fresh socket path in a private temp directory, removed on drop.
pub struct TempSock {
    dir: PathBuf,
    pub path: PathBuf,
}

impl TempSock {
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ring-test-{}-{tag}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sock");
        TempSock { dir, path }
    }
}

impl Drop for TempSock {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Bytes that depend on (seed, position) only, so a reader can check
/// any piece it gets: `fill` continues where the last call stopped.
pub struct Pattern {
    seed: u64,
    at: u64,
}

impl Pattern {
    pub fn new(seed: u64) -> Self {
        Pattern { seed, at: 0 }
    }

    fn byte(&self, at: u64) -> u8 {
        let x = (at ^ self.seed.rotate_left(17)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (x >> 56) as u8
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.byte(self.at);
            self.at += 1;
        }
    }

    /// Position of the first byte of `got` that differs (continuing).
    pub fn first_mismatch(&mut self, got: &[u8]) -> Option<u64> {
        for &b in got {
            if b != self.byte(self.at) {
                return Some(self.at);
            }
            self.at += 1;
        }
        None
    }
}

/// Waits until `path` exists (a peer has bound it), for at most 10 s.
pub fn wait_for_path(path: &Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A small deterministic generator for test choices.
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A VMBus pipe pair in this process, through the real rendezvous (rings
/// of `ring` bytes each way); the socket's directory lives as long as the
/// returned guard.
pub fn vmbus_pair(
    ring: usize,
) -> (
    ring_hosted::vmbus::VmbusPipe,
    ring_hosted::vmbus::VmbusPipe,
    TempSock,
) {
    use ring_hosted::rendezvous::{self, Listener, Proto, ServerConfig};
    let sock = TempSock::new("vmbus-pair");
    let l = Listener::bind(
        &sock.path,
        ServerConfig::new(Proto::Vmbus).ring_sizes(ring, ring),
    )
    .unwrap();
    let path = sock.path.clone();
    let t = std::thread::spawn(move || rendezvous::connect(&path, Proto::Vmbus).unwrap());
    let server = l.accept().unwrap().into_vmbus().unwrap();
    let client = t.join().unwrap().into_vmbus().unwrap();
    (server, client, sock)
}

/// Waits until thread `tid` of this process is asleep in `poll`/`ppoll`,
/// for at most 10 s: what a test waits for before it acts on a blocked
/// call, so that the call's wait path is what runs (a fixed sleep would
/// let a loaded machine run the act first and the test pass without it).
#[allow(dead_code)]
pub fn wait_until_polling(tid: rustix::thread::Pid) {
    // The poll family's numbers, from the kernel's syscall tables.
    #[cfg(target_arch = "x86_64")]
    const POLL: &[&str] = &["7", "271"];
    #[cfg(target_arch = "aarch64")]
    const POLL: &[&str] = &["73"];
    let path = format!("/proc/self/task/{}/syscall", tid.as_raw_nonzero());
    let start = std::time::Instant::now();
    loop {
        let now = std::fs::read_to_string(&path).unwrap_or_default();
        if now
            .split_whitespace()
            .next()
            .is_some_and(|nr| POLL.contains(&nr))
        {
            return;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "thread {tid:?} never slept in poll (last: {now:?})"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}
