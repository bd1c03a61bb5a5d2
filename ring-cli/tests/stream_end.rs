//! How `ring listen`, `ring connect` and `ring attach` end, by exit status:
//! 0 exactly when every byte went through both ways (docs/hosted.md's
//! stream-end table), and stdout a prefix of what the peer sent otherwise.
//!
//! Every `ring` process here runs with `RING_LIVENESS_MS=0`: no periodic
//! re-check rescues a lost wake-up, so one would hang the transfer until
//! the test's deadline and fail it.

mod common;

use common::{ring, wait_for_path, TempSock};
use ring_cli::check::Pattern;
use std::io::{Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Bytes of pattern `seed`.
fn data(seed: u64, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    Pattern::new(seed).fill(&mut v);
    v
}

/// A running `ring` with its stdin fed from a thread and its stdout and
/// stderr collected.
struct Running {
    args: String,
    child: Child,
    feeder: JoinHandle<()>,
    out: JoinHandle<Vec<u8>>,
    err: JoinHandle<Vec<u8>>,
}

struct Ended {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: String,
}

fn ring_cmd(args: &[&str]) -> Command {
    let mut c = ring();
    c.args(args)
        .env("RING_LIVENESS_MS", "0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Starts `ring args`, feeding `input` (then, after `pause`, `more`) to
/// its stdin.
fn start(args: &[&str], input: Vec<u8>, pause: Duration, more: Vec<u8>) -> Running {
    let mut child = ring_cmd(args).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let feeder = thread::spawn(move || {
        // A closed stdin (the process died) is part of some tests.
        if stdin.write_all(&input).is_ok() && !more.is_empty() {
            thread::sleep(pause);
            let _ = stdin.write_all(&more);
        }
    });
    let out = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    Running {
        args: args.join(" "),
        child,
        feeder,
        out,
        err,
    }
}

impl Running {
    /// Waits for the exit, at most `limit`; a process still running then
    /// is killed and fails the test.
    fn finish(self, limit: Duration) -> Ended {
        self.finish_or(limit, false)
    }

    /// As [`finish`](Self::finish); with `kill`, a process still running
    /// after `limit` is killed and reported as such instead.
    fn finish_or(mut self, limit: Duration, kill: bool) -> Ended {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let s = self.child.wait().unwrap();
                if !kill {
                    let err = self.err.join().unwrap();
                    panic!(
                        "ring {} did not exit within {limit:?}; its stderr: {}",
                        self.args,
                        String::from_utf8_lossy(&err)
                    );
                }
                break s;
            }
            thread::sleep(Duration::from_millis(2));
        };
        self.feeder.join().unwrap();
        Ended {
            status,
            stdout: self.out.join().unwrap(),
            stderr: String::from_utf8_lossy(&self.err.join().unwrap()).into_owned(),
        }
    }

    fn signal(&self, sig: i32) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        let sig = rustix::process::Signal::from_named_raw(sig).unwrap();
        rustix::process::kill_process(pid, sig).unwrap();
    }
}

const LIMIT: Duration = Duration::from_secs(60);

/// One listen/connect pair: listen gets `a` (then `a2` after `pause`),
/// connect gets `b`.
fn pair(
    proto: &str,
    a: Vec<u8>,
    pause: Duration,
    a2: Vec<u8>,
    b: Vec<u8>,
) -> (TempSock, Running, Running) {
    let sock = TempSock::new("end");
    let path = sock.path.to_str().unwrap().to_string();
    let listen = start(&["listen", "--proto", proto, &path], a, pause, a2);
    wait_for_path(&sock.path);
    let connect = start(
        &["connect", "--proto", proto, &path],
        b,
        Duration::ZERO,
        Vec::new(),
    );
    (sock, listen, connect)
}

fn half_close_both_ways_arrive(proto: &str) {
    // 1 KiB one way ends long before 8 MiB the other.
    let small = data(1, 1024);
    let big = data(2, 8 << 20);
    let (_sock, l, c) = pair(
        proto,
        small.clone(),
        Duration::ZERO,
        Vec::new(),
        big.clone(),
    );
    let (l, c) = (l.finish(LIMIT), c.finish(LIMIT));
    assert!(l.status.success(), "listen: {:?} {}", l.status, l.stderr);
    assert!(c.status.success(), "connect: {:?} {}", c.status, c.stderr);
    assert!(l.stdout == big, "listen got {} bytes", l.stdout.len());
    assert!(c.stdout == small, "connect got {} bytes", c.stdout.len());
}

#[test]
fn vmbus_half_close_lets_the_other_direction_finish() {
    half_close_both_ways_arrive("vmbus");
}

#[test]
fn vchan_half_close_lets_the_other_direction_finish() {
    half_close_both_ways_arrive("vchan");
}

/// connect's stdin ends at once; the listener pauses a second mid-stream.
/// connect must wait for the rest, not exit 0 with half of it.
#[test]
fn a_pause_mid_stream_after_our_stdin_ended_is_waited_out() {
    for proto in ["vchan", "vmbus"] {
        let big = data(3, 2 << 20);
        let (first, rest) = big.split_at(1 << 20);
        let (_sock, l, c) = pair(
            proto,
            first.to_vec(),
            Duration::from_secs(1),
            rest.to_vec(),
            data(4, 512),
        );
        let (l, c) = (l.finish(LIMIT), c.finish(LIMIT));
        assert!(l.status.success(), "{proto} listen: {}", l.stderr);
        assert!(c.status.success(), "{proto} connect: {}", c.stderr);
        assert!(c.stdout == big, "{proto}: connect got {}", c.stdout.len());
    }
}

/// Kill the listener mid-stream: connect notices, hands on a prefix, and
/// exits 5 with one line.
#[test]
fn a_peer_killed_mid_stream_is_exit_5_with_a_prefix() {
    for proto in ["vchan", "vmbus"] {
        // 1 MiB, then (while the listener waits for the rest of its
        // stdin) the kill.
        let big = data(5, 2 << 20);
        let (first, rest) = big.split_at(1 << 20);
        let (_sock, l, c) = pair(
            proto,
            first.to_vec(),
            Duration::from_secs(2),
            rest.to_vec(),
            Vec::new(),
        );
        thread::sleep(Duration::from_millis(500));
        l.signal(libc_sigkill());
        let l = l.finish(LIMIT);
        let c = c.finish(LIMIT);
        assert!(!l.status.success());
        assert_eq!(c.status.code(), Some(5), "{proto}: {}", c.stderr);
        assert!(c.stderr.contains("peer died"), "{}", c.stderr);
        assert_eq!(c.stderr.trim().lines().count(), 1, "{}", c.stderr);
        assert!(
            c.stdout.len() < big.len(),
            "{proto}: all arrived before the kill"
        );
        assert!(
            big.starts_with(&c.stdout),
            "{proto}: stdout is not a prefix"
        );
    }
}

fn libc_sigkill() -> i32 {
    rustix::process::Signal::KILL.as_raw()
}

/// A spin beyond a second is a usage error, not a hang.
#[test]
fn spin_us_out_of_range_is_a_usage_error() {
    for args in [
        &["demo", "--spin-us", "3000000"][..],
        &["demo", "--spin-us", "18446744073709551615"][..],
    ] {
        let o = ring().args(args).stdin(Stdio::null()).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}");
    }
}

/// The demo's peer dies with the demo: no `ring` process is left a
/// second after the parent is killed.
#[test]
fn killing_the_demo_leaves_no_peer_behind() {
    let mut demo = ring()
        .args([
            "demo", "--bytes", "64G", "--rounds", "1", "--proto", "vchan",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let parent = demo.id();
    // Find the child by its parent pid.
    let deadline = Instant::now() + Duration::from_secs(20);
    let child = loop {
        if let Some(pid) = children_of(parent).into_iter().next() {
            break pid;
        }
        assert!(Instant::now() < deadline, "the demo started no peer");
        thread::sleep(Duration::from_millis(10));
    };
    thread::sleep(Duration::from_millis(100));
    demo.kill().unwrap();
    demo.wait().unwrap();
    let gone_by = Instant::now() + Duration::from_secs(1);
    while std::path::Path::new(&format!("/proc/{child}")).exists() && !is_zombie(child) {
        assert!(Instant::now() < gone_by, "peer {child} outlived the demo");
        thread::sleep(Duration::from_millis(10));
    }
}

fn children_of(parent: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let ppid = after.split_whitespace().nth(1).and_then(|p| p.parse().ok());
        if ppid == Some(parent) {
            found.push(pid);
        }
    }
    found
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// Random schedules of faults against listen/connect pairs: kills and
/// stops of either side, sizes around the ring's. On every run: a side
/// exits 0 only if its stdout is all the peer sent; otherwise its stdout is
/// a prefix. Runs without a fault must both exit 0.
#[test]
fn fault_schedules_keep_the_exit_promise() {
    let runs: u64 = std::env::var("RING_FAULT_SCHEDULES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    let ring = 64 << 10;
    let sizes = [0, 1, ring - 1, ring, ring + 1, 3 << 20, 48 << 20];
    let mut counts = std::collections::BTreeMap::<String, u32>::new();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for run in 0..runs {
        let proto = if next() % 2 == 0 { "vchan" } else { "vmbus" };
        let a = data(run * 2 + 10, sizes[(next() % 7) as usize]);
        let b = data(run * 2 + 11, sizes[(next() % 7) as usize]);
        let fault = next() % 5;
        let at = Duration::from_millis(next() % 80);
        eprintln!(
            "run {run}: {proto}, {} and {} bytes, fault {fault} at {at:?}",
            a.len(),
            b.len()
        );
        let (_sock, l, c) = pair(proto, a.clone(), Duration::ZERO, Vec::new(), b.clone());
        thread::sleep(at);
        let kill = rustix::process::Signal::KILL.as_raw();
        let (stop, cont) = (
            rustix::process::Signal::STOP.as_raw(),
            rustix::process::Signal::CONT.as_raw(),
        );
        let what = match fault {
            0 => "none",
            1 => {
                l.signal(kill);
                "kill listen"
            }
            2 => {
                c.signal(kill);
                "kill connect"
            }
            3 => {
                l.signal(stop);
                thread::sleep(Duration::from_millis(200));
                l.signal(cont);
                "stop listen"
            }
            _ => {
                c.signal(stop);
                thread::sleep(Duration::from_millis(200));
                c.signal(cont);
                "stop connect"
            }
        };
        let c = c.finish(LIMIT);
        // A client killed before it connected leaves the listener waiting
        // for another, as a server should: it is stopped after a while.
        let l = l.finish_or(
            if fault == 2 {
                Duration::from_secs(5)
            } else {
                LIMIT
            },
            fault == 2,
        );
        for (side, end, sent) in [("listen", &l, &b), ("connect", &c, &a)] {
            let ctx = format!(
                "run {run} {proto} {what}: {side} {:?} {}",
                end.status, end.stderr
            );
            assert!(
                sent.starts_with(&end.stdout),
                "{ctx}: stdout is not a prefix"
            );
            if end.status.success() {
                assert!(
                    end.stdout == *sent,
                    "{ctx}: exit 0 with {} of {}",
                    end.stdout.len(),
                    sent.len()
                );
            }
            let outcome = match end.status.code() {
                Some(code) => format!("exit {code}"),
                None => "killed".to_string(),
            };
            *counts.entry(format!("{side} {outcome}")).or_default() += 1;
        }
        if fault == 0 || fault >= 3 {
            assert!(
                l.status.success() && c.status.success(),
                "run {run} {proto} {what}: {} / {}",
                l.stderr,
                c.stderr
            );
        }
    }
    println!("{runs} fault schedules: {counts:?}");
}

/// A vchan server attached to a file waits for its client however late it
/// comes: the linger counts only once the client joined and read.
#[test]
fn an_attach_server_waits_for_a_late_client() {
    let dir = TempSock::new("late");
    let (file, f) = ring_file(&dir);
    let server = start(
        &[
            "attach", "--proto", "vchan", "--role", "server", "--file", &f, "--poll",
        ],
        b"hello".to_vec(),
        Duration::ZERO,
        Vec::new(),
    );
    thread::sleep(Duration::from_secs(2));
    let mut client = attach_client(&file);
    let mut got = Vec::new();
    client.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"hello");
    drop(client);
    let s = server.finish(LIMIT);
    assert!(s.status.success(), "{:?} {}", s.status, s.stderr);
}

/// The peer writes its last bytes and closes while we still have bytes
/// for it that it never reads: we must hand on everything it wrote before
/// reporting the loss (exit 4), never exit 0.
#[test]
fn a_peer_that_closes_with_our_bytes_unread_is_exit_4_after_its_bytes() {
    let dir = TempSock::new("race");
    let (file, f) = ring_file(&dir);
    // Bytes of ours that the peer never reads.
    let ours = data(20, 200_000);
    let server = start(
        &[
            "attach", "--proto", "vchan", "--role", "server", "--file", &f, "--poll",
        ],
        ours,
        Duration::ZERO,
        Vec::new(),
    );
    let mut client = attach_client(&file);
    let theirs = data(21, 1000);
    client.write_all(&theirs).unwrap();
    client.close().unwrap();
    let s = server.finish(LIMIT);
    assert_eq!(s.status.code(), Some(4), "{}", s.stderr);
    assert!(s.stdout == theirs, "got {} of 1000 bytes", s.stdout.len());
}

/// A file for a flat vchan with 64 KiB rings, beside `dir`'s socket.
fn ring_file(dir: &TempSock) -> (std::path::PathBuf, String) {
    let file = dir.path.with_file_name("ring.mem");
    std::fs::write(&file, vec![0u8; 3 * 4096 + (64 << 10) * 2]).unwrap();
    let f = file.to_str().unwrap().to_string();
    (file, f)
}

/// Waits (at most 10 s) until a server has laid out the vchan in `file`
/// (its live byte set): the event to wait for before joining or reading
/// the page, whatever the machine's load.
fn wait_served(file: &std::path::Path) {
    let start = Instant::now();
    loop {
        let page = std::fs::read(file).unwrap();
        if page.get(ring_core::vchan::layout::SRV_LIVE) == Some(&1) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no server laid out {}",
            file.display()
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// The test's own vchan client in `file`, polling, once a server is there.
fn attach_client(file: &std::path::Path) -> ring_hosted::attach::AttachedVchan {
    use ring_hosted::attach::{self, MemSource, VchanLayout};
    wait_served(file);
    // SAFETY: nobody shrinks the test's file while it is mapped.
    let mem = unsafe { attach::open_memory(&MemSource::Path(file.to_path_buf())) }.unwrap();
    let layout = VchanLayout {
        role: ring_core::vchan::Role::Client,
        ctrl: 0,
        left: None,
        right: None,
        orders: None,
    };
    attach::vchan(mem, layout, attach::poll_signal().unwrap()).unwrap()
}

/// `--peer-pid`: a peer that dies without a word (its live byte still
/// set) is noticed through its pidfd at once, and the pipe ends with 5.
#[test]
fn attach_with_peer_pid_notices_a_killed_peer_at_once() {
    let dir = TempSock::new("pid");
    let (file, f) = ring_file(&dir);
    // The "peer process": only its life matters; the test drives the ring.
    let mut peer = Command::new("sleep").arg("30").spawn().unwrap();
    let pid = peer.id().to_string();
    let server = start(
        &[
            "attach",
            "--proto",
            "vchan",
            "--role",
            "server",
            "--file",
            &f,
            "--poll",
            "--peer-pid",
            &pid,
        ],
        Vec::new(),
        Duration::from_secs(30),
        b"never sent".to_vec(),
    );
    let mut client = attach_client(&file);
    client.write_all(b"before the death").unwrap();
    thread::sleep(Duration::from_millis(300));
    peer.kill().unwrap();
    let killed = Instant::now();
    peer.wait().unwrap();
    let mut child = server;
    let status = loop {
        if let Some(s) = child.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "attach never noticed"
        );
        thread::sleep(Duration::from_millis(1));
    };
    let noticed = killed.elapsed();
    assert_eq!(status.code(), Some(5));
    // At once through its pidfd: the live byte still says it is there,
    // and nothing else would end the wait before the 30 s timeout (the
    // bound leaves room for a loaded machine).
    assert!(
        noticed < Duration::from_secs(5),
        "noticed after {noticed:?}"
    );
    let out = child.out.join().unwrap();
    assert_eq!(out, b"before the death");
    drop(client);
}

/// As server in the default layout, attach writes the flat layout's page
/// numbers as grant refs, as the library's flat server does; one eventfd
/// for both directions is refused; unsealed memory is warned about.
#[test]
fn attach_server_grant_refs_one_eventfd_and_the_seal_warning() {
    let dir = TempSock::new("grants");
    let (file, f) = ring_file(&dir);
    let server = start(
        &[
            "attach",
            "--proto",
            "vchan",
            "--role",
            "server",
            "--file",
            &f,
            "--poll",
            "--linger-ms",
            "50",
        ],
        Vec::new(),
        Duration::ZERO,
        Vec::new(),
    );
    wait_served(&file);
    let image = std::fs::read(&file).unwrap();
    // 64 KiB rings: 16 pages each, after the control page.
    let refs: Vec<u32> = (0..32)
        .map(|i| u32::from_le_bytes(image[24 + 4 * i..28 + 4 * i].try_into().unwrap()))
        .collect();
    assert_eq!(refs, (1..33).collect::<Vec<u32>>());
    let client = attach_client(&file);
    drop(client);
    let s = server.finish(LIMIT);
    assert!(s.status.success(), "{}", s.stderr);
    assert!(s.stderr.contains("not sealed"), "{}", s.stderr);

    let o = ring()
        .args([
            "attach", "--proto", "vchan", "--role", "client", "--file", &f,
        ])
        .args(["--notify-fd", "5", "--wait-fd", "5"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("swallow its own kick"));
}
