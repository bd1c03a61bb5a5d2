//! `ring listen` and `ring connect`, and the one copy loop that every
//! piping subcommand (attach too) ends through: stdin into the ring, the
//! ring to stdout, and an exit status that says whether every byte went
//! through (docs/hosted.md, "How a stream ends").

use super::*;

pub(crate) fn listen(
    socket: &Path,
    proto: Proto,
    ring_size: u64,
    any_uid: bool,
    timeout: Option<Duration>,
    keep: bool,
) -> Outcome {
    let size = ring_bytes(ring_size)?;
    let mut config = ServerConfig::new(proto).ring_sizes(size, size);
    if any_uid {
        config.peer = PeerPolicy::AnyUid;
    }
    let listener = Listener::bind(socket, config)?;
    let refused = |e: &Error| eprintln!("ring: refused a client: {e}");
    if !keep {
        let session = listener.accept_with(refused)?;
        // One peer only: unlink the socket so later clients fail at once.
        drop(listener);
        return pipe_session(session, timeout);
    }
    loop {
        let session = listener.accept_with(refused)?;
        if let Err(f) = pipe_session(session, timeout) {
            eprintln!("ring: session ended badly (exit {}): {}", f.code, f.reason);
        }
    }
}

pub(crate) fn connect(socket: &Path, proto: Proto, timeout: Option<Duration>) -> Outcome {
    let session = rendezvous::connect(socket, proto)?;
    pipe_session(session, timeout)
}

/// A session with one of our own processes: both sides half-close over
/// the rendezvous socket (or the VMBus end-of-stream packet) and tell each
/// other what they received before either exits 0.
fn pipe_session(session: Session, timeout: Option<Duration>) -> Outcome {
    let end = PipeEnd {
        linger: None,
        timeout,
        confirm: true,
    };
    match session {
        Session::Vchan(mut s) => pipe_stream(&mut s, end),
        Session::Vmbus(mut s) => pipe_stream(&mut s, end),
        other => Err(format!("no pipe for protocol {}", other.proto().name()).into()),
    }
}

/// How a pipe may end.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PipeEnd {
    /// A foreign peer that cannot half-close: once our stdin is through
    /// and read, end after it has been quiet this long.
    pub(crate) linger: Option<Duration>,
    /// Fail once the peer has been silent this long, mid-stream.
    pub(crate) timeout: Option<Duration>,
    /// Our own peer: exchange [`Notice::Done`] before exiting 0.
    pub(crate) confirm: bool,
}

/// Where a pipe stands, for the one line a failure prints.
#[derive(Debug, Default)]
struct Tally {
    stdin: u64,
    stdout: u64,
    stdin_ended: bool,
}

impl Tally {
    fn fail(&self, s: &impl PollStream, e: Error) -> Failure {
        let mut f = Failure::from(e);
        f.reason = format!(
            "{}: {} bytes read from stdin{}, {} written into the ring; {} bytes received",
            f.reason,
            self.stdin,
            if self.stdin_ended {
                " (all of it)"
            } else {
                " so far"
            },
            s.bytes_written(),
            self.stdout,
        );
        f
    }
}

/// Copies stdin into the ring and the ring to stdout, both directions at
/// once, and ends as docs/hosted.md's stream-end table says: exit 0 only
/// when both directions ended cleanly and the peer took every byte.
pub(crate) fn pipe_stream(s: &mut impl PollStream, end: PipeEnd) -> Outcome {
    let mut tally = Tally::default();
    match pipe_loop(s, end, &mut tally) {
        Ok(()) => Ok(()),
        Err(Stop::Ring(e)) => {
            // Whatever the reason, hand on what the peer left in the ring
            // before saying so (stdout stays a prefix of what it sent).
            if !matches!(e, Error::Ring(_) | Error::Vmbus(_)) {
                let _ = drain_rest(s, &mut tally);
            }
            let _ = s.close();
            Err(tally.fail(s, e))
        }
        Err(Stop::Failed(f)) => {
            let _ = s.close();
            Err(f)
        }
    }
}

/// Why [`pipe_loop`] stopped early.
enum Stop {
    /// The ring or the peer: classified by [`Failure::from`].
    Ring(Error),
    /// Our side (stdin, stdout) with its own code.
    Failed(Failure),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Stop::Ring(e)
    }
}

/// Writes `data` to stdout; `Err` with [`exit::STDOUT_CLOSED`] once its
/// reader has gone.
fn emit(out: &mut std::io::StdoutLock<'_>, data: &[u8], tally: &mut Tally) -> Result<(), Stop> {
    match out.write_all(data).and_then(|()| out.flush()) {
        Ok(()) => {
            tally.stdout += data.len() as u64;
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(Stop::Failed(Failure {
            code: exit::STDOUT_CLOSED,
            reason: format!(
                "stdout closed after {} bytes, before the peer's stream ended",
                tally.stdout
            ),
        })),
        Err(source) => Err(Stop::Failed(
            Error::Os {
                op: "write stdout",
                source,
            }
            .into(),
        )),
    }
}

/// After a failure: copies what the peer left in the ring to stdout, until
/// its stream ends or nothing more can come.
fn drain_rest(s: &mut impl PollStream, tally: &mut Tally) -> Result<(), Stop> {
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match s.try_read(&mut buf)? {
            Some(0) => return Ok(()),
            Some(n) => emit(&mut out, buf.get(..n).unwrap_or(&[]), tally)?,
            // The peer is alive and its ring empty: it has nothing in
            // flight for us now.
            None => return Ok(()),
        }
    }
}

fn pipe_loop(s: &mut impl PollStream, end: PipeEnd, tally: &mut Tally) -> Result<(), Stop> {
    let stdin = std::io::stdin();
    let stdin_fd = stdin.as_fd();
    let mut stdout = std::io::stdout().lock();
    let mut inbuf = vec![0u8; 64 << 10];
    let mut outbuf = vec![0u8; 64 << 10];
    let (mut off, mut len) = (0usize, 0usize);
    // Our direction ended (end mark sent, or none possible); the peer's
    // direction ended; the peer has read all of our stdin.
    let (mut out_done, mut in_done, mut delivered) = (false, false, false);
    let mut half_close = true;
    let mut heard = Instant::now();
    loop {
        let mut moved = false;
        while !in_done {
            match s.try_read(&mut outbuf)? {
                Some(0) => in_done = true,
                Some(n) => {
                    emit(&mut stdout, outbuf.get(..n).unwrap_or(&[]), tally)?;
                    moved = true;
                }
                None => break,
            }
        }
        while off < len {
            match s.try_write(inbuf.get(off..len).unwrap_or(&[]))? {
                Some(n) => {
                    off += n;
                    moved = true;
                }
                None => break,
            }
        }
        // Our end mark goes out once the peer has read every byte before
        // it: a peer need never read the mark itself for us to know.
        if tally.stdin_ended && off == len && !delivered {
            delivered = s.try_delivered()?.is_some();
        }
        if delivered && !out_done {
            match s.try_shutdown_write()? {
                Some(true) => out_done = true,
                Some(false) => (out_done, half_close) = (true, false),
                None => {}
            }
        }
        if in_done && out_done {
            break;
        }
        if moved {
            heard = Instant::now();
            continue;
        }
        let connected = s.peer_connected();
        if !connected {
            heard = Instant::now();
        }
        // A foreign peer that cannot half-close: our bytes are through and
        // read, and it has been quiet for the linger.
        let linger_end = match (end.linger, half_close) {
            (Some(l), false) if delivered => Some(heard + l),
            _ => None,
        };
        if linger_end.is_some_and(|t| Instant::now() >= t) {
            break;
        }
        let idle_end = end.timeout.filter(|_| connected).map(|t| heard + t);
        let deadline = match (linger_end, idle_end) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let want_stdin = !tally.stdin_ended && off == len;
        let woken = match s.wait_event(want_stdin.then_some(stdin_fd), deadline) {
            Ok(w) => w,
            Err(Error::TimedOut) if linger_end.is_some_and(|t| Instant::now() >= t) => break,
            // It ended its stream cleanly, then left before taking the
            // rest of ours: a close with our bytes undelivered.
            Err(Error::PeerGone) if in_done => return Err(Error::Closed.into()),
            Err(e) => return Err(e.into()),
        };
        if woken.kicked {
            heard = Instant::now();
        }
        if woken.extra {
            match rustix::io::read(stdin_fd, &mut inbuf) {
                Ok(0) => tally.stdin_ended = true,
                Ok(n) => {
                    (off, len) = (0, n);
                    tally.stdin += n as u64;
                }
                Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
                Err(e) => {
                    return Err(Stop::Failed(
                        Error::Os {
                            op: "read stdin",
                            source: e.into(),
                        }
                        .into(),
                    ))
                }
            }
        }
    }
    if end.confirm {
        confirm(s, end.timeout, tally)?;
    }
    s.close()?;
    Ok(())
}

/// The last step with one of our own peers: say how much we received (all
/// of it is on our stdout by now), hear how much it received, and compare.
fn confirm(s: &mut impl PollStream, timeout: Option<Duration>, tally: &Tally) -> Result<(), Stop> {
    s.signal().send_notice(Notice::Done(s.bytes_read()))?;
    let mut heard = Instant::now();
    loop {
        // Gone is looked at first: the hang-up read that finds the peer
        // gone also takes a Done it sent just before.
        let gone = s.signal().peer_gone();
        if let Some(got) = s.signal().peer_done() {
            if got == s.bytes_written() {
                return Ok(());
            }
            return Err(Stop::Failed(Failure {
                code: exit::UNDELIVERED,
                reason: format!(
                    "the peer received {got} bytes, we wrote {} ({} read from stdin)",
                    s.bytes_written(),
                    tally.stdin
                ),
            }));
        }
        if gone {
            return Err(Error::PeerGone.into());
        }
        let w = s.wait_event(None, timeout.map(|t| heard + t))?;
        if w.kicked {
            heard = Instant::now();
        }
    }
}
