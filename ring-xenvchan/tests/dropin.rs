//! libxenvchan.so.4.17 as C programs see it: its symbols and soname, its
//! struct against the distribution's header, and unmodified C programs
//! compiled against that header — ours (tests/c) and Debian's own
//! vchan-socket-proxy — running on it between two Linux processes, in
//! the memfd mode that `RING_XENVCHAN_DIR` selects. (The same programs on
//! real Xen, against Debian's library, are ring-cli's `xen_real` cases.)

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long any one step may take.
const WAIT: Duration = Duration::from_secs(60);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where cargo put this test's libraries (target/debug or the like).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    exe.parent()
        .and_then(Path::parent)
        .expect("tests run from target/<profile>/deps")
        .to_path_buf()
}

/// The library cargo built for this run: `cargo test` leaves it beside
/// the test binaries (`deps/`); only `cargo build` copies it up a level,
/// where an older build's copy may linger.
fn library() -> PathBuf {
    let lib = target_dir().join("deps").join("libxenvchan.so");
    assert!(lib.exists(), "{} was not built", lib.display());
    lib
}

/// A scratch directory of this test binary's own.
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = target_dir().join(format!("xenvchan-tests-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    })
}

/// A directory holding our library under its soname, for
/// `LD_LIBRARY_PATH`.
fn lib_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = scratch().join("lib");
        std::fs::create_dir_all(&dir).unwrap();
        let link = dir.join("libxenvchan.so.4.17");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(library(), &link).unwrap();
        dir
    })
}

/// Compiles tests/c/`name`.c against the distribution's libxenvchan.h and
/// libxenvchan.so (what an unmodified C program links against).
fn program(name: &str) -> PathBuf {
    static BUILT: Mutex<BTreeMap<String, PathBuf>> = Mutex::new(BTreeMap::new());
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = built.get(name) {
        return p.clone();
    }
    let bin = scratch().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let out = bin.join(name);
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/c/{name}.c"));
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let r = Command::new(&cc)
        .args(["-O2", "-Wall", "-Werror", "-o"])
        .arg(&out)
        .arg(&src)
        .args(if name == "layout" {
            &[][..]
        } else {
            &["-lxenvchan"][..]
        })
        .output()
        .unwrap_or_else(|e| panic!("run {cc}: {e} (a C compiler: scripts/install-deps)"));
    assert!(
        r.status.success(),
        "compiling {} failed (needs libxen-dev for libxenvchan.h: scripts/install-deps):\n{}",
        src.display(),
        String::from_utf8_lossy(&r.stderr)
    );
    built.insert(name.to_owned(), out.clone());
    out
}

/// A fresh rendezvous directory for one test.
fn rendezvous(name: &str) -> PathBuf {
    let dir = scratch().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A child killed when dropped, whatever happened.
struct Kid(Child);

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Kid {
    /// Its exit status by `deadline`, or `None` if it still runs.
    fn wait_until(&mut self, deadline: Instant) -> Option<ExitStatus> {
        loop {
            if let Some(s) = self.0.try_wait().expect("wait for a child") {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// A command running `bin` on our library in memfd mode under `dir`.
fn on_ours(bin: &Path, dir: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.env("LD_LIBRARY_PATH", lib_dir())
        .env("RING_XENVCHAN_DIR", dir);
    cmd
}

/// The lines a child prints, as they come.
fn lines(child: &mut Child) -> mpsc::Receiver<String> {
    let out = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Every line left, until the child's stdout closes (by `deadline`).
fn drain(rx: &mpsc::Receiver<String>, deadline: Instant) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(l) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        out.push(l);
    }
    out
}

/// Lets a tests/c/xfer.c client start once the proxy has connected to the
/// application socket (the client says JOINED when its vchan is up): the
/// proxy selects on its vchan only from then on.
fn go(client: &mut Kid, rx: &mpsc::Receiver<String>, deadline: Instant) {
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(l) if l == "JOINED" => break,
            Ok(_) => {}
            Err(e) => panic!("the C client never joined: {e}"),
        }
    }
    let stdin = client.0.stdin.as_mut().expect("piped stdin");
    stdin.write_all(b"go\n").expect("tell the C client to go");
}

/// Byte `i` of pattern `seed`, as tests/c/xfer.c computes it.
fn pattern(seed: u64, i: u64) -> u8 {
    let x = (i ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0x2545_F491_4F6C_DD1D);
    (x >> 56) as u8
}

#[test]
fn every_function_is_exported_at_vers_4_17_0_under_soname_libxenvchan_so_4_17() {
    let lib = library();
    let out = Command::new("nm")
        .args(["-D", "--defined-only", "--with-symbol-versions"])
        .arg(&lib)
        .output()
        .expect("run nm (binutils)");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut functions: Vec<&str> = text
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (_addr, kind, name) = (w.next()?, w.next()?, w.next()?);
            (kind == "T").then_some(name)
        })
        .collect();
    functions.sort_unstable();
    let mut want: Vec<String> = [
        "buffer_space",
        "client_init",
        "close",
        "data_ready",
        "fd_for_select",
        "is_open",
        "read",
        "recv",
        "send",
        "server_init",
        "wait",
        "write",
    ]
    .iter()
    .map(|f| format!("libxenvchan_{f}@@VERS_4.17.0"))
    .collect();
    want.sort_unstable();
    assert_eq!(functions, want, "nm -D says:\n{text}");
    let dynamic = Command::new("readelf")
        .arg("-d")
        .arg(&lib)
        .output()
        .expect("run readelf (binutils)");
    let dynamic = String::from_utf8_lossy(&dynamic.stdout);
    assert!(
        dynamic.contains("Library soname: [libxenvchan.so.4.17]"),
        "{dynamic}"
    );
}

#[test]
fn struct_libxenvchan_matches_the_distributions_header() {
    let out = Command::new(program("layout"))
        .output()
        .expect("run the layout probe");
    let text = String::from_utf8_lossy(&out.stdout);
    let c: Vec<(String, usize)> = text
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect();
    let ours = xenvchan::abi::layout();
    for (name, value) in &ours {
        let theirs: Vec<usize> = c
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| *v)
            .collect();
        assert!(
            !theirs.is_empty(),
            "the header probe says nothing of {name}:\n{text}"
        );
        assert!(
            theirs.iter().all(|v| v == value),
            "{name}: ours {value}, the header's {theirs:?}\n{text}"
        );
    }
    // Every field the probe names is one we place.
    for (name, _) in &c {
        assert!(
            ours.iter().any(|(n, _)| n == name),
            "{name} not laid out by us"
        );
    }
}

#[test]
fn scripted_calls_give_libxenvchans_results_between_two_processes() {
    let dir = rendezvous("script");
    let mut kid = Kid(on_ours(&program("script"), &dir)
        .args(["ours", "0", "data/vchan/0/1", "data/vchan/0/2"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the script"));
    let rx = lines(&mut kid.0);
    let deadline = Instant::now() + WAIT;
    let status = kid.wait_until(deadline);
    let out = drain(&rx, deadline);
    let text = out.join("\n");
    assert!(
        status.is_some(),
        "the script still runs after {WAIT:?}:\n{text}"
    );
    let steps = out.iter().filter(|l| l.starts_with("STEP ")).count();
    let bad: Vec<&String> = out
        .iter()
        .filter(|l| l.contains("MISMATCH") || l.starts_with("DATA") || l.starts_with("LOST"))
        .collect();
    assert!(bad.is_empty(), "{bad:?}\n{text}");
    assert!(steps >= 110, "only {steps} calls ran:\n{text}");
    assert!(
        text.contains("SUMMARY S mismatches=0") && text.contains("SUMMARY C mismatches=0"),
        "{text}"
    );
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{text}");
    // The corrupt page: every call fails with EPROTO, is_open says 0.
    for call in [
        "data_ready 0 0 = -1 EPROTO",
        "read 16 0 = -1 EPROTO",
        "is_open 0 0 = 0",
        "read 16 1 = -1 EPROTO",
    ] {
        assert!(
            out.iter()
                .any(|l| l.starts_with("STEP 402 S ") && l.contains(call)),
            "no {call:?}:\n{text}"
        );
    }
}

/// Debian's vchan-socket-proxy, unmodified, as unpacked by
/// scripts/install-deps, and the library path it needs besides ours.
fn proxy() -> (PathBuf, String) {
    let root = workspace().join("target/xen/root");
    let bin = root.join("usr/lib/xen-4.17/bin/vchan-socket-proxy");
    assert!(
        bin.exists(),
        "{} is missing: scripts/install-deps unpacks Debian's Xen tools there",
        bin.display()
    );
    let libs = format!(
        "{}:{}",
        lib_dir().display(),
        root.join("usr/lib/x86_64-linux-gnu").display()
    );
    (bin, libs)
}

/// Starts the proxy as a vchan server (`-m server`) on our library: when
/// a vchan client comes, it connects to `app` and relays.
fn proxy_server(dir: &Path, path: &str, app: &Path) -> Kid {
    let (bin, libs) = proxy();
    Kid(Command::new(bin)
        .env("LD_LIBRARY_PATH", libs)
        .env("RING_XENVCHAN_DIR", dir)
        .args(["-m", "server", "0", path])
        .arg(app)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start vchan-socket-proxy"))
}

/// Accepts one connection at `listener` by `deadline` (in a thread, so a
/// proxy that never connects fails the test instead of hanging it).
fn accept_by(listener: UnixListener, deadline: Instant) -> std::os::unix::net::UnixStream {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(listener.accept().map(|(s, _)| s));
    });
    let left = deadline.saturating_duration_since(Instant::now());
    rx.recv_timeout(left)
        .expect("the proxy did not connect to the application socket in time")
        .expect("accept")
}

#[test]
fn debians_vchan_socket_proxy_moves_16_mib_each_way_on_our_library_without_xen() {
    const BYTES: u64 = 16 << 20;
    let dir = rendezvous("proxy");
    let app = dir.join("app.sock");
    let listener = UnixListener::bind(&app).unwrap();
    let _proxy = proxy_server(&dir, "data/vchan/0/7", &app);
    let start = Instant::now();
    let mut client = Kid(on_ours(&program("xfer"), &dir)
        .args([
            "xfer",
            "0",
            "/local/domain/0/data/vchan/0/7",
            &BYTES.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the C client"));
    let rx = lines(&mut client.0);
    let deadline = Instant::now() + WAIT;
    let sock = accept_by(listener, deadline);
    go(&mut client, &rx, deadline);
    sock.set_read_timeout(Some(WAIT)).unwrap();
    sock.set_write_timeout(Some(WAIT)).unwrap();
    let mut writer = sock.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        let mut at = 0u64;
        while at < BYTES {
            let n = (BYTES - at).min(buf.len() as u64) as usize;
            for (k, b) in buf[..n].iter_mut().enumerate() {
                *b = pattern(2, at + k as u64);
            }
            writer.write_all(&buf[..n]).expect("write to the proxy");
            at += n as u64;
        }
    });
    let mut reader = sock;
    let mut buf = vec![0u8; 1 << 16];
    let mut at = 0u64;
    while at < BYTES {
        let n = reader.read(&mut buf).expect("read from the proxy");
        assert!(n > 0, "the proxy ended after {at} of {BYTES} bytes");
        if let Some(k) = (0..n).find(|&k| buf[k] != pattern(1, at + k as u64)) {
            panic!("byte {} from the C client differs", at + k as u64);
        }
        at += n as u64;
    }
    sender.join().expect("the sender");
    let status = client.wait_until(deadline);
    let out = drain(&rx, deadline);
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "the C client: {out:?}"
    );
    assert!(out.iter().any(|l| l == &format!("OK {BYTES}")), "{out:?}");
    eprintln!(
        "16 MiB each way through vchan-socket-proxy on our library: {:.2} s",
        start.elapsed().as_secs_f64()
    );
}

#[test]
fn a_corrupt_page_ends_debians_vchan_socket_proxy_on_our_library_within_a_second() {
    let dir = rendezvous("hostile");
    let app = dir.join("app.sock");
    let listener = UnixListener::bind(&app).unwrap();
    let mut proxy = proxy_server(&dir, "data/vchan/0/8", &app);
    let mut client = Kid(on_ours(&program("xfer"), &dir)
        .args(["hostile", "0", "/local/domain/0/data/vchan/0/8"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the hostile client"));
    let rx = lines(&mut client.0);
    let deadline = Instant::now() + WAIT;
    let sock = accept_by(listener, deadline);
    go(&mut client, &rx, deadline);
    // Drain what the proxy relays, in the background.
    let mut reader = sock.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
    });
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l == "REWRITTEN" => break,
            Ok(_) => {}
            Err(e) => panic!("the hostile client never rewrote the page: {e}"),
        }
    }
    // Bytes for the client: the proxy's next look at its ring's free
    // space meets the rewritten index (ours refuses it; Xen's library
    // reads it as a ring with no room, for ever).
    let rewritten = Instant::now();
    let mut writer = sock;
    writer
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    std::thread::spawn(move || {
        let _ = writer.write_all(&[7u8; 64 << 10]);
    });
    let ended = proxy.wait_until(rewritten + Duration::from_secs(1));
    let ms = rewritten.elapsed().as_secs_f64() * 1e3;
    let mut err = String::new();
    let status = ended
        .unwrap_or_else(|| panic!("the proxy still runs {ms:.0} ms after the page was corrupted"));
    let _ = proxy
        .0
        .stderr
        .take()
        .map(|mut e| e.read_to_string(&mut err));
    assert!(!status.success(), "the proxy ended with {status}: {err}");
    eprintln!(
        "vchan-socket-proxy on our library, corrupt page: ended with {status} after {ms:.1} ms: {}",
        err.trim()
    );
    let deadline = Instant::now() + WAIT;
    let seen = client.wait_until(deadline);
    let out = drain(&rx, deadline);
    assert!(
        seen.is_some() && out.iter().any(|l| l == "SERVER-GONE"),
        "{out:?}"
    );
}
