//! The `ring` command: usage errors exit 2, runtime errors exit 1 with a
//! one-line reason, `demo` prints its table, `listen`/`connect` pipe both
//! ways, `inspect` decodes a live control page.

mod common;

use common::{exit_within, ring, side, wait_for_path, TempSock};
use ring_core::vchan::{self, Orders, ServerOptions};
use ring_hosted::memfd::MemFd;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd};
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

fn run(args: &[&str]) -> Output {
    ring().args(args).stdin(Stdio::null()).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &[][..],
        &["frobnicate"],
        &["demo", "--bytes", "lots"],
        &["demo", "--bytes", "12Q"],
        &["demo", "--rounds", "-1"],
        &["demo", "--proto", "carrier-pigeon"],
        &["demo", "--ring-size", "2M"],
        &["listen", "/tmp/x", "--ring-size", "0"],
        &["inspect"],
        &["listen"],
        &["connect", "/tmp/x", "--proto", "nope"],
        &["inspect", "f", "--jsonn"],
    ] {
        let o = run(args);
        assert_eq!(o.status.code(), Some(2), "ring {args:?}: {}", stderr(&o));
        assert!(!stderr(&o).is_empty(), "ring {args:?} must say why");
    }
}

#[test]
fn help_is_everywhere() {
    for sub in ["demo", "listen", "connect", "inspect"] {
        let o = run(&[sub, "--help"]);
        assert_eq!(o.status.code(), Some(0), "{sub}");
        assert!(stdout(&o).contains("Usage: ring"), "{sub}: {}", stdout(&o));
    }
    let o = run(&["--help"]);
    assert!(stdout(&o).contains("demo"));
    assert!(
        !stdout(&o)
            .lines()
            .any(|l| l.trim_start().starts_with("peer")),
        "the peer subcommand is hidden"
    );
}

#[test]
fn runtime_errors_exit_1_with_one_line() {
    for args in [
        &["connect", "/nonexistent/ring.sock"][..],
        &["inspect", "/nonexistent/file"],
        &["listen", "/nonexistent/dir/ring.sock"],
    ] {
        let o = run(args);
        assert_eq!(o.status.code(), Some(1), "ring {args:?}");
        let e = stderr(&o);
        assert!(e.starts_with("ring: "), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }
}

#[test]
fn demo_prints_its_table_and_succeeds() {
    let o = run(&["demo", "--bytes", "8M", "--rounds", "300"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    let mut lines = out.lines();
    let header = lines.next().unwrap();
    for col in [
        "protocol",
        "bytes",
        "GB/s",
        "rtt p50",
        "rtt p99",
        "kicks/MiB",
    ] {
        assert!(header.contains(col), "{header}");
    }
    for proto in ["vchan", "vmbus"] {
        let row = lines.next().unwrap();
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[0], proto);
        assert_eq!(cells[1], (8u64 << 20).to_string());
        let gbps: f64 = cells[2].parse().unwrap();
        assert!(gbps > 0.0);
        assert!(row.ends_with("ok both ways"), "{row}");
    }
    assert!(lines.next().is_none());
    // Not a terminal: no progress output.
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));

    // One protocol on request.
    let o = run(&[
        "demo", "--bytes", "1M", "--rounds", "10", "--proto", "vmbus",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().count(), 2);
    assert!(stdout(&o).lines().nth(1).unwrap().starts_with("vmbus"));
}

#[test]
fn listen_and_connect_pipe_both_ways() {
    for proto in ["vchan", "vmbus"] {
        pipe_both_ways(proto);
    }
}

fn pipe_both_ways(proto: &str) {
    let sock = TempSock::new("pipe");
    let a: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let b: Vec<u8> = b"hello from the connecting side\n".repeat(1000);
    let mut listen = ring()
        .arg("listen")
        .arg(&sock.path)
        .args(["--proto", proto])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_path(&sock.path);
    let mut connect = ring()
        .arg("connect")
        .arg(&sock.path)
        .args(["--proto", proto])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut li = listen.stdin.take().unwrap();
    let mut ci = connect.stdin.take().unwrap();
    let (a2, b2) = (a.clone(), b.clone());
    let t1 = std::thread::spawn(move || li.write_all(&a2).unwrap());
    let t2 = std::thread::spawn(move || ci.write_all(&b2).unwrap());
    // Drain both outputs at once, or a full stdout pipe stalls a side.
    let lt = std::thread::spawn(move || listen.wait_with_output().unwrap());
    let co = connect.wait_with_output().unwrap();
    let lo = lt.join().unwrap();
    t1.join().unwrap();
    t2.join().unwrap();
    assert_eq!(lo.status.code(), Some(0), "{}", stderr(&lo));
    assert_eq!(co.status.code(), Some(0), "{}", stderr(&co));
    assert_eq!(co.stdout.len(), a.len());
    assert!(co.stdout == a, "listen -> connect bytes differ");
    assert!(lo.stdout == b, "connect -> listen bytes differ");
}

#[test]
fn inspect_decodes_a_live_page() {
    let orders = Orders::new(12, 13).unwrap();
    let mem =
        Arc::new(MemFd::create("ring-inspect-test", vchan::FlatLayout::new(orders).size).unwrap());
    let mut server = vchan::serve_flat(mem.clone(), orders, ServerOptions::default()).unwrap();
    let mut client = vchan::connect_flat(mem.clone()).unwrap();
    let t = client.write(&[7u8; 1000]).unwrap();
    assert!(t.notify);
    // The client now waits for data from the server: arms WRITE on it.
    assert!(client.read(&mut [0u8; 4]).is_err());
    let _ = &mut server;
    let path = format!(
        "/proc/{}/fd/{}",
        std::process::id(),
        mem.as_fd().as_raw_fd()
    );

    let o = run(&["inspect", &path]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("client->server"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("left") && l.contains("1000") && l.contains("3096")),
        "{text}"
    );
    assert!(
        text.contains("client connected (1), server connected (1)"),
        "{text}"
    );
    // The server asked to be kicked on write and 1000 bytes wait: but the
    // client's write already consumed that request (it was told to kick).
    assert!(text.contains("signals owed: none"), "{text}");

    let o = run(&["inspect", "--json", &path]);
    assert_eq!(o.status.code(), Some(0));
    let json = stdout(&o);
    assert!(json.starts_with("{\"proto\":\"vchan\""), "{json}");
    assert!(json.contains("\"used\":1000"), "{json}");
    assert!(json.contains("\"server_notify\":\"write\""), "{json}");
    assert!(json.trim_end().ends_with('}'));

    // The same page found by process id (its memfd is named ring-...).
    let o = run(&[
        "inspect",
        "--pid",
        &std::process::id().to_string(),
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).lines().any(|l| l.contains("\"used\":1000")),
        "{}",
        stdout(&o)
    );
    let o = run(&["inspect", "--pid", "1"]);
    assert_eq!(o.status.code(), Some(1));
    let o = run(&["inspect", "--pid", "1", "some-file"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn inspect_decodes_a_live_vmbus_channel() {
    use ring_hosted::rendezvous::{self, Listener, Proto, ServerConfig};
    let sock = TempSock::new("inspect-vmbus");
    let l = Listener::bind(
        &sock.path,
        ServerConfig::new(Proto::Vmbus).ring_sizes(8192, 8192),
    )
    .unwrap();
    let path = sock.path.clone();
    let t = std::thread::spawn(move || rendezvous::connect(&path, Proto::Vmbus).unwrap());
    let server = l.accept().unwrap().into_vmbus().unwrap();
    let mut client = t.join().unwrap().into_vmbus().unwrap();
    client.write_all(&[5u8; 100]).unwrap();
    let fd = server.memory().as_fd().as_raw_fd();
    let file = format!("/proc/{}/fd/{fd}", std::process::id());

    let o = run(&["inspect", "--proto", "vmbus", &file]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = stdout(&o);
    // 100 bytes of data: 16 descriptor + 8 pipe header + 104 padded + 8 trailer.
    assert!(
        text.lines().any(|l| l.starts_with("to-server")
            && l.contains("client->server")
            && l.contains("136")),
        "{text}"
    );
    let o = run(&["inspect", "--proto", "vmbus", "--json", &file]);
    assert!(stdout(&o).contains("\"data_size\":8192"), "{}", stdout(&o));
    // A size that does not split into two rings.
    let o = run(&["inspect", "--proto", "vmbus", "--data-size", "5000", &file]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--data-size"), "{}", stderr(&o));
    drop((server, client));
}

#[test]
fn a_reader_that_stops_early_is_a_loss_on_both_sides() {
    use std::io::Read;
    let sock = TempSock::new("epipe");
    let mut listen = ring()
        .arg("listen")
        .arg(&sock.path)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_path(&sock.path);
    let mut connect = ring()
        .arg("connect")
        .arg(&sock.path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut li = listen.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        // Far more than the pipes and ring hold; fails once listen exits.
        let chunk = vec![b'x'; 1 << 16];
        for _ in 0..1024 {
            if li.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    let mut out = connect.stdout.take().unwrap();
    let mut first = [0u8; 10];
    out.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"xxxxxxxxxx");
    drop(out);
    let co = connect.wait_with_output().unwrap();
    let lo = listen.wait_with_output().unwrap();
    feeder.join().unwrap();
    // Bytes were lost: our stdout closed (7), and the listener's peer
    // closed with its bytes unread (4). Neither may say 0.
    assert_eq!(co.status.code(), Some(7), "{}", stderr(&co));
    assert!(stderr(&co).contains("stdout closed"), "{}", stderr(&co));
    assert_eq!(lo.status.code(), Some(4), "{}", stderr(&lo));
    assert_eq!(stderr(&lo).lines().count(), 1, "{}", stderr(&lo));
}

#[test]
fn a_stopped_peer_is_a_timeout_exit_6_with_one_line() {
    use std::io::Read;
    for proto in ["vchan", "vmbus"] {
        let sock = TempSock::new("timeout");
        let mut listen = side("listen", &sock.path, proto, &["--timeout", "1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        wait_for_path(&sock.path);
        let mut connect = side("connect", &sock.path, proto, &[])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // The session is up once a byte has crossed it.
        let mut ci = connect.stdin.take().unwrap();
        ci.write_all(b"up").unwrap();
        let mut got = [0u8; 2];
        listen.stdout.take().unwrap().read_exact(&mut got).unwrap();
        assert_eq!(&got, b"up");
        // The peer stops: alive, silent, holding the session; our input
        // ends, so from now on we wait on the peer alone.
        let pid = rustix::process::Pid::from_raw(connect.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
        drop(listen.stdin.take());
        let (code, err) = exit_within(&mut listen, Duration::from_secs(60), "listen");
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::CONT);
        let _ = connect.kill();
        let _ = connect.wait();
        assert_eq!(code, 6, "{proto}: {err}");
        assert_eq!(err.lines().count(), 1, "{proto}: one line: {err}");
        assert!(err.contains("timed out"), "{proto}: {err}");
    }
}

/// --timeout counts the peer's silence only while we wait on the peer:
/// a side whose own input is open and idle does not time out, and when
/// the side that waits on its peer times out and leaves, the survivor
/// says the peer closed or went (4 or 5), never that something of ours
/// failed (1).
#[test]
fn a_peer_that_times_out_and_leaves_is_the_peers_end_for_the_survivor() {
    for proto in ["vchan", "vmbus"] {
        let sock = TempSock::new("gives-up");
        // Its input ends at once: it waits on its peer alone.
        let mut listen = side("listen", &sock.path, proto, &["--timeout", "1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_path(&sock.path);
        // Its input stays open and idle: waiting on itself, it does not
        // time out although its peer is silent.
        let mut connect = side("connect", &sock.path, proto, &["--timeout", "1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let (code, err) = exit_within(&mut listen, Duration::from_secs(60), "listen");
        assert_eq!(code, 6, "{proto}: {err}");
        // The survivor, still waiting on its own input, has not timed out;
        // its input ends now.
        assert!(
            connect.try_wait().unwrap().is_none(),
            "{proto}: connect gave up"
        );
        drop(connect.stdin.take());
        let (code, err) = exit_within(&mut connect, Duration::from_secs(60), "connect");
        // It closed the ring as it left (4: closed before our stream
        // ended) or just went (5); what failed was never ours (1).
        assert!(code == 4 || code == 5, "{proto}: exit {code}: {err}");
        assert_eq!(err.lines().count(), 1, "{proto}: {err}");
    }
}
