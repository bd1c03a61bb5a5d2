//! Helpers shared by the integration tests.

#![allow(dead_code)] // Each test file uses its own subset.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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

/// The `ring` binary built for these tests.
pub fn ring() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ring"))
}

/// Starts `ring peer` with `args` (after `--socket PATH`).
pub fn spawn_peer(sock: &Path, args: &[&str]) -> Child {
    ring()
        .arg("peer")
        .arg("--socket")
        .arg(sock)
        .args(args)
        .stdin(Stdio::null())
        .spawn()
        .unwrap()
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

/// `ring CMD SOCKET --proto PROTO EXTRA...` (listen or connect), stderr
/// piped; the caller sets stdin and stdout.
pub fn side(cmd: &str, sock: &Path, proto: &str, extra: &[&str]) -> Command {
    let mut c = ring();
    c.arg(cmd)
        .arg(sock)
        .args(["--proto", proto])
        .args(extra)
        .stderr(Stdio::piped());
    c
}

/// Waits for `child` to exit, for at most `limit`; returns its exit code
/// (-1 for a signal) and its stderr (if piped). Kills it and fails the
/// test past the limit.
pub fn exit_within(child: &mut Child, limit: Duration, what: &str) -> (i32, String) {
    use std::io::Read;
    let start = Instant::now();
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code().unwrap_or(-1);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut err).unwrap();
    }
    (code, err)
}
