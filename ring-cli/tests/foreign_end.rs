//! How `ring attach` ends against a foreign peer: one that cannot
//! half-close (vchan), never confirms what it received, publishes and
//! signals as it likes, stalls, corrupts its ring or exits at the wrong
//! moment. Exit 0 exactly when every byte went through both ways; every
//! failure bounded in time, with its one line.
//!
//! Races are made deterministic with the `RING_TEST_STOP_AT` hook: the
//! `ring` process stops itself (`SIGSTOP`) at the named point, the test
//! acts on the ring while it is stopped, then continues it. Every wait has
//! a deadline and waits on an event (the process's pidfd, `waitid`, an
//! eventfd, a pipe), and every `ring` runs with `RING_LIVENESS_MS=0`, so a
//! lost wake-up hangs the test instead of being rescued.

use ring_core::mem::SharedMem;
use ring_core::signal::Signal;
use ring_core::vmbus::{
    self, GpaRange, IncomingRing, OutgoingPacket, OutgoingRing, RingLayout, TransferRange,
};
use ring_hosted::attach::{self, AttachedVchan, MemSource, VchanLayout};
use ring_hosted::eventfd::{EventFd, EventSignal};
use ring_hosted::memfd::MemFd;
use ring_hosted::vmbus::RingMem as Window;
use ring_hosted::vmbus::{ChannelLayout, VmbusPipe};
use ring_hosted::Error;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

const RING: &str = env!("CARGO_BIN_EXE_ring");

/// How long any one step may take before the test fails.
const LIMIT: Duration = Duration::from_secs(20);

/// Bytes that differ with position and seed.
fn pattern(seed: u8, n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2_654_435_761)
                .rotate_left(seed.into()) as u8
                ^ seed
        })
        .collect()
}

/// A copy of `fd` that a child inherits (no close-on-exec).
fn inheritable(fd: impl AsFd) -> OwnedFd {
    rustix::io::dup(fd.as_fd()).unwrap()
}

/// A pipe for a child's stdin, `bytes` already in it (at most the pipe's
/// 64 KiB), and its write end: dropping it is the end of input.
fn stdin_pipe(bytes: &[u8]) -> (Stdio, std::io::PipeWriter) {
    let (r, mut w) = std::io::pipe().unwrap();
    w.write_all(bytes).unwrap();
    (Stdio::from(OwnedFd::from(r)), w)
}

/// A running `ring attach`, its stdout arriving in chunks.
struct Proc {
    child: Child,
    pidfd: OwnedFd,
    chunks: mpsc::Receiver<Vec<u8>>,
    stdout: Vec<u8>,
    err: Option<JoinHandle<String>>,
}

struct Ended {
    status: ExitStatus,
    /// From [`Proc::finish`]'s call to the exit.
    took: Duration,
    stdout: Vec<u8>,
    stderr: String,
}

fn attach(args: &[String], stdin: Stdio, stop_at: Option<&str>) -> Proc {
    let mut cmd = Command::new(RING);
    cmd.arg("attach")
        .args(args)
        .env("RING_LIVENESS_MS", "0")
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(points) = stop_at {
        cmd.env("RING_TEST_STOP_AT", points);
    }
    let mut child = cmd.spawn().unwrap();
    let pid = rustix::process::Pid::from_child(&child);
    let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let (tx, chunks) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(n @ 1..) = out.read(&mut buf) {
            if tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let err = thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    Proc {
        child,
        pidfd,
        chunks,
        stdout: Vec::new(),
        err: Some(err),
    }
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

impl Proc {
    fn pid(&self) -> rustix::process::Pid {
        rustix::process::Pid::from_child(&self.child)
    }

    /// Collects stdout until it holds `n` bytes.
    fn read_until(&mut self, n: usize) -> &[u8] {
        let deadline = Instant::now() + LIMIT;
        while self.stdout.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.chunks.recv_timeout(left) {
                Ok(c) => self.stdout.extend_from_slice(&c),
                Err(e) => self.fail(&format!(
                    "stdout has {} of {n} bytes ({e})",
                    self.stdout.len()
                )),
            }
        }
        &self.stdout
    }

    /// Waits until the process has stopped itself at its hook.
    fn wait_stopped(&mut self) {
        let pid = self.pid();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            use rustix::process::{waitid, WaitId, WaitIdOptions};
            let how = WaitIdOptions::STOPPED | WaitIdOptions::EXITED | WaitIdOptions::NOWAIT;
            let status = waitid(WaitId::Pid(pid), how).ok().flatten();
            let _ = tx.send(status.is_some_and(|s| s.stopped()));
        });
        match rx.recv_timeout(LIMIT) {
            Ok(true) => {}
            Ok(false) => self.fail("exited instead of stopping at its hook"),
            Err(_) => self.fail("never stopped at its hook"),
        }
    }

    fn cont(&self) {
        rustix::process::kill_process(self.pid(), rustix::process::Signal::CONT).unwrap();
    }

    /// Whether the process exits within `limit` (waiting on its pidfd).
    fn exits_within(&self, limit: Duration) -> bool {
        let mut fds = [rustix::event::PollFd::new(
            &self.pidfd,
            rustix::event::PollFlags::IN,
        )];
        let ts = rustix::event::Timespec {
            tv_sec: limit.as_secs() as i64,
            tv_nsec: i64::from(limit.subsec_nanos()),
        };
        matches!(rustix::event::poll(&mut fds, Some(&ts)), Ok(1))
    }

    /// Kills the process and fails the test with its stderr.
    fn fail(&mut self, why: &str) -> ! {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let err = self
            .err
            .take()
            .map(|e| e.join().unwrap())
            .unwrap_or_default();
        panic!("ring attach: {why}; its stderr: {err}");
    }

    /// Waits for the exit, at most `limit`.
    fn finish(mut self, limit: Duration) -> Ended {
        let start = Instant::now();
        if !self.exits_within(limit) {
            self.fail(&format!("did not exit within {limit:?}"));
        }
        let took = start.elapsed();
        let status = self.child.wait().unwrap();
        let mut stdout = std::mem::take(&mut self.stdout);
        // The reader thread ends at the pipe's end.
        while let Ok(c) = self.chunks.recv_timeout(LIMIT) {
            stdout.extend_from_slice(&c);
        }
        let stderr = self.err.take().unwrap().join().unwrap();
        Ended {
            status,
            took,
            stdout,
            stderr,
        }
    }
}

/// The lines of `stderr` other than the warning about unsealed memory:
/// a failure says exactly one.
fn failure_lines(stderr: &str) -> usize {
    stderr
        .lines()
        .filter(|l| !l.starts_with("ring: warning:"))
        .count()
}

/// A file for a flat vchan with 64 KiB rings.
fn ring_file(tag: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(format!("{tag}.mem"));
    std::fs::write(&file, vec![0u8; 3 * 4096 + (64 << 10) * 2]).unwrap();
    (dir, file)
}

/// The test's own vchan end in `file`, polling: a client joining the
/// server there, or a server set up for the flat 64 KiB layout.
fn vchan_end(file: &Path, role: ring_core::vchan::Role) -> AttachedVchan {
    // SAFETY: nobody shrinks the test's file while it is mapped.
    let mem = unsafe { attach::open_memory(&MemSource::Path(file.to_path_buf())) }.unwrap();
    let orders = (role == ring_core::vchan::Role::Server)
        .then(|| ring_core::vchan::Orders::for_sizes(64 << 10, 64 << 10).unwrap());
    let layout = VchanLayout {
        role,
        ctrl: 0,
        left: None,
        right: None,
        orders,
    };
    let mut end = attach::vchan(mem, layout, attach::poll_signal().unwrap()).unwrap();
    end.signal_mut().set_timeout(Some(LIMIT));
    end
}

fn vchan_args(role: &str, file: &Path, more: &[&str]) -> Vec<String> {
    let mut a = args(&["--proto", "vchan", "--role", role, "--poll", "--file"]);
    a.push(file.display().to_string());
    a.extend(args(more));
    a
}

/// The linger window: the peer has been quiet for the linger and we decide
/// to close, and it writes its last bytes just then (while our live byte
/// still says 1; `ring` is held at that exact point). They must reach
/// stdout: our live byte is cleared first, then the ring drained once
/// more, then exit 0 with every byte. The peer's writes fail from then on.
fn linger_window(attach_role: ring_core::vchan::Role) {
    use ring_core::vchan::Role;
    let (_dir, file) = ring_file("linger");
    let ours = pattern(1, 5000);
    let (first, last) = (pattern(2, 1000), pattern(3, 100));
    let (stdin, w) = stdin_pipe(&ours);
    drop(w); // our input: 5000 bytes, then its end
    let (mut peer, mut ring) = match attach_role {
        Role::Server => {
            let a = vchan_args("server", &file, &["--linger-ms", "50"]);
            let mut ring = attach(&a, stdin, Some("start,linger"));
            ring.wait_stopped();
            let peer = vchan_end(&file, Role::Client);
            ring.cont();
            (peer, ring)
        }
        Role::Client => {
            let peer = vchan_end(&file, Role::Server);
            let a = vchan_args("client", &file, &["--linger-ms", "50"]);
            (peer, attach(&a, stdin, Some("linger")))
        }
    };
    let mut got = vec![0u8; ours.len()];
    peer.read_exact(&mut got).unwrap();
    assert!(got == ours, "our stdin arrived changed");
    peer.write_all(&first).unwrap();
    ring.read_until(first.len());
    // Quiet for the linger: ring decides to close and stops right there.
    ring.wait_stopped();
    peer.write_all(&last).unwrap();
    ring.cont();
    let e = ring.finish(LIMIT);
    assert_eq!(e.status.code(), Some(0), "{}", e.stderr);
    assert_eq!(e.stdout.len(), first.len() + last.len(), "bytes lost");
    assert!(e.stdout == [first, last].concat(), "bytes differ");
    assert!(matches!(peer.write(b"late"), Err(Error::Closed)));
}

/// The window after the clear: a peer that looked at our live byte just
/// before we cleared it publishes after our first look found the ring
/// empty (`ring` is held right there; the test publishes by hand, without
/// looking at the live byte, as that peer would). The grace's later look
/// still hands the bytes on: exit 0 with every byte.
#[test]
fn vchan_bytes_published_after_the_clear_arrive_within_the_grace() {
    use ring_core::vchan::{layout, FlatLayout, Orders, Role};
    let (_dir, file) = ring_file("grace");
    let (stdin, w) = stdin_pipe(b"");
    drop(w);
    let a = vchan_args("server", &file, &["--linger-ms", "20"]);
    let mut ring = attach(&a, stdin, Some("start,linger,grace"));
    ring.wait_stopped();
    let mut peer = vchan_end(&file, Role::Client);
    ring.cont();
    peer.write_all(b"first").unwrap();
    ring.read_until(5);
    ring.wait_stopped(); // the linger is over
    ring.cont();
    ring.wait_stopped(); // cleared, looked, found nothing
    let ctrl = peer.endpoint().control().clone();
    assert_eq!(ctrl.load_u8(layout::SRV_LIVE).unwrap(), 0, "not cleared");
    // The client writes the left ring: 5 bytes there so far.
    let left = FlatLayout::new(Orders::for_sizes(64 << 10, 64 << 10).unwrap()).left;
    let prod = ctrl.load_u32(layout::LEFT_PROD).unwrap();
    assert_eq!(prod, 5);
    let mut mem = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    std::io::Seek::seek(&mut mem, std::io::SeekFrom::Start((left + 5) as u64)).unwrap();
    mem.write_all(b"late").unwrap();
    drop(mem);
    ctrl.store_u32(layout::LEFT_PROD, prod + 4).unwrap();
    ring.cont();
    let e = ring.finish(LIMIT);
    assert_eq!(e.status.code(), Some(0), "{}", e.stderr);
    assert_eq!(e.stdout, b"firstlate");
}

#[test]
fn vchan_linger_window_server_loses_nothing() {
    linger_window(ring_core::vchan::Role::Server);
}

#[test]
fn vchan_linger_window_client_loses_nothing() {
    linger_window(ring_core::vchan::Role::Client);
}

/// `--peer-pid`: a peer that read everything, sent its bytes, closed
/// cleanly and exited before our stdin's end arrived is a clean end (exit
/// 0), not a failure; if stdin then brings more bytes, those are
/// undelivered (exit 4). With `--poll` too (the pidfd is then the only
/// event).
#[test]
fn peer_pid_with_a_clean_close_before_our_stdin_ends() {
    use ring_core::vchan::Role;
    for more in [&b""[..], b"too late"] {
        let (_dir, file) = ring_file("pid");
        let mut peer_proc = Command::new("sleep").arg("60").spawn().unwrap();
        let pid = peer_proc.id().to_string();
        let ours = pattern(4, 3000);
        let (stdin, mut w) = stdin_pipe(&ours);
        let a = vchan_args("server", &file, &["--peer-pid", &pid]);
        let mut ring = attach(&a, stdin, Some("start"));
        ring.wait_stopped();
        let mut peer = vchan_end(&file, Role::Client);
        ring.cont();
        let mut got = vec![0u8; ours.len()];
        peer.read_exact(&mut got).unwrap();
        let theirs = pattern(5, 700);
        peer.write_all(&theirs).unwrap();
        peer.close().unwrap();
        peer_proc.kill().unwrap();
        peer_proc.wait().unwrap();
        ring.read_until(theirs.len());
        // The peer's death is noticed at once (pidfd); it decides nothing
        // while our input may still bring bytes.
        assert!(
            !ring.exits_within(Duration::from_millis(500)),
            "ring ended before its stdin did"
        );
        w.write_all(more).unwrap();
        drop(w);
        let e = ring.finish(LIMIT);
        assert!(e.stdout == theirs, "the peer's bytes differ");
        if more.is_empty() {
            assert_eq!(e.status.code(), Some(0), "{}", e.stderr);
        } else {
            assert_eq!(e.status.code(), Some(4), "{}", e.stderr);
            assert!(e.stderr.contains("peer closed"), "{}", e.stderr);
            assert_eq!(failure_lines(&e.stderr), 1, "{}", e.stderr);
        }
    }
}

/// A client that joins, then writes 2 (which only a client that has not
/// joined may hold) into its live byte and goes quiet: a protocol error
/// (exit 3) at once, not a server held for ever (its timeout not counting
/// because "no client has joined").
#[test]
fn a_client_live_byte_back_at_2_is_a_protocol_error() {
    use ring_core::vchan::Role;
    let (_dir, file) = ring_file("live2");
    let (stdin, _w) = stdin_pipe(b"");
    let a = vchan_args("server", &file, &["--timeout", "5"]);
    let mut ring = attach(&a, stdin, Some("start"));
    ring.wait_stopped();
    let mut peer = vchan_end(&file, Role::Client);
    ring.cont();
    peer.write_all(b"joined").unwrap();
    ring.read_until(6);
    let cli_live = ring_core::vchan::layout::CLI_LIVE;
    peer.endpoint().control().store_u8(cli_live, 2).unwrap();
    let e = ring.finish(LIMIT);
    assert_eq!(e.status.code(), Some(3), "{}", e.stderr);
    assert!(e.took < Duration::from_secs(4), "took {:?}", e.took);
    assert!(e.stderr.contains("went back to 2"), "{}", e.stderr);
    assert_eq!(failure_lines(&e.stderr), 1, "{}", e.stderr);
    assert_eq!(e.stdout, b"joined");
}

/// `--accept-timeout`: a vchan server whose client never comes gives up
/// (exit 6) instead of waiting for ever.
#[test]
fn an_attach_server_gives_up_on_a_client_that_never_joins() {
    let (_dir, file) = ring_file("accept");
    let (stdin, _w) = stdin_pipe(b"unsent");
    let a = vchan_args("server", &file, &["--accept-timeout", "0.3"]);
    let ring = attach(&a, stdin, None);
    let e = ring.finish(LIMIT);
    eprintln!("start to exit (--accept-timeout 0.3): {:?}", e.took);
    assert_eq!(e.status.code(), Some(6), "{}", e.stderr);
    assert!(e.took < Duration::from_secs(3), "took {:?}", e.took);
}

/// Makes a fresh stdin of one kind.
type MakeStdin = Box<dyn Fn() -> Stdio>;

/// The end-of-input check works for every kind of stdin: the peer closed
/// (after taking everything, which was nothing) before we read our empty
/// stdin's end; `/dev/null`, an empty file and a socket whose other end
/// has gone all end cleanly (exit 0) with the peer's bytes on stdout.
#[test]
fn an_empty_stdin_of_any_kind_ends_cleanly_after_the_peer_closed() {
    use ring_core::vchan::Role;
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    let kinds: [(&str, MakeStdin); 3] = [
        ("/dev/null", Box::new(Stdio::null)),
        (
            "an empty file",
            Box::new(move || Stdio::from(std::fs::File::open(&empty).unwrap())),
        ),
        (
            "a socket",
            Box::new(|| {
                let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
                drop(b);
                Stdio::from(OwnedFd::from(a))
            }),
        ),
    ];
    for (kind, stdin) in kinds {
        let (_dir, file) = ring_file("stdin");
        let a = vchan_args("server", &file, &[]);
        let mut ring = attach(&a, stdin(), Some("start"));
        ring.wait_stopped();
        let mut peer = vchan_end(&file, Role::Client);
        peer.write_all(b"bye").unwrap();
        peer.close().unwrap();
        ring.cont();
        let e = ring.finish(LIMIT);
        assert_eq!(e.status.code(), Some(0), "stdin {kind}: {}", e.stderr);
        assert_eq!(e.stdout, b"bye", "stdin {kind}");
    }
}

/// Two VMBus rings in a memfd, initialised as a foreign peer would, with
/// `ring attach` writing the first (`tx`, which the test reads) and reading
/// the second (`rx`, which the test writes).
struct VmbusPeer {
    mem: Arc<MemFd>,
    layout: ChannelLayout,
    signal: EventSignal,
    /// The child's fds, kept until it is spawned.
    fds: Vec<OwnedFd>,
    args: Vec<String>,
}

impl VmbusPeer {
    fn new(size: usize, more: &[&str]) -> Self {
        let layout = ChannelLayout::new(size, size).unwrap();
        let mem = Arc::new(MemFd::create("foreign-end", layout.total_size()).unwrap());
        let (tx, rx) = layout.windows(&mem).unwrap();
        vmbus::initialize_ring(&tx, layout.to_server).unwrap();
        vmbus::initialize_ring(&rx, layout.to_client).unwrap();
        let (to_child, to_us) = (EventFd::new().unwrap(), EventFd::new().unwrap());
        let (child_wait, child_notify) = (inheritable(&to_child), inheritable(&to_us));
        let mem_fd = inheritable(&*mem);
        let split = layout.to_client_offset();
        let mut a = args(&["--proto", "vmbus"]);
        for (flag, v) in [
            ("--fd", mem_fd.as_raw_fd().to_string()),
            ("--tx-offset", "0".into()),
            ("--tx-size", split.to_string()),
            ("--rx-offset", split.to_string()),
            ("--rx-size", (layout.total_size() - split).to_string()),
            ("--notify-fd", child_notify.as_raw_fd().to_string()),
            ("--wait-fd", child_wait.as_raw_fd().to_string()),
        ] {
            a.push(flag.into());
            a.push(v);
        }
        a.extend(args(more));
        VmbusPeer {
            mem,
            layout,
            signal: EventSignal::new(to_child, to_us),
            fds: vec![mem_fd, child_notify, child_wait],
            args: a,
        }
    }

    fn spawn(&mut self, stdin: Stdio) -> Proc {
        let p = attach(&self.args, stdin, None);
        self.fds.clear();
        p
    }

    fn windows(&self) -> (Window, Window) {
        self.layout.windows(&self.mem).unwrap()
    }

    /// The ring `ring attach` writes, as its reader (the test never
    /// commits a read, so the ring stays as full as it gets).
    fn tx_reader(&self) -> (IncomingRing<Window>, RingLayout) {
        let (tx, _) = self.windows();
        (
            IncomingRing::new(tx, self.layout.to_server).unwrap(),
            self.layout.to_server,
        )
    }

    /// The ring `ring attach` reads, as its writer.
    fn rx_writer(&self) -> OutgoingRing<Window> {
        let (_, rx) = self.windows();
        OutgoingRing::new(rx, self.layout.to_client).unwrap()
    }

    /// Waits (on our eventfd) until `ring attach` has filled its tx ring:
    /// less than a smallest packet is left.
    fn wait_tx_full(&self) {
        let (mut ring, layout) = self.tx_reader();
        let deadline = Instant::now() + LIMIT;
        loop {
            let free = layout.data_size() as usize - ring.available().unwrap();
            if free < 40 {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "the tx ring never filled ({free} free)");
            let _ = self.signal.wait_timeout(Some(left));
        }
    }

    fn kick(&self) {
        self.signal.notify().unwrap();
    }

    /// The test's end as a VMBus pipe (hv_sock framing, no confirmations).
    fn into_pipe(self) -> VmbusPipe {
        let (tx, rx) = self.windows();
        let mut p = VmbusPipe::attach(
            self.mem.clone(),
            (tx, self.layout.to_server),
            (rx, self.layout.to_client),
            self.signal,
        )
        .unwrap();
        p.signal_mut().set_timeout(Some(LIMIT));
        p
    }
}

/// Our stdin for the VMBus tests: 32 KiB waiting (eight times the ring,
/// so the first fill fills it) and no end.
fn endless_stdin() -> (Stdio, std::io::PipeWriter) {
    stdin_pipe(&pattern(9, 32 << 10))
}

/// The peer corrupts the ring we read while our tx ring is full and it is
/// alive and not reading: the one line and exit 3 at once, though no room
/// for the end mark will ever come.
#[test]
fn vmbus_corruption_with_a_full_tx_ring_exits_3_at_once() {
    let mut peer = VmbusPeer::new(4096, &[]);
    let (stdin, _w) = endless_stdin();
    let ring = peer.spawn(stdin);
    peer.wait_tx_full();
    // A write index that is not a multiple of 8.
    let (_, rx) = peer.windows();
    rx.store_u32(0, 4).unwrap();
    peer.kick();
    let e = ring.finish(LIMIT);
    eprintln!("corruption to exit: {:?}", e.took);
    assert_eq!(e.status.code(), Some(3), "{}", e.stderr);
    assert!(e.took < Duration::from_secs(1), "took {:?}", e.took);
    assert_eq!(failure_lines(&e.stderr), 1, "{}", e.stderr);
    assert!(e.stderr.contains("protocol"), "{}", e.stderr);
}

/// `--timeout` with our tx ring full and the peer alive but not reading:
/// exit 6 after the timeout, not a wait for room for the end mark.
#[test]
fn vmbus_timeout_with_a_full_tx_ring_exits_6() {
    let mut peer = VmbusPeer::new(4096, &["--timeout", "0.5"]);
    let (stdin, _w) = endless_stdin();
    let ring = peer.spawn(stdin);
    peer.wait_tx_full();
    let e = ring.finish(LIMIT);
    eprintln!("tx ring full to exit (--timeout 0.5): {:?}", e.took);
    assert_eq!(e.status.code(), Some(6), "{}", e.stderr);
    assert!(e.took < Duration::from_secs(3), "took {:?}", e.took);
    assert_eq!(failure_lines(&e.stderr), 1, "{}", e.stderr);
    assert!(e.stderr.contains("timed out"), "{}", e.stderr);
}

/// Raw framing emits in-band payloads only: a completion, GPA-direct or
/// transfer-page packet is refused (exit 3, naming it) and nothing of its
/// payload reaches stdout; the in-band bytes before it do.
#[test]
fn vmbus_raw_framing_refuses_packets_that_are_not_in_band() {
    let before = pattern(6, 24);
    let injected = [0x55u8; 8];
    let pieces: [&[u8]; 1] = [&injected];
    let pfns = [7u64];
    let gpa = [GpaRange {
        byte_count: 8,
        byte_offset: 0,
        pfns: &pfns,
    }];
    let pages = [TransferRange {
        byte_count: 8,
        byte_offset: 0,
    }];
    let others: [(&str, OutgoingPacket<'_>); 3] = [
        ("completion", OutgoingPacket::completion(1, &pieces)),
        ("GPA-direct", OutgoingPacket::gpa_direct(2, &gpa, &pieces)),
        (
            "transfer-page",
            OutgoingPacket::transfer_pages(3, 0, &pages, &pieces),
        ),
    ];
    for (name, packet) in others {
        let mut peer = VmbusPeer::new(16 << 10, &["--framing", "raw"]);
        let mut rx = peer.rx_writer();
        let (stdin, _w) = stdin_pipe(b"");
        let mut ring = peer.spawn(stdin);
        let first: [&[u8]; 1] = [&before];
        // Each send is followed by a kick, owed or not.
        let _ = rx.send(&OutgoingPacket::in_band(0, &first)).unwrap();
        peer.kick();
        ring.read_until(before.len());
        let after: [&[u8]; 1] = [b"after!!!"];
        let _ = rx.send(&packet).unwrap();
        let _ = rx.send(&OutgoingPacket::in_band(0, &after)).unwrap();
        peer.kick();
        let e = ring.finish(LIMIT);
        assert_eq!(e.status.code(), Some(3), "{name}: {}", e.stderr);
        assert!(e.stdout == before, "{name}: stdout {:?}", e.stdout);
        assert!(e.stderr.contains(name), "{name}: {}", e.stderr);
        assert_eq!(failure_lines(&e.stderr), 1, "{name}: {}", e.stderr);
    }
}

/// VMBus pipe framing with `--peer-pid`: the peer reads all of ours,
/// sends its bytes and its end mark, and exits before our stdin ends. Once
/// stdin ends that is a clean end (exit 0; nobody is left to hear our end
/// mark, and nothing is lost), not a death.
#[test]
fn vmbus_peer_pid_with_a_clean_end_before_our_stdin_ends() {
    let mut peer_proc = Command::new("sleep").arg("60").spawn().unwrap();
    let pid = peer_proc.id().to_string();
    let mut peer = VmbusPeer::new(16 << 10, &["--peer-pid", &pid]);
    let ours = pattern(7, 3000);
    let (stdin, w) = stdin_pipe(&ours);
    let mut ring = peer.spawn(stdin);
    let mut pipe = peer.into_pipe();
    let mut got = vec![0u8; ours.len()];
    std::io::Read::read_exact(&mut pipe, &mut got).unwrap();
    assert!(got == ours, "our stdin arrived changed");
    let theirs = pattern(8, 700);
    pipe.write_all(&theirs).unwrap();
    pipe.close().unwrap();
    peer_proc.kill().unwrap();
    peer_proc.wait().unwrap();
    ring.read_until(theirs.len());
    assert!(
        !ring.exits_within(Duration::from_millis(500)),
        "ring ended before its stdin did"
    );
    drop(w);
    let e = ring.finish(LIMIT);
    assert_eq!(e.status.code(), Some(0), "{}", e.stderr);
    assert!(e.stdout == theirs, "the peer's bytes differ");
}

/// A small deterministic generator for the soak's schedules.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// How a soak peer ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PeerEnd {
    /// Writes some chunks, then closes.
    Close,
    /// Writes every few milliseconds until its writes fail (we hung up).
    Keep,
    /// Writes some chunks, then its process dies (live byte left at 1).
    Die,
    /// Writes some chunks, then does nothing more (live byte left at 1).
    Stall,
    /// As `Stall`, having read only part of our bytes.
    Lazy,
    /// Reads only part of our bytes, writes some chunks, then closes.
    Unread,
}

/// What a soak peer did: the bytes its writes reported written, the bytes
/// of ours it read, and whether a write of its failed as `Closed`.
struct PeerDid {
    wrote: Vec<u8>,
    read: usize,
    refused: bool,
    end: AttachedVchan,
    /// The process standing for the peer, alive unless it died.
    pid_proc: Child,
}

/// One foreign-style vchan peer: reads our bytes as they come and writes
/// chunks of 1–300 bytes at gaps of 0–12 ms (0–30 ms for
/// [`PeerEnd::Keep`]; the linger is 20 ms), with no end marks and no
/// confirmations, then ends as `how` says.
fn soak_peer(
    mut end: AttachedVchan,
    seed: u64,
    how: PeerEnd,
    pid_proc: Child,
    want: usize,
) -> PeerDid {
    let mut rng = Rng(seed | 1);
    let want = match how {
        PeerEnd::Lazy | PeerEnd::Unread => rng.below(want as u64) as usize,
        _ => want,
    };
    let mut did = PeerDid {
        wrote: Vec::new(),
        read: 0,
        refused: false,
        end: {
            end.signal_mut().set_timeout(Some(LIMIT));
            end
        },
        pid_proc,
    };
    let chunks = if how == PeerEnd::Keep {
        200
    } else {
        1 + rng.below(20)
    };
    let mut buf = vec![0u8; 64 << 10];
    let deadline = Instant::now() + LIMIT;
    use ring_hosted::stream::PollStream;
    // A server peer starts once its client (ring) has joined.
    while !did.end.peer_connected() {
        assert!(Instant::now() < deadline, "ring never joined");
        let _ = did.end.wait_event(None, Some(deadline));
    }
    for i in 0..chunks {
        // Keep: gaps around the linger, so it often runs out between two
        // writes; the others: gaps well inside it.
        let gap = if how == PeerEnd::Keep { 31 } else { 13 };
        let next = Instant::now() + Duration::from_millis(rng.below(gap));
        loop {
            if did.read < want {
                let room = (want - did.read).min(buf.len());
                match PollStream::try_read(&mut did.end, &mut buf[..room]) {
                    Ok(Some(n)) if n > 0 => {
                        did.read += n;
                        continue;
                    }
                    Ok(_) => {}
                    Err(_) => return did,
                }
            }
            let now = Instant::now();
            if now >= next {
                break;
            }
            assert!(now < deadline, "soak peer stalled");
            let _ = did.end.wait_event(None, Some(next));
        }
        let chunk = pattern(
            (seed as u8).wrapping_add(i as u8),
            1 + rng.below(300) as usize,
        );
        match did.end.try_write(&chunk) {
            Ok(Some(n)) => did.wrote.extend_from_slice(&chunk[..n]),
            Ok(None) => {}
            Err(Error::Closed) => {
                did.refused = true;
                break;
            }
            Err(_) => break,
        }
    }
    // Close and Stall read all of ours before they end.
    while matches!(how, PeerEnd::Close | PeerEnd::Stall) && !did.refused && did.read < want {
        match PollStream::try_read(&mut did.end, &mut buf) {
            Ok(Some(n)) if n > 0 => did.read += n,
            Ok(Some(_)) | Err(_) => break,
            Ok(None) => {
                assert!(Instant::now() < deadline, "soak peer stalled");
                let _ = did.end.wait_event(None, Some(deadline));
            }
        }
    }
    match how {
        PeerEnd::Close | PeerEnd::Keep | PeerEnd::Unread => {
            let _ = did.end.close();
        }
        PeerEnd::Die => {
            let _ = did.pid_proc.kill();
            let _ = did.pid_proc.wait();
        }
        PeerEnd::Stall | PeerEnd::Lazy => {}
    }
    did
}

/// Many short `ring attach` runs against foreign-style vchan peers (both
/// roles, `--poll` and eventfds, a 20 ms linger, peers that write every
/// few ms and close, keep writing, die or stall at random). The invariant:
/// exit 0 only with every byte both ways, stdout always a prefix of what
/// the peer wrote, every run bounded. `RING_FOREIGN_SOAK=N` runs (default
/// 40); scripts/soak runs more and prints the counts.
#[test]
fn foreign_vchan_soak_exit_0_means_every_byte() {
    use ring_core::vchan::Role;
    let runs: u64 = std::env::var("RING_FOREIGN_SOAK")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let ours = pattern(11, 5000);
    let mut codes = std::collections::BTreeMap::<String, u64>::new();
    let (mut lost, mut refused, mut slowest) = (0u64, 0u64, Duration::ZERO);
    for run in 0..runs {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ run.wrapping_mul(0x2545_F491_4F6C_DD1D));
        let how = [
            PeerEnd::Close,
            PeerEnd::Keep,
            PeerEnd::Die,
            PeerEnd::Stall,
            PeerEnd::Lazy,
            PeerEnd::Unread,
        ][rng.below(6) as usize];
        let attach_server = rng.below(2) == 0;
        let poll = rng.below(2) == 0;
        let (_dir, file) = ring_file("soak");
        let pid_proc = Command::new("sleep").arg("60").spawn().unwrap();
        let pid = pid_proc.id().to_string();
        let role = if attach_server { "server" } else { "client" };
        let mut a = args(&["--proto", "vchan", "--role", role, "--file"]);
        a.push(file.display().to_string());
        a.extend(args(&[
            "--linger-ms",
            "20",
            "--timeout",
            "0.5",
            "--peer-pid",
            &pid,
        ]));
        let (signal, child_fds) = if poll {
            a.push("--poll".into());
            (attach::poll_signal().unwrap(), Vec::new())
        } else {
            let (to_child, to_us) = (EventFd::new().unwrap(), EventFd::new().unwrap());
            let (child_wait, child_notify) = (inheritable(&to_child), inheritable(&to_us));
            a.extend([
                "--notify-fd".into(),
                child_notify.as_raw_fd().to_string(),
                "--wait-fd".into(),
                child_wait.as_raw_fd().to_string(),
            ]);
            (
                EventSignal::new(to_child, to_us),
                vec![child_notify, child_wait],
            )
        };
        let (stdin, w) = stdin_pipe(&ours);
        drop(w);
        // SAFETY: nobody shrinks the test's file while it is mapped.
        let mem = unsafe { attach::open_memory(&MemSource::Path(file.clone())) }.unwrap();
        let layout = |role, orders| VchanLayout {
            role,
            ctrl: 0,
            left: None,
            right: None,
            orders,
        };
        let (end, ring) = if attach_server {
            let mut ring = attach(&a, stdin, Some("start"));
            drop(child_fds);
            ring.wait_stopped();
            let end = attach::vchan(mem, layout(Role::Client, None), signal).unwrap();
            ring.cont();
            (end, ring)
        } else {
            let orders = ring_core::vchan::Orders::for_sizes(64 << 10, 64 << 10).unwrap();
            let end = attach::vchan(mem, layout(Role::Server, Some(orders)), signal).unwrap();
            let ring = attach(&a, stdin, None);
            drop(child_fds);
            (end, ring)
        };
        let want = ours.len();
        let peer = thread::spawn(move || soak_peer(end, run, how, pid_proc, want));
        let mut did = peer.join().unwrap();
        let e = ring.finish(LIMIT);
        slowest = slowest.max(e.took);
        drop(did.end);
        let _ = did.pid_proc.kill();
        let _ = did.pid_proc.wait();
        let code = e.status.code().map_or("signal".into(), |c| c.to_string());
        *codes.entry(format!("{how:?} exit {code}")).or_default() += 1;
        refused += u64::from(did.refused);
        assert!(
            did.wrote.starts_with(&e.stdout),
            "run {run} ({how:?}): stdout is not a prefix of what the peer wrote"
        );
        if e.status.code() == Some(0) {
            if e.stdout.len() != did.wrote.len() || did.read != want {
                lost += 1;
                eprintln!(
                    "run {run} ({how:?}, attach {role}, poll {poll}): exit 0 with {} of {} bytes out, {} of {want} in",
                    e.stdout.len(),
                    did.wrote.len(),
                    did.read
                );
            }
        } else {
            assert!(
                !e.stderr.trim().is_empty(),
                "run {run}: exit {code} without a line"
            );
            if matches!(e.status.code(), Some(1) | None) {
                eprintln!(
                    "run {run} ({how:?}, attach {role}, poll {poll}): {}",
                    e.stderr.trim()
                );
            }
        }
    }
    eprintln!("foreign vchan soak: {runs} runs; {codes:?}; peer writes refused after our close in {refused} runs; exit 0 with a byte missing: {lost}; slowest exit {slowest:?} after the peer was done");
    assert_eq!(lost, 0, "exit 0 with bytes missing");
}

/// Raw VMBus framing against a foreign-style peer that batches as DPDK's
/// does: it publishes its read index after every packet but signals only
/// once per batch (when a commit of the batch said a signal was owed), and
/// writes several packets before one commit and one signal. With the
/// liveness re-check off, every byte must still arrive both ways, and the
/// stream end by the linger with exit 0.
#[test]
fn vmbus_raw_framing_against_a_peer_that_signals_per_batch() {
    let mut peer = VmbusPeer::new(8 << 10, &["--framing", "raw", "--linger-ms", "100"]);
    let ours = pattern(12, 48 << 10);
    let (stdin, w) = stdin_pipe(&ours);
    drop(w);
    let ring = peer.spawn(stdin);
    let (mut rx, _) = peer.tx_reader();
    let mut tx = peer.rx_writer();
    let theirs = pattern(13, 40 << 10);
    let (mut got, mut sent) = (Vec::new(), 0usize);
    let mut rng = Rng(0x5EED);
    let deadline = Instant::now() + LIMIT;
    while got.len() < ours.len() || sent < theirs.len() {
        let mut moved = false;
        // Read a batch: commit each packet, signal once at the end.
        let mut owed = false;
        for _ in 0..1 + rng.below(8) {
            match rx.read_packet() {
                Ok(p) => {
                    let mut b = vec![0u8; p.payload_len()];
                    p.read_payload(0, &mut b).unwrap();
                    got.extend_from_slice(&b);
                    owed |= rx.commit().unwrap().notify;
                    moved = true;
                }
                Err(vmbus::Error::Empty) => break,
                Err(e) => panic!("{e}"),
            }
        }
        if owed {
            peer.kick();
        }
        // Write a batch of packets (whole 8-byte units), one commit.
        let mut wrote = false;
        for _ in 0..1 + rng.below(8) {
            let n = ((8 + 8 * rng.below(200)) as usize).min(theirs.len() - sent);
            if n == 0 {
                break;
            }
            let piece: [&[u8]; 1] = [&theirs[sent..sent + n]];
            match tx.write(&OutgoingPacket::in_band(0, &piece)) {
                Ok(()) => {
                    sent += n;
                    wrote = true;
                }
                Err(vmbus::Error::Full { .. }) => break,
                Err(e) => panic!("{e}"),
            }
        }
        if wrote {
            moved = true;
            if tx.commit().unwrap().notify {
                peer.kick();
            }
        }
        if !moved {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "stalled: {} of {} in, {sent} of {} out",
                got.len(),
                ours.len(),
                theirs.len()
            );
            // Both rings were re-checked with their wake-ups armed (an
            // empty read unmasks; a full write sets pending_send_size).
            let _ = peer.signal.wait_timeout(Some(left));
        }
    }
    let e = ring.finish(LIMIT);
    assert_eq!(e.status.code(), Some(0), "{}", e.stderr);
    assert!(got == ours, "our stdin arrived changed");
    assert!(e.stdout == theirs, "the peer's bytes differ");
}
