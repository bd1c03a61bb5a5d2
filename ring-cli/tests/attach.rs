//! `ring attach`: a peer that set up the memory and eventfds itself hands
//! them to the command by path or fd number, and data flows both ways.

use ring_core::vchan::{self, Orders, Role, ServerOptions};
use ring_hosted::attach::{self, MemSource, VchanLayout};
use ring_hosted::eventfd::{EventFd, EventSignal};
use ring_hosted::memfd::MemFd;
use ring_hosted::stream::{PollStream, VchanStream};
use ring_hosted::vmbus::{ChannelLayout, VmbusPipe};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const RING: &str = env!("CARGO_BIN_EXE_ring");

/// Bytes that differ with position and seed, so a lost or reordered chunk
/// shows.
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

/// Two eventfds for a link to a child: ours, and the numbers the child
/// gets as `--notify-fd` and `--wait-fd`.
fn event_link() -> (EventSignal, OwnedFd, OwnedFd) {
    let (to_child, to_us) = (EventFd::new().unwrap(), EventFd::new().unwrap());
    let child_wait = inheritable(&to_child);
    let child_notify = inheritable(&to_us);
    (EventSignal::new(to_child, to_us), child_notify, child_wait)
}

fn spawn(args: &[String]) -> Child {
    Command::new(RING)
        .arg("attach")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Feeds `input` to the child's stdin (then closes it) and collects its
/// stdout and stderr, in threads, while `ring_side` runs here.
fn run_child(mut child: Child, input: Vec<u8>, ring_side: impl FnOnce()) -> Output {
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let feeder = thread::spawn(move || stdin.write_all(&input).unwrap());
    let out = thread::spawn(move || {
        let mut v = Vec::new();
        stdout.read_to_end(&mut v).unwrap();
        v
    });
    let err = thread::spawn(move || {
        let mut v = Vec::new();
        stderr.read_to_end(&mut v).unwrap();
        v
    });
    ring_side();
    feeder.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("ring attach did not exit");
        }
        thread::sleep(Duration::from_millis(5));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// Sends `send` and receives `want` bytes over `s`, then closes; returns
/// what was received.
fn exchange(s: &mut impl PollStream, send: &[u8], want: usize) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got = Vec::with_capacity(want);
    let mut buf = vec![0u8; 16 << 10];
    let mut off = 0;
    while off < send.len() || got.len() < want {
        assert!(Instant::now() < deadline, "exchange stalled");
        let mut moved = false;
        if off < send.len() {
            if let Some(n) = s.try_write(&send[off..]).unwrap() {
                off += n;
                moved |= n > 0;
            }
        }
        if got.len() < want {
            match s.try_read(&mut buf) {
                Ok(Some(0)) => panic!("end of stream after {} bytes", got.len()),
                Ok(Some(n)) => {
                    got.extend_from_slice(&buf[..n]);
                    moved = true;
                }
                Ok(None) => {}
                Err(e) => panic!("read: {e}"),
            }
        }
        if !moved {
            s.wait_event(None, Some(deadline)).unwrap();
        }
    }
    s.close().unwrap();
    got
}

fn check(out: &Output, expected: &[u8]) {
    assert!(
        out.status.success(),
        "ring attach failed: {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len(), expected.len());
    assert!(out.stdout == expected, "bytes differ");
}

#[test]
fn vchan_client_over_an_inherited_memfd_and_eventfds() {
    let orders = Orders::for_sizes(16 << 10, 4 << 10).unwrap();
    let mem = Arc::new(MemFd::create("attach-test", vchan::FlatLayout::new(orders).size).unwrap());
    let server = vchan::serve_flat(mem.clone(), orders, ServerOptions::default()).unwrap();
    let (signal, notify, wait) = event_link();
    let mem_fd = inheritable(&*mem);
    let child = spawn(&[
        "--proto".into(),
        "vchan".into(),
        "--role".into(),
        "client".into(),
        "--fd".into(),
        mem_fd.as_raw_fd().to_string(),
        "--notify-fd".into(),
        notify.as_raw_fd().to_string(),
        "--wait-fd".into(),
        wait.as_raw_fd().to_string(),
    ]);
    drop((mem_fd, notify, wait));
    let (up, down) = (pattern(1, 300_000), pattern(2, 200_000));
    let mut stream = VchanStream::new(server, signal);
    let expect_up = up.clone();
    let down2 = down.clone();
    let out = run_child(child, up, move || {
        let got = exchange(&mut stream, &down2, expect_up.len());
        assert!(got == expect_up, "bytes from the child's stdin differ");
    });
    check(&out, &down);
}

#[test]
fn vchan_server_in_a_shm_file_with_explicit_offsets_and_polling() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shm");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(64 << 10)
        .unwrap();
    // Control page at 8K, left (4K) at 40K, right (8K) at 16K: not the
    // flat layout, so the offsets really are used.
    let child = spawn(&[
        "--proto".into(),
        "vchan".into(),
        "--role".into(),
        "server".into(),
        "--file".into(),
        path.display().to_string(),
        "--ctrl-offset".into(),
        "8K".into(),
        "--left-offset".into(),
        "40K".into(),
        "--right-offset".into(),
        "16K".into(),
        "--read-min".into(),
        "4K".into(),
        "--write-min".into(),
        "8K".into(),
        "--poll".into(),
    ]);
    let layout = VchanLayout {
        role: Role::Client,
        ctrl: 8 << 10,
        left: Some(40 << 10),
        right: Some(16 << 10),
        orders: None,
    };
    let (up, down) = (pattern(3, 100_000), pattern(4, 150_000));
    let expect_up = up.clone();
    let down2 = down.clone();
    let out = run_child(child, up, move || {
        // SAFETY: the file lives in our temporary directory and nobody
        // shrinks it.
        let mem = unsafe { attach::open_memory(&MemSource::Path(path)) }.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut client = loop {
            let signal = attach::poll_signal().unwrap();
            match attach::vchan(mem.clone(), layout, signal) {
                Ok(c) => break c,
                Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                Err(e) => panic!("server never came up: {e}"),
            }
        };
        // The orders the server wrote into the page at 8K.
        let orders = client.endpoint().orders();
        assert_eq!((orders.left(), orders.right()), (12, 13));
        let got = exchange(&mut client, &down2, expect_up.len());
        assert!(got == expect_up, "bytes from the child's stdin differ");
    });
    check(&out, &down);
}

#[test]
fn vmbus_over_an_inherited_memfd() {
    let layout = ChannelLayout::new(16 << 10, 8 << 10).unwrap();
    let mem = Arc::new(MemFd::create("attach-vmbus", layout.total_size()).unwrap());
    let (signal, notify, wait) = event_link();
    let server = VmbusPipe::serve(mem.clone(), layout, signal).unwrap();
    let mem_fd = inheritable(&*mem);
    let split = layout.to_client_offset();
    let child = spawn(&[
        "--proto".into(),
        "vmbus".into(),
        "--fd".into(),
        mem_fd.as_raw_fd().to_string(),
        "--tx-offset".into(),
        "0".into(),
        "--tx-size".into(),
        split.to_string(),
        "--rx-offset".into(),
        split.to_string(),
        "--rx-size".into(),
        (layout.total_size() - split).to_string(),
        "--notify-fd".into(),
        notify.as_raw_fd().to_string(),
        "--wait-fd".into(),
        wait.as_raw_fd().to_string(),
    ]);
    drop((mem_fd, notify, wait));
    let (up, down) = (pattern(5, 120_000), pattern(6, 90_000));
    let mut server = server;
    let expect_up = up.clone();
    let down2 = down.clone();
    let out = run_child(child, up, move || {
        let got = exchange(&mut server, &down2, expect_up.len());
        assert!(got == expect_up, "bytes from the child's stdin differ");
    });
    check(&out, &down);
}

fn attach_fails(args: &[&str]) -> (i32, String) {
    let out = Command::new(RING)
        .arg("attach")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.stdout.is_empty());
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn usage_errors_exit_2_with_a_reason() {
    let cases: &[(&[&str], &str)] = &[
        (&["--proto", "vchan", "--poll"], "--file"),
        (
            &["--file", "/x", "--fd", "3", "--proto", "vchan", "--poll"],
            "cannot be used with",
        ),
        (&["--file", "/x", "--proto", "vchan", "--poll"], "--role"),
        (
            &["--file", "/x", "--proto", "vchan", "--role", "client"],
            "--poll",
        ),
        (
            &[
                "--file",
                "/x",
                "--proto",
                "vchan",
                "--role",
                "server",
                "--tx-size",
                "8K",
                "--poll",
            ],
            "only apply to --proto vmbus",
        ),
        (
            &[
                "--file",
                "/x",
                "--proto",
                "vmbus",
                "--tx-offset",
                "0",
                "--poll",
            ],
            "--rx-size",
        ),
        (
            &[
                "--file",
                "/x",
                "--proto",
                "vchan",
                "--role",
                "client",
                "--read-min",
                "4K",
                "--poll",
            ],
            "for a server",
        ),
        (
            &[
                "--fd",
                "5",
                "--proto",
                "vchan",
                "--role",
                "client",
                "--notify-fd",
                "5",
                "--wait-fd",
                "6",
            ],
            "also an eventfd",
        ),
        (
            &[
                "--file",
                "/x",
                "--proto",
                "vchan",
                "--role",
                "client",
                "--poll",
                "--notify-fd",
                "4",
            ],
            "cannot be used with",
        ),
        (
            &[
                "--file",
                "/x",
                "--proto",
                "vchan",
                "--ctrl-offset",
                "4Q",
                "--poll",
            ],
            "unknown size unit",
        ),
    ];
    for (args, needle) in cases {
        let (code, err) = attach_fails(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn bad_layouts_and_fds_exit_1_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shm");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(16 << 10)
        .unwrap();
    let file = path.to_str().unwrap();
    let server = [
        "--file", file, "--proto", "vchan", "--role", "server", "--poll",
    ];
    let with = |more: &[&'static str]| -> Vec<&str> {
        server.iter().copied().chain(more.iter().copied()).collect()
    };
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            with(&["--left-offset", "60K", "--read-min", "4K"]),
            "past the",
        ),
        (with(&["--ctrl-offset", "12"]), "not a multiple of 8"),
        (with(&["--ctrl-offset", "14K"]), "does not fit"),
        (
            with(&["--left-offset", "1024", "--read-min", "4K"]),
            "overlaps the control page",
        ),
        (
            with(&[
                "--left-offset",
                "2048",
                "--read-min",
                "1K",
                "--write-min",
                "2K",
            ]),
            "inside the control page at byte 1024",
        ),
        (with(&["--read-min", "2M"]), "exceeds 1 MiB"),
        (
            vec![
                "--file", file, "--proto", "vchan", "--role", "client", "--poll",
            ],
            "layout: no vchan server at byte 0",
        ),
        (
            vec![
                "--file",
                "/nonexistent/shm",
                "--proto",
                "vchan",
                "--role",
                "client",
                "--poll",
            ],
            "open shared memory file",
        ),
        (
            vec![
                "--file",
                file,
                "--proto",
                "vmbus",
                "--tx-offset",
                "0",
                "--tx-size",
                "8K",
                "--rx-offset",
                "4K",
                "--rx-size",
                "8K",
                "--poll",
            ],
            "overlaps",
        ),
        (
            vec![
                "--file",
                file,
                "--proto",
                "vmbus",
                "--tx-offset",
                "0",
                "--tx-size",
                "8K",
                "--rx-offset",
                "12K",
                "--rx-size",
                "8K",
                "--poll",
            ],
            "does not fit",
        ),
        (
            vec![
                "--file",
                file,
                "--proto",
                "vchan",
                "--role",
                "server",
                "--notify-fd",
                "97",
                "--wait-fd",
                "98",
            ],
            "fd 97 is not open",
        ),
    ];
    for (args, needle) in &cases {
        let (code, err) = attach_fails(args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.starts_with("ring: "), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }
}

#[test]
fn a_non_eventfd_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shm");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(16 << 10).unwrap();
    let not_event = inheritable(&f);
    let also_not = inheritable(&f);
    let n = not_event.as_raw_fd().to_string();
    let m = also_not.as_raw_fd().to_string();
    let out = Command::new(RING)
        .args(["attach", "--file"])
        .arg(&path)
        .args([
            "--proto",
            "vchan",
            "--role",
            "server",
            "--notify-fd",
            &n,
            "--wait-fd",
            &m,
        ])
        .output()
        .unwrap();
    drop((not_event, also_not));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("expected an eventfd"), "{err}");
}

/// `--framing raw`: a peer that writes raw in-band packets (no pipe
/// header) is read as bytes, and our bytes go out as raw in-band packets
/// in whole 8-byte units, the last one padded with zeroes.
#[test]
fn vmbus_raw_framing_against_a_peer_of_raw_in_band_packets() {
    use ring_core::vmbus::{IncomingRing, OutgoingPacket, OutgoingRing};
    let layout = ChannelLayout::new(16 << 10, 16 << 10).unwrap();
    let mem = Arc::new(MemFd::create("attach-raw", layout.total_size()).unwrap());
    let (to_child_ring, to_us_ring) = layout.windows(&mem).unwrap();
    ring_core::vmbus::initialize_ring(&to_child_ring, layout.to_server).unwrap();
    ring_core::vmbus::initialize_ring(&to_us_ring, layout.to_client).unwrap();
    let mut tx = OutgoingRing::new(to_child_ring, layout.to_server).unwrap();
    let mut rx = IncomingRing::new(to_us_ring, layout.to_client).unwrap();
    let (signal, notify, wait) = event_link();
    let mem_fd = inheritable(&*mem);
    let split = layout.to_client_offset();
    let child = spawn(&[
        "--proto".into(),
        "vmbus".into(),
        "--framing".into(),
        "raw".into(),
        "--fd".into(),
        mem_fd.as_raw_fd().to_string(),
        "--rx-offset".into(),
        "0".into(),
        "--rx-size".into(),
        split.to_string(),
        "--tx-offset".into(),
        split.to_string(),
        "--tx-size".into(),
        (layout.total_size() - split).to_string(),
        "--notify-fd".into(),
        notify.as_raw_fd().to_string(),
        "--wait-fd".into(),
        wait.as_raw_fd().to_string(),
        "--linger-ms".into(),
        "300".into(),
    ]);
    drop((mem_fd, notify, wait));
    let theirs: Vec<Vec<u8>> = vec![pattern(1, 16), pattern(2, 8), pattern(3, 4000)];
    let expect_out: Vec<u8> = theirs.concat();
    let ours = pattern(4, 1003);
    let out = run_child(child, ours.clone(), move || {
        for p in &theirs {
            let pieces: [&[u8]; 1] = [p];
            let t = tx.send(&OutgoingPacket::in_band(7, &pieces)).unwrap();
            if t.notify {
                ring_core::signal::Signal::notify(&signal).unwrap();
            }
        }
        // Read raw packets until 1003 bytes (padded to 1008) arrived.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut got = Vec::new();
        while got.len() < 1008 {
            assert!(
                Instant::now() < deadline,
                "only {} bytes arrived",
                got.len()
            );
            match rx.read_packet() {
                Ok(p) => {
                    let mut b = vec![0u8; p.payload_len()];
                    p.read_payload(0, &mut b).unwrap();
                    got.extend_from_slice(&b);
                    let t = rx.commit().unwrap();
                    if t.notify {
                        ring_core::signal::Signal::notify(&signal).unwrap();
                    }
                }
                Err(ring_core::vmbus::Error::Empty) => {
                    let _ = signal.wait_timeout(Some(Duration::from_millis(50)));
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(&got[..1003], &ours[..]);
        assert_eq!(&got[1003..], &[0u8; 5]);
    });
    check(&out, &expect_out);
}
