//! `ring demo` and `ring peer`: a transfer both ways between this process
//! and a peer process it starts, checksummed, with a throughput and
//! round-trip table; and the peer side of the demo and the tests.

use super::*;

/// One protocol's row of the demo table.
struct Row {
    proto: &'static str,
    bytes: u64,
    gbps: f64,
    p50: Duration,
    p99: Duration,
    kicks_per_mib: f64,
    ok: bool,
    note: String,
}

pub(crate) fn demo(
    bytes: u64,
    rounds: u32,
    ring_size: u64,
    spin_us: u64,
    protos: &[CliProto],
) -> Outcome {
    let protos = if protos.is_empty() {
        vec![CliProto::Vchan, CliProto::Vmbus]
    } else {
        protos.to_vec()
    };
    let ring = ring_bytes(ring_size)?;
    let mut rows = Vec::new();
    for p in protos {
        rows.push(demo_one(p.into(), bytes, rounds, ring, spin_us)?);
    }
    println!(
        "{:<8} {:>14} {:>12} {:>10} {:>10} {:>10}  checksums",
        "protocol", "bytes each way", "GB/s each way", "rtt p50", "rtt p99", "kicks/MiB"
    );
    for r in &rows {
        println!(
            "{:<8} {:>14} {:>13} {:>10} {:>10} {:>10.3}  {}",
            r.proto,
            r.bytes,
            fmt_rate(r.gbps),
            fmt_dur(r.p50),
            fmt_dur(r.p99),
            r.kicks_per_mib,
            r.note
        );
    }
    if rows.iter().all(|r| r.ok) {
        Ok(())
    } else {
        Err(Failure::from("checksum mismatch: see the table"))
    }
}

/// A rate in GB/s with three significant digits (at least two decimals),
/// so a slow run on a loaded machine shows 0.00412, not 0.00.
fn fmt_rate(gbps: f64) -> String {
    let decimals = if gbps > 0.0 && gbps < 1.0 {
        (2.0 - gbps.log10().floor()).min(9.0) as usize
    } else {
        2
    };
    format!("{gbps:.decimals$}")
}

fn fmt_dur(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.1} us")
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

/// The summary each side sends after the stream: checksums of what it
/// sent and received, and its kick count.
fn summary(sent: &Checksum, received: &Checksum, kicks: u64) -> [u8; 40] {
    let mut b = [0u8; 40];
    for (i, v) in [
        sent.finish(),
        sent.len(),
        received.finish(),
        received.len(),
        kicks,
    ]
    .into_iter()
    .enumerate()
    {
        b[8 * i..8 * i + 8].copy_from_slice(&v.to_le_bytes());
    }
    b
}

fn unsummary(b: &[u8]) -> [u64; 5] {
    let mut out = [0u64; 5];
    for (i, v) in out.iter_mut().enumerate() {
        let mut w = [0u8; 8];
        w.copy_from_slice(b.get(8 * i..8 * i + 8).unwrap_or(&[0; 8]));
        *v = u64::from_le_bytes(w);
    }
    out
}

const SERVER_SEED: u64 = 0x5e57_e5ee_d000_0001;
const CLIENT_SEED: u64 = 0xc11e_47ee_d000_0002;

/// Compares our checksums with the peer's summary; returns
/// (peer→us ok, us→peer ok).
fn compare(ours_sent: &Checksum, ours_recv: &Checksum, theirs: [u64; 5]) -> (bool, bool) {
    let [t_sent, t_sent_len, t_recv, t_recv_len, _] = theirs;
    let inbound = t_sent == ours_recv.finish() && t_sent_len == ours_recv.len();
    let outbound = t_recv == ours_sent.finish() && t_recv_len == ours_sent.len();
    (inbound, outbound)
}

fn demo_one(
    proto: Proto,
    bytes: u64,
    rounds: u32,
    ring: usize,
    spin_us: u64,
) -> Result<Row, Failure> {
    let path = std::env::temp_dir().join(format!(
        "ring-demo-{}-{}.sock",
        std::process::id(),
        proto.name()
    ));
    let mut config = ServerConfig::new(proto).ring_sizes(ring, ring);
    config.spin = Duration::from_micros(spin_us);
    let listener = Listener::bind(&path, config)?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;
    let mut child = Command::new(exe)
        .arg("peer")
        .arg("--socket")
        .arg(&path)
        .args(["--mode", "demo", "--proto", proto.name()])
        .args(["--bytes", &bytes.to_string()])
        .args(["--rounds", &rounds.to_string()])
        .args(["--spin-us", &spin_us.to_string()])
        .env(ring_cli::parent::PARENT_ENV, ring_cli::parent::own_pid())
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start the peer process: {e}"))?;
    // Wait for the peer, but not for one that has already died.
    let start = Instant::now();
    let session = loop {
        match listener.accept_timeout(Duration::from_millis(100)) {
            Err(Error::TimedOut) if start.elapsed() < Duration::from_secs(20) => {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("peer exited ({status}) before connecting").into());
                }
            }
            other => break other,
        }
    };
    drop(listener);
    let session = match session {
        Ok(s) => s,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("peer did not connect: {e}").into());
        }
    };
    let result = match session {
        Session::Vchan(mut s) => demo_server(&mut s, bytes, rounds),
        Session::Vmbus(mut s) => demo_server(&mut s, bytes, rounds),
        other => Err(format!("no demo for protocol {}", other.proto().name())),
    };
    if result.is_err() {
        // Our half failed: the peer may be waiting for us for ever.
        let _ = child.kill();
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for the peer: {e}"))?;
    let mut row = result?;
    if !status.success() {
        row.ok = false;
        row.note = format!("{} (peer exited with {status})", row.note);
    }
    Ok(row)
}

fn progress_printer(label: &'static str, total: u64) -> impl FnMut(u64, u64) {
    let tty = std::io::stderr().is_terminal();
    let mut last = Instant::now();
    move |sent, recv| {
        if !tty {
            return;
        }
        let done = sent >= total && recv >= total;
        if done || last.elapsed() >= Duration::from_millis(100) {
            last = Instant::now();
            eprint!(
                "\r{label}: sent {} / {} MiB, received {} / {} MiB{}",
                sent >> 20,
                total >> 20,
                recv >> 20,
                total >> 20,
                if done { "\r\x1b[K" } else { "" }
            );
        }
    }
}

/// What the demo and the peer need from a ring besides [`PollStream`]:
/// blocking bytes, messages and 64-byte pings, per protocol.
trait Link: PollStream {
    /// The protocol's name for the table.
    const NAME: &'static str;
    fn read_some(&mut self, buf: &mut [u8]) -> Result<usize, Error>;
    fn write_every(&mut self, buf: &[u8]) -> Result<(), Error>;
    fn msg_send(&mut self, msg: &[u8]) -> Result<(), Error>;
    fn msg_recv(&mut self, buf: &mut [u8]) -> Result<usize, Error>;
    fn ping_send(&mut self, ping: &[u8; 64]) -> Result<(), Error>;
    fn ping_recv(&mut self, ping: &mut [u8; 64]) -> Result<(), Error>;
}

impl Link for VchanStream {
    const NAME: &'static str = "vchan";
    fn read_some(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        self.read(buf)
    }
    fn write_every(&mut self, buf: &[u8]) -> Result<(), Error> {
        self.write_all(buf)
    }
    fn msg_send(&mut self, msg: &[u8]) -> Result<(), Error> {
        self.send_msg(msg)
    }
    fn msg_recv(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        self.recv_msg(buf)
    }
    // vchan packets: exactly 64 bytes, all or nothing.
    fn ping_send(&mut self, ping: &[u8; 64]) -> Result<(), Error> {
        self.send(ping)
    }
    fn ping_recv(&mut self, ping: &mut [u8; 64]) -> Result<(), Error> {
        self.recv(ping)
    }
}

impl Link for VmbusPipe {
    const NAME: &'static str = "vmbus";
    fn read_some(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        self.read(buf)
    }
    fn write_every(&mut self, buf: &[u8]) -> Result<(), Error> {
        self.write_all(buf)
    }
    fn msg_send(&mut self, msg: &[u8]) -> Result<(), Error> {
        self.send_msg(msg)
    }
    fn msg_recv(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        self.recv_msg(buf)
    }
    // VMBus: one in-band pipe packet per ping.
    fn ping_send(&mut self, ping: &[u8; 64]) -> Result<(), Error> {
        self.send_msg(ping)
    }
    fn ping_recv(&mut self, ping: &mut [u8; 64]) -> Result<(), Error> {
        match self.recv_msg(ping)? {
            64 => Ok(()),
            n => Err(Error::Os {
                op: "ping",
                source: std::io::Error::other(format!("ping of {n} bytes, expected 64")),
            }),
        }
    }
}

fn demo_server<L: Link>(s: &mut L, bytes: u64, rounds: u32) -> Result<Row, String> {
    let e = |e: Error| format!("{} demo: {e}", L::NAME);
    let kicks0 = s.signal().kicks();
    let start = Instant::now();
    let got = duplex(
        s,
        SERVER_SEED,
        bytes,
        bytes,
        progress_printer(L::NAME, bytes),
    )
    .map_err(e)?;
    let elapsed = start.elapsed();
    let our_kicks = s.signal().kicks() - kicks0;
    s.msg_send(&summary(&got.sent, &got.received, our_kicks))
        .map_err(e)?;
    let mut buf = [0u8; 40];
    let n = s.msg_recv(&mut buf).map_err(e)?;
    let theirs = unsummary(buf.get(..n).unwrap_or(&[]));
    let (inbound, outbound) = compare(&got.sent, &got.received, theirs);
    // Ping-pong: we send 64 bytes, the peer echoes them.
    let mut rtts = Vec::with_capacity(rounds as usize);
    let mut msg = [0u8; 64];
    let mut back = [0u8; 64];
    let mut echo_ok = true;
    let mut pat = Pattern::new(7);
    for _ in 0..rounds {
        pat.fill(&mut msg);
        let t = Instant::now();
        s.ping_send(&msg).map_err(e)?;
        s.ping_recv(&mut back).map_err(e)?;
        rtts.push(t.elapsed());
        echo_ok &= back == msg;
    }
    s.close().map_err(e)?;
    rtts.sort();
    let pct = |p: usize| {
        rtts.get((rtts.len() * p / 100).min(rtts.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let total_kicks = our_kicks + theirs[4];
    let mib = (2 * bytes) as f64 / f64::from(1u32 << 20);
    let ok = inbound && outbound && echo_ok;
    let note = match (inbound, outbound, echo_ok) {
        (true, true, true) => "ok both ways".to_string(),
        _ => format!(
            "MISMATCH (client->server {}, server->client {}, ping-pong {})",
            if inbound { "ok" } else { "bad" },
            if outbound { "ok" } else { "bad" },
            if echo_ok { "ok" } else { "bad" }
        ),
    };
    Ok(Row {
        proto: L::NAME,
        bytes,
        gbps: bytes as f64 / elapsed.as_secs_f64() / 1e9,
        p50: pct(50),
        p99: pct(99),
        kicks_per_mib: if mib > 0.0 {
            total_kicks as f64 / mib
        } else {
            0.0
        },
        ok,
        note,
    })
}

fn demo_client<L: Link>(s: &mut L, bytes: u64, rounds: u32) -> Result<(), String> {
    let e = |e: Error| format!("demo peer: {e}");
    let kicks0 = s.signal().kicks();
    let got = duplex(s, CLIENT_SEED, bytes, bytes, |_, _| {}).map_err(e)?;
    let our_kicks = s.signal().kicks() - kicks0;
    s.msg_send(&summary(&got.sent, &got.received, our_kicks))
        .map_err(e)?;
    let mut buf = [0u8; 40];
    let n = s.msg_recv(&mut buf).map_err(e)?;
    let (inbound, outbound) = compare(
        &got.sent,
        &got.received,
        unsummary(buf.get(..n).unwrap_or(&[])),
    );
    let mut msg = [0u8; 64];
    for _ in 0..rounds {
        s.ping_recv(&mut msg).map_err(e)?;
        s.ping_send(&msg).map_err(e)?;
    }
    // Wait for the server to close.
    let mut tail = [0u8; 1];
    match s.read_some(&mut tail) {
        Ok(0) | Err(Error::Closed | Error::PeerGone) => {}
        Ok(_) => return Err("demo peer: unexpected bytes after the ping-pong".into()),
        Err(x) => return Err(e(x)),
    }
    if inbound && outbound {
        Ok(())
    } else {
        Err(format!(
            "demo peer: checksum mismatch (server->client {}, client->server {})",
            if inbound { "ok" } else { "bad" },
            if outbound { "ok" } else { "bad" }
        ))
    }
}

// ---------------------------------------------------------------- peer

#[allow(clippy::too_many_arguments)] // One per command-line option.
pub(crate) fn peer(
    socket: &Path,
    proto: Proto,
    mode: PeerMode,
    listen: bool,
    bytes: u64,
    rounds: u32,
    seed: u64,
    spin: Duration,
    ring_size: u64,
) -> Outcome {
    ring_cli::parent::die_with_parent().map_err(|e| e.to_string())?;
    let session = if listen {
        let mut config =
            ServerConfig::new(proto).ring_sizes(ring_bytes(ring_size)?, ring_bytes(ring_size)?);
        config.spin = spin;
        let l = Listener::bind(socket, config)?;
        l.accept()
    } else {
        let mut config = ClientConfig::new(proto);
        config.spin = spin;
        rendezvous::connect_with(socket, config)
    }?;
    match session {
        Session::Vchan(mut s) => peer_run(&mut s, mode, bytes, rounds, seed),
        Session::Vmbus(mut s) => peer_run(&mut s, mode, bytes, rounds, seed),
        other => Err(format!("peer: protocol {} unsupported", other.proto().name()).into()),
    }
}

fn peer_run<L: Link>(s: &mut L, mode: PeerMode, bytes: u64, rounds: u32, seed: u64) -> Outcome {
    let e = |e: Error| Failure::from(format!("peer: {e}"));
    match mode {
        PeerMode::Demo => demo_client(s, bytes, rounds).map_err(Failure::from),
        PeerMode::Echo => {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match s.read_some(&mut buf) {
                    Ok(0) | Err(Error::Closed | Error::PeerGone) => return Ok(()),
                    Ok(n) => match s.write_every(buf.get(..n).unwrap_or(&[])) {
                        Ok(()) => {}
                        Err(Error::Closed | Error::PeerGone) => return Ok(()),
                        Err(x) => return Err(e(x)),
                    },
                    Err(x) => return Err(e(x)),
                }
            }
        }
        PeerMode::Source => {
            let mut p = Pattern::new(seed);
            let mut buf = vec![0u8; 16 << 10];
            while bytes == 0 || p.position() < bytes {
                let n = if bytes == 0 {
                    buf.len()
                } else {
                    (bytes - p.position()).min(buf.len() as u64) as usize
                };
                let chunk = buf.get_mut(..n).unwrap_or(&mut []);
                p.fill(chunk);
                match s.write_every(chunk) {
                    Ok(()) => {}
                    Err(Error::Closed | Error::PeerGone) => return Ok(()),
                    Err(x) => return Err(e(x)),
                }
            }
            s.close().map_err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fmt_rate;

    #[test]
    fn rates_keep_three_significant_digits() {
        assert_eq!(fmt_rate(2.4149), "2.41");
        assert_eq!(fmt_rate(0.5), "0.500");
        assert_eq!(fmt_rate(0.004123), "0.00412");
        assert_eq!(fmt_rate(0.0), "0.00");
    }
}
