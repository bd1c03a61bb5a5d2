//! The Xen-side program of the `xen_real` tests (ring-cli/tests/xen_real.rs),
//! run inside dom0 and a domU booted under QEMU: one end of a vchan over
//! ring-hosted's `xen::vchan` (the real gntalloc, gntdev, evtchn and
//! xenbus devices), and the driver that pairs ends — ours or the C peer
//! linked with Debian's libxenvchan (tests/c/xen_real_peer.c) — and
//! prints one `XENTEST …` line per case on the console.
//!
//! A peer speaks the same command line as the C one:
//!
//! - `server PEER PATH SIZE MODE [BYTES]`: publish under `PATH` for domain
//!   `PEER` with `SIZE`-byte rings, print `READY`, wait for the client;
//! - `client SERVER PATH MODE [BYTES]`: wait for the keys (through
//!   `EACCES`), print `first-read=…` (what the first read of `ring-ref`
//!   answered), connect;
//!
//! with `MODE` `xfer` (the client sends `BYTES` of seeded pattern 1, the
//! server checks them and sends `BYTES` of pattern 2 back, the client
//! checks those; `OK` at the end), `stream` (write until the peer goes)
//! or `sink` (read; `RECEIVING` after the first MiB, `CLOSED` when the
//! peer's end is seen). Every wait is bounded by [`WAIT`].
//!
//! The driver commands are `pair`, `kill` and `domu` (see [`main`]).

use ring_core::mem::SharedMem;
use ring_core::vchan::layout::{CLI_LIVE, LEFT_CONS, LEFT_ORDER, LEFT_PROD};
use ring_core::vchan::ServerOptions;
use ring_hosted::devmem::DevError;
use ring_hosted::xen::evtchn::EVTCHN_PATH;
use ring_hosted::xen::gntalloc::GNTALLOC_PATH;
use ring_hosted::xen::gntdev::GNTDEV_PATH;
use ring_hosted::xen::vchan::{self, ServerConfig, XenVchan, RING_REF};
use ring_hosted::xen::xenstore::XenStore;
use ring_hosted::xen::XenDevice;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long any one wait (an event, a line from a child, a key) may take.
const WAIT: Duration = Duration::from_secs(60);

/// Byte `i` of seeded pattern `seed` (the C peer computes the same).
fn pattern(seed: u64, i: u64) -> u8 {
    let x = (i ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0x2545_F491_4F6C_DD1D);
    (x >> 56) as u8
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Sends `bytes` of pattern `seed`.
fn send(v: &mut XenVchan, seed: u64, bytes: u64) -> Result<(), String> {
    send_range(v, seed, 0, bytes)
}

/// Sends bytes `from..bytes` of pattern `seed`.
fn send_range(v: &mut XenVchan, seed: u64, from: u64, bytes: u64) -> Result<(), String> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut at = from;
    while at < bytes {
        let n = (bytes - at).min(buf.len() as u64) as usize;
        for (k, b) in buf[..n].iter_mut().enumerate() {
            *b = pattern(seed, at + k as u64);
        }
        v.write_all(&buf[..n]).map_err(err)?;
        at += n as u64;
    }
    Ok(())
}

/// Receives and checks `bytes` of pattern `seed`.
fn recv(v: &mut XenVchan, seed: u64, bytes: u64) -> Result<(), String> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut at = 0u64;
    while at < bytes {
        let want = (bytes - at).min(buf.len() as u64) as usize;
        let n = v.read(&mut buf[..want]).map_err(err)?;
        if n == 0 {
            return Err(format!("end of stream after {at} of {bytes} bytes"));
        }
        if let Some(k) = (0..n).find(|&k| buf[k] != pattern(seed, at + k as u64)) {
            return Err(format!("byte {} differs", at + k as u64));
        }
        at += n as u64;
    }
    Ok(())
}

/// Reads until the peer's end; `RECEIVING` after the first MiB.
fn sink(v: &mut XenVchan) -> Result<(), String> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    let mut told = false;
    loop {
        match v.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            // The peer gone without closing (its domain destroyed).
            Err(DevError::Closed) => {
                say(&format!("CLOSED bytes={total} peer-gone"));
                return Ok(());
            }
            Err(e) => return Err(format!("after {total} bytes: {e}")),
        }
        if !told && total >= 1 << 20 {
            say("RECEIVING");
            told = true;
        }
    }
    say(&format!("CLOSED bytes={total}"));
    Ok(())
}

/// The honest side of a hostile peer: reads until the ring is refused
/// (`REFUSED …`, a pass) or ends (a failure).
fn honest(v: &mut XenVchan) -> Result<(), String> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        match v.read(&mut buf) {
            Ok(0) => return Err(format!("end of stream after {total} bytes, no refusal")),
            Ok(n) => total += n as u64,
            Err(e) => {
                say(&format!("REFUSED after {total} bytes: {e}"));
                return Ok(());
            }
        }
    }
}

/// A hostile client: sends 256 KiB, then rewrites the control page —
/// `hostile`: the left ring's producer index far past the ring (more than
/// any ring holds); `hostile-live`: its own live byte to 7, a value that
/// means nothing — kicks, says `REWRITTEN`, and stays until the server's
/// end (bounded).
fn hostile(v: &mut XenVchan, mode: &str) -> Result<(), String> {
    send(v, 1, 256 << 10)?;
    let ctrl = v.endpoint().control().clone();
    if mode == "hostile-live" {
        ctrl.store_u8(CLI_LIVE, 7).map_err(err)?;
    } else {
        let cons = ctrl.load_u32(LEFT_CONS).map_err(err)?;
        ctrl.store_u32(LEFT_PROD, cons.wrapping_add((3 << 20) + 7))
            .map_err(err)?;
    }
    v.event_channel_mut().send().map_err(err)?;
    say("REWRITTEN");
    let mut buf = [0u8; 4096];
    loop {
        match v.read(&mut buf) {
            Ok(0) | Err(_) => return Ok(()),
            Ok(_) => {}
        }
    }
}

/// The client side of `xfer` that rewrites both ring orders after its
/// first 256 KiB (left 20: a 1 MiB ring over the pages mapped; right 10:
/// the control page's own slot) and kicks: the orders are set-up
/// constants a server keeps to itself, so every byte must still arrive
/// intact both ways.
fn orders_changed(v: &mut XenVchan, bytes: u64) -> Result<(), String> {
    let first = bytes.min(256 << 10);
    send_range(v, 1, 0, first)?;
    let mut orders = [0u8; 4];
    orders[..2].copy_from_slice(&20u16.to_le_bytes());
    orders[2..].copy_from_slice(&10u16.to_le_bytes());
    v.endpoint()
        .control()
        .write(LEFT_ORDER, &orders)
        .map_err(err)?;
    v.event_channel_mut().send().map_err(err)?;
    say("REWRITTEN");
    send_range(v, 1, first, bytes)?;
    recv(v, 2, bytes)
}

/// Writes until the peer goes (then fails, which is the point).
fn stream(v: &mut XenVchan) -> Result<(), String> {
    let mut at = 0u64;
    loop {
        send(v, 3, 1 << 20)?;
        at += 1 << 20;
        if at > 1 << 40 {
            return Ok(());
        }
    }
}

fn open(path: &str) -> Result<XenDevice, String> {
    XenDevice::open(path).map_err(err)
}

fn run_mode(v: &mut XenVchan, server: bool, mode: &str, bytes: u64) -> Result<(), String> {
    v.event_channel_mut().set_timeout(Some(WAIT));
    // Where xenstore says so (dom0), a destroyed peer domain ends waits.
    if v.peer() != 0 {
        let watch = XenStore::open().and_then(|store| v.watch_peer_domain(store));
        match watch {
            Ok(()) => say("WATCHING"),
            Err(e) => say(&format!("no domain watch: {e}")),
        }
    }
    match (mode, server) {
        ("xfer", true) => {
            recv(v, 1, bytes)?;
            send(v, 2, bytes)?;
            // The client closes once it has every byte.
            let mut b = [0u8; 1];
            match v.read(&mut b).map_err(err)? {
                0 => Ok(()),
                _ => Err("bytes after the exchange".into()),
            }
        }
        ("xfer", false) => {
            send(v, 1, bytes)?;
            recv(v, 2, bytes)
        }
        ("sink", _) => sink(v),
        ("honest", _) => honest(v),
        ("hostile" | "hostile-live", false) => hostile(v, mode),
        ("orders", false) => orders_changed(v, bytes),
        ("stream", _) => stream(v),
        _ => Err(format!("unknown mode {mode}")),
    }
}

fn server(peer: u16, path: &str, size: usize, mode: &str, bytes: u64) -> Result<(), String> {
    let mut store = XenStore::open().map_err(err)?;
    let config = ServerConfig {
        peer,
        path: path.into(),
        read_min: size,
        write_min: size,
    };
    // XEN_PEER_INITIAL_INDEX starts every index there (near u32::MAX: the
    // transfer crosses the 32-bit wrap).
    let options = ServerOptions {
        initial_index: std::env::var("XEN_PEER_INITIAL_INDEX")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    };
    let mut v = vchan::serve_with(
        &open(GNTALLOC_PATH)?,
        open(EVTCHN_PATH)?,
        &mut store,
        &config,
        options,
    )
    .map_err(err)?;
    say("READY");
    v.event_channel_mut().set_timeout(Some(WAIT));
    v.wait_for_client().map_err(err)?;
    say("CONNECTED");
    let r = run_mode(&mut v, true, mode, bytes);
    let closed = v.close(Some(&mut store)).map_err(err);
    r.and(closed)
}

fn client(server: u16, path: &str, mode: &str, bytes: u64) -> Result<(), String> {
    let mut store = XenStore::open().map_err(err)?;
    let first = match store.read(0, &format!("{path}/{RING_REF}")) {
        Ok(Some(_)) => "present".to_owned(),
        Ok(None) => "ENOENT".to_owned(),
        Err(DevError::Xenstore { errno, .. }) => errno,
        Err(e) => return Err(err(e)),
    };
    say(&format!("first-read={first}"));
    // XEN_PEER_WAIT_SECS shortens the wait for a case that expects none.
    let wait = std::env::var("XEN_PEER_WAIT_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(WAIT, Duration::from_secs);
    vchan::wait_published(&mut store, path, Instant::now() + wait).map_err(err)?;
    let mut v = vchan::connect(
        &open(GNTDEV_PATH)?,
        open(EVTCHN_PATH)?,
        &mut store,
        server,
        path,
    )
    .map_err(err)?;
    let r = run_mode(&mut v, false, mode, bytes);
    let closed = v.close(None::<&mut XenStore<std::fs::File>>).map_err(err);
    r.and(closed)
}

/// A child peer: `IMPL` is `rust` (this program) or `c` (the libxenvchan
/// peer, `/bin/xen-real-peer`).
fn spawn(imp: &str, args: &[String]) -> Result<(Child, mpsc::Receiver<String>), String> {
    let program = match imp {
        "rust" => std::env::current_exe().map_err(err)?,
        "c" => "/bin/xen-real-peer".into(),
        // A case script (the `ring` command's cases): its lines, `OK` last.
        "sh" => "/bin/sh".into(),
        other => return Err(format!("unknown peer {other}")),
    };
    let mut child = Command::new(program)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("start {imp} peer: {e}"))?;
    let out: ChildStdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Ok((child, rx))
}

/// Waits for a line starting with `prefix` (or `FAIL`, or the end).
fn expect(rx: &mut mpsc::Receiver<String>, who: &str, prefix: &str) -> Result<String, String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.starts_with(prefix) => return Ok(line),
            Ok(line) if line.starts_with("FAIL") => return Err(format!("{who}: {line}")),
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(format!("{who}: no {prefix} within {WAIT:?}"))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(format!("{who}: ended without {prefix}"))
            }
        }
    }
}

/// Waits for `child` to exit, bounded; kills it past the deadline.
fn reap(child: &mut Child, who: &str) -> Result<(), String> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(s) = child.try_wait().map_err(err)? {
            return if s.success() {
                Ok(())
            } else {
                Err(format!("{who} exited with {s}"))
            };
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{who} still running after {WAIT:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn kill_all(children: &mut [&mut Child]) {
    for c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// `pair SRV CLI PEER PATH SIZE BYTES`: a server of impl `SRV` and a
/// client of impl `CLI` in this domain (the server publishes for domain
/// `PEER`, ours); returns the seconds the exchange took.
fn pair(
    srv: &str,
    cli: &str,
    peer: &str,
    path: &str,
    size: &str,
    bytes: &str,
) -> Result<f64, String> {
    let sargs: Vec<String> = ["server", peer, path, size, "xfer", bytes]
        .map(String::from)
        .into();
    let (mut s, mut srx) = spawn(srv, &sargs)?;
    if let Err(e) = expect(&mut srx, "server", "READY") {
        kill_all(&mut [&mut s]);
        return Err(e);
    }
    let start = Instant::now();
    let cargs: Vec<String> = ["client", "0", path, "xfer", bytes]
        .map(String::from)
        .into();
    let (mut c, mut crx) = match spawn(cli, &cargs) {
        Ok(x) => x,
        Err(e) => {
            kill_all(&mut [&mut s]);
            return Err(e);
        }
    };
    let r = expect(&mut crx, "client", "OK")
        .and_then(|_| expect(&mut srx, "server", "OK"))
        .and_then(|_| reap(&mut c, "client"))
        .and_then(|_| reap(&mut s, "server"));
    if r.is_err() {
        kill_all(&mut [&mut s, &mut c]);
    }
    r.map(|()| start.elapsed().as_secs_f64())
}

/// `kill SRV CLI VICTIM PATH SIZE`: the victim (`server` or `client`)
/// streams, the survivor sinks; once the survivor has a MiB the victim is
/// SIGKILLed. Returns the milliseconds until the survivor saw the end.
fn kill(srv: &str, cli: &str, victim: &str, path: &str, size: &str) -> Result<f64, String> {
    let (smode, cmode) = if victim == "server" {
        ("stream", "sink")
    } else {
        ("sink", "stream")
    };
    let sargs: Vec<String> = ["server", "0", path, size, smode, "0"]
        .map(String::from)
        .into();
    let (mut s, mut srx) = spawn(srv, &sargs)?;
    if let Err(e) = expect(&mut srx, "server", "READY") {
        kill_all(&mut [&mut s]);
        return Err(e);
    }
    let cargs: Vec<String> = ["client", "0", path, cmode, "0"].map(String::from).into();
    let (mut c, mut crx) = spawn(cli, &cargs)?;
    let (survivor_rx, survivor_name) = if victim == "server" {
        (&mut crx, "client")
    } else {
        (&mut srx, "server")
    };
    let r = (|| {
        expect(survivor_rx, survivor_name, "RECEIVING")?;
        let killed = Instant::now();
        let v = if victim == "server" { &mut s } else { &mut c };
        v.kill().map_err(err)?;
        expect(survivor_rx, survivor_name, "CLOSED")?;
        let ms = killed.elapsed().as_secs_f64() * 1e3;
        let _ = v.wait();
        Ok(ms)
    })();
    kill_all(&mut [&mut s, &mut c]);
    r
}

/// Waits (bounded) until `path` holds a value; returns it.
fn await_key(store: &mut XenStore<std::fs::File>, path: &str) -> Result<String, String> {
    let deadline = Instant::now() + WAIT;
    let dir = path.rsplit_once('/').map_or(path, |(d, _)| d).to_owned();
    store.watch(&dir, "await").map_err(err)?;
    let r = loop {
        match store.read(0, path) {
            Ok(Some(v)) => break Ok(v),
            Ok(None) => {}
            Err(DevError::Xenstore { errno, .. }) if errno == "EACCES" => {}
            Err(e) => break Err(err(e)),
        }
        match store.next_watch_event_until(deadline) {
            Ok(Some(_)) => {}
            Ok(None) => break Err(format!("{path} not written within {WAIT:?}")),
            Err(e) => break Err(err(e)),
        }
    };
    let _ = store.unwatch(&dir, "await");
    r
}

/// Runs one child peer to its end: its lines (echoed), and whether it
/// said `OK`. `on_line` sees each line as it comes.
fn run_child(
    imp: &str,
    args: &[String],
    mut on_line: impl FnMut(&str),
) -> Result<Vec<String>, String> {
    let (mut child, rx) = spawn(imp, args)?;
    // XEN_PEER_CHILD_SECS: a longer bound for a slow case (two proxies
    // over 1 KiB and 2 KiB rings).
    let wait = std::env::var("XEN_PEER_CHILD_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(WAIT, Duration::from_secs);
    let deadline = Instant::now() + wait;
    let mut lines = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                say(&format!("  {imp} {}: {line}", args[0]));
                on_line(&line);
                lines.push(line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                kill_all(&mut [&mut child]);
                return Err(format!("{imp} {} still running after {wait:?}", args[0]));
            }
        }
    }
    let ended = reap(&mut child, imp);
    if ended.is_ok() && lines.iter().any(|l| l == "OK") {
        Ok(lines)
    } else {
        let status = ended.err().unwrap_or_default();
        Err(format!("{imp} {}: {} {status}", args[0], lines.join("; ")))
    }
}

/// `report KEY IMPL ARGS…` (in a domU): runs a peer, writing
/// `data/KEY-started` (its `first-read=` line) once it is waiting, and
/// `data/KEY` (`OK …` or `FAIL …`) at its end. A C client first waits
/// for the keys (libxenvchan's client does not).
fn report_cmd(key: &str, imp: &str, args: &[String]) -> Result<(), String> {
    let mut store = XenStore::open().map_err(err)?;
    if imp == "c" && args.first().map(String::as_str) == Some("client") {
        let path = args.get(2).ok_or("missing path")?;
        vchan::wait_published(&mut store, path, Instant::now() + WAIT).map_err(err)?;
    }
    let start = Instant::now();
    let r = run_child(imp, args, |line| {
        let step = if line.starts_with("first-read=") || line == "READY" {
            "started"
        } else if line == "REWRITTEN" {
            "rewritten"
        } else {
            return;
        };
        if let Err(e) = store.write(0, &format!("data/{key}-{step}"), line) {
            say(&format!("  cannot write data/{key}-{step}: {e}"));
        }
    });
    let secs = start.elapsed().as_secs_f64();
    let value = match &r {
        Ok(lines) => format!("OK secs={secs:.3} {}", lines.join(" ")),
        Err(e) => format!("FAIL {e}"),
    };
    store
        .write(0, &format!("data/{key}"), &value)
        .map_err(err)?;
    r.map(drop)
}

/// `remote LABEL DOMID KEY AFTER IMPL ARGS…` (in dom0): with `AFTER` =
/// `started`, waits for the domU's `data/KEY-started` first; runs our
/// side's peer; then waits for the domU's `data/KEY` and reports both.
fn remote_cmd(
    domid: &str,
    key: &str,
    after: &str,
    imp: &str,
    args: &[String],
) -> Result<String, String> {
    let mut store = XenStore::open().map_err(err)?;
    let home = format!("/local/domain/{domid}/data");
    if after == "started" {
        let v = await_key(&mut store, &format!("{home}/{key}-started"))?;
        say(&format!("  domU {key} waiting: {v}"));
    }
    if imp == "c" && args.first().map(String::as_str) == Some("client") {
        let path = args.get(2).ok_or("missing path")?;
        vchan::wait_published(&mut store, path, Instant::now() + WAIT).map_err(err)?;
    }
    let start = Instant::now();
    let ours = run_child(imp, args, |_| {});
    let secs = start.elapsed().as_secs_f64();
    let theirs = await_key(&mut store, &format!("{home}/{key}"));
    let theirs = match theirs {
        Ok(v) if v.starts_with("OK") => v,
        Ok(v) => return Err(format!("domU: {v}; ours: {ours:?}")),
        Err(e) => return Err(format!("domU: {e}; ours: {ours:?}")),
    };
    ours?;
    Ok(format!("secs={secs:.3} domU=[{theirs}]"))
}

/// `killable KEY IMPL ARGS…` (in a domU): runs a streaming peer until
/// dom0 writes `data/KEY-kill`, then SIGKILLs it; writes `data/KEY`.
fn killable_cmd(key: &str, imp: &str, args: &[String]) -> Result<(), String> {
    let mut store = XenStore::open().map_err(err)?;
    if imp == "c" && args.first().map(String::as_str) == Some("client") {
        let path = args.get(2).ok_or("missing path")?;
        vchan::wait_published(&mut store, path, Instant::now() + WAIT).map_err(err)?;
    }
    let (mut child, _rx) = spawn(imp, args)?;
    let me = store.own_domid().map_err(err)?;
    let home = store.domain_path(me).map_err(err)?;
    let r = await_key(&mut store, &format!("{home}/data/{key}-kill")).and_then(|_| {
        match child.try_wait().map_err(err)? {
            Some(s) => Err(format!("the peer had already ended: {s}")),
            None => child.kill().map_err(err),
        }
    });
    kill_all(&mut [&mut child]);
    let value = match &r {
        Ok(()) => "OK killed".to_owned(),
        Err(e) => format!("FAIL {e}"),
    };
    store
        .write(0, &format!("data/{key}"), &value)
        .map_err(err)?;
    r
}

/// `remote-kill LABEL DOMID KEY HOW IMPL ARGS…` (in dom0): our side
/// (`IMPL ARGS`, a sink) runs against a streaming domU peer; once it has a
/// MiB, the domU peer is ended — `HOW` = `sigkill` (dom0 writes the domU's
/// `data/KEY-kill`; its `killable` SIGKILLs the peer) or `destroy`
/// (`xl destroy DOMID`). Returns the milliseconds until our side saw the
/// end.
fn remote_kill_cmd(
    domid: &str,
    key: &str,
    how: &str,
    imp: &str,
    args: &[String],
) -> Result<String, String> {
    let mut store = XenStore::open().map_err(err)?;
    if imp == "c" && args.first().map(String::as_str) == Some("client") {
        let path = args.get(2).ok_or("missing path")?;
        vchan::wait_published(&mut store, path, Instant::now() + WAIT).map_err(err)?;
    }
    let (mut ours, mut rx) = spawn(imp, args)?;
    let r = (|| {
        expect(&mut rx, "our side", "RECEIVING")?;
        let ended = Instant::now();
        match how {
            "sigkill" => store
                .write(0, &format!("/local/domain/{domid}/data/{key}-kill"), "1")
                .map_err(err)?,
            "destroy" => {
                // xl runs beside us: the end is seen while it tears down.
                let mut xl = Command::new("/usr/lib/xen-4.17/bin/xl")
                    .args(["destroy", domid])
                    .spawn()
                    .map_err(|e| format!("xl destroy: {e}"))?;
                let seen = expect(&mut rx, "our side", "CLOSED");
                let seen_ms = ended.elapsed().as_secs_f64() * 1e3;
                reap(&mut xl, "xl destroy")?;
                let xl_ms = ended.elapsed().as_secs_f64() * 1e3;
                seen?;
                // Measured from the domain's end as xl reports it: the
                // return of `xl destroy` (the end is often seen before).
                return Ok(format!(
                    "ms={:.1} (seen {seen_ms:.1} ms after xl destroy started, which took {xl_ms:.1} ms)",
                    (seen_ms - xl_ms).max(0.0)
                ));
            }
            other => return Err(format!("unknown way to end the domU peer: {other}")),
        }
        let when = ended.elapsed().as_secs_f64() * 1e3;
        expect(&mut rx, "our side", "CLOSED")?;
        Ok(format!(
            "ms={:.1} ({how} issued after {when:.1} ms)",
            ended.elapsed().as_secs_f64() * 1e3
        ))
    })();
    kill_all(&mut [&mut ours]);
    r
}

/// `remote-hostile LABEL DOMID KEY IMPL ARGS…` (in dom0): our side (a
/// server in mode `honest`, or the C server in `sink`) against a domU
/// client that rewrites the control page; once the domU says it did
/// (`data/KEY-rewritten`), our side must refuse within [`HOSTILE_WAIT`].
/// For the C server, what it did in that time is recorded instead.
fn remote_hostile_cmd(
    domid: &str,
    key: &str,
    imp: &str,
    args: &[String],
) -> Result<String, String> {
    let mut store = XenStore::open().map_err(err)?;
    let (mut ours, rx) = spawn(imp, args)?;
    let r = (|| {
        let v = await_key(
            &mut store,
            &format!("/local/domain/{domid}/data/{key}-rewritten"),
        )?;
        let seen = Instant::now();
        let mut lines = Vec::new();
        loop {
            let left = (seen + HOSTILE_WAIT).saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.starts_with("REFUSED") => {
                    return Ok(format!(
                        "ms={:.1} {line} (domU: {v})",
                        seen.elapsed().as_secs_f64() * 1e3
                    ))
                }
                Ok(line) => lines.push(line),
                Err(_) => break,
            }
        }
        let what = format!(
            "no refusal within {HOSTILE_WAIT:?}; it said: [{}]; still running: {}",
            lines.join("; "),
            ours.try_wait().ok().flatten().is_none()
        );
        if imp == "c" {
            Ok(format!("record: {what}"))
        } else {
            Err(what)
        }
    })();
    kill_all(&mut [&mut ours]);
    r
}

/// How long the honest side has to refuse a rewritten control page.
const HOSTILE_WAIT: Duration = Duration::from_secs(3);

/// `sock-client STATE VCHAN-PATH SOCKET BYTES`: the client side of `xfer`
/// through a socket that Debian's vchan-socket-proxy (client mode) serves:
/// waits for the proxy to write `running` to our `data/STATE` and for the
/// server's keys at `VCHAN-PATH` (the proxy connects its vchan when the
/// socket connection comes), then sends `BYTES` of pattern 1, checks
/// `BYTES` of pattern 2 and closes.
fn sock_client(state: &str, vchan_path: &str, socket: &str, bytes: u64) -> Result<(), String> {
    use std::io::Read;
    let mut store = XenStore::open().map_err(err)?;
    let me = store.own_domid().map_err(err)?;
    let home = store.domain_path(me).map_err(err)?;
    let v = await_key(&mut store, &format!("{home}/data/{state}"))?;
    say(&format!("proxy state: {v}"));
    vchan::wait_published(&mut store, vchan_path, Instant::now() + WAIT).map_err(err)?;
    let mut sock = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| format!("connect {socket}: {e}"))?;
    sock.set_read_timeout(Some(WAIT)).map_err(err)?;
    sock.set_write_timeout(Some(WAIT)).map_err(err)?;
    let mut writer = sock.try_clone().map_err(err)?;
    let sender = std::thread::spawn(move || -> Result<(), String> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut at = 0u64;
        while at < bytes {
            let n = (bytes - at).min(buf.len() as u64) as usize;
            for (k, b) in buf[..n].iter_mut().enumerate() {
                *b = pattern(1, at + k as u64);
            }
            writer
                .write_all(&buf[..n])
                .map_err(|e| format!("socket write: {e}"))?;
            at += n as u64;
        }
        Ok(())
    });
    let mut buf = vec![0u8; 64 * 1024];
    let mut at = 0u64;
    while at < bytes {
        let want = (bytes - at).min(buf.len() as u64) as usize;
        let n = sock
            .read(&mut buf[..want])
            .map_err(|e| format!("socket read after {at}: {e}"))?;
        if n == 0 {
            return Err(format!("socket ended after {at} of {bytes} bytes"));
        }
        if let Some(k) = (0..n).find(|&k| buf[k] != pattern(2, at + k as u64)) {
            return Err(format!("byte {} differs", at + k as u64));
        }
        at += n as u64;
    }
    sender
        .join()
        .map_err(|_| "the sender panicked".to_owned())??;
    say(&format!("RECEIVED {at}"));
    Ok(())
}

/// Debian's vchan-socket-proxy, with `LD_LIBRARY_PATH` = `libdir` (our
/// libxenvchan.so.4.17) unless `libdir` is `-` (the distribution's).
fn vchan_proxy(libdir: &str, args: &[&str]) -> Result<Child, String> {
    let mut cmd = Command::new("/usr/lib/xen-4.17/bin/vchan-socket-proxy");
    if libdir != "-" {
        cmd.env("LD_LIBRARY_PATH", libdir);
    }
    cmd.args(args)
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("start vchan-socket-proxy: {e}"))
}

/// Accepts one connection at `listener` within [`WAIT`].
fn accept_within(
    listener: std::os::unix::net::UnixListener,
) -> Result<std::os::unix::net::UnixStream, String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(listener.accept().map(|(s, _)| s));
    });
    match rx.recv_timeout(WAIT) {
        Ok(r) => r.map_err(|e| format!("accept: {e}")),
        Err(_) => Err(format!("the proxy did not connect within {WAIT:?}")),
    }
}

/// `proxy-server LIBDIR PEER PATH SOCKET BYTES`: vchan-socket-proxy (see
/// [`vchan_proxy`]) as the vchan server for domain `PEER` under `PATH`;
/// when its client joins it connects to `SOCKET`, where we take `BYTES` of
/// pattern 1 and send `BYTES` of pattern 2 (the far side of
/// [`sock_client`]). `OK` once every byte is checked.
fn proxy_server(
    libdir: &str,
    peer: &str,
    path: &str,
    socket: &str,
    bytes: u64,
) -> Result<(), String> {
    use std::io::Read;
    let _ = std::fs::remove_file(socket);
    let listener = std::os::unix::net::UnixListener::bind(socket).map_err(err)?;
    let mut proxy = vchan_proxy(libdir, &["-m", "server", peer, path, socket])?;
    say("READY");
    let r = (|| {
        let sock = accept_within(listener)?;
        sock.set_read_timeout(Some(WAIT)).map_err(err)?;
        sock.set_write_timeout(Some(WAIT)).map_err(err)?;
        let mut writer = sock.try_clone().map_err(err)?;
        let sender = std::thread::spawn(move || -> Result<(), String> {
            let mut buf = vec![0u8; 64 * 1024];
            let mut at = 0u64;
            while at < bytes {
                let n = (bytes - at).min(buf.len() as u64) as usize;
                for (k, b) in buf[..n].iter_mut().enumerate() {
                    *b = pattern(2, at + k as u64);
                }
                writer
                    .write_all(&buf[..n])
                    .map_err(|e| format!("socket write: {e}"))?;
                at += n as u64;
            }
            Ok(())
        });
        let mut reader = sock;
        let mut buf = vec![0u8; 64 * 1024];
        let mut at = 0u64;
        while at < bytes {
            let n = reader
                .read(&mut buf)
                .map_err(|e| format!("socket read after {at}: {e}"))?;
            if n == 0 {
                return Err(format!("socket ended after {at} of {bytes} bytes"));
            }
            if let Some(k) = (0..n).find(|&k| buf[k] != pattern(1, at + k as u64)) {
                return Err(format!("byte {} differs", at + k as u64));
            }
            at += n as u64;
        }
        sender
            .join()
            .map_err(|_| "the sender panicked".to_owned())??;
        say(&format!("RECEIVED {at}"));
        Ok(())
    })();
    kill_all(&mut [&mut proxy]);
    r
}

/// `proxy-hostile LABEL DOMID KEY LIBDIR PATH SOCKET` (in dom0):
/// vchan-socket-proxy (see [`vchan_proxy`]) as the vchan server for a
/// domU client that rewrites the control page (`hostile`), relaying to a
/// sink at `SOCKET`. Once the domU says it rewrote the page, the proxy
/// must end within [`PROXY_END`] on our library (its status is given);
/// on the distribution's, what it did within [`HOSTILE_WAIT`] is recorded.
fn proxy_hostile_cmd(
    domid: &str,
    key: &str,
    libdir: &str,
    path: &str,
    socket: &str,
) -> Result<String, String> {
    use std::io::Read;
    let mut store = XenStore::open().map_err(err)?;
    let _ = std::fs::remove_file(socket);
    let listener = std::os::unix::net::UnixListener::bind(socket).map_err(err)?;
    let mut proxy = vchan_proxy(libdir, &["-m", "server", domid, path, socket])?;
    let r = (|| {
        // The sink: whatever the proxy relays, until it goes.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = listener.accept() {
                let _ = tx.send(());
                let mut buf = vec![0u8; 64 * 1024];
                while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
            }
        });
        let v = await_key(
            &mut store,
            &format!("/local/domain/{domid}/data/{key}-rewritten"),
        )?;
        let seen = Instant::now();
        let connected = rx.try_recv().is_ok();
        let limit = if libdir == "-" {
            HOSTILE_WAIT
        } else {
            PROXY_END
        };
        loop {
            if let Some(status) = proxy.try_wait().map_err(err)? {
                let ms = seen.elapsed().as_secs_f64() * 1e3;
                return if status.success() {
                    Err(format!("the proxy ended with {status} after {ms:.1} ms"))
                } else {
                    Ok(format!(
                        "ENDED {status} ms={ms:.1} (relayed: {connected}; domU: {v})"
                    ))
                };
            }
            if seen.elapsed() >= limit {
                let what =
                    format!("STILL-RUNNING after {limit:?} (relayed: {connected}; domU: {v})");
                return if libdir == "-" {
                    Ok(format!("record: {what}"))
                } else {
                    Err(what)
                };
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    })();
    kill_all(&mut [&mut proxy]);
    r
}

/// How soon vchan-socket-proxy on our library must end once the page is
/// corrupt.
const PROXY_END: Duration = Duration::from_secs(1);

/// `script-run LABEL LIB LIBDIR PATH HOSTILE-PATH` (in dom0): the
/// scripted call-by-call program (`/bin/xenvchan-script`, compiled against
/// Xen's libxenvchan.h) on our library (`LIBDIR`) or Xen's (`-`), each
/// line echoed as `XENVCHAN LIB …`; a pass when it exits 0 (every call
/// returned what libxenvchan's behaviour says).
fn script_run(lib: &str, libdir: &str, path: &str, hostile: &str) -> Result<String, String> {
    let mut cmd = Command::new("/bin/xenvchan-script");
    if libdir != "-" {
        cmd.env("LD_LIBRARY_PATH", libdir);
    }
    let mut child = cmd
        .args([lib, "0", path, hostile])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("start xenvchan-script: {e}"))?;
    let out: ChildStdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + WAIT;
    let mut steps = 0;
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        steps += usize::from(line.starts_with("STEP "));
        say(&format!("XENVCHAN {lib} {line}"));
    }
    reap(&mut child, "xenvchan-script")?;
    Ok(format!("steps={steps}"))
}

/// `refused LABEL DOMID KEY` (in dom0): the domU's `data/KEY` must be a
/// failure that names `EACCES` (a client whose server published before the
/// client's domain existed).
fn refused_cmd(domid: &str, key: &str) -> Result<String, String> {
    let mut store = XenStore::open().map_err(err)?;
    let v = await_key(&mut store, &format!("/local/domain/{domid}/data/{key}"))?;
    if v.starts_with("FAIL") && v.contains("EACCES") {
        Ok(format!("domU=[{v}]"))
    } else {
        Err(format!(
            "expected a refusal naming EACCES, the domU said: {v}"
        ))
    }
}

/// Prints the case's `XENTEST` line; a failure also ends the program
/// with status 1 (dom0's script then shows the domU's console).
fn report(label: &str, r: Result<String, String>) {
    match r {
        Ok(detail) => say(&format!("XENTEST {label} PASS {detail}")),
        Err(e) => {
            say(&format!("XENTEST {label} FAIL {e}"));
            std::process::exit(1);
        }
    }
}

/// `gen SEED BYTES`: writes `BYTES` of pattern `SEED` to stdout (what a
/// `ring` case feeds its stdin with).
fn gen_cmd(seed: u64, bytes: u64) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; 64 * 1024];
    let mut at = 0u64;
    while at < bytes {
        let n = (bytes - at).min(buf.len() as u64) as usize;
        for (k, b) in buf[..n].iter_mut().enumerate() {
            *b = pattern(seed, at + k as u64);
        }
        out.write_all(&buf[..n])
            .map_err(|e| format!("stdout: {e}"))?;
        at += n as u64;
    }
    out.flush().map_err(|e| format!("stdout: {e}"))
}

/// `check SEED BYTES`: stdin must be exactly `BYTES` of pattern `SEED`.
fn check_cmd(seed: u64, bytes: u64) -> Result<(), String> {
    use std::io::Read;
    let mut input = std::io::stdin().lock();
    let mut buf = vec![0u8; 64 * 1024];
    let mut at = 0u64;
    loop {
        let n = input.read(&mut buf).map_err(|e| format!("stdin: {e}"))?;
        if n == 0 {
            break;
        }
        if let Some(k) = (0..n).find(|&k| buf[k] != pattern(seed, at + k as u64)) {
            return Err(format!("byte {} differs", at + k as u64));
        }
        at += n as u64;
    }
    if at != bytes {
        return Err(format!("{at} bytes, expected {bytes}"));
    }
    say(&format!("checked {at} bytes of pattern {seed}"));
    Ok(())
}

/// `drain-say BYTES`: reads stdin to its end, saying `RECEIVING` once
/// `BYTES` have come (a sign that a stream is flowing).
fn drain_say_cmd(bytes: u64) -> Result<(), String> {
    use std::io::Read;
    let mut input = std::io::stdin().lock();
    let mut buf = vec![0u8; 64 * 1024];
    let (mut at, mut said) = (0u64, false);
    loop {
        let n = input.read(&mut buf).map_err(|e| format!("stdin: {e}"))?;
        if n == 0 {
            return Ok(());
        }
        at += n as u64;
        if !said && at >= bytes {
            say("RECEIVING");
            said = true;
        }
    }
}

/// `sock-serve SOCKET BYTES`: the service behind a `ring proxy`: binds a
/// Unix socket at `SOCKET`, says `LISTENING` on stdout (its only line
/// there), accepts one connection, checks `BYTES` of pattern 1 from it
/// while sending `BYTES` of pattern 2, then waits for its end; the result
/// goes to stderr.
fn sock_serve_cmd(socket: &str, bytes: u64) -> Result<(), String> {
    use std::io::Read;
    let _ = std::fs::remove_file(socket);
    let listener = std::os::unix::net::UnixListener::bind(socket)
        .map_err(|e| format!("bind {socket}: {e}"))?;
    say("LISTENING");
    use std::os::fd::AsFd;
    let ready = ring_hosted::devmem::poll_readable(listener.as_fd(), Some(WAIT))
        .map_err(|e| format!("poll {socket}: {e}"))?;
    if !ready {
        return Err(format!("no connection at {socket} within {WAIT:?}"));
    }
    let (mut sock, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
    sock.set_read_timeout(Some(WAIT)).map_err(err)?;
    sock.set_write_timeout(Some(WAIT)).map_err(err)?;
    let mut writer = sock.try_clone().map_err(err)?;
    let sender = std::thread::spawn(move || -> Result<(), String> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut at = 0u64;
        while at < bytes {
            let n = (bytes - at).min(buf.len() as u64) as usize;
            for (k, b) in buf[..n].iter_mut().enumerate() {
                *b = pattern(2, at + k as u64);
            }
            writer
                .write_all(&buf[..n])
                .map_err(|e| format!("socket write: {e}"))?;
            at += n as u64;
        }
        Ok(())
    });
    let mut buf = vec![0u8; 64 * 1024];
    let mut at = 0u64;
    loop {
        let n = sock
            .read(&mut buf)
            .map_err(|e| format!("socket read after {at}: {e}"))?;
        if n == 0 {
            break;
        }
        if let Some(k) = (0..n).find(|&k| buf[k] != pattern(1, at + k as u64)) {
            return Err(format!("byte {} differs", at + k as u64));
        }
        at += n as u64;
    }
    sender
        .join()
        .map_err(|_| "the sender panicked".to_owned())??;
    if at != bytes {
        return Err(format!("{at} bytes before the end, expected {bytes}"));
    }
    eprintln!("SERVED {at}");
    Ok(())
}

fn num<T: std::str::FromStr>(s: Option<&String>, what: &str) -> Result<T, String> {
    s.ok_or(format!("missing {what}"))?
        .parse()
        .map_err(|_| format!("bad {what}"))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    let r: Result<(), String> = match a(0) {
        "server" => (|| {
            server(
                num(args.get(1), "peer")?,
                a(2),
                num(args.get(3), "size")?,
                a(4),
                num(args.get(5), "bytes").unwrap_or(0),
            )
        })(),
        "client" => (|| {
            client(
                num(args.get(1), "server")?,
                a(2),
                a(3),
                num(args.get(4), "bytes").unwrap_or(0),
            )
        })(),
        // pair LABEL SRV CLI PATH SIZE BYTES
        "pair" => {
            let bytes: f64 = a(6).parse().unwrap_or(0.0);
            report(
                a(1),
                pair(a(2), a(3), "0", a(4), a(5), a(6))
                    .map(|secs| format!("secs={secs:.3} MBps={:.1}", 2.0 * bytes / secs / 1e6)),
            );
            Ok(())
        }
        // kill LABEL SRV CLI VICTIM PATH SIZE
        "kill" => {
            report(
                a(1),
                kill(a(2), a(3), a(4), a(5), a(6)).map(|ms| format!("ms={ms:.1}")),
            );
            Ok(())
        }
        // report KEY IMPL ARGS… (domU side)
        "report" => report_cmd(a(1), a(2), &args[3..]),
        // remote LABEL DOMID KEY AFTER IMPL ARGS… (dom0 side)
        "remote" => {
            report(a(1), remote_cmd(a(2), a(3), a(4), a(5), &args[6..]));
            Ok(())
        }
        // background IMPL server ARGS…: returns once the server published,
        // leaving it running.
        "background" => (|| {
            let (child, mut rx) = spawn(a(1), &args[2..])?;
            expect(&mut rx, "server", "READY")?;
            std::mem::forget(child);
            Ok(())
        })(),
        // sock-client STATE VCHAN-PATH SOCKET BYTES (next to vchan-socket-proxy)
        "sock-client" => (|| sock_client(a(1), a(2), a(3), num(args.get(4), "bytes")?))(),
        // refused LABEL DOMID KEY (dom0 side)
        "refused" => {
            report(a(1), refused_cmd(a(2), a(3)));
            Ok(())
        }
        // remote-hostile LABEL DOMID KEY IMPL ARGS… (dom0 side)
        "remote-hostile" => {
            report(a(1), remote_hostile_cmd(a(2), a(3), a(4), &args[5..]));
            Ok(())
        }
        // proxy-server LIBDIR PEER PATH SOCKET BYTES (the vchan server's side)
        "proxy-server" => (|| proxy_server(a(1), a(2), a(3), a(4), num(args.get(5), "bytes")?))(),
        // proxy-hostile LABEL DOMID KEY LIBDIR PATH SOCKET (dom0 side)
        "proxy-hostile" => {
            report(a(1), proxy_hostile_cmd(a(2), a(3), a(4), a(5), a(6)));
            Ok(())
        }
        // script-run LABEL LIB LIBDIR PATH HOSTILE-PATH (dom0)
        "script-run" => {
            report(a(1), script_run(a(2), a(3), a(4), a(5)));
            Ok(())
        }
        // killable KEY IMPL ARGS… (domU side)
        "killable" => killable_cmd(a(1), a(2), &args[3..]),
        // remote-kill LABEL DOMID KEY HOW IMPL ARGS… (dom0 side)
        "remote-kill" => {
            report(a(1), remote_kill_cmd(a(2), a(3), a(4), a(5), &args[6..]));
            Ok(())
        }
        // gen SEED BYTES / check SEED BYTES / drain-say BYTES (around `ring`)
        "gen" => (|| gen_cmd(num(args.get(1), "seed")?, num(args.get(2), "bytes")?))(),
        "check" => (|| check_cmd(num(args.get(1), "seed")?, num(args.get(2), "bytes")?))(),
        "drain-say" => (|| drain_say_cmd(num(args.get(1), "bytes")?))(),
        // sock-serve SOCKET BYTES (behind a `ring proxy`)
        "sock-serve" => (|| sock_serve_cmd(a(1), num(args.get(2), "bytes")?))(),
        // local LABEL IMPL ARGS… (dom0 side, no domU part): runs a peer or
        // case script and reports it.
        "local" => {
            let r = run_child(a(2), &args[3..], |_| {}).map(|lines| lines.join(" "));
            report(a(1), r);
            Ok(())
        }
        other => Err(format!("unknown command {other:?}")),
    };
    match r {
        Ok(()) => {
            if matches!(a(0), "server" | "client" | "sock-client" | "proxy-server") {
                say("OK");
            }
        }
        Err(e) => {
            say(&format!("FAIL {e}"));
            std::process::exit(1);
        }
    }
}
