//! `ring listen` and `ring connect`, and the one copy loop that every
//! piping subcommand (attach too) ends through: stdin into the ring, the
//! ring to stdout, and an exit status that says whether every byte went
//! through (docs/hosted.md, "How a stream ends").

use super::*;
use ring_hosted::fdio::Output;
use ring_hosted::stream::{FdMove, StreamSignal};
use std::os::fd::BorrowedFd;
use std::sync::{Arc, Mutex};

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
    // Signals are taken before the socket exists: a script that sees the
    // path may stop us at once, and must find it removed.
    let files = Arc::new(Mutex::new(None));
    remove_on_signal(files.clone())?;
    let listener = {
        let mut ours = files.lock().unwrap_or_else(|p| p.into_inner());
        let listener = Listener::bind(socket, config)?;
        *ours = Some((listener.path().to_owned(), listener.lock_path().to_owned()));
        listener
    };
    let refused = |e: &Error| eprintln!("ring: refused a client: {e}");
    if !keep {
        let session = listener.accept_with(refused)?;
        // One peer only: unlink the socket so later clients fail at once
        // (and from now on a signal has no files of ours to remove).
        let mut ours = files.lock().unwrap_or_else(|p| p.into_inner());
        *ours = None;
        drop(listener);
        drop(ours);
        return pipe_session(session, timeout);
    }
    loop {
        let session = listener.accept_with(refused)?;
        if let Err(f) = pipe_session(session, timeout) {
            eprintln!("ring: session ended badly (exit {}): {}", f.code, f.reason);
        }
    }
}

/// On SIGTERM, SIGINT or SIGHUP: removes the listener's socket and lock
/// file if they are still ours (`files`; whoever drops the listener sets it
/// to `None` under the same lock, so another listener's new socket at the
/// path is never touched), says so in one line, and exits 128 + the
/// signal's number, as a shell reports a process a signal ended.
fn remove_on_signal(files: Arc<Mutex<Option<(PathBuf, PathBuf)>>>) -> Result<(), Failure> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|e| format!("cannot handle SIGTERM/SIGINT/SIGHUP: {e}"))?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                let ours = files.lock().unwrap_or_else(|p| p.into_inner());
                if let Some((socket, lock)) = ours.as_ref() {
                    let _ = std::fs::remove_file(socket);
                    let _ = std::fs::remove_file(lock);
                }
                let name = signal_hook::low_level::signal_name(sig).unwrap_or("a signal");
                eprintln!("ring: listen: stopped by {name}");
                std::process::exit(128 + sig);
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    Ok(())
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
        accept: None,
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
    /// Fail if the peer has not joined this long after the start (a vchan
    /// server waiting for its client; other streams start joined).
    pub(crate) accept: Option<Duration>,
    /// Our own peer: exchange [`Notice::Done`] before exiting 0.
    pub(crate) confirm: bool,
}

/// What the ring is piped to: an fd we read (stdin, a connection) and an
/// fd the peer's bytes go to (stdout, the same connection). Bytes move
/// between them and the ring in place (`readv(2)` into the ring,
/// `writev(2)`/`sendmsg(2)` out of it): the kernel copies each byte once.
pub(crate) struct Ends<'a> {
    /// Read when poll says so.
    pub(crate) input: BorrowedFd<'a>,
    /// Where the peer's bytes go; a full one is polled for room.
    pub(crate) output: BorrowedFd<'a>,
    /// How to write to it (a socket never blocks the loop).
    pub(crate) output_kind: Output,
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
    /// The peer's stream ended cleanly (its end mark, or a vchan peer's
    /// close with its ring drained): its going later is no news, and bytes
    /// of ours it then cannot take are undelivered (exit 4), not a death.
    peer_ended: bool,
    input_name: &'static str,
}

impl Tally {
    fn fail<S: StreamSignal>(&self, s: &impl PollStream<S>, e: Error) -> Failure {
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
pub(crate) fn pipe_stream<S: StreamSignal>(s: &mut impl PollStream<S>, end: PipeEnd) -> Outcome {
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let mut nothing = || {};
    let mut ends = Ends {
        input: stdin.as_fd(),
        output: stdout.as_fd(),
        output_kind: Output::File,
        input_name: "stdin",
        output_name: "stdout",
        output_done: &mut nothing,
    };
    pipe_ends(s, end, &mut ends)
}

/// As [`pipe_stream`], between the ring and any [`Ends`].
pub(crate) fn pipe_ends<S: StreamSignal>(
    s: &mut impl PollStream<S>,
    end: PipeEnd,
    ends: &mut Ends<'_>,
) -> Outcome {
    let mut tally = Tally {
        input_name: ends.input_name,
        ..Tally::default()
    };
    match pipe_loop(s, end, &mut tally, ends) {
        Ok(()) => Ok(()),
        Err(Stop::Ring(e)) => {
            let e = match e {
                Error::PeerGone if tally.peer_ended => Error::Closed,
                e => e,
            };
            // Whatever the reason, hand on what the peer left in the ring
            // before saying so (the output stays a prefix of what it sent).
            if !matches!(e, Error::Vchan(_) | Error::Vmbus(_)) {
                let _ = drain_rest(s, &mut tally, ends, end.timeout);
            }
            // One try, never a wait: a full ring or a stalled peer must not
            // hold back the line and the exit code (a dropped stream tries
            // again, as briefly).
            let _ = s.try_hang_up();
            Err(tally.fail(s, e))
        }
        Err(Stop::Failed(f)) => {
            let _ = s.try_hang_up();
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

/// Sorts an error of a fill or drain call: our input or output failing is
/// ours ([`exit::STDOUT_CLOSED`] once the output's reader has gone), the
/// rest is the ring's.
fn fd_stop(e: Error, ends: &Ends<'_>, tally: &Tally) -> Stop {
    match e {
        Error::Os {
            op: "write output",
            source,
        } if matches!(
            source.kind(),
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
        ) =>
        {
            Stop::Failed(Failure {
                code: exit::STDOUT_CLOSED,
                reason: format!(
                    "{} closed after {} bytes, before the peer's stream ended",
                    ends.output_name, tally.stdout
                ),
            })
        }
        e @ Error::Os {
            op: "write output" | "read input",
            ..
        } => Stop::Failed(e.into()),
        e => Stop::Ring(e),
    }
}

/// One move from the ring to the output.
fn drain<S: StreamSignal>(
    s: &mut impl PollStream<S>,
    ends: &Ends<'_>,
    tally: &mut Tally,
) -> Result<FdMove, Stop> {
    let moved = s
        .try_drain_to(ends.output, ends.output_kind)
        .map_err(|e| fd_stop(e, ends, tally))?;
    if let FdMove::Moved(n) = moved {
        tally.stdout += n as u64;
    }
    Ok(moved)
}

/// Whether `fd` is at its end now, asked once the ring can take no more:
/// poll says readable and a one-byte read finds its end (a pipe or socket
/// whose writer has gone, a file read to its end, `/dev/null`: any kind of
/// input, where `FIONREAD` knows only some). A byte found instead is
/// counted as read; it is undeliverable either way.
fn input_at_end(fd: BorrowedFd<'_>, tally: &mut Tally) -> bool {
    let mut fds = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::IN,
    )];
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    if !matches!(rustix::event::poll(&mut fds, Some(&zero)), Ok(1)) {
        return false;
    }
    let mut byte = [0u8; 1];
    match rustix::io::read(fd, &mut byte) {
        Ok(0) => true,
        Ok(n) => {
            tally.stdin += n as u64;
            false
        }
        Err(_) => false,
    }
}

/// Waits for the input alone (the peer, gone after ending its stream,
/// can wake us no more) until `deadline`.
fn wait_input(fd: BorrowedFd<'_>, deadline: Option<Instant>) -> Result<(), Stop> {
    let mut fds = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::IN,
    )];
    let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
    let ts = left.map(|t| rustix::event::Timespec {
        tv_sec: t.as_secs() as i64,
        tv_nsec: i64::from(t.subsec_nanos()),
    });
    match rustix::event::poll(&mut fds, ts.as_ref()) {
        Ok(0) => Err(Error::TimedOut.into()),
        Ok(_) | Err(rustix::io::Errno::INTR) => Ok(()),
        Err(e) => Err(Error::Os {
            op: "poll input",
            source: e.into(),
        }
        .into()),
    }
}

/// A test hook: with `RING_TEST_STOP_AT=point[,point...]` in its
/// environment the process stops itself (`SIGSTOP`) when it reaches each
/// `point`, so a test can act at that exact moment and continue it
/// (`start`: set up, before the copy loop; `linger`: a foreign peer's
/// linger is over, before our close; `grace`: our live byte cleared, the
/// first look at the ring found nothing, before the wait of the grace).
fn stop_at(point: &str) {
    let points = std::env::var("RING_TEST_STOP_AT").unwrap_or_default();
    if points.split(',').any(|p| p == point) {
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::STOP);
    }
}

/// Waits up to 50 ms for room in the output.
fn poll_output(fd: BorrowedFd<'_>) {
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

/// After a failure, or after our close: copies what the peer left in the
/// ring to the output (waiting for a full output up to a minute, or
/// `timeout` if shorter), until its stream ends or nothing more can come.
fn drain_rest<S: StreamSignal>(
    s: &mut impl PollStream<S>,
    tally: &mut Tally,
    ends: &mut Ends<'_>,
    timeout: Option<Duration>,
) -> Result<(), Stop> {
    let limit = timeout.map_or(Duration::from_secs(60), |t| t.min(Duration::from_secs(60)));
    let deadline = Instant::now() + limit;
    loop {
        match drain(s, ends, tally)? {
            FdMove::Moved(_) => {}
            FdMove::FdBlocked if Instant::now() < deadline => poll_output(ends.output),
            FdMove::FdBlocked => return Err(Stop::Ring(Error::TimedOut)),
            // The peer is alive and its ring empty (it has nothing in
            // flight for us now), or its stream ended.
            FdMove::RingBlocked | FdMove::End => return Ok(()),
        }
    }
}

/// How long we keep reading after clearing our live byte at the end of a
/// linger: a foreign peer that looked at the byte just before we cleared
/// it publishes within one write's copy, and its kick (or `--poll`'s next
/// look) wakes us at once. docs/hosted.md, "How a stream ends", has the
/// window that remains.
const CLOSE_GRACE: Duration = Duration::from_millis(10);

/// After our hang-up: copies what the peer publishes to the output until
/// its stream ends, it is gone, or it has published nothing for
/// [`CLOSE_GRACE`] (waiting for a full output up to a minute, or `timeout`
/// if shorter).
fn last_looks<S: StreamSignal>(
    s: &mut impl PollStream<S>,
    tally: &mut Tally,
    ends: &mut Ends<'_>,
    timeout: Option<Duration>,
) -> Result<(), Stop> {
    let now = Instant::now();
    let grace_end = now + CLOSE_GRACE;
    let output_end =
        now + timeout.map_or(Duration::from_secs(60), |t| t.min(Duration::from_secs(60)));
    // A look has found the ring empty.
    let mut looked = false;
    loop {
        match drain(s, ends, tally) {
            Ok(FdMove::Moved(_)) => {}
            Ok(FdMove::FdBlocked) if Instant::now() < output_end => poll_output(ends.output),
            Ok(FdMove::FdBlocked) => return Err(Stop::Ring(Error::TimedOut)),
            // Closed, or gone: nothing more can come.
            Ok(FdMove::End) | Err(Stop::Ring(Error::PeerGone)) => return Ok(()),
            Ok(FdMove::RingBlocked) if Instant::now() >= grace_end => return Ok(()),
            Ok(FdMove::RingBlocked) => {
                if !looked {
                    stop_at("grace");
                    looked = true;
                }
                match s.wait_event(None, Some(grace_end)) {
                    // Look again; after the grace, the last look.
                    Ok(_) | Err(Error::TimedOut) => {}
                    Err(Error::PeerGone) => return Ok(()),
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e),
        }
    }
}

fn pipe_loop<S: StreamSignal>(
    s: &mut impl PollStream<S>,
    end: PipeEnd,
    tally: &mut Tally,
    ends: &mut Ends<'_>,
) -> Result<(), Stop> {
    // Poll said the input has bytes (or its end) for us; the output was
    // full at the last write.
    let (mut input_ready, mut output_full) = (false, false);
    // Our direction ended (end mark sent, or none possible); the peer's
    // direction ended; the peer has read all of our input.
    let (mut out_done, mut in_done, mut delivered) = (false, false, false);
    let mut half_close = true;
    let mut output_closed = false;
    let started = Instant::now();
    let mut heard = started;
    // The peer has been seen connected: from then on every wait is
    // bounded by the timeout, whatever its live byte says later.
    let mut joined = false;
    // A foreign peer's linger ran out: we end the stream.
    let mut lingered = false;
    stop_at("start");
    loop {
        let mut moved = false;
        // The ring is read only as fast as the output takes it, so a
        // stalled output holds back the peer, never our own input.
        while !in_done && !output_full {
            match drain(s, ends, tally)? {
                FdMove::Moved(_) => moved = true,
                FdMove::RingBlocked => break,
                FdMove::FdBlocked => output_full = true,
                FdMove::End => (in_done, tally.peer_ended) = (true, true),
            }
        }
        if in_done && !output_closed {
            (ends.output_done)();
            output_closed = true;
        }
        // One read per time poll says the input is ready: a second read
        // of a blocking input could block the loop.
        while input_ready && !tally.stdin_ended {
            let got = match s.try_fill_from(ends.input) {
                // The peer closed (or closed and went) after taking
                // everything we wrote, and our input has in fact ended too
                // (we had not read its end yet): a clean end, not bytes
                // left undelivered.
                Err(Error::Closed | Error::PeerGone) if input_at_end(ends.input, tally) => {
                    FdMove::End
                }
                r => r.map_err(|e| fd_stop(e, ends, tally))?,
            };
            match got {
                FdMove::Moved(n) => {
                    tally.stdin += n as u64;
                    moved = true;
                    // Bytes a stream staged still need pushing.
                    input_ready = s.staged_input();
                }
                // Room first; the input is still ready.
                FdMove::RingBlocked => break,
                FdMove::FdBlocked => input_ready = false,
                FdMove::End => tally.stdin_ended = true,
            }
        }
        // Our end mark goes out once the peer has read every byte before
        // it: a peer need never read the mark itself for us to know.
        if tally.stdin_ended && !delivered {
            delivered = s.try_delivered()?.is_some();
        }
        if delivered && !out_done {
            match s.try_shutdown_write() {
                Ok(Some(true)) => out_done = true,
                Ok(Some(false)) => (out_done, half_close) = (true, false),
                Ok(None) => {}
                // It took every byte and ended its own stream, then went:
                // nobody is left to hear our end mark, and nothing is lost.
                Err(Error::PeerGone) if in_done => out_done = true,
                Err(e) => return Err(e.into()),
            }
        }
        if in_done && out_done && output_closed {
            break;
        }
        if moved {
            heard = Instant::now();
            continue;
        }
        let connected = joined || s.peer_connected();
        if !connected {
            heard = Instant::now();
        }
        joined = connected;
        // A foreign peer that cannot half-close: our bytes are through and
        // read, and it has been quiet for the linger. Not before it has
        // joined: a server with nothing to send must still wait for its
        // client's stream.
        let linger_end = match (end.linger, half_close) {
            (Some(l), false) if delivered && connected => Some(heard + l),
            _ => None,
        };
        if linger_end.is_some_and(|t| Instant::now() >= t) {
            lingered = true;
            break;
        }
        let want_input = !tally.stdin_ended && !input_ready;
        // --timeout is the peer's silence while we wait on it alone: time
        // spent waiting on our own input (or a slow output) is not the
        // peer's, and the clock starts again when that wait ends.
        if want_input || output_full {
            heard = Instant::now();
        }
        let idle_end = end.timeout.filter(|_| connected).map(|t| heard + t);
        let join_end = end.accept.filter(|_| !connected).map(|t| started + t);
        let deadline = [linger_end, idle_end, join_end].into_iter().flatten().min();
        let want_out = output_full.then_some(ends.output);
        let woken = match s.wait_io(want_input.then_some(ends.input), want_out, deadline) {
            Ok(w) => w,
            Err(Error::TimedOut) if linger_end.is_some_and(|t| Instant::now() >= t) => {
                lingered = true;
                break;
            }
            // It ended its stream cleanly, then went, with our input not
            // yet at its end: whether anything of ours is lost depends on
            // that input, so wait for it alone (the peer can wake us no
            // more), bounded by the timeout.
            Err(Error::PeerGone) if in_done && want_input => {
                wait_input(ends.input, end.timeout.map(|t| heard + t))?;
                input_ready = true;
                continue;
            }
            // Gone after its end with bytes of ours unread: undelivered
            // (pipe_ends says so).
            Err(e) => return Err(e.into()),
        };
        if woken.kicked {
            heard = Instant::now();
        }
        input_ready |= woken.extra;
        output_full &= !woken.writable;
    }
    if lingered {
        stop_at("linger");
        // vchan cannot say "no more from me" without ending both ways:
        // clear our live byte (fenced, the peer kicked), so from here on
        // its writes fail on its side, then keep looking at the ring for
        // the grace and hand on what it published before it saw that.
        // Only then judge.
        s.try_hang_up()?;
        last_looks(s, tally, ends, end.timeout)?;
        if !output_closed {
            (ends.output_done)();
        }
    }
    if end.confirm {
        confirm(s, end.timeout, tally)?;
    }
    match s.close() {
        // It ended its stream, read all of ours and went: nothing is lost,
        // and nobody is left to hear our end.
        Err(Error::PeerGone) if tally.peer_ended => Ok(()),
        r => Ok(r?),
    }
}

/// The last step with one of our own peers: say how much we received (all
/// of it is on our stdout by now), hear how much it received, and compare.
fn confirm<S: StreamSignal>(
    s: &mut impl PollStream<S>,
    timeout: Option<Duration>,
    tally: &Tally,
) -> Result<(), Stop> {
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
