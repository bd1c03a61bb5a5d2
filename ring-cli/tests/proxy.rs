//! `ring proxy`: many connections through a pair of proxies, each on a
//! ring session of its own, checksummed both ways; killed clients do not
//! disturb the others; 1024 sessions at once in one process; SIGTERM drains
//! and exits 0.

mod common;

use common::{ring, wait_for_path, TempSock};
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Child, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The service behind the proxies: answers every connection with what it
/// reads, each byte xored with 0x5a, and shuts down its side at the
/// client's end.
fn service(path: std::path::PathBuf) {
    let l = UnixListener::bind(&path).unwrap();
    thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { return };
            thread::Builder::new()
                .stack_size(128 << 10)
                .spawn(move || {
                    let mut buf = vec![0u8; 32 << 10];
                    loop {
                        match c.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                for b in &mut buf[..n] {
                                    *b ^= 0x5a;
                                }
                                if c.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    let _ = c.shutdown(std::net::Shutdown::Write);
                })
                .unwrap();
        }
    });
}

struct Proxies {
    back: Child,
    front: Child,
    front_path: std::path::PathBuf,
    /// The proxies' stderr, kept to read their lines (and shown when a
    /// test fails).
    front_err: std::path::PathBuf,
    back_err: std::path::PathBuf,
    /// The back proxy's rendezvous socket.
    rings: std::path::PathBuf,
    _dir: TempSock,
}

fn proxies(proto: &str, extra: &[&str]) -> Proxies {
    proxies_with(proto, extra, None)
}

/// `ring`, with at most `nofile` descriptors if given (soft and hard
/// limits, as `ulimit -n` sets them).
fn ring_limited(nofile: Option<u32>) -> std::process::Command {
    match nofile {
        None => ring(),
        Some(n) => {
            let mut c = std::process::Command::new("sh");
            c.arg("-c")
                .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                .arg(env!("CARGO_BIN_EXE_ring"));
            c
        }
    }
}

fn proxies_with(proto: &str, extra: &[&str], nofile: Option<u32>) -> Proxies {
    proxies_at(proto, extra, nofile, None)
}

/// The pair, the front half listening on `tcp` if given (else on the Unix
/// path `front_path`).
fn proxies_at(
    proto: &str,
    extra: &[&str],
    nofile: Option<u32>,
    tcp: Option<std::net::SocketAddr>,
) -> Proxies {
    let dir = TempSock::new("proxy");
    let target = dir.path.with_file_name("service");
    let rings = dir.path.with_file_name("rings");
    let front_path = dir.path.with_file_name("front");
    let front_err = dir.path.with_file_name("front.err");
    let back_err = dir.path.with_file_name("back.err");
    service(target.clone());
    let back = ring_limited(nofile)
        .args(["proxy", "--proto", proto, "--ring-listen"])
        .arg(&rings)
        .arg("--to")
        .arg(format!("unix:{}", target.display()))
        .args(extra)
        .env("RING_LIVENESS_MS", "0")
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&back_err).unwrap())
        .spawn()
        .unwrap();
    wait_for_path(&rings);
    let front = ring_limited(nofile)
        .args(["proxy", "--proto", proto, "--ring-connect"])
        .arg(&rings)
        .arg("--listen")
        .arg(match tcp {
            Some(addr) => format!("tcp:{addr}"),
            None => format!("unix:{}", front_path.display()),
        })
        .args(extra)
        .env("RING_LIVENESS_MS", "0")
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&front_err).unwrap())
        .spawn()
        .unwrap();
    // The path appears only once the proxy accepts on it; a TCP port
    // accepts once something answers on it.
    match tcp {
        None => wait_for_path(&front_path),
        Some(addr) => {
            let start = Instant::now();
            while std::net::TcpStream::connect(addr).is_err() {
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "{addr} never answered"
                );
                thread::sleep(Duration::from_millis(5));
            }
        }
    }
    Proxies {
        back,
        front,
        front_path,
        front_err,
        back_err,
        rings,
        _dir: dir,
    }
}

impl Drop for Proxies {
    fn drop(&mut self) {
        // A failed test must not leave proxies behind.
        for c in [&mut self.front, &mut self.back] {
            let _ = c.kill();
            let _ = c.wait();
        }
        if thread::panicking() {
            for (which, path) in [("front", &self.front_err), ("back", &self.back_err)] {
                let err = std::fs::read_to_string(path).unwrap_or_default();
                eprintln!("{which} proxy's stderr:\n{err}");
            }
        }
    }
}

impl Proxies {
    /// SIGTERM both; each must exit 0 within 10 s.
    fn stop(mut self) {
        for c in [&mut self.front, &mut self.back] {
            let pid = rustix::process::Pid::from_raw(c.id() as i32).unwrap();
            rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            let status = loop {
                if let Some(s) = c.try_wait().unwrap() {
                    break s;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    panic!("the proxy did not stop within 10 s of SIGTERM");
                }
                thread::sleep(Duration::from_millis(10));
            };
            assert!(status.success(), "proxy exited {status:?} after SIGTERM");
        }
    }
}

fn data(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// One client: sends `out`, half-closes, reads the answer to the end.
fn client(path: &std::path::Path, out: Vec<u8>, stop_after: Option<usize>) -> Option<Vec<u8>> {
    // The path exists only once the proxy accepts on it: no retry.
    let c = UnixStream::connect(path)
        .unwrap_or_else(|e| panic!("connect to the proxy at {}: {e}", path.display()));
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut w = c.try_clone().unwrap();
    let cut = stop_after;
    let writer = thread::spawn(move || {
        let upto = cut.unwrap_or(out.len());
        for piece in out[..upto].chunks(16 << 10) {
            if w.write_all(piece).is_err() {
                return;
            }
        }
        if cut.is_none() {
            let _ = w.shutdown(std::net::Shutdown::Write);
        }
    });
    if stop_after.is_some() {
        // Killed mid-stream: the connection just goes away.
        writer.join().unwrap();
        drop(c);
        return None;
    }
    let mut got = Vec::new();
    let mut r = c;
    r.read_to_end(&mut got).unwrap();
    writer.join().unwrap();
    Some(got)
}

fn many_connections(proto: &str) {
    let p = proxies(proto, &[]);
    let path = p.front_path.clone();
    let handles: Vec<_> = (0..32u64)
        .map(|i| {
            let path = path.clone();
            thread::spawn(move || {
                let n = 1 + (data(i, 4)[0] as usize) * 4096;
                let out = data(i + 100, n);
                let killed = i % 8 == 3;
                let got = client(&path, out.clone(), killed.then_some(n / 2));
                (i, killed, out, got)
            })
        })
        .collect();
    for h in handles {
        let (i, killed, out, got) = h.join().unwrap();
        if killed {
            continue;
        }
        let got = got.unwrap();
        assert_eq!(got.len(), out.len(), "connection {i}");
        assert!(
            got.iter().zip(&out).all(|(g, o)| *g == o ^ 0x5a),
            "connection {i}: bytes differ"
        );
    }
    p.stop();
}

#[test]
fn thirty_two_connections_through_vchan_sessions_with_some_killed() {
    many_connections("vchan");
}

#[test]
fn thirty_two_connections_through_vmbus_sessions_with_some_killed() {
    many_connections("vmbus");
}

/// A connection to the front proxy, of either kind.
trait Client: Read + Write + Send + 'static {
    fn end_writes(&self);
    fn read_limit(&self, limit: Duration);
}

impl Client for UnixStream {
    fn end_writes(&self) {
        self.shutdown(std::net::Shutdown::Write).unwrap();
    }
    fn read_limit(&self, limit: Duration) {
        self.set_read_timeout(Some(limit)).unwrap();
    }
}

impl Client for std::net::TcpStream {
    fn end_writes(&self) {
        self.shutdown(std::net::Shutdown::Write).unwrap();
    }
    fn read_limit(&self, limit: Duration) {
        self.set_read_timeout(Some(limit)).unwrap();
    }
}

/// Every connection, in a thread of its own, sends 100 bytes of its own,
/// half-closes and reads the service's answer to the end: each must be
/// its bytes xored, whole.
fn all_answered(conns: Vec<impl Client>) {
    let handles: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            thread::Builder::new()
                .stack_size(128 << 10)
                .spawn(move || {
                    let out = data(i as u64, 100);
                    c.write_all(&out).unwrap();
                    c.end_writes();
                    c.read_limit(Duration::from_secs(60));
                    let mut got = Vec::new();
                    c.read_to_end(&mut got)
                        .unwrap_or_else(|e| panic!("connection {i}: {e}"));
                    assert_eq!(got.len(), 100, "connection {i}");
                    assert!(got.iter().zip(&out).all(|(g, o)| *g == o ^ 0x5a));
                })
                .unwrap()
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

fn raise_fd_limit() {
    let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        },
    )
    .unwrap();
}

/// A burst of 1024 TCP connects at once fits the front half's backlog
/// (sized by --max-sessions): every one is served and answered,
/// checksummed, none reset or left waiting for a SYN retry.
#[test]
fn a_burst_of_1024_tcp_connections_is_served_whole() {
    raise_fd_limit();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let p = proxies_at("vchan", &["--ring-size", "4K"], None, Some(port));
    let overflows = listen_overflows();
    let start = Instant::now();
    // Eight threads connect at once, as a burst of clients would.
    let conns: Vec<std::net::TcpStream> = (0..8)
        .map(|t| {
            thread::spawn(move || {
                (0..128)
                    .map(|i| {
                        std::net::TcpStream::connect(port)
                            .unwrap_or_else(|e| panic!("connect {t}/{i}: {e}"))
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    all_answered(conns);
    println!(
        "1024 TCP connections served and answered in {:?}",
        start.elapsed()
    );
    // None of them overflowed the listen queue (the kernel drops such a
    // connect's handshake and the client waits for its retry, or is reset).
    assert_eq!(listen_overflows() - overflows, 0, "listen queue overflows");
    p.stop();
}

/// The kernel's count of connections dropped because a listen queue was
/// full (TcpExt ListenOverflows in /proc/net/netstat).
fn listen_overflows() -> u64 {
    let stats = std::fs::read_to_string("/proc/net/netstat").unwrap();
    let mut rows = stats.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (rows.next().unwrap(), rows.next().unwrap());
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "ListenOverflows")
        .and_then(|(_, v)| v.parse().ok())
        .expect("ListenOverflows in /proc/net/netstat")
}

/// 1024 connections open at once, idle first, then each active: one proxy
/// process holds 1024 ring sessions.
#[test]
fn a_thousand_and_twenty_four_sessions_in_one_proxy() {
    raise_fd_limit();
    let p = proxies("vchan", &["--ring-size", "4K"]);
    let start = Instant::now();
    let conns: Vec<UnixStream> = (0..1024)
        .map(|_| UnixStream::connect(&p.front_path).unwrap())
        .collect();
    // Idle: wait until every session is up in the front proxy (its ring
    // memfds are visible in /proc).
    let deadline = Instant::now() + Duration::from_secs(120);
    let front_pid = p.front.id();
    loop {
        let memfds = std::fs::read_dir(format!("/proc/{front_pid}/fd"))
            .unwrap()
            .flatten()
            .filter(|e| {
                std::fs::read_link(e.path())
                    .is_ok_and(|l| l.to_string_lossy().starts_with("/memfd:ring-"))
            })
            .count();
        if memfds >= 1024 {
            break;
        }
        assert!(Instant::now() < deadline, "only {memfds} sessions came up");
        thread::sleep(Duration::from_millis(50));
    }
    let up = start.elapsed();
    let status = std::fs::read_to_string(format!("/proc/{front_pid}/status")).unwrap();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS"))
        .unwrap_or("")
        .to_string();
    let fds = std::fs::read_dir(format!("/proc/{front_pid}/fd"))
        .unwrap()
        .count();
    println!("1024 sessions up in {up:?}; front proxy: {fds} fds, {rss}");
    // Active: every connection sends and gets its answer.
    all_answered(conns);
    p.stop();
}

#[test]
fn a_session_limit_closes_connections_beyond_it() {
    let p = proxies("vchan", &["--max-sessions", "2"]);
    // Accepted in order, so the first two hold both sessions when the
    // third is accepted.
    let a = UnixStream::connect(&p.front_path).unwrap();
    let b = UnixStream::connect(&p.front_path).unwrap();
    let mut c = UnixStream::connect(&p.front_path).unwrap();
    let refusal = "ring: proxy: 2 sessions already; a connection closed";
    let start = Instant::now();
    while !std::fs::read_to_string(&p.front_err)
        .unwrap()
        .contains(refusal)
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the proxy never said {refusal:?}"
        );
        thread::sleep(Duration::from_millis(5));
    }
    // Refused is closed: end of file, at once (a timeout is a failure).
    c.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut buf = [0u8; 1];
    let n = c
        .read(&mut buf)
        .expect("the refused connection ends within 1 s");
    assert_eq!(n, 0, "the refused connection carried data");
    // The two admitted sessions still work.
    for mut s in [&a, &b] {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"ok").unwrap();
        let mut back = [0u8; 2];
        s.read_exact(&mut back).unwrap();
        assert_eq!(back, [b'o' ^ 0x5a, b'k' ^ 0x5a]);
    }
    drop((a, b));
    p.stop();
}

/// One byte through a session and its answer back; false if the proxies
/// closed the connection instead (or sent nothing within 10 s).
fn round_trip(c: &mut UnixStream, b: u8) -> bool {
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    if c.write_all(&[b]).is_err() {
        return false;
    }
    let mut got = [0u8; 1];
    matches!(c.read(&mut got), Ok(1) if got[0] == b ^ 0x5a)
}

/// Out of descriptors, a server refuses the surplus at once, keeps every
/// session it holds, and serves again when descriptors free up, with a
/// bounded number of log lines (no spin). The front half runs out when
/// sessions hold its descriptors; the back half when idle clients of its
/// rendezvous socket do (each holds one until its handshake deadline).
#[test]
fn running_out_of_descriptors_refuses_the_surplus_and_keeps_the_sessions() {
    for proto in ["vchan", "vmbus"] {
        let p = proxies_with(proto, &[], Some(48));
        let mut held = Vec::new();
        let mut refused = 0;
        for i in 0..40u8 {
            let mut c = UnixStream::connect(&p.front_path).unwrap();
            if round_trip(&mut c, i) {
                held.push(c);
            } else {
                refused += 1;
            }
        }
        assert!(held.len() >= 2, "{proto}: only {} sessions up", held.len());
        assert!(refused > 0, "{proto}: 48 descriptors held 40 sessions?");
        // Idle clients of the back half's socket take the rest of its
        // descriptors; the ones it cannot take are refused at once.
        let idle: Vec<UnixStream> = (0..60)
            .map(|_| {
                UnixStream::connect(&p.rings)
                    .unwrap_or_else(|e| panic!("{proto}: the back half is gone: {e}"))
            })
            .collect();
        let start = Instant::now();
        while !std::fs::read_to_string(&p.back_err)
            .unwrap()
            .contains("refusing clients until descriptors free up")
        {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{proto}: the back half never ran out"
            );
            thread::sleep(Duration::from_millis(10));
        }
        // Every session held still carries bytes, through both halves.
        for (i, c) in held.iter_mut().enumerate() {
            assert!(round_trip(c, 100 + i as u8), "{proto}: session {i} lost");
        }
        // Descriptors back (sessions closed, idle clients gone): served
        // again.
        drop((held, idle));
        let start = Instant::now();
        loop {
            let mut c = UnixStream::connect(&p.front_path).unwrap();
            if round_trip(&mut c, 7) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{proto}: not served again after descriptors freed up"
            );
            thread::sleep(Duration::from_millis(20));
        }
        for path in [&p.front_err, &p.back_err] {
            let err = std::fs::read_to_string(path).unwrap();
            assert!(
                err.lines().count() < 200,
                "{proto}: {} lines:\n{err}",
                err.lines().count()
            );
        }
        p.stop();
    }
}

/// Sends `sig` to `child` and waits (at most `limit`) for its exit code.
fn signal_and_wait(
    child: &mut std::process::Child,
    sig: rustix::process::Signal,
    limit: Duration,
) -> Option<i32> {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, sig).unwrap();
    wait_exit(child, limit)
}

/// Waits (at most `limit`) for `child`'s exit code.
fn wait_exit(child: &mut std::process::Child, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code();
        }
        if Instant::now() > deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// A stopped proxy drains its sessions; a second signal, or the drain
/// timeout, cuts the ones still open: exit 8, its socket removed.
#[test]
fn a_second_signal_or_the_drain_timeout_cuts_open_sessions() {
    use rustix::process::Signal;
    for second_signal in [true, false] {
        let extra: &[&str] = if second_signal {
            &[]
        } else {
            &["--drain-timeout", "1"]
        };
        let mut p = proxies_with("vchan", extra, None);
        let mut idle = UnixStream::connect(&p.front_path).unwrap();
        assert!(round_trip(&mut idle, 1), "the session never came up");
        // The first signal: draining, and the idle session holds it.
        let code = signal_and_wait(&mut p.front, Signal::TERM, Duration::from_millis(300));
        assert_eq!(code, None, "exited on the first signal with a session open");
        assert!(!p.front_path.exists(), "still accepting while draining");
        let code = if second_signal {
            signal_and_wait(&mut p.front, Signal::INT, Duration::from_secs(10))
        } else {
            wait_exit(&mut p.front, Duration::from_secs(10))
        };
        assert_eq!(code, Some(8), "second signal {second_signal}");
        let err = std::fs::read_to_string(&p.front_err).unwrap();
        assert!(err.contains("cut 1 sessions still open"), "{err}");
        drop(idle);
    }
}
