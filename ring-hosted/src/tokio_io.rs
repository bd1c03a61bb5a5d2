//! Tokio [`AsyncRead`]/[`AsyncWrite`] over a [`VchanStream`] or a
//! [`VmbusPipe`] (feature `tokio`), whole or split into halves.
//!
//! The ring calls never block: one that cannot make progress has already
//! armed its wake-up request and re-checked the ring when it returns
//! "not now". Only then does the stream wait, for the eventfd the peer
//! kicks to become readable (through [`AsyncFd`]), and for the peer's
//! hang-up fd (the rendezvous socket, or a pidfd from
//! [`EventSignal::set_watch`](crate::eventfd::EventSignal::set_watch)) if
//! the signal has one. A hang-up is taken as the blocking streams take
//! it: what the peer published before it went is still read, then reads
//! and writes fail with [`Error::PeerGone`] (`ConnectionReset`), so a
//! peer that dies without closing is noticed while we wait.
//!
//! ```text
//!   AsyncStream ──into_split()──► ReadHalf  (its own registrations)
//!                                 WriteHalf (its own registrations)
//! ```
//!
//! Both directions wait on the one eventfd the peer kicks, and tokio
//! keeps one waker per registration, so each direction registers its own
//! duplicates of the eventfd and the hang-up fd: a kick is an edge on
//! both, and a half that stops polling (its future lost a `select!`, its
//! task went on to other work) can never keep the other's wake-up. How
//! the two share the files without taking each other's events is told at
//! `poll_event` in the source; the wake-up counters of the signal
//! ([`EventSignal::wake_counts`]) count each wake-up by its cause, as the
//! blocking waits do.
//!
//! Every wait here is ring-core's [`poll_attempt`] (the function its loom
//! models check): try, and on "not now" poll the registrations, returning
//! `Pending` only once they hold the task's waker. A wait also ends, as a blocking one does, after the
//! signal's [liveness period](crate::eventfd::EventSignal::set_liveness)
//! (a timerfd on the reactor; decided when the stream is wrapped), so a
//! foreign vchan peer that clears its live byte without a kick is still
//! seen.
//!
//! [`AsyncStream::readable`] and [`AsyncStream::writable`] wait the same
//! way without reading or writing: the wake-up request is armed and the
//! ring re-checked by ring-core's `try_readable`/`try_writable`.
//!
//! There is no `AsFd`: no one fd stands for the stream's readiness. It
//! is the ring's state in shared memory; the eventfd is kicked only once
//! a request is armed (a poll on it alone sleeps through bytes already
//! there), and in async use its counter is never taken, so once kicked it
//! stays readable; the peer's end and death come on another fd.
//!
//! # Ending a stream
//!
//! [`shutdown`](tokio::io::AsyncWriteExt::shutdown) ends our direction
//! only, for both protocols, and never blocks the runtime (a VMBus end
//! mark waits for room on the reactor); the peer's half-close ends our
//! reads with `Ok(0)` as soon as it arrives. Between two of our own
//! processes, [`AsyncStream::confirm`] is the last step, as `ring
//! connect` and `ring listen` take it: each side says how many bytes it
//! received.
//!
//! # Sessions
//!
//! [`connect`] and [`AsyncListener`] set sessions up over the rendezvous
//! without blocking the runtime. An echo over vchan, server and client
//! both tokio tasks (the same over VMBus is on [`AsyncListener`]):
//!
//! ```
//! use ring_hosted::session::Vchan;
//! use ring_hosted::tokio_io::{self, AsyncListener};
//! use std::time::Duration;
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! use tokio::time::timeout;
//!
//! let dir = std::env::temp_dir().join(format!("ring-tokio-echo-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! let path = dir.join("sock");
//! let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//! runtime.block_on(async {
//!     let mut listener = AsyncListener::<Vchan>::bind(&path)?;
//!     let server = tokio::spawn(async move {
//!         let mut s = listener.accept().await?;
//!         let mut buf = [0u8; 256];
//!         loop {
//!             let n = s.read(&mut buf).await?;
//!             if n == 0 {
//!                 break; // the client's half-close
//!             }
//!             s.write_all(&buf[..n]).await?;
//!         }
//!         s.shutdown().await?;
//!         s.confirm().await?;
//!         Ok::<_, std::io::Error>(())
//!     });
//!     let client = tokio_io::connect::<Vchan>(&path).await?;
//!     let (mut rd, mut wr) = client.into_split();
//!     let sender = tokio::spawn(async move {
//!         wr.write_all(&[7u8; 100_000]).await?;
//!         wr.shutdown().await?;
//!         Ok::<_, std::io::Error>(wr)
//!     });
//!     let mut back = Vec::new();
//!     timeout(Duration::from_secs(10), rd.read_to_end(&mut back)).await??;
//!     assert_eq!(back, vec![7u8; 100_000]);
//!     let mut client = rd.reunite(sender.await??).expect("one stream");
//!     timeout(Duration::from_secs(10), client.confirm()).await??;
//!     server.await??;
//!     Ok::<(), Box<dyn std::error::Error>>(())
//! })?;
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![allow(unsafe_code)]

use crate::eventfd::{EventSignal, Notice};
use crate::rendezvous::{self, ClientConfig, HandshakeProblem};
use crate::session::{self, Protocol};
use crate::stream::{PollStream, VchanStream};
use crate::vmbus::VmbusPipe;
use crate::Error;
use ring_core::signal::poll_attempt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A vchan stream for tokio.
///
/// # Examples
///
/// Both ends of an in-process pair under one current-thread runtime, every
/// wait under a deadline:
///
/// ```
/// use ring_hosted::{stream, tokio_io::AsyncVchan};
/// use std::time::Duration;
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
/// use tokio::time::timeout;
///
/// let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
/// runtime.block_on(async {
///     let (server, client) = stream::pair(1024, 1024)?;
///     let (mut server, mut client) = (AsyncVchan::new(server)?, AsyncVchan::new(client)?);
///     client.write_all(b"both ends async").await?;
///     let mut got = [0u8; 15];
///     timeout(Duration::from_secs(10), server.read_exact(&mut got)).await??;
///     assert_eq!(&got, b"both ends async");
///     Ok::<(), Box<dyn std::error::Error>>(())
/// })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub type AsyncVchan = AsyncStream<VchanStream>;

/// A VMBus pipe for tokio.
///
/// # Examples
///
/// A VMBus pipe's `shutdown` ends our direction only: the server reads to
/// the end, and its reply still comes back.
///
/// ```
/// use ring_hosted::vmbus::{ChannelLayout, VmbusPipe};
/// use ring_hosted::{eventfd, memfd::MemFd, tokio_io::AsyncVmbus};
/// use std::{sync::Arc, time::Duration};
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
/// use tokio::time::timeout;
///
/// let layout = ChannelLayout::new(4096, 4096)?;
/// let mem = Arc::new(MemFd::create("doc-async-vmbus", layout.total_size())?);
/// let (server_signal, client_signal) = eventfd::pair()?;
/// let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
/// runtime.block_on(async {
///     let mut server = AsyncVmbus::new(VmbusPipe::serve(mem.clone(), layout, server_signal)?)?;
///     let mut client = AsyncVmbus::new(VmbusPipe::connect(mem, layout, client_signal)?)?;
///     client.write_all(b"request").await?;
///     client.shutdown().await?;
///     let mut got = Vec::new();
///     timeout(Duration::from_secs(10), server.read_to_end(&mut got)).await??;
///     assert_eq!(got, b"request");
///     server.write_all(b"reply").await?;
///     let mut reply = [0u8; 5];
///     timeout(Duration::from_secs(10), client.read_exact(&mut reply)).await??;
///     assert_eq!(&reply, b"reply");
///     Ok::<(), Box<dyn std::error::Error>>(())
/// })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub type AsyncVmbus = AsyncStream<VmbusPipe>;

/// What a stream needs to run under tokio: the poll-loop calls, and a
/// gathered write where the protocol has one.
pub trait AsyncRing: PollStream {
    /// Writes from `bufs` in order: `Some(n)` bytes, `None` full (armed).
    ///
    /// # Errors
    ///
    /// As [`PollStream::try_write`].
    fn try_write_gathered(&mut self, bufs: &[io::IoSlice<'_>]) -> Result<Option<usize>, Error> {
        match bufs.iter().find(|b| !b.is_empty()) {
            Some(b) => self.try_write(b),
            None => Ok(Some(0)),
        }
    }

    /// Whether [`try_write_gathered`](Self::try_write_gathered) publishes
    /// all the buffers at once.
    fn gathers(&self) -> bool {
        false
    }

    /// Whether a read would answer now (bytes, end of stream, an error),
    /// without reading: `Some(())` yes, `None` not yet (wake-up armed, ring
    /// re-checked). ring-core's `try_readable`.
    ///
    /// # Errors
    ///
    /// A protocol error (a corrupt ring).
    fn try_readable(&mut self) -> Result<Option<()>, Error>;

    /// Whether a write would answer now (room, or a failure), without
    /// writing: `Some(())` yes, `None` the ring is full (wake-up armed).
    ///
    /// # Errors
    ///
    /// A protocol error (a corrupt ring).
    fn try_writable(&mut self) -> Result<Option<()>, Error>;
}

impl AsyncRing for VchanStream {
    fn try_write_gathered(&mut self, bufs: &[io::IoSlice<'_>]) -> Result<Option<usize>, Error> {
        self.try_write_vectored(bufs)
    }
    fn gathers(&self) -> bool {
        true
    }
    fn try_readable(&mut self) -> Result<Option<()>, Error> {
        Ok(self.blocking().try_readable()?)
    }
    fn try_writable(&mut self) -> Result<Option<()>, Error> {
        Ok(self.blocking().try_writable()?)
    }
}

impl AsyncRing for VmbusPipe {
    fn try_readable(&mut self) -> Result<Option<()>, Error> {
        Ok(self.blocking().try_readable()?)
    }
    fn try_writable(&mut self) -> Result<Option<()>, Error> {
        Ok(self.blocking().try_writable()?)
    }
}

/// Registers a duplicate of `fd` with the runtime's reactor.
fn register(fd: BorrowedFd<'_>, what: &'static str) -> Result<AsyncFd<OwnedFd>, Error> {
    let fd = fd
        .try_clone_to_owned()
        .map_err(|source| Error::Os { op: what, source })?;
    // SAFETY: `fd` is an open fd that the `AsyncFd` owns (an `OwnedFd`
    // closes only on drop and always reports the same number), so it stays
    // open and the same file for the `AsyncFd`'s whole life.
    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }.map_err(|e| {
        Error::Os {
            op: what,
            source: e.into_parts().1,
        }
    })
}

/// One direction's registrations with the runtime's reactor: its own
/// duplicate of the eventfd the peer kicks and of the hang-up fd.
///
/// tokio keeps one waker per registration and direction of readiness, and
/// both our directions wait for the same thing (the eventfd to become
/// readable), so two tasks waiting on one registration would keep only the
/// waker of the one that polled last. Each direction (and so each half of
/// a split stream) has its own: a kick is an event on both, and each
/// direction clears only its own readiness (see [`poll_event`]).
#[derive(Debug)]
struct Waits {
    wake: AsyncFd<OwnedFd>,
    hangup: Option<AsyncFd<OwnedFd>>,
    /// This direction reads the peer's notices (the reading one).
    notices: bool,
    /// The liveness re-check's timer, if the signal had one when wrapped.
    lapse: Option<Lapse>,
    /// The kick the eventfd's readiness stands for is counted already (by
    /// a look that left it); the wait that takes it does not count it
    /// again.
    kick_counted: AtomicBool,
}

/// The liveness re-check of one direction's waits: a one-shot timerfd on
/// the reactor (so no time driver is needed), armed when a wait begins
/// with none running, its expiry a wake-up that only says "look again".
#[derive(Debug)]
struct Lapse {
    timer: AsyncFd<OwnedFd>,
    armed: AtomicBool,
}

impl Lapse {
    fn new() -> Result<Self, Error> {
        use rustix::time::{timerfd_create, TimerfdClockId, TimerfdFlags};
        let fd = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )
        .map_err(|e| Error::Os {
            op: "timerfd for the liveness re-check",
            source: e.into(),
        })?;
        Ok(Lapse {
            timer: register(fd.as_fd(), "register the liveness timer with tokio")?,
            armed: AtomicBool::new(false),
        })
    }

    /// `Ready` once `every` has passed since the timer was armed (by this
    /// wait, or an earlier one it outlived); arms it if it is not running.
    ///
    /// Without `start`, only a timer already running is looked at (no
    /// system call).
    fn poll(&self, every: Duration, cx: &mut Context<'_>, start: bool) -> Poll<io::Result<()>> {
        use rustix::time::{timerfd_settime, Itimerspec, TimerfdTimerFlags, Timespec};
        if !start && !self.armed.load(Ordering::Acquire) {
            return Poll::Pending;
        }
        if !self.armed.swap(true, Ordering::AcqRel) {
            let at = Timespec {
                tv_sec: every.as_secs().try_into().unwrap_or(i64::MAX),
                // At least 1 ns: an all-zero value disarms a timerfd.
                tv_nsec: every.subsec_nanos().max(1).into(),
            };
            let zero = Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            let spec = Itimerspec {
                it_interval: zero,
                it_value: at,
            };
            if let Err(e) = timerfd_settime(self.timer.get_ref(), TimerfdTimerFlags::empty(), &spec)
            {
                self.armed.store(false, Ordering::Release);
                return Poll::Ready(Err(e.into()));
            }
        }
        loop {
            let mut guard = ready!(self.timer.poll_read_ready(cx))?;
            // Take the expiry (a one-shot timer: it stays quiet until
            // armed again), then the readiness.
            let mut count = [0u8; 8];
            let taken = rustix::io::read(guard.get_inner(), &mut count);
            guard.clear_ready();
            match taken {
                Ok(_) => break,
                // A stale edge, the timer still running: poll again, which
                // registers the waker.
                Err(rustix::io::Errno::AGAIN) => continue,
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
        self.armed.store(false, Ordering::Release);
        Poll::Ready(Ok(()))
    }
}

impl Waits {
    fn new(signal: &EventSignal, notices: bool) -> Result<Self, Error> {
        let wake = register(signal.wake_fd(), "register eventfd with tokio")?;
        let hangup = match signal.hangup_fd() {
            Some(fd) => Some(register(fd, "register hang-up fd with tokio")?),
            None => None,
        };
        let lapse = match signal.liveness() {
            Some(_) => Some(Lapse::new()?),
            None => None,
        };
        Ok(Waits {
            wake,
            hangup,
            notices,
            lapse,
            kick_counted: AtomicBool::new(false),
        })
    }
}

/// A ring stream for tokio: [`AsyncRead`] and [`AsyncWrite`], or two
/// halves with [`into_split`](Self::into_split).
///
/// Must be created inside a tokio runtime with I/O enabled. Each direction
/// registers its own duplicates of the stream's eventfd and hang-up fd,
/// and its own liveness timer if the signal has a liveness re-check (so a
/// stream holds two to six fds more than the blocking one): a reader and
/// a writer in different tasks each get every kick.
#[derive(Debug)]
pub struct AsyncStream<S> {
    core: Core<S>,
    reading: Waits,
    writing: Waits,
}

/// The stream and what the adapter remembers about it: both halves of a
/// split stream share it behind a mutex.
#[derive(Debug)]
struct Core<S> {
    stream: S,
    /// Our direction has ended (shutdown, or a dropped write half): writes
    /// fail from here on, as on a socket shut down for writing.
    write_shut: bool,
    /// Our [`Notice::Done`] has gone to the peer.
    done_sent: bool,
}

impl<S: AsyncRing> Core<S> {
    /// One non-blocking attempt to end our direction: `Some(())` ended
    /// (the VMBus end mark sent, the vchan end-of-stream notice sent, or,
    /// with a vchan peer that cannot hear notices, our live byte cleared),
    /// `None` no room for the end mark yet (wake-up armed).
    fn try_shutdown(&mut self) -> Result<Option<()>, Error> {
        if self.write_shut {
            return Ok(Some(()));
        }
        let ended = match self.stream.try_shutdown_write()? {
            Some(true) => Some(()),
            // No half-close with this peer: only the end of both ways.
            Some(false) => self.stream.try_hang_up()?,
            None => None,
        };
        self.write_shut = ended.is_some();
        Ok(ended)
    }
}

impl<S: AsyncRing> AsyncStream<S> {
    /// Wraps `stream`, registering (duplicates of) the eventfd it is woken
    /// by and its hang-up fd, if any, with the runtime's reactor, once for
    /// each direction.
    ///
    /// # Errors
    ///
    /// [`Error::Os`] if an fd cannot be duplicated or registered, or if
    /// this is not called from within a tokio runtime.
    ///
    /// # Panics
    ///
    /// Inside a runtime built without I/O (`enable_io`), as tokio's own
    /// `AsyncFd` does.
    ///
    /// # Examples
    ///
    /// An async writer against a blocking reader on a thread: 3000 bytes
    /// through a 1 KiB ring, so the writer has to wait for the reader on the
    /// way.
    ///
    /// ```
    /// use ring_hosted::{stream, tokio_io::AsyncStream};
    /// use std::io::Read;
    /// use std::time::Duration;
    /// use tokio::io::AsyncWriteExt;
    ///
    /// let (mut server, client) = stream::pair(1024, 1024)?;
    /// server.signal_mut().set_timeout(Some(Duration::from_secs(10)));
    /// let reader = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
    ///     let mut got = vec![0u8; 3000];
    ///     server.read_exact(&mut got)?;
    ///     Ok(got)
    /// });
    /// let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    /// runtime.block_on(async {
    ///     let mut client = AsyncStream::new(client)?; // inside the runtime
    ///     let write = client.write_all(&[5u8; 3000]);
    ///     tokio::time::timeout(Duration::from_secs(10), write).await??;
    ///     Ok::<(), Box<dyn std::error::Error>>(())
    /// })?;
    /// assert_eq!(reader.join().expect("the reader panicked")?, vec![5u8; 3000]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(stream: S) -> Result<Self, Error> {
        // tokio's AsyncFd panics outside a runtime: say so as an error.
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::Os {
                op: "register with tokio",
                source: std::io::Error::other("not called from within a tokio runtime"),
            });
        }
        let reading = Waits::new(stream.signal(), true)?;
        let writing = Waits::new(stream.signal(), false)?;
        Ok(AsyncStream {
            core: Core {
                stream,
                write_shut: false,
                done_sent: false,
            },
            reading,
            writing,
        })
    }

    /// The blocking stream inside (its signal's counters, its settings).
    pub fn get_ref(&self) -> &S {
        &self.core.stream
    }

    /// The blocking stream inside.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.core.stream
    }

    /// Unwraps the blocking stream.
    pub fn into_inner(self) -> S {
        self.core.stream
    }

    /// Splits into a read half and a write half, for two tasks. Each half
    /// keeps its own registrations with the reactor, so a half that stops
    /// polling (its future dropped by a `select!`, its task busy elsewhere)
    /// never keeps a wake-up from the other.
    ///
    /// # Examples
    ///
    /// A writer task and a reader task on the two halves of one stream, against
    /// an echo: with 1 KiB rings both halves wait on the one eventfd, in turn.
    ///
    /// ```
    /// use ring_hosted::stream::{self, PollStream};
    /// use ring_hosted::tokio_io::AsyncVchan;
    /// use std::time::Duration;
    /// use tokio::io::{AsyncReadExt, AsyncWriteExt};
    ///
    /// let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    /// runtime.block_on(async {
    ///     let (server, client) = stream::pair(1024, 1024)?;
    ///     let mut echo = AsyncVchan::new(server)?;
    ///     let (mut rd, mut wr) = AsyncVchan::new(client)?.into_split();
    ///     let echoer = tokio::spawn(async move {
    ///         let mut buf = [0u8; 500];
    ///         for _ in 0..8 {
    ///             echo.read_exact(&mut buf).await?;
    ///             echo.write_all(&buf).await?;
    ///         }
    ///         Ok::<_, std::io::Error>(echo)
    ///     });
    ///     let writer = tokio::spawn(async move { wr.write_all(&[9u8; 4000]).await.map(|()| wr) });
    ///     let mut back = vec![0u8; 4000];
    ///     tokio::time::timeout(Duration::from_secs(10), rd.read_exact(&mut back)).await??;
    ///     assert_eq!(back, vec![9u8; 4000]);
    ///     let (wr, _echo) = (writer.await??, echoer.await??);
    ///     let whole = rd.reunite(wr).expect("halves of one stream");
    ///     assert_eq!(whole.get_ref().bytes_written(), 4000);
    ///     Ok::<(), Box<dyn std::error::Error>>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn into_split(self) -> (ReadHalf<S>, WriteHalf<S>) {
        let AsyncStream {
            core,
            reading,
            writing,
        } = self;
        let shared = Arc::new(Mutex::new(core));
        (
            ReadHalf {
                shared: shared.clone(),
                waits: reading,
            },
            WriteHalf {
                closer: HalfClose {
                    shared,
                    on_drop: Some(half_close_now::<S>),
                },
                waits: writing,
            },
        )
    }

    /// Polls for the end of the exchange with one of our own peers (see
    /// [`confirm`](Self::confirm)).
    ///
    /// # Errors
    ///
    /// As [`confirm`](Self::confirm).
    pub fn poll_confirm(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        poll_confirm(&mut self.core, &self.reading, cx)
    }

    /// The last step with one of our own peers (a `ring connect` or `ring
    /// listen`, or another tokio peer doing the same), once both
    /// directions have ended: tells the peer how many bytes we received
    /// ([`Notice::Done`]), waits to hear how many it received, and checks
    /// that it is every byte we wrote. The `ring` command exits 0 only
    /// after this exchange; a tokio peer that skips it leaves `ring
    /// connect` reporting the peer gone.
    ///
    /// Call it after the read side has reached end of stream and the write
    /// side is shut down; the notice is sent once, and the wait is
    /// cancel-safe (call again).
    ///
    /// # Errors
    ///
    /// `BrokenPipe` if the peer received fewer (or more) bytes than we
    /// wrote; `ConnectionReset` if it went without saying;
    /// `Unsupported` if there is no socket to the peer (an in-process pair,
    /// a foreign peer).
    pub async fn confirm(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_confirm(cx)).await
    }
}

impl<S: AsyncRing> AsyncStream<S> {
    /// Reads what the ring holds now, without waiting: `Ok(n)` bytes
    /// (`Ok(0)`: end of stream), or `WouldBlock` with nothing there yet
    /// (the wake-up request is armed then, so the next kick ends an
    /// awaited read at once). As tokio's `UnixStream::try_read`, but on
    /// `&mut self`: a ring read moves the consumer index.
    ///
    /// # Errors
    ///
    /// `WouldBlock`; `ConnectionReset` once the peer is gone and the ring
    /// drained; a protocol error.
    ///
    /// # Examples
    ///
    /// ```
    /// use ring_hosted::{stream, tokio_io::AsyncVchan};
    /// use std::io::ErrorKind;
    ///
    /// let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    /// runtime.block_on(async {
    ///     let (server, client) = stream::pair(1024, 1024)?;
    ///     let (mut server, mut client) = (AsyncVchan::new(server)?, AsyncVchan::new(client)?);
    ///     let mut buf = [0u8; 16];
    ///     assert_eq!(server.try_read(&mut buf).unwrap_err().kind(), ErrorKind::WouldBlock);
    ///     assert_eq!(client.try_write(b"now")?, 3);
    ///     assert_eq!(server.try_read(&mut buf)?, 3);
    ///     assert_eq!(&buf[..3], b"now");
    ///     Ok::<(), Box<dyn std::error::Error>>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        try_read(&mut self.core, buf)
    }

    /// Waits until a read would answer without waiting: bytes are there,
    /// the stream has ended (the peer's close or half-close), or the read
    /// would fail (the peer gone). Reads nothing: the bytes stay for
    /// [`try_read`](Self::try_read) or a read. As tokio's
    /// `UnixStream::readable`, and like it cancel-safe; a spurious answer
    /// is possible only if somebody else reads in between.
    ///
    /// Both protocols arm their wake-up request without consuming (vchan:
    /// the notify bit; VMBus: the interrupt mask cleared and the write
    /// index re-read), so this waits on the reactor like a read.
    ///
    /// # Errors
    ///
    /// `InvalidData` for a ring the peer corrupted (the endpoint is
    /// poisoned; this does not wait); an error of the reactor.
    ///
    /// # Examples
    ///
    /// ```
    /// use ring_hosted::{stream, tokio_io::AsyncVchan};
    /// use std::time::Duration;
    ///
    /// let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    /// runtime.block_on(async {
    ///     let (server, client) = stream::pair(1024, 1024)?;
    ///     let (mut server, mut client) = (AsyncVchan::new(server)?, AsyncVchan::new(client)?);
    ///     let waiter = tokio::spawn(async move {
    ///         server.readable().await?;
    ///         let mut buf = [0u8; 16];
    ///         let n = server.try_read(&mut buf)?; // answers now
    ///         Ok::<_, std::io::Error>(buf[..n].to_vec())
    ///     });
    ///     client.try_write(b"ready")?;
    ///     let got = tokio::time::timeout(Duration::from_secs(10), waiter).await???;
    ///     assert_eq!(got, b"ready");
    ///     Ok::<(), Box<dyn std::error::Error>>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn readable(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| poll_readable(&mut self.core.stream, &self.reading, cx)).await
    }

    /// Waits until a write would answer without waiting: room for at
    /// least one byte (VMBus: a packet with one byte), or a write that
    /// fails at once (after our shutdown, the peer closed or gone). Writes
    /// nothing. As tokio's `UnixStream::writable`; cancel-safe.
    ///
    /// # Errors
    ///
    /// As [`readable`](Self::readable).
    pub async fn writable(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| poll_writable(&mut self.core, &self.writing, cx)).await
    }

    /// Writes what fits in the ring now, without waiting: `Ok(n)` bytes, or
    /// `WouldBlock` with the ring full (wake-up armed). As tokio's
    /// `UnixStream::try_write`, on `&mut self`.
    ///
    /// # Errors
    ///
    /// `WouldBlock`; `BrokenPipe` after our shutdown or the peer's close;
    /// `ConnectionReset` once the peer is gone.
    pub fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        try_write(&mut self.core, buf)
    }

    /// The credentials of the peer's process, as the kernel gave them for
    /// the rendezvous socket (`SO_PEERCRED`: the uid a server's handshake
    /// checked). As tokio's `UnixStream::peer_cred`.
    ///
    /// # Errors
    ///
    /// `Unsupported` with no socket to the peer (an in-process pair, a
    /// pidfd watch); the `getsockopt` error.
    pub fn peer_cred(&self) -> io::Result<PeerCred> {
        peer_cred(self.core.stream.signal())
    }
}

impl AsyncStream<VmbusPipe> {
    /// Sends one message as one packet (1 byte to 16 KiB), waiting on the
    /// reactor for room: the async [`VmbusPipe::send_msg`]. Cancel-safe: a
    /// send dropped before it completes has sent nothing.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for an empty or too large message; `BrokenPipe` after
    /// our shutdown; `ConnectionReset` once the peer is gone.
    ///
    /// # Examples
    ///
    /// ```
    /// use ring_hosted::vmbus::{ChannelLayout, VmbusPipe};
    /// use ring_hosted::{eventfd, memfd::MemFd, tokio_io::AsyncVmbus};
    /// use std::{sync::Arc, time::Duration};
    ///
    /// let layout = ChannelLayout::new(4096, 4096)?;
    /// let mem = Arc::new(MemFd::create("doc-async-msg", layout.total_size())?);
    /// let (server_signal, client_signal) = eventfd::pair()?;
    /// let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    /// runtime.block_on(async {
    ///     let mut server = AsyncVmbus::new(VmbusPipe::serve(mem.clone(), layout, server_signal)?)?;
    ///     let mut client = AsyncVmbus::new(VmbusPipe::connect(mem, layout, client_signal)?)?;
    ///     client.send_msg(b"one").await?;
    ///     client.send_msg(b"two").await?;
    ///     let mut buf = [0u8; 64];
    ///     let n = tokio::time::timeout(Duration::from_secs(10), server.recv_msg(&mut buf)).await??;
    ///     assert_eq!(&buf[..n], b"one");
    ///     let n = server.recv_msg(&mut buf).await?;
    ///     assert_eq!(&buf[..n], b"two");
    ///     Ok::<(), Box<dyn std::error::Error>>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn send_msg(&mut self, msg: &[u8]) -> io::Result<()> {
        std::future::poll_fn(|cx| poll_send_msg(&mut self.core, &self.writing, cx, msg)).await
    }

    /// Receives one message into `buf`, waiting on the reactor: its length,
    /// or 0 at the peer's end of stream (no message is empty). The async
    /// [`VmbusPipe::recv_msg`]; cancel-safe.
    ///
    /// # Errors
    ///
    /// `InvalidInput` if `buf` is too small for the message (nothing is
    /// consumed: retry with a larger one); `ConnectionReset` once the peer
    /// is gone and the ring drained.
    pub async fn recv_msg(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        std::future::poll_fn(|cx| poll_recv_msg(&mut self.core.stream, &self.reading, cx, buf))
            .await
    }
}

impl WriteHalf<VmbusPipe> {
    /// As [`AsyncStream::send_msg`], on the write half: messages go out
    /// while the read half waits for others in another task.
    ///
    /// # Errors
    ///
    /// As [`AsyncStream::send_msg`].
    pub async fn send_msg(&mut self, msg: &[u8]) -> io::Result<()> {
        std::future::poll_fn(|cx| {
            poll_send_msg(&mut lock(&self.closer.shared), &self.waits, cx, msg)
        })
        .await
    }
}

impl ReadHalf<VmbusPipe> {
    /// As [`AsyncStream::recv_msg`], on the read half.
    ///
    /// # Errors
    ///
    /// As [`AsyncStream::recv_msg`].
    pub async fn recv_msg(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        std::future::poll_fn(|cx| {
            poll_recv_msg(&mut lock(&self.shared).stream, &self.waits, cx, buf)
        })
        .await
    }
}

/// Connects to the `P` server at `path` on the runtime: the async
/// [`session::connect`]. The socket's connect, the hello and the wait for
/// the server's welcome run on the reactor, under the same handshake
/// deadline as the blocking call; what follows the welcome (checking the
/// fds it carried, mapping the ring) never waits. Needs a runtime with
/// I/O and time enabled (`enable_all`).
///
/// # Errors
///
/// As [`session::connect_with`]: [`Error::Os`] if the socket cannot be
/// reached, [`Error::NotASocket`], [`Error::Handshake`] for a refusal, a
/// bad welcome or a server that does not answer in time, [`Error::BadFd`].
///
/// # Examples
///
/// A tokio client of a blocking server on a thread:
///
/// ```
/// use ring_hosted::session::{Listener, Vchan};
/// use ring_hosted::tokio_io;
/// use std::io::Read;
/// use std::time::Duration;
/// use tokio::io::AsyncWriteExt;
///
/// let dir = std::env::temp_dir().join(format!("ring-async-connect-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let path = dir.join("sock");
/// let listener = Listener::<Vchan>::bind(&path)?;
/// type Failure = Box<dyn std::error::Error + Send + Sync>;
/// let server = std::thread::spawn(move || -> Result<Vec<u8>, Failure> {
///     let mut s = listener.accept_timeout(Duration::from_secs(10))?;
///     s.signal_mut().set_timeout(Some(Duration::from_secs(10)));
///     let mut got = Vec::new();
///     s.read_to_end(&mut got)?;
///     Ok(got)
/// });
/// let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
/// runtime.block_on(async {
///     let mut client = tokio_io::connect::<Vchan>(&path).await?;
///     client.write_all(b"async hello").await?;
///     client.shutdown().await?; // our direction ends; the server sees the end
///     Ok::<(), Box<dyn std::error::Error>>(())
/// })?;
/// assert_eq!(server.join().expect("the server panicked").map_err(|e| e.to_string())?, b"async hello");
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub async fn connect<P>(path: &Path) -> Result<AsyncStream<P::Stream>, Error>
where
    P: Protocol,
    P::Stream: AsyncRing,
{
    connect_with::<P>(path, ClientConfig::new(P::PROTO)).await
}

/// As [`connect`], with explicit settings; their `proto` is set to `P`'s.
///
/// # Errors
///
/// As [`connect`].
pub async fn connect_with<P>(
    path: &Path,
    mut config: ClientConfig,
) -> Result<AsyncStream<P::Stream>, Error>
where
    P: Protocol,
    P::Stream: AsyncRing,
{
    config.proto = P::PROTO;
    let deadline = Instant::now() + config.handshake_timeout;
    let late = || {
        Error::Handshake(HandshakeProblem::TimedOut {
            got: 0,
            want: rendezvous::WELCOME_LEN,
            after: config.handshake_timeout,
        })
    };
    let os = |op: &'static str| move |source: io::Error| Error::Os { op, source };
    let connecting = tokio::net::UnixStream::connect(path);
    let sock = match tokio::time::timeout_at(deadline.into(), connecting).await {
        Err(_) => return Err(late()),
        Ok(Err(_)) if path.exists() && !is_socket(path) => {
            return Err(Error::NotASocket {
                path: path.to_owned(),
            })
        }
        Ok(r) => r.map_err(os("connect to rendezvous socket"))?,
    };
    // As the blocking client: a server that refuses our uid may answer and
    // close before it reads the hello, so a failed write is not yet an
    // error (the answer tells). 16 bytes into a new socket's buffer.
    let _ = sock.try_write(&rendezvous::client_hello(config.proto));
    match tokio::time::timeout_at(deadline.into(), sock.readable()).await {
        Err(_) => return Err(late()),
        Ok(r) => r.map_err(os("handshake socket"))?,
    }
    let sock = sock.into_std().map_err(os("handshake socket"))?;
    sock.set_nonblocking(false)
        .map_err(os("handshake socket"))?;
    // The welcome (one message with its fds) is there: this never waits
    // on the server.
    let session = rendezvous::finish_client_handshake(sock, config, deadline)?;
    AsyncStream::new(session::typed::<P>(session)?)
}

/// A rendezvous listener for tokio: [`accept`](Self::accept) waits for
/// the next client on the runtime. Everything else is
/// [`session::Listener`]'s: the same refusals (foreign uids, bad hellos,
/// idle handshakes cut off for newer clients), the same back-off while
/// out of descriptors. Each client's handshake runs on a thread of the
/// listener's, as for the blocking accept, so a slow client holds up
/// neither the runtime nor the next client.
///
/// # Examples
///
/// A tokio server and a tokio client, both on one current-thread
/// runtime: the echo of the crate docs, over the rendezvous.
///
/// ```
/// use ring_hosted::session::Vmbus;
/// use ring_hosted::tokio_io::{self, AsyncListener};
/// use std::time::Duration;
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
/// use tokio::time::timeout;
///
/// let dir = std::env::temp_dir().join(format!("ring-async-listen-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let path = dir.join("sock");
/// let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
/// runtime.block_on(async {
///     let mut listener = AsyncListener::<Vmbus>::bind(&path)?;
///     let server = tokio::spawn(async move {
///         let mut s = listener.accept().await?;
///         let mut got = Vec::new();
///         s.read_to_end(&mut got).await?; // to the client's shutdown
///         got.make_ascii_uppercase();
///         s.write_all(&got).await?;
///         s.shutdown().await?;
///         s.confirm().await?; // both sides received every byte
///         Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
///     });
///     let mut c = tokio_io::connect::<Vmbus>(&path).await?;
///     c.write_all(b"echo me").await?;
///     c.shutdown().await?;
///     let mut back = Vec::new();
///     timeout(Duration::from_secs(10), c.read_to_end(&mut back)).await??;
///     assert_eq!(back, b"ECHO ME");
///     timeout(Duration::from_secs(10), c.confirm()).await??;
///     server.await?.map_err(|e| e.to_string())?;
///     Ok::<(), Box<dyn std::error::Error>>(())
/// })?;
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct AsyncListener<P> {
    inner: session::Listener<P>,
    /// The listening socket and the handshakes' "ended" eventfd.
    listening: AsyncFd<OwnedFd>,
    ended: AsyncFd<OwnedFd>,
}

impl<P: Protocol> AsyncListener<P>
where
    P::Stream: AsyncRing,
{
    /// Listens at `path` with the default settings, as
    /// [`session::Listener::bind`]. Call it inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// As [`session::Listener::bind`]; [`Error::Os`] if the fds cannot be
    /// registered with the runtime.
    pub fn bind(path: &Path) -> Result<Self, Error> {
        Self::from_listener(session::Listener::bind(path)?)
    }

    /// Serves a listener made with explicit settings
    /// ([`session::Listener::bind_with`]).
    ///
    /// # Errors
    ///
    /// [`Error::Os`] if its fds cannot be registered with the runtime (or
    /// this is not called within one).
    pub fn from_listener(inner: session::Listener<P>) -> Result<Self, Error> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::Os {
                op: "register with tokio",
                source: std::io::Error::other("not called from within a tokio runtime"),
            });
        }
        let [listening, ended] = inner.untyped().accept_fds();
        let listening = register(listening, "register the rendezvous socket with tokio")?;
        let ended = register(ended, "register the handshakes' eventfd with tokio")?;
        Ok(AsyncListener {
            inner,
            listening,
            ended,
        })
    }

    /// Waits on the runtime for the next client that completes the
    /// handshake (clients that fail it are refused and skipped), and
    /// wraps its stream. Cancel-safe: a session whose handshake ends while
    /// nobody awaits is kept for the next call. On `&mut self`, unlike
    /// tokio's `UnixListener::accept`: the listener hands outcomes over a
    /// channel that one waiter reads, so a task may own and move it.
    ///
    /// # Errors
    ///
    /// As [`session::Listener::accept`].
    pub async fn accept(&mut self) -> Result<AsyncStream<P::Stream>, Error> {
        let session = self.next_session().await?;
        AsyncStream::new(session::typed::<P>(session)?)
    }

    async fn next_session(&mut self) -> Result<rendezvous::Session, Error> {
        loop {
            // Readiness is cleared before each look, so an event after
            // the look is a new one; a look that moved something looks
            // again (the socket may hold more clients than one edge said).
            // (No borrow of the listener lives across an await: it is Send,
            // not Sync.)
            let again = match self.inner.untyped().accept_step(&mut |_| {})? {
                rendezvous::AcceptStep::Session(s) => return Ok(*s),
                rendezvous::AcceptStep::Waiting { moved: true, .. } => continue,
                rendezvous::AcceptStep::Waiting { again, .. } => again,
            };
            let pause = async {
                match again {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = self.listening.readable() => r.map_err(|source| Error::Os {
                    op: "poll rendezvous socket",
                    source,
                })?.clear_ready(),
                r = self.ended.readable() => r.map_err(|source| Error::Os {
                    op: "eventfd",
                    source,
                })?.clear_ready(),
                () = pause => {}
            }
        }
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        self.inner.path()
    }

    /// The blocking listener inside.
    pub fn get_ref(&self) -> &session::Listener<P> {
        &self.inner
    }
}

fn is_socket(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

/// The credentials of the peer's process (see [`AsyncStream::peer_cred`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCred {
    /// Its effective user id.
    pub uid: u32,
    /// Its effective group id.
    pub gid: u32,
    /// Its process id, when the kernel knows it in our pid namespace.
    pub pid: Option<i32>,
}

fn peer_cred(signal: &EventSignal) -> io::Result<PeerCred> {
    let Some(sock) = signal.hangup_fd().filter(|_| signal.carries_notices()) else {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "no socket to the peer",
        ));
    };
    let cred = rustix::net::sockopt::socket_peercred(sock)?;
    Ok(PeerCred {
        uid: cred.uid.as_raw(),
        gid: cred.gid.as_raw(),
        pid: Some(cred.pid.as_raw_nonzero().get()).filter(|&p| p > 0),
    })
}

fn try_read<S: AsyncRing>(core: &mut Core<S>, buf: &mut [u8]) -> io::Result<usize> {
    match core.stream.try_read(buf) {
        Ok(Some(n)) => Ok(n),
        Ok(None) => Err(io::ErrorKind::WouldBlock.into()),
        Err(Error::Closed) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

fn try_write<S: AsyncRing>(core: &mut Core<S>, buf: &[u8]) -> io::Result<usize> {
    if core.write_shut {
        return Err(write_shut_error());
    }
    match core.stream.try_write(buf) {
        Ok(Some(n)) => Ok(n),
        Ok(None) => Err(io::ErrorKind::WouldBlock.into()),
        Err(e) => Err(e.into()),
    }
}

/// One non-blocking half-close, for a dropped write half.
fn half_close_now<S: AsyncRing>(core: &mut Core<S>) {
    // Best effort: a full VMBus ring has no room for the end mark now, and
    // a drop cannot wait (an awaited `shutdown` can).
    let _ = core.try_shutdown();
}

/// Waits until the peer kicked us (an edge on our registration of the
/// eventfd) or its hang-up fd has news (a notice, or the peer gone);
/// `Ready` means "retry the ring operation".
///
/// Two rules keep one direction from taking the other's wake-up, as the
/// two registrations of a stream see the same files: epoll reports an
/// edge only if the file is still readable when the reactor collects it,
/// so nothing here consumes what the other direction may still need.
///
/// - The eventfd's counter is never taken: every kick is an edge on
///   every registration (tokio's are edge-triggered), and each direction
///   clears only its own readiness. A blocking wait after
///   [`AsyncStream::into_inner`] takes the count.
/// - Only the reading direction reads notices off the hang-up socket (it
///   is the one that needs [`Notice::WriteClosed`](crate::eventfd::Notice)).
///   The writing direction learns only the peer's death, from the socket's
///   read-closed readiness (`EPOLLRDHUP`), which stays set for every
///   registration however much of the socket is read.
///
/// `sleep`: the caller goes to sleep on `Pending` (the liveness timer is
/// started then). Without it (the look before the first attempt) only
/// the peer's notices and an expired liveness timer are taken: the kick
/// is counted but left, so the next wait tries once more before it
/// sleeps.
fn poll_event<S: AsyncRing>(
    stream: &mut S,
    waits: &Waits,
    cx: &mut Context<'_>,
    sleep: bool,
) -> Poll<io::Result<()>> {
    if let Some(h) = &waits.hangup {
        if let Poll::Ready(guard) = h.poll_read_ready(cx) {
            let mut guard = guard?;
            stream.signal().note_hangup();
            // The reading direction reads any notices, and marks the peer
            // gone on end of file; the writing direction only once the
            // peer's end is closed. A pidfd carries no notices: readable
            // is gone, for either.
            let closed = guard.ready().is_read_closed() || !stream.signal().carries_notices();
            if (waits.notices || closed) && stream.signal().peer_gone() {
                // Let the core's blocking layer learn it too: the next
                // attempt delivers what is left, then reports PeerGone.
                match stream.wait_event(None, Some(Instant::now())) {
                    Ok(_) | Err(Error::PeerGone) | Err(Error::TimedOut) => {}
                    Err(e) => return Poll::Ready(Err(e.into())),
                }
                return Poll::Ready(Ok(()));
            }
            guard.clear_ready();
            if waits.notices {
                // A notice (the peer's end of stream, say): news the
                // retry must look at.
                return Poll::Ready(Ok(()));
            }
        }
    }
    // A kick is taken only on the way to sleep. Left for the look before
    // the first attempt, a kick that came while the task was busy makes
    // the next full (or empty) ring try again at once instead of sleeping:
    // with a peer draining as we write, that try usually finds room (a
    // first version took it there and was several times slower).
    if !sleep {
        // Counted now, though: the kick that woke the task shows in the
        // counters whether or not a wait takes it later.
        if let Poll::Ready(Ok(_left)) = waits.wake.poll_read_ready(cx) {
            if !waits.kick_counted.swap(true, Ordering::AcqRel) {
                stream.signal().note_kick();
            }
        }
        if let (Some(lapse), Some(every)) = (&waits.lapse, stream.signal().liveness()) {
            ready!(lapse.poll(every, cx, false))?;
            stream.signal().note_lapse();
            return Poll::Ready(Ok(()));
        }
        return Poll::Pending;
    }
    if let Poll::Ready(guard) = waits.wake.poll_read_ready(cx) {
        let mut guard = guard?;
        if !waits.kick_counted.swap(false, Ordering::AcqRel) {
            stream.signal().note_kick();
        }
        // Cleared before the retry: a kick from now on is a new edge.
        guard.clear_ready();
        return Poll::Ready(Ok(()));
    }
    // The liveness re-check, as the blocking waits have it: a foreign
    // vchan peer may clear its live byte without a kick, and only a look
    // at the ring finds that.
    if let (Some(lapse), Some(every)) = (&waits.lapse, stream.signal().liveness()) {
        ready!(lapse.poll(every, cx, true))?;
        stream.signal().note_lapse();
        return Poll::Ready(Ok(()));
    }
    Poll::Pending
}

/// The ring's answer to a read as the async face gives it: the peer's
/// close (or our own) is end of stream.
fn read_attempt<S: AsyncRing>(stream: &mut S, buf: &mut [u8]) -> io::Result<Option<usize>> {
    match stream.try_read(buf) {
        Ok(r) => Ok(r),
        Err(Error::Closed) => Ok(Some(0)),
        Err(e) => Err(e.into()),
    }
}

fn read_some<S: AsyncRing>(
    stream: &mut S,
    waits: &Waits,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    let n = ready!(poll_attempt(
        cx,
        stream,
        |s| read_attempt(s, buf.initialize_unfilled()),
        |s, cx, sleep| poll_event(s, waits, cx, sleep),
    ))?;
    buf.advance(n);
    Poll::Ready(Ok(()))
}

fn write_shut_error() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "write after shutdown")
}

fn write_some<S: AsyncRing>(
    core: &mut Core<S>,
    waits: &Waits,
    cx: &mut Context<'_>,
    bufs: &[io::IoSlice<'_>],
) -> Poll<io::Result<usize>> {
    if core.write_shut {
        return Poll::Ready(Err(write_shut_error()));
    }
    if bufs.iter().all(|b| b.is_empty()) {
        return Poll::Ready(Ok(0));
    }
    // One publish (and at most one kick) for all of them.
    poll_attempt(
        cx,
        &mut core.stream,
        |s| Ok(s.try_write_gathered(bufs)?),
        |s, cx, sleep| poll_event(s, waits, cx, sleep),
    )
}

/// Ends our direction without blocking: waits for room for the end mark
/// on the reactor, as a write waits.
fn shutdown_some<S: AsyncRing>(
    core: &mut Core<S>,
    waits: &Waits,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    poll_attempt(
        cx,
        core,
        |c| Ok(c.try_shutdown()?),
        |c, cx, sleep| poll_event(&mut c.stream, waits, cx, sleep),
    )
}

/// Waits until a read would answer: [`AsyncStream::readable`].
fn poll_readable<S: AsyncRing>(
    stream: &mut S,
    waits: &Waits,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    poll_attempt(
        cx,
        stream,
        |s| Ok(s.try_readable()?),
        |s, cx, sleep| poll_event(s, waits, cx, sleep),
    )
}

/// Waits until a write would answer: [`AsyncStream::writable`].
fn poll_writable<S: AsyncRing>(
    core: &mut Core<S>,
    waits: &Waits,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    if core.write_shut {
        // A write fails at once.
        return Poll::Ready(Ok(()));
    }
    poll_attempt(
        cx,
        &mut core.stream,
        |s| Ok(s.try_writable()?),
        |s, cx, sleep| poll_event(s, waits, cx, sleep),
    )
}

/// One message out, waiting on the reactor for room: the async
/// [`VmbusPipe::send_msg`].
fn poll_send_msg(
    core: &mut Core<VmbusPipe>,
    waits: &Waits,
    cx: &mut Context<'_>,
    msg: &[u8],
) -> Poll<io::Result<()>> {
    if core.write_shut {
        return Poll::Ready(Err(write_shut_error()));
    }
    poll_attempt(
        cx,
        &mut core.stream,
        |s| Ok(s.blocking().try_send_msg(msg).map_err(Error::from)?),
        |s, cx, sleep| poll_event(s, waits, cx, sleep),
    )
}

/// One message in: the async [`VmbusPipe::recv_msg`]; 0 at end of stream.
fn poll_recv_msg(
    stream: &mut VmbusPipe,
    waits: &Waits,
    cx: &mut Context<'_>,
    buf: &mut [u8],
) -> Poll<io::Result<usize>> {
    poll_attempt(
        cx,
        stream,
        |s| match s.blocking().try_recv_msg(buf).map_err(Error::from) {
            Ok(r) => Ok(r),
            Err(Error::Closed) => Ok(Some(0)),
            Err(e) => Err(e.into()),
        },
        |s, cx, sleep| poll_event(s, waits, cx, sleep),
    )
}

/// See [`AsyncStream::confirm`].
fn poll_confirm<S: AsyncRing>(
    core: &mut Core<S>,
    waits: &Waits,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    let signal = core.stream.signal();
    let Some(h) = waits.hangup.as_ref().filter(|_| signal.carries_notices()) else {
        return Poll::Ready(Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "no socket to the peer to confirm over",
        )));
    };
    if !core.done_sent {
        signal.send_notice(Notice::Done(core.stream.bytes_read()))?;
        core.done_sent = true;
    }
    loop {
        // Gone is looked at first: the read that finds the peer gone also
        // takes a Done it sent just before.
        let gone = signal.peer_gone();
        if let Some(got) = signal.peer_done() {
            let wrote = core.stream.bytes_written();
            if got == wrote {
                return Poll::Ready(Ok(()));
            }
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!("the peer received {got} bytes, we wrote {wrote}"),
            )));
        }
        if gone {
            return Poll::Ready(Err(Error::PeerGone.into()));
        }
        // Cleared before the next look: a notice from now on is an edge.
        ready!(h.poll_read_ready(cx))?.clear_ready();
        signal.note_hangup();
    }
}

impl<S: AsyncRing + Unpin> AsyncRead for AsyncStream<S> {
    /// Reads what the ring holds; end of stream once the peer closed (or
    /// half-closed) and the ring is drained.
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        read_some(&mut this.core.stream, &this.reading, cx, buf)
    }
}

impl<S: AsyncRing + Unpin> AsyncWrite for AsyncStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        write_some(&mut this.core, &this.writing, cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        write_some(&mut this.core, &this.writing, cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.core.stream.gathers()
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Bytes are visible to the peer as soon as the write returns.
        Poll::Ready(Ok(()))
    }

    /// Ends our direction only, as `shutdown(SHUT_WR)` on a socket: the
    /// peer reads what we wrote, then end of stream, and its direction
    /// flows on. VMBus: the pipe's end mark, waiting (on the reactor, never
    /// blocking the thread) for room for it in a full ring. vchan: the
    /// end-of-stream notice over the rendezvous socket, as `ring connect`
    /// sends it; a vchan peer with no socket to us (a foreign peer, an
    /// in-process pair) cannot hear one, and there the only end is our
    /// live byte, which ends both directions. Writes fail afterwards.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        shutdown_some(&mut this.core, &this.writing, cx)
    }
}

fn lock<S>(shared: &Mutex<S>) -> MutexGuard<'_, S> {
    // A panic in another half's poll leaves the ring as consistent as any
    // failed call does: keep going.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// The reading half of a split [`AsyncStream`].
#[derive(Debug)]
pub struct ReadHalf<S> {
    shared: Arc<Mutex<Core<S>>>,
    waits: Waits,
}

/// The writing half of a split [`AsyncStream`]. Shutting it down ends our
/// direction only (see [`AsyncStream`]'s `poll_shutdown`); so does dropping
/// it, as tokio's `OwnedWriteHalf`, with one attempt that cannot wait (a
/// VMBus end mark that finds the ring full is not sent: await
/// `shutdown()` to be sure). [`forget`](Self::forget) drops it without.
#[derive(Debug)]
pub struct WriteHalf<S> {
    closer: HalfClose<S>,
    waits: Waits,
}

/// The write half's share of the stream, and what its drop does to it.
struct HalfClose<S> {
    shared: Arc<Mutex<Core<S>>>,
    /// The half-close a drop attempts; `None` once forgotten or reunited.
    on_drop: Option<fn(&mut Core<S>)>,
}

impl<S> std::fmt::Debug for HalfClose<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HalfClose")
            .field("on_drop", &self.on_drop.is_some())
            .finish_non_exhaustive()
    }
}

impl<S> Drop for HalfClose<S> {
    fn drop(&mut self) {
        if let Some(close) = self.on_drop.take() {
            close(&mut lock(&self.shared));
        }
    }
}

impl<S> WriteHalf<S> {
    /// Drops the write half without ending our direction (tokio's
    /// `OwnedWriteHalf::forget`): the read half reads on, and the stream
    /// ends when it goes.
    pub fn forget(mut self) {
        self.closer.on_drop = None;
    }
}

/// [`ReadHalf::reunite`] was given halves of two different streams; both
/// are handed back.
pub struct ReuniteError<S>(pub ReadHalf<S>, pub WriteHalf<S>);

impl<S> std::fmt::Debug for ReuniteError<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReuniteError(..)")
    }
}

impl<S> std::fmt::Display for ReuniteError<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("tried to reunite halves that are not from the same stream")
    }
}

impl<S> std::error::Error for ReuniteError<S> {}

impl<S> ReadHalf<S> {
    /// Whether `other` is the write half of the same stream.
    pub fn is_pair_of(&self, other: &WriteHalf<S>) -> bool {
        Arc::ptr_eq(&self.shared, &other.closer.shared)
    }

    /// Puts the stream back together, as tokio's `OwnedReadHalf::reunite`.
    ///
    /// # Errors
    ///
    /// [`ReuniteError`] (with both halves) if they are not of one stream.
    // The halves come back by value, as from tokio's own `reunite`.
    #[allow(clippy::result_large_err)]
    pub fn reunite(self, other: WriteHalf<S>) -> Result<AsyncStream<S>, ReuniteError<S>> {
        if !self.is_pair_of(&other) {
            return Err(ReuniteError(self, other));
        }
        let ReadHalf {
            shared,
            waits: reading,
        } = self;
        let WriteHalf {
            mut closer,
            waits: writing,
        } = other;
        closer.on_drop = None;
        drop(closer);
        let core = match Arc::try_unwrap(shared) {
            Ok(m) => m.into_inner().unwrap_or_else(|e| e.into_inner()),
            // Only the two halves ever hold it.
            Err(_) => unreachable!("a third owner of a split stream"),
        };
        Ok(AsyncStream {
            core,
            reading,
            writing,
        })
    }
}

impl<S: AsyncRing> ReadHalf<S> {
    /// As [`AsyncStream::try_read`].
    ///
    /// # Errors
    ///
    /// As [`AsyncStream::try_read`].
    pub fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        try_read(&mut lock(&self.shared), buf)
    }

    /// As [`AsyncStream::readable`], with the read half's own registration.
    ///
    /// # Errors
    ///
    /// As [`AsyncStream::readable`].
    pub async fn readable(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| poll_readable(&mut lock(&self.shared).stream, &self.waits, cx))
            .await
    }

    /// As [`AsyncStream::peer_cred`].
    ///
    /// # Errors
    ///
    /// As [`AsyncStream::peer_cred`].
    pub fn peer_cred(&self) -> io::Result<PeerCred> {
        peer_cred(lock(&self.shared).stream.signal())
    }
}

impl<S: AsyncRing> WriteHalf<S> {
    /// As [`AsyncStream::try_write`].
    ///
    /// # Errors
    ///
    /// As [`AsyncStream::try_write`].
    pub fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        try_write(&mut lock(&self.closer.shared), buf)
    }

    /// As [`AsyncStream::writable`], with the write half's own
    /// registration.
    ///
    /// # Errors
    ///
    /// As [`AsyncStream::readable`].
    pub async fn writable(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| poll_writable(&mut lock(&self.closer.shared), &self.waits, cx))
            .await
    }
}

impl<S: AsyncRing + Unpin> AsyncRead for ReadHalf<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        read_some(&mut lock(&this.shared).stream, &this.waits, cx, buf)
    }
}

impl<S: AsyncRing + Unpin> AsyncWrite for WriteHalf<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        write_some(
            &mut lock(&this.closer.shared),
            &this.waits,
            cx,
            &[io::IoSlice::new(buf)],
        )
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        write_some(&mut lock(&this.closer.shared), &this.waits, cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        lock(&self.closer.shared).stream.gathers()
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Ends our direction only, as [`AsyncStream`]'s.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        shutdown_some(&mut lock(&this.closer.shared), &this.waits, cx)
    }
}
