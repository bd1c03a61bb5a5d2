//! `ring listen` and `ring connect`, and the one copy loop that every
//! piping subcommand (attach too) ends through: stdin into the ring, the
//! ring to stdout, and an exit status that says whether every byte went
//! through (docs/hosted.md, "How a stream ends").

use super::*;
use std::os::fd::BorrowedFd;

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

/// What the ring is piped to: an fd we read (stdin, a connection) and a
/// writer for what arrives (stdout, the same connection).
pub(crate) struct Ends<'a> {
    /// Read with `read(2)` when poll says so.
    pub(crate) input: BorrowedFd<'a>,
    /// Where the peer's bytes go; it may refuse with `WouldBlock` (then
    /// `output_fd` says what to poll for room).
    pub(crate) output: &'a mut dyn Write,
    /// The output's fd, if writes to it can block the loop otherwise.
    pub(crate) output_fd: Option<BorrowedFd<'a>>,
    /// What to call them in messages ("stdin"/"stdout", "the connection").
    pub(crate) input_name: &'static str,
    pub(crate) output_name: &'static str,
    /// Called once the peer's stream has ended and all of it is written
    /// (a connection is shut down for writing, so its reader sees the end).
    pub(crate) output_done: &'a mut dyn FnMut(),
}

/// Where a pipe stands, for the one line a failure prints.
#[derive(Debug, Default)]
struct Tally {
    stdin: u64,
    stdout: u64,
    stdin_ended: bool,
    input_name: &'static str,
}

impl Tally {
    fn fail(&self, s: &impl PollStream, e: Error) -> Failure {
        let mut f = Failure::from(e);
        f.reason = format!(
            "{}: {} bytes read from {}{}, {} written into the ring; {} bytes received",
            f.reason,
            self.stdin,
            self.input_name,
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
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout().lock();
    let mut nothing = || {};
    let mut ends = Ends {
        input: stdin.as_fd(),
        output: &mut stdout,
        output_fd: None,
        input_name: "stdin",
        output_name: "stdout",
        output_done: &mut nothing,
    };
    pipe_ends(s, end, &mut ends)
}

/// As [`pipe_stream`], between the ring and any [`Ends`].
pub(crate) fn pipe_ends(s: &mut impl PollStream, end: PipeEnd, ends: &mut Ends<'_>) -> Outcome {
    let mut tally = Tally {
        input_name: ends.input_name,
        ..Tally::default()
    };
    match pipe_loop(s, end, &mut tally, ends) {
        Ok(()) => Ok(()),
        Err(Stop::Ring(e)) => {
            // Whatever the reason, hand on what the peer left in the ring
            // before saying so (the output stays a prefix of what it sent).
            if !matches!(e, Error::Ring(_) | Error::Vmbus(_)) {
                let _ = drain_rest(s, &mut tally, ends);
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

/// Writes what it can of `data` to the output: the bytes taken, 0 when a
/// non-blocking output is full; `Err` with [`exit::STDOUT_CLOSED`] once its
/// reader has gone.
fn emit(ends: &mut Ends<'_>, data: &[u8], tally: &mut Tally) -> Result<usize, Stop> {
    let out = &mut ends.output;
    match out.write(data).and_then(|n| out.flush().map(|()| n)) {
        Ok(n) => {
            tally.stdout += n as u64;
            Ok(n)
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(0),
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(0),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ) =>
        {
            Err(Stop::Failed(Failure {
                code: exit::STDOUT_CLOSED,
                reason: format!(
                    "{} closed after {} bytes, before the peer's stream ended",
                    ends.output_name, tally.stdout
                ),
            }))
        }
        Err(source) => Err(Stop::Failed(
            Error::Os {
                op: "write output",
                source,
            }
            .into(),
        )),
    }
}

/// Writes all of `data`, waiting (up to a minute) for a non-blocking
/// output to take it.
fn emit_all(ends: &mut Ends<'_>, mut data: &[u8], tally: &mut Tally) -> Result<(), Stop> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !data.is_empty() {
        match emit(ends, data, tally)? {
            0 => {
                if Instant::now() > deadline {
                    return Err(Stop::Ring(Error::TimedOut));
                }
                if let Some(fd) = ends.output_fd {
                    let mut fds = [rustix::event::PollFd::new(
                        &fd,
                        rustix::event::PollFlags::OUT,
                    )];
                    let ts = rustix::event::Timespec {
                        tv_sec: 0,
                        tv_nsec: 50_000_000,
                    };
                    let _ = rustix::event::poll(&mut fds, Some(&ts));
                }
            }
            n => data = data.get(n..).unwrap_or_default(),
        }
    }
    Ok(())
}

/// After a failure: copies what the peer left in the ring to the output,
/// until its stream ends or nothing more can come.
fn drain_rest(s: &mut impl PollStream, tally: &mut Tally, ends: &mut Ends<'_>) -> Result<(), Stop> {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match s.try_read(&mut buf)? {
            Some(0) => return Ok(()),
            Some(n) => emit_all(ends, buf.get(..n).unwrap_or(&[]), tally)?,
            // The peer is alive and its ring empty: it has nothing in
            // flight for us now.
            None => return Ok(()),
        }
    }
}

fn pipe_loop(
    s: &mut impl PollStream,
    end: PipeEnd,
    tally: &mut Tally,
    ends: &mut Ends<'_>,
) -> Result<(), Stop> {
    let stdin_fd = ends.input;
    let mut inbuf = vec![0u8; 64 << 10];
    let mut outbuf = vec![0u8; 64 << 10];
    let (mut off, mut len) = (0usize, 0usize);
    // Bytes read from the ring and not yet taken by a non-blocking output.
    let (mut opos, mut olen) = (0usize, 0usize);
    // Our direction ended (end mark sent, or none possible); the peer's
    // direction ended; the peer has read all of our stdin.
    let (mut out_done, mut in_done, mut delivered) = (false, false, false);
    let mut half_close = true;
    let mut output_closed = false;
    let mut heard = Instant::now();
    loop {
        let mut moved = false;
        // The ring is read only as fast as the output takes it, so a
        // stalled output holds back the peer, never our own input.
        loop {
            if opos < olen {
                match emit(ends, outbuf.get(opos..olen).unwrap_or(&[]), tally)? {
                    0 => break,
                    n => {
                        opos += n;
                        moved = true;
                        continue;
                    }
                }
            }
            if in_done {
                break;
            }
            match s.try_read(&mut outbuf)? {
                Some(0) => in_done = true,
                Some(n) => {
                    (opos, olen) = (0, n);
                    moved = true;
                }
                None => break,
            }
        }
        if in_done && opos == olen && !output_closed {
            (ends.output_done)();
            output_closed = true;
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
        if in_done && out_done && output_closed {
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
        let want_out = (opos < olen).then_some(ends.output_fd).flatten();
        let woken = match s.wait_io(want_stdin.then_some(stdin_fd), want_out, deadline) {
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
                            op: "read input",
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
