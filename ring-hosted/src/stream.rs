//! A vchan endpoint between two processes, made blocking on an
//! [`EventSignal`], with `std::io` streams and a message API on top.
//!
//! The blocking is ring-core's ([`vchan::Blocking`]): this module adds the
//! eventfd signal, the rendezvous socket's half-close and the `std::io`
//! traits, and writes no wait loop of its own.
//!
//! # Other wake-up sources
//!
//! What a stream sleeps on is a [`StreamSignal`]: the eventfds of
//! [`EventSignal`] between two processes of ours, or a Xen event channel
//! (`xen::stream::XenSignal`, whose `/dev/xen/evtchn` fd polls like an
//! eventfd). [`VchanStream`] and [`PollStream`] take the signal as a type
//! parameter that defaults to [`EventSignal`], so one poll loop (ring-cli's
//! pipe) drives either.
//!
//! # Peer death
//!
//! A peer that closes cleanly stores 0 to its live byte and kicks us; reads
//! then return the bytes still in the ring and then end of stream (`Ok(0)`).
//! A peer that *dies* (SIGKILL, crash) never gets to do that, so the wait
//! also watches the rendezvous socket: when the kernel closes the dead
//! peer's end, the wait returns, the reader makes one last pass over the
//! ring (bytes already there are still delivered, in order), and then every
//! call returns [`Error::PeerGone`]. Writers return `PeerGone` at once.
//!
//! # Half-close
//!
//! vchan has no half-close of its own: its live byte ends both directions.
//! Between two of our processes, [`VchanStream::shutdown_write`] says "no
//! more from me, N bytes in all" over the rendezvous socket; the peer reads
//! to that count and then sees end of stream, while its direction flows on.
//!
//! # Spinning
//!
//! Before a blocking call arms its wake-up request it re-checks the ring
//! for the signal's spin budget ([`EventSignal::set_spin`], 20 µs by
//! default). A peer on another core usually moves within that time, and a
//! side that has not armed its request costs the peer no kick.

use crate::eventfd::{EventSignal, Notice, WaitError, Woken};
use crate::fdio::{FdIo, Output};
use crate::memfd::MemFd;
use crate::Error;
use ring_core::loan::Drained;
use ring_core::mem::SharedMem;
use ring_core::signal::Signal;
use ring_core::vchan::{self, Blocking, Endpoint, Role};
use std::io;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::eventfd::LIVENESS_POLL;

/// Bytes of the length prefix [`VchanStream::send_msg`] puts before each
/// message.
pub const MSG_HEADER: usize = 4;

/// What a [`PollStream`] sleeps on and learns the peer's fate from: a
/// ring-core [`Signal`] (kick the peer, wait for a kick) that a poll loop
/// can also wait on beside its own fds, with a deadline.
///
/// [`EventSignal`] (eventfds, and the rendezvous socket's hang-up and
/// notices) is one; a Xen event channel (`xen::stream::XenSignal`, with
/// the peer domain's destruction as its hang-up) is another. Only a
/// signal with a socket to one of our own processes carries
/// [`Notice`]s: half-close and the final count. The rest keep the
/// defaults, which say there is nobody to tell.
pub trait StreamSignal: Signal<Error = WaitError> {
    /// One wait: for a kick, the peer's death, `extra` readable, `output`
    /// writable, or `deadline`; may return early with nothing set (the
    /// caller re-checks its ring).
    ///
    /// # Errors
    ///
    /// [`WaitError::PeerGone`] once the peer is known gone (a pending kick
    /// is reported first), [`WaitError::TimedOut`] at `deadline` or after
    /// the idle timeout, or an OS error.
    fn wait_io(
        &self,
        extra: Option<BorrowedFd<'_>>,
        output: Option<BorrowedFd<'_>>,
        deadline: Option<Instant>,
    ) -> Result<Woken, WaitError>;

    /// The idle timeout of blocking calls (`None`: none).
    fn timeout(&self) -> Option<Duration>;

    /// Whether the peer is known to be gone (one look, no wait).
    fn peer_gone(&self) -> bool;

    /// Whether [`send_notice`](Self::send_notice) can reach the peer (a
    /// socket to one of our own processes).
    fn carries_notices(&self) -> bool {
        false
    }

    /// Sends `notice` to the peer.
    ///
    /// # Errors
    ///
    /// [`Error::Os`] (`Unsupported`) when there is nobody to tell (the
    /// default); [`Error::PeerGone`] if the peer's end is gone.
    fn send_notice(&self, notice: Notice) -> Result<(), Error> {
        let _ = notice;
        Err(Error::Os {
            op: "send notice",
            source: io::Error::new(io::ErrorKind::Unsupported, "no socket to the peer"),
        })
    }

    /// What the peer said with [`Notice::Done`], if it did (never, by
    /// default).
    fn peer_done(&self) -> Option<u64> {
        None
    }
}

impl StreamSignal for EventSignal {
    fn wait_io(
        &self,
        extra: Option<BorrowedFd<'_>>,
        output: Option<BorrowedFd<'_>>,
        deadline: Option<Instant>,
    ) -> Result<Woken, WaitError> {
        EventSignal::wait_io(self, extra, output, deadline)
    }
    fn timeout(&self) -> Option<Duration> {
        EventSignal::timeout(self)
    }
    fn peer_gone(&self) -> bool {
        EventSignal::peer_gone(self)
    }
    fn carries_notices(&self) -> bool {
        EventSignal::carries_notices(self)
    }
    fn send_notice(&self, notice: Notice) -> Result<(), Error> {
        EventSignal::send_notice(self, notice)
    }
    fn peer_done(&self) -> Option<u64> {
        EventSignal::peer_done(self)
    }
}

/// The non-blocking face of a ring stream, which poll loops (ring-cli's
/// `check::duplex`, `ring listen`) drive the same way whatever the
/// protocol and whatever wakes it: `S` is its [`StreamSignal`], eventfds
/// between two processes by default.
///
/// Every method is a thin door to ring-core's blocking layer
/// ([`vchan::Blocking`], [`ring_core::vmbus::BlockingPipe`]): the arming,
/// re-checking and kicking happen there, where loom checks them.
pub trait PollStream<S: StreamSignal = EventSignal> {
    /// Reads what is there: `Some(n)` bytes (`n == 0`: clean end of
    /// stream), `None` nothing yet (wake-up armed).
    ///
    /// # Errors
    ///
    /// [`Error::PeerGone`] once the peer is gone and the ring drained, or a
    /// protocol error.
    fn try_read(&mut self, buf: &mut [u8]) -> Result<Option<usize>, Error>;

    /// Writes what fits: `Some(n)` bytes, `None` the ring is full (wake-up
    /// armed).
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] if the peer closed, [`Error::PeerGone`] if it
    /// died, or a protocol error.
    fn try_write(&mut self, buf: &[u8]) -> Result<Option<usize>, Error>;

    /// Ends our direction only, after everything written so far:
    /// `Some(true)` done, `Some(false)` this stream has no half-close (a
    /// foreign vchan peer: only [`close`](Self::close), which ends both),
    /// `None` no room yet for the end mark (wake-up armed).
    ///
    /// # Errors
    ///
    /// As [`try_write`](Self::try_write).
    fn try_shutdown_write(&mut self) -> Result<Option<bool>, Error>;

    /// Whether the peer has read every byte we wrote: `Some(())` yes,
    /// `None` not yet (wake-up armed).
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] if the peer closed with bytes of ours unread,
    /// [`Error::PeerGone`].
    fn try_delivered(&mut self) -> Result<Option<()>, Error>;

    /// Reads from `fd` straight into the ring's free space and publishes
    /// what came (vchan and the VMBus pipe: one `readv(2)` into the ring,
    /// no buffer of ours in between; see [`crate::fdio`]).
    ///
    /// Only call it when `fd` is readable (after poll), or on a
    /// non-blocking fd: a blocking fd with nothing to read blocks the call.
    ///
    /// # Errors
    ///
    /// As [`try_write`](Self::try_write); [`Error::Os`] ("read input") if
    /// the read fails.
    fn try_fill_from(&mut self, fd: BorrowedFd<'_>) -> Result<FdMove, Error>;

    /// Writes unread bytes of the ring straight to `fd` and consumes what
    /// it took (vchan and the VMBus pipe: one `writev(2)` or `sendmsg(2)`
    /// out of the ring, no buffer of ours in between).
    ///
    /// # Errors
    ///
    /// As [`try_read`](Self::try_read); [`Error::Os`] ("write output") if
    /// the write fails (`BrokenPipe`: the fd's reader has gone).
    fn try_drain_to(&mut self, fd: BorrowedFd<'_>, to: Output) -> Result<FdMove, Error>;

    /// Whether input taken by [`try_fill_from`](Self::try_fill_from) still
    /// waits in a buffer of the stream's (raw VMBus framing): call it again
    /// when the ring has room, whether or not the fd is readable.
    fn staged_input(&self) -> bool {
        false
    }

    /// A cheap look that arms nothing: (something to read, room to write).
    fn ready(&mut self) -> (bool, bool);

    /// Spins for the spin budget until [`ready`](Self::ready) shows what
    /// is wanted; returns whether it did.
    fn spin_ready(&mut self, read: bool, write: bool) -> bool;

    /// Waits for a kick, the peer's death, or `extra`, until `deadline`;
    /// may return early with nothing set (re-check and call again). After
    /// the peer's death it returns at once: the next attempts deliver what
    /// is left, then report [`Error::PeerGone`].
    ///
    /// # Errors
    ///
    /// [`Error::TimedOut`] after `deadline` or the idle timeout;
    /// [`Error::Os`].
    fn wait_event(
        &mut self,
        extra: Option<BorrowedFd<'_>>,
        deadline: Option<Instant>,
    ) -> Result<Woken, Error> {
        self.wait_io(extra, None, deadline)
    }

    /// As [`wait_event`](Self::wait_event), also ending when `output` is
    /// writable.
    ///
    /// # Errors
    ///
    /// As [`wait_event`](Self::wait_event).
    fn wait_io(
        &mut self,
        extra: Option<BorrowedFd<'_>>,
        output: Option<BorrowedFd<'_>>,
        deadline: Option<Instant>,
    ) -> Result<Woken, Error>;

    /// The deadline for a blocking call starting now.
    fn deadline(&self) -> Option<Instant> {
        self.signal().timeout().map(|t| Instant::now() + t)
    }

    /// The event channel (counters, notices).
    fn signal(&self) -> &S;

    /// Whether the peer has joined (a vchan server's client may not have
    /// yet); idle timeouts and lingers count only from then.
    fn peer_connected(&mut self) -> bool {
        true
    }

    /// Bytes read from the stream so far.
    fn bytes_read(&self) -> u64;

    /// Bytes written into the stream so far.
    fn bytes_written(&self) -> u64;

    /// Ends our side of the stream (the peer reads what is left, then end
    /// of stream).
    ///
    /// # Errors
    ///
    /// As the protocol's close.
    fn close(&mut self) -> Result<(), Error>;

    /// One non-blocking attempt to tell the peer we are ending, while what
    /// it already sent can still be read: `Some(())` told (vchan: our live
    /// byte cleared, fenced and the peer kicked; VMBus pipe: the end mark
    /// sent; raw VMBus: nothing to tell), `None` no room for the end mark
    /// (wake-up armed). Never waits, so a close after a failure or a
    /// timeout stays bounded.
    ///
    /// # Errors
    ///
    /// [`Error::PeerGone`] or a protocol error.
    fn try_hang_up(&mut self) -> Result<Option<()>, Error>;
}

/// What one [`PollStream::try_fill_from`] or
/// [`PollStream::try_drain_to`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdMove {
    /// Bytes moved: taken from the fd (fill) or given to it (drain). A
    /// stream that stages bytes (raw VMBus framing) may report 0 when only
    /// staged bytes moved on.
    Moved(usize),
    /// The ring has no room (fill) or nothing to read (drain): the wake-up
    /// is armed, wait for the peer.
    RingBlocked,
    /// The fd would block: poll it.
    FdBlocked,
    /// The end: the fd's end of file (fill), the peer's end of stream
    /// (drain).
    End,
}

/// Keeps an fd call's result for [`fill_outcome`]/[`drain_outcome`] and
/// tells the ring how many bytes it moved.
pub(crate) fn fd_call(slot: &mut Option<io::Result<usize>>, r: io::Result<usize>) -> usize {
    let n = r.as_ref().map_or(0, |&n| n);
    *slot = Some(r);
    n
}

fn fd_blocked(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// A fill's outcome: `ring` is the ring's answer (`None`: no room), `call`
/// the read's.
pub(crate) fn fill_outcome(
    ring: Option<usize>,
    call: Option<io::Result<usize>>,
) -> Result<FdMove, Error> {
    match (ring, call) {
        (None, _) => Ok(FdMove::RingBlocked),
        (Some(_), Some(Ok(0))) => Ok(FdMove::End),
        (Some(_), Some(Ok(n))) => Ok(FdMove::Moved(n)),
        (Some(_), Some(Err(e))) if fd_blocked(&e) => Ok(FdMove::FdBlocked),
        (Some(_), Some(Err(source))) => Err(Error::Os {
            op: "read input",
            source,
        }),
        (Some(_), None) => Ok(FdMove::FdBlocked),
    }
}

/// A drain's outcome: `ring` is the ring's answer (`None`: nothing to
/// read), `call` the write's.
pub(crate) fn drain_outcome(
    ring: Option<Drained>,
    call: Option<io::Result<usize>>,
) -> Result<FdMove, Error> {
    match (ring, call) {
        (None, _) => Ok(FdMove::RingBlocked),
        (Some(Drained::End), _) => Ok(FdMove::End),
        (Some(Drained::Took(_)), Some(Ok(n))) if n > 0 => Ok(FdMove::Moved(n)),
        (Some(Drained::Took(_)), Some(Err(source))) if !fd_blocked(&source) => Err(Error::Os {
            op: "write output",
            source,
        }),
        (Some(Drained::Took(_)), _) => Ok(FdMove::FdBlocked),
    }
}

/// What the wait of a [`PollStream`] returns when ring-core's layer has
/// learnt the peer is gone: a wake-up, so the caller looks once more.
pub(crate) fn woken(w: Option<Woken>) -> Woken {
    w.unwrap_or(Woken {
        kicked: true,
        extra: false,
        writable: false,
    })
}

/// A connected vchan endpoint over shared memory (a memfd of ours, or a
/// window of foreign memory) with its event channel: ring-core's
/// [`vchan::Blocking`] on an [`EventSignal`].
///
/// Blocking calls ([`read`](Self::read), [`write`](Self::write),
/// [`send`](Self::send), ...) spin, then sleep on the
/// eventfd; the `try_` calls never block and leave the wake-up request
/// armed when they return `Ok(None)`, so an outside poll loop can wait with
/// [`PollStream::wait_event`]. One thread at a time: the type is `Send`,
/// not shared.
///
/// # Examples
///
/// An echo on another thread, through `std::io`. Every blocking call has a
/// timeout, so a lost peer fails the call instead of hanging it:
///
/// ```
/// use ring_hosted::stream;
/// use std::io::{Read, Write};
/// use std::time::Duration;
///
/// let (mut server, mut client) = stream::pair(1024, 1024)?;
/// client.signal_mut().set_timeout(Some(Duration::from_secs(10)));
/// server.signal_mut().set_timeout(Some(Duration::from_secs(10)));
/// let echo = std::thread::spawn(move || -> Result<(), ring_hosted::Error> {
///     let mut buf = [0u8; 64];
///     let n = client.read(&mut buf)?;
///     client.write_all(&buf[..n].to_ascii_uppercase())?;
///     client.close()
/// });
/// server.write_all(b"hello")?;
/// let mut reply = Vec::new();
/// server.read_to_end(&mut reply)?;
/// assert_eq!(reply, b"HELLO");
/// echo.join().expect("the echo thread panicked")?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct VchanStream<M: SharedMem = Arc<MemFd>, S: StreamSignal = EventSignal> {
    inner: Blocking<M, S>,
    /// The message stream lost its boundaries: the peer sent a length no
    /// message of the ring can have.
    msg_broken: bool,
    /// The length of the next message, when its prefix is read and its
    /// bytes are not (a buffer too small for it, or a wait that ended):
    /// the next [`recv_msg`](Self::recv_msg) takes it from here.
    msg_pending: Option<usize>,
    scratch: Vec<u8>,
}

impl<M: SharedMem, S: StreamSignal> VchanStream<M, S> {
    /// Wraps a connected endpoint and its signal.
    ///
    /// # Examples
    ///
    /// What [`pair`] does, step by step: a memfd in vchan's flat layout, the
    /// server's and the client's endpoint over it, and two connected signals:
    ///
    /// ```
    /// use ring_core::vchan::{self, FlatLayout, Orders, ServerOptions};
    /// use ring_hosted::{eventfd, memfd::MemFd, stream::VchanStream};
    /// use std::sync::Arc;
    /// use std::time::Duration;
    ///
    /// let orders = Orders::for_sizes(4096, 4096)?;
    /// let mem = Arc::new(MemFd::create("doc-vchan", FlatLayout::new(orders).size)?);
    /// let server_end = vchan::serve_flat(mem.clone(), orders, ServerOptions::default())?;
    /// let client_end = vchan::connect_flat(mem)?;
    /// let (server_signal, client_signal) = eventfd::pair()?;
    /// let mut server = VchanStream::new(server_end, server_signal);
    /// let mut client = VchanStream::new(client_end, client_signal);
    ///
    /// server.signal_mut().set_timeout(Some(Duration::from_secs(10)));
    /// client.send(b"ping")?;
    /// let mut got = [0u8; 4];
    /// server.recv(&mut got)?;
    /// assert_eq!(&got, b"ping");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(ep: Endpoint<M>, signal: S) -> Self {
        VchanStream {
            inner: Blocking::new(ep, signal),
            msg_broken: false,
            msg_pending: None,
            scratch: Vec::new(),
        }
    }

    /// Which end this is.
    pub fn role(&self) -> Role {
        self.inner.role()
    }

    /// The endpoint inside (for readiness queries and introspection).
    pub fn endpoint(&mut self) -> &mut Endpoint<M> {
        self.inner.endpoint()
    }

    /// ring-core's blocking wrapper inside.
    pub fn blocking(&mut self) -> &mut Blocking<M, S> {
        &mut self.inner
    }

    /// The signal inside (counters, spin and timeout settings).
    pub fn signal(&self) -> &S {
        self.inner.signal()
    }

    /// The signal inside, to change its spin or timeout.
    ///
    /// # Examples
    ///
    /// A read from a silent peer gives up after the signal's timeout:
    ///
    /// ```
    /// use ring_hosted::{stream, Error};
    /// use std::time::Duration;
    ///
    /// let (mut server, _silent_client) = stream::pair(1024, 1024)?;
    /// server.signal_mut().set_timeout(Some(Duration::from_millis(20)));
    /// let mut buf = [0u8; 8];
    /// assert!(matches!(server.read(&mut buf), Err(Error::TimedOut)));
    /// assert_eq!(server.signal().wake_counts().timeouts, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn signal_mut(&mut self) -> &mut S {
        self.inner.signal_mut()
    }

    /// The shared memory holding the control page (for `ring
    /// inspect`-style dumps).
    pub fn memory(&self) -> &M {
        self.inner.control()
    }

    /// Non-blocking read: `Ok(Some(n))` bytes read (`n == 0` is a clean end
    /// of stream), `Ok(None)` nothing yet (wake-up armed).
    ///
    /// # Errors
    ///
    /// [`Error::PeerGone`] once the peer is gone and the ring drained;
    /// [`Error::Vchan`] if the peer broke the protocol.
    ///
    /// # Examples
    ///
    /// ```
    /// use ring_hosted::stream;
    ///
    /// let (mut server, mut client) = stream::pair(1024, 1024)?;
    /// let mut buf = [0u8; 8];
    /// assert_eq!(server.try_read(&mut buf)?, None); // nothing yet
    /// client.write_all(b"hi")?;
    /// assert_eq!(server.try_read(&mut buf)?, Some(2));
    /// assert_eq!(&buf[..2], b"hi");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_read(&mut self, buf: &mut [u8]) -> Result<Option<usize>, Error> {
        Ok(self.inner.try_read(buf)?)
    }

    /// Non-blocking write: `Ok(Some(n))` bytes written, `Ok(None)` the ring
    /// is full (wake-up armed).
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] if the peer closed, [`Error::PeerGone`] if it died.
    ///
    /// # Examples
    ///
    /// A 1 KiB ring takes 1 KiB, then nothing until the peer reads:
    ///
    /// ```
    /// use ring_hosted::stream;
    ///
    /// let (mut server, mut client) = stream::pair(1024, 1024)?;
    /// assert_eq!(client.try_write(&[1u8; 1500])?, Some(1024));
    /// assert_eq!(client.try_write(b"x")?, None); // full
    /// let mut buf = [0u8; 100];
    /// assert_eq!(server.try_read(&mut buf)?, Some(100));
    /// assert_eq!(client.try_write(&[2u8; 500])?, Some(100));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_write(&mut self, buf: &[u8]) -> Result<Option<usize>, Error> {
        Ok(self.inner.try_write(buf)?)
    }

    /// As [`try_write`](Self::try_write), for several buffers gathered in
    /// order under one publish.
    ///
    /// # Errors
    ///
    /// As [`try_write`](Self::try_write).
    pub fn try_write_vectored<B: std::ops::Deref<Target = [u8]>>(
        &mut self,
        bufs: &[B],
    ) -> Result<Option<usize>, Error> {
        Ok(self.inner.try_write_vectored(bufs)?)
    }

    /// Reads from `fd` straight into the ring's free space (one
    /// `readv(2)`, see [`crate::fdio`]) and publishes what came.
    ///
    /// # Errors
    ///
    /// As [`PollStream::try_fill_from`].
    ///
    /// # Examples
    ///
    /// The bytes go from a pipe into the ring with one `readv(2)`, without a
    /// buffer in between:
    ///
    /// ```
    /// use ring_hosted::stream::{self, FdMove};
    /// use std::io::Write;
    /// use std::os::fd::AsFd;
    /// use std::time::Duration;
    ///
    /// let (mut server, mut client) = stream::pair(1024, 1024)?;
    /// let (input, mut feed) = std::io::pipe()?;
    /// feed.write_all(b"from a pipe")?;
    /// drop(feed);
    /// assert_eq!(client.try_fill_from(input.as_fd())?, FdMove::Moved(11));
    /// assert_eq!(client.try_fill_from(input.as_fd())?, FdMove::End); // the pipe's end
    ///
    /// server.signal_mut().set_timeout(Some(Duration::from_secs(10)));
    /// let mut got = [0u8; 11];
    /// server.recv(&mut got)?;
    /// assert_eq!(&got, b"from a pipe");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_fill_from(&mut self, fd: BorrowedFd<'_>) -> Result<FdMove, Error>
    where
        M: FdIo,
    {
        let mut call = None;
        let ring = self.inner.try_write_with(usize::MAX, |mem, spans| {
            fd_call(&mut call, mem.read_from_fd(fd, spans))
        })?;
        fill_outcome(ring, call)
    }

    /// Writes unread bytes of the ring straight to `fd` (one `writev(2)`
    /// or `sendmsg(2)`) and consumes what it took.
    ///
    /// # Errors
    ///
    /// As [`PollStream::try_drain_to`].
    ///
    /// # Examples
    ///
    /// The ring's unread bytes go straight to a pipe with one `writev(2)`:
    ///
    /// ```
    /// use ring_hosted::fdio::Output;
    /// use ring_hosted::stream::{self, FdMove};
    /// use std::io::Read;
    /// use std::os::fd::AsFd;
    ///
    /// let (mut server, mut client) = stream::pair(1024, 1024)?;
    /// let (mut out, sink) = std::io::pipe()?;
    /// client.write_all(b"to a pipe")?;
    /// assert_eq!(server.try_drain_to(sink.as_fd(), Output::File)?, FdMove::Moved(9));
    /// assert_eq!(server.try_drain_to(sink.as_fd(), Output::File)?, FdMove::RingBlocked);
    /// drop(sink);
    /// let mut got = Vec::new();
    /// out.read_to_end(&mut got)?;
    /// assert_eq!(got, b"to a pipe");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_drain_to(&mut self, fd: BorrowedFd<'_>, to: Output) -> Result<FdMove, Error>
    where
        M: FdIo,
    {
        let mut call = None;
        let ring = self.inner.try_read_with(usize::MAX, |mem, spans| {
            fd_call(&mut call, mem.write_to_fd(fd, spans, to))
        })?;
        drain_outcome(ring, call)
    }

    /// Reads at least one byte, blocking; `Ok(0)` is a clean end of stream.
    ///
    /// # Errors
    ///
    /// [`Error::PeerGone`] if the peer died (after the bytes it left in the
    /// ring were read); [`Error::TimedOut`]; [`Error::Vchan`].
    ///
    /// # Examples
    ///
    /// ```
    /// use ring_hosted::stream;
    /// use std::time::Duration;
    ///
    /// let (mut server, mut client) = stream::pair(1024, 1024)?;
    /// server.signal_mut().set_timeout(Some(Duration::from_secs(10)));
    /// client.write_all(b"abc")?;
    /// let mut buf = [0u8; 16];
    /// let n = server.read(&mut buf)?;
    /// assert_eq!(&buf[..n], b"abc");
    /// client.close()?;
    /// assert_eq!(server.read(&mut buf)?, 0); // a clean end of stream
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        Ok(self.inner.read(buf)?)
    }

    /// Writes at least one byte of `buf`, blocking.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] if the peer closed; [`Error::PeerGone`];
    /// [`Error::TimedOut`].
    ///
    /// # Examples
    ///
    /// A write takes what fits and says how much; [`write_all`](Self::write_all)
    /// loops until everything is in:
    ///
    /// ```
    /// use ring_hosted::stream;
    /// use std::time::Duration;
    ///
    /// let (_server, mut client) = stream::pair(1024, 1024)?;
    /// client.signal_mut().set_timeout(Some(Duration::from_secs(10)));
    /// let n = client.write(&[7u8; 3000])?;
    /// assert_eq!(n, 1024); // the whole ring, and no more
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write(&mut self, buf: &[u8]) -> Result<usize, Error> {
        Ok(self.inner.write(buf)?)
    }

    /// Writes at least one byte of `bufs`, gathered in order under one
    /// publish (all of them if they fit), blocking.
    ///
    /// # Errors
    ///
    /// As [`write`](Self::write).
    pub fn write_vectored<B: std::ops::Deref<Target = [u8]>>(
        &mut self,
        bufs: &[B],
    ) -> Result<usize, Error> {
        Ok(self.inner.write_vectored(bufs)?)
    }

    /// Writes all of `buf`.
    ///
    /// # Errors
    ///
    /// As [`write`](Self::write).
    pub fn write_all(&mut self, buf: &[u8]) -> Result<(), Error> {
        Ok(self.inner.write_all(buf)?)
    }

    /// Sends `buf` as one packet: all of it, or (after blocking) nothing.
    ///
    /// # Errors
    ///
    /// [`Error::Vchan`] with `TooLarge` if it can never fit; [`Error::Closed`];
    /// [`Error::PeerGone`].
    ///
    /// # Examples
    ///
    /// A packet larger than the ring can never be sent, and nothing of it is:
    ///
    /// ```
    /// use ring_core::vchan;
    /// use ring_hosted::{stream, Error};
    ///
    /// let (mut server, mut client) = stream::pair(1024, 1024)?;
    /// client.send(&[1u8; 1000])?;
    /// let too_big = client.send(&[2u8; 2000]);
    /// assert!(matches!(too_big, Err(Error::Vchan(vchan::Error::TooLarge { len: 2000, .. }))));
    /// let mut buf = [0u8; 2000];
    /// assert_eq!(server.try_read(&mut buf)?, Some(1000));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn send(&mut self, buf: &[u8]) -> Result<(), Error> {
        Ok(self.inner.send(buf)?)
    }

    /// The old name of [`send`](Self::send).
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send).
    #[deprecated(
        since = "0.1.0",
        note = "renamed `send`, as in ring-core and libxenvchan"
    )]
    pub fn send_packet(&mut self, buf: &[u8]) -> Result<(), Error> {
        self.send(buf)
    }

    /// Receives exactly `buf.len()` bytes, blocking until all are there.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] if the stream ended with fewer bytes left;
    /// [`Error::PeerGone`]; [`Error::Vchan`] with `TooLarge` if `buf`
    /// exceeds the ring.
    ///
    /// # Examples
    ///
    /// Exact sizes out of a byte stream, however the writer cut it:
    ///
    /// ```
    /// use ring_hosted::{stream, Error};
    /// use std::time::Duration;
    ///
    /// let (mut server, mut client) = stream::pair(1024, 1024)?;
    /// server.signal_mut().set_timeout(Some(Duration::from_secs(10)));
    /// client.write_all(b"headbody!")?;
    /// let (mut head, mut body) = ([0u8; 4], [0u8; 4]);
    /// server.recv(&mut head)?;
    /// server.recv(&mut body)?;
    /// assert_eq!((&head, &body), (b"head", b"body"));
    /// client.close()?;
    /// // One byte left, four asked for: the stream ended short.
    /// assert!(matches!(server.recv(&mut head), Err(Error::Closed)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn recv(&mut self, buf: &mut [u8]) -> Result<(), Error> {
        Ok(self.inner.recv(buf)?)
    }

    /// The old name of [`recv`](Self::recv).
    ///
    /// # Errors
    ///
    /// As [`recv`](Self::recv).
    #[deprecated(
        since = "0.1.0",
        note = "renamed `recv`, as in ring-core and libxenvchan"
    )]
    pub fn recv_packet(&mut self, buf: &mut [u8]) -> Result<(), Error> {
        self.recv(buf)
    }

    /// Largest message [`send_msg`](Self::send_msg) accepts: the ring we
    /// write, less the length prefix.
    pub fn max_msg(&self) -> usize {
        self.inner.write_capacity() - MSG_HEADER
    }

    /// Sends one message: a 4-byte little-endian length and the bytes, as
    /// one packet, so the peer never sees half a message.
    ///
    /// # Errors
    ///
    /// [`Error::Vchan`] with `TooLarge` above [`max_msg`](Self::max_msg);
    /// else as [`send`](Self::send).
    ///
    /// # Examples
    ///
    /// Messages keep their boundaries, the empty one included:
    ///
    /// ```
    /// use ring_hosted::stream::{self, MSG_HEADER};
    /// use std::time::Duration;
    ///
    /// let (mut server, mut client) = stream::pair(1024, 1024)?;
    /// server.signal_mut().set_timeout(Some(Duration::from_secs(10)));
    /// assert_eq!(client.max_msg(), 1024 - MSG_HEADER);
    /// for msg in [&b"one"[..], b"", b"three"] {
    ///     client.send_msg(msg)?;
    /// }
    /// let mut buf = [0u8; 64];
    /// let n = server.recv_msg(&mut buf)?;
    /// assert_eq!(&buf[..n], b"one");
    /// assert_eq!(server.recv_msg(&mut buf)?, 0);
    /// let n = server.recv_msg(&mut buf)?;
    /// assert_eq!(&buf[..n], b"three");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn send_msg(&mut self, msg: &[u8]) -> Result<(), Error> {
        let len = u32::try_from(msg.len()).unwrap_or(u32::MAX);
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        scratch.extend_from_slice(&len.to_le_bytes());
        scratch.extend_from_slice(msg);
        let r = self.send(&scratch);
        self.scratch = scratch;
        r
    }

    /// Receives one message into `buf` and returns its length.
    ///
    /// # Errors
    ///
    /// A `buf` shorter than the message is our mistake, not the peer's:
    /// [`Error::Vchan`] with `TooLarge` (class
    /// [`Usage`](ring_core::error::ErrorClass::Usage), as the VMBus pipe's
    /// `OutOfRange`), nothing consumed, and a retry with a larger buffer
    /// receives the message. A length prefix larger than the ring can ever
    /// carry is the peer's error: the stream is out of step, and this and
    /// every later message call return a `Corrupt` [`Error::Vchan`]. Else
    /// as [`recv`](Self::recv).
    ///
    /// # Examples
    ///
    /// A buffer too small for the message leaves it waiting:
    ///
    /// ```
    /// use ring_hosted::{stream, Error};
    /// use ring_core::error::ErrorClass;
    /// use std::time::Duration;
    ///
    /// let (mut server, mut client) = stream::pair(1024, 1024)?;
    /// server.signal_mut().set_timeout(Some(Duration::from_secs(10)));
    /// client.send_msg(b"a longer message")?;
    /// client.send_msg(b"next")?;
    /// let mut small = [0u8; 4];
    /// let Err(Error::Vchan(e)) = server.recv_msg(&mut small) else { panic!("fits?") };
    /// assert_eq!(e.class(), ErrorClass::Usage);
    /// let mut buf = [0u8; 64];
    /// let n = server.recv_msg(&mut buf)?;
    /// assert_eq!(&buf[..n], b"a longer message");
    /// assert_eq!(server.recv_msg(&mut small)?, 4);
    /// assert_eq!(&small, b"next");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn recv_msg(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        let capacity = self.inner.endpoint().read_capacity() - MSG_HEADER;
        if self.msg_broken {
            return Err(Error::Vchan(vchan::Error::Corrupt(ring_core::Corrupt {
                what: "message stream out of step after a bad length",
            })));
        }
        let len = match self.msg_pending {
            Some(len) => len,
            None => {
                let mut head = [0u8; MSG_HEADER];
                self.recv(&mut head)?;
                let len = u32::from_le_bytes(head) as usize;
                if len > capacity {
                    self.msg_broken = true;
                    return Err(Error::Vchan(vchan::Error::Corrupt(ring_core::Corrupt {
                        what: "message length larger than the ring",
                    })));
                }
                self.msg_pending = Some(len);
                len
            }
        };
        let Some(dst) = buf.get_mut(..len) else {
            return Err(Error::Vchan(vchan::Error::TooLarge {
                len,
                capacity: buf.len(),
            }));
        };
        self.recv(dst)?;
        self.msg_pending = None;
        Ok(len)
    }

    /// Ends our direction only, for a peer of ours: tells it over the
    /// rendezvous socket how many bytes we wrote in all, and writes no
    /// more. The peer reads to that count, then end of stream; its own
    /// direction flows on. Returns `false` (and does nothing) when there is
    /// no socket to the peer (a foreign peer: vchan itself has no
    /// half-close).
    ///
    /// # Errors
    ///
    /// [`Error::Os`] if the socket write fails.
    ///
    /// # Examples
    ///
    /// With a socket between the two ends (the rendezvous gives one; here a
    /// socket pair stands in), the reader gets end of stream while the other
    /// direction flows on. Without one, there is nothing to send:
    ///
    /// ```
    /// use ring_hosted::stream;
    /// use std::io::Read;
    /// use std::os::unix::net::UnixStream;
    /// use std::time::Duration;
    ///
    /// let (mut server, mut client) = stream::pair(1024, 1024)?;
    /// assert!(!client.shutdown_write()?); // no socket to the peer yet
    /// let (a, b) = UnixStream::pair()?;
    /// server.signal_mut().set_hangup(a.into());
    /// client.signal_mut().set_hangup(b.into());
    /// server.signal_mut().set_timeout(Some(Duration::from_secs(10)));
    /// client.signal_mut().set_timeout(Some(Duration::from_secs(10)));
    ///
    /// client.write_all(b"request")?;
    /// assert!(client.shutdown_write()?);
    /// let mut got = Vec::new();
    /// server.read_to_end(&mut got)?;
    /// assert_eq!(got, b"request");
    /// server.write_all(b"reply")?;
    /// let mut reply = [0u8; 5];
    /// client.recv(&mut reply)?;
    /// assert_eq!(&reply, b"reply");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn shutdown_write(&mut self) -> Result<bool, Error> {
        if !self.signal().carries_notices() {
            return Ok(false);
        }
        let total = self.inner.bytes_written();
        self.signal().send_notice(Notice::WriteClosed(total))?;
        Ok(true)
    }

    /// Blocks until the peer has read every byte we wrote.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] if it closed with bytes of ours unread;
    /// [`Error::PeerGone`]; [`Error::TimedOut`].
    ///
    /// # Examples
    ///
    /// ```
    /// use ring_hosted::{stream, Error};
    /// use std::time::Duration;
    ///
    /// let (mut server, mut client) = stream::pair(1024, 1024)?;
    /// client.signal_mut().set_timeout(Some(Duration::from_millis(20)));
    /// client.write_all(b"hello")?;
    /// assert!(matches!(client.wait_delivered(), Err(Error::TimedOut))); // unread
    /// let mut buf = [0u8; 5];
    /// server.recv(&mut buf)?;
    /// client.wait_delivered()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn wait_delivered(&mut self) -> Result<(), Error> {
        Ok(self.inner.wait_delivered()?)
    }

    /// Closes our end: the peer reads what is left and then end of stream,
    /// and its writes fail. Idempotent.
    ///
    /// # Errors
    ///
    /// [`Error::Os`] if the final kick fails.
    ///
    /// # Examples
    ///
    /// The peer still reads what we left, then end of stream, and can write no
    /// more:
    ///
    /// ```
    /// use ring_hosted::{stream, Error};
    /// use std::io::Read;
    /// use std::time::Duration;
    ///
    /// let (mut server, mut client) = stream::pair(1024, 1024)?;
    /// server.signal_mut().set_timeout(Some(Duration::from_secs(10)));
    /// client.write_all(b"last words")?;
    /// client.close()?;
    /// client.close()?; // again: nothing happens
    /// let mut got = Vec::new();
    /// server.read_to_end(&mut got)?;
    /// assert_eq!(got, b"last words");
    /// assert!(matches!(server.write(b"too late"), Err(Error::Closed)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn close(&mut self) -> Result<(), Error> {
        match self.inner.close() {
            Err(ring_core::signal::BlockingError::Ring(vchan::Error::Closed)) => Ok(()),
            r => Ok(r?),
        }
    }

    /// Whether the peer has been seen to hang up.
    pub fn peer_gone(&self) -> bool {
        self.inner.peer_gone()
    }

    /// Kicks the peer whether or not it asked: unsticks a peer that sleeps
    /// although the ring says it has work (`ring inspect` shows a signal
    /// owed to it).
    ///
    /// # Errors
    ///
    /// [`Error::Os`] if the eventfd write fails.
    pub fn kick(&self) -> Result<(), Error> {
        Ok(self.inner.kick()?)
    }
}

/// A connected server/client pair in this process over a fresh memfd and
/// eventfds (no socket, so no hang-up detection): for tests, examples and
/// in-process benchmarks: `(server, client)`. The sizes are minimums, the
/// server's read ring first as libxenvchan's server takes them (see
/// docs/naming.md): `read_min` for client→server (vchan's *left* ring),
/// `write_min` for server→client (*right*), as `ring_std::vchan::pair`.
///
/// # Errors
///
/// [`Error::Vchan`] for sizes vchan cannot make; [`Error::Os`].
///
/// # Examples
///
/// The rings are as large as asked (sizes round up to a power of two from
/// 1 KiB to 1 MiB):
///
/// ```
/// use ring_hosted::stream;
/// use std::io::Read;
/// use std::time::Duration;
///
/// let (mut server, mut client) = stream::pair(4096, 8192)?;
/// assert_eq!(client.endpoint().write_capacity(), 4096); // read_min: client to server
/// assert_eq!(client.endpoint().read_capacity(), 8192); // write_min: server to client
/// server.signal_mut().set_timeout(Some(Duration::from_secs(10)));
/// client.write_all(b"over the ring")?;
/// client.close()?;
/// let mut got = Vec::new();
/// server.read_to_end(&mut got)?;
/// assert_eq!(got, b"over the ring");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn pair(read_min: usize, write_min: usize) -> Result<(VchanStream, VchanStream), Error> {
    let orders =
        vchan::Orders::for_sizes(read_min, write_min).map_err(|e| Error::Vchan(e.into()))?;
    let mem = Arc::new(MemFd::create(
        "ring-pair",
        vchan::FlatLayout::new(orders).size,
    )?);
    let server = vchan::serve_flat(mem.clone(), orders, vchan::ServerOptions::default())?;
    let client = vchan::connect_flat(mem)?;
    let (s_sig, c_sig) = crate::eventfd::pair()?;
    Ok((
        VchanStream::new(server, s_sig),
        VchanStream::new(client, c_sig),
    ))
}

impl<M: FdIo, S: StreamSignal> PollStream<S> for VchanStream<M, S> {
    fn try_read(&mut self, buf: &mut [u8]) -> Result<Option<usize>, Error> {
        VchanStream::try_read(self, buf)
    }
    fn try_write(&mut self, buf: &[u8]) -> Result<Option<usize>, Error> {
        VchanStream::try_write(self, buf)
    }
    fn try_fill_from(&mut self, fd: BorrowedFd<'_>) -> Result<FdMove, Error> {
        VchanStream::try_fill_from(self, fd)
    }
    fn try_drain_to(&mut self, fd: BorrowedFd<'_>, to: Output) -> Result<FdMove, Error> {
        VchanStream::try_drain_to(self, fd, to)
    }
    fn try_shutdown_write(&mut self) -> Result<Option<bool>, Error> {
        self.shutdown_write().map(Some)
    }
    fn try_delivered(&mut self) -> Result<Option<()>, Error> {
        Ok(self.inner.try_delivered()?)
    }
    fn ready(&mut self) -> (bool, bool) {
        self.inner.ready()
    }
    fn spin_ready(&mut self, read: bool, write: bool) -> bool {
        self.inner.spin_ready(read, write)
    }
    fn wait_io(
        &mut self,
        extra: Option<BorrowedFd<'_>>,
        output: Option<BorrowedFd<'_>>,
        deadline: Option<Instant>,
    ) -> Result<Woken, Error> {
        let w = self
            .inner
            .wait_with(|s| s.wait_io(extra, output, deadline))?;
        Ok(woken(w))
    }
    fn signal(&self) -> &S {
        VchanStream::signal(self)
    }
    fn peer_connected(&mut self) -> bool {
        !matches!(self.endpoint().peer_live(), Ok(vchan::Live::Waiting))
    }
    fn bytes_read(&self) -> u64 {
        self.inner.bytes_read()
    }
    fn bytes_written(&self) -> u64 {
        self.inner.bytes_written()
    }
    fn close(&mut self) -> Result<(), Error> {
        VchanStream::close(self)
    }
    fn try_hang_up(&mut self) -> Result<Option<()>, Error> {
        match self.inner.hang_up() {
            Err(ring_core::signal::BlockingError::Ring(vchan::Error::Closed)) => Ok(Some(())),
            r => Ok(r.map(Some)?),
        }
    }
}

impl<M: SharedMem, S: StreamSignal> Drop for VchanStream<M, S> {
    fn drop(&mut self) {
        // Best effort: a peer blocked on us must learn that we are gone.
        let _ = self.close();
    }
}

impl<M: SharedMem, S: StreamSignal> io::Read for VchanStream<M, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        VchanStream::read(self, buf).map_err(io::Error::from)
    }
}

impl<M: SharedMem, S: StreamSignal> io::Write for VchanStream<M, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        VchanStream::write(self, buf).map_err(io::Error::from)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        VchanStream::write_vectored(self, bufs).map_err(io::Error::from)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Bytes are visible to the peer as soon as `write` returns.
        Ok(())
    }
}
