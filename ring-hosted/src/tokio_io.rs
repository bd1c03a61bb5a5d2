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
//!   AsyncStream ──into_split()──► ReadHalf  ─┐ one stream behind a mutex;
//!                                 WriteHalf ─┘ a kick wakes both halves
//! ```
//!
//! Both directions share one eventfd, and [`AsyncFd`] keeps only the
//! latest task's waker, so the halves keep their own wakers beside it:
//! whichever half sees the kick wakes the other.

#![allow(unsafe_code)]

use crate::stream::{PollStream, VchanStream};
use crate::vmbus::VmbusPipe;
use crate::Error;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll, Waker};
use std::time::Instant;
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
}

impl AsyncRing for VchanStream {
    fn try_write_gathered(&mut self, bufs: &[io::IoSlice<'_>]) -> Result<Option<usize>, Error> {
        self.try_write_vectored(bufs)
    }
    fn gathers(&self) -> bool {
        true
    }
}

impl AsyncRing for VmbusPipe {}

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

/// A ring stream for tokio: [`AsyncRead`] and [`AsyncWrite`], or two
/// halves with [`into_split`](Self::into_split).
///
/// Must be created inside a tokio runtime with I/O enabled.
#[derive(Debug)]
pub struct AsyncStream<S> {
    stream: S,
    wake: AsyncFd<OwnedFd>,
    hangup: Option<AsyncFd<OwnedFd>>,
}

impl<S: AsyncRing> AsyncStream<S> {
    /// Wraps `stream`, registering (duplicates of) the eventfd it is woken
    /// by and its hang-up fd, if any, with the runtime's reactor.
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
        let wake = register(stream.signal().wake_fd(), "register eventfd with tokio")?;
        let hangup = match stream.signal().hangup_fd() {
            Some(fd) => Some(register(fd, "register hang-up fd with tokio")?),
            None => None,
        };
        Ok(AsyncStream {
            stream,
            wake,
            hangup,
        })
    }

    /// The blocking stream inside.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// Unwraps the blocking stream.
    pub fn into_inner(self) -> S {
        self.stream
    }

    /// Splits into a read half and a write half, for two tasks.
    ///
    /// # Examples
    ///
    /// A writer task and a reader task on the two halves of one stream, against
    /// an echo: with 1 KiB rings both halves wait on the one eventfd, in turn.
    ///
    /// ```
    /// use ring_hosted::{stream, tokio_io::AsyncVchan};
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
    ///     let (_wr, _echo) = (writer.await??, echoer.await??);
    ///     Ok::<(), Box<dyn std::error::Error>>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn into_split(self) -> (ReadHalf<S>, WriteHalf<S>) {
        let shared = Arc::new(Mutex::new(Shared {
            ring: self,
            wakers: [None, None],
            holder: None,
        }));
        (
            ReadHalf {
                shared: shared.clone(),
            },
            WriteHalf { shared },
        )
    }

    /// Waits until the peer kicked us (the eventfd is readable; the event
    /// is consumed) or hung up; `Ready` means "retry the ring operation".
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(h) = &self.hangup {
            if let Poll::Ready(guard) = h.poll_read_ready(cx) {
                let mut guard = guard?;
                // Reads any notices; marks the peer gone on a hang-up.
                if self.stream.signal().peer_gone() {
                    // Let the core's blocking layer learn it too: the next
                    // attempt delivers what is left, then reports PeerGone.
                    match self.stream.wait_event(None, Some(Instant::now())) {
                        Ok(_) | Err(Error::PeerGone) | Err(Error::TimedOut) => {}
                        Err(e) => return Poll::Ready(Err(e.into())),
                    }
                    return Poll::Ready(Ok(()));
                }
                guard.clear_ready();
            }
        }
        let mut guard = ready!(self.wake.poll_read_ready(cx))?;
        let mut counter = [0u8; 8];
        match rustix::io::read(guard.get_inner().as_fd(), &mut counter) {
            Ok(_) | Err(rustix::io::Errno::AGAIN) => {
                // The counter is zero now: the fd stays quiet until the
                // next kick.
                guard.clear_ready();
                Poll::Ready(Ok(()))
            }
            Err(rustix::io::Errno::INTR) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(e.into())),
        }
    }

    fn read_some(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            match self.stream.try_read(buf.initialize_unfilled()) {
                Ok(Some(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(None) => ready!(self.poll_event(cx))?,
                Err(Error::Closed) => return Poll::Ready(Ok(())),
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
    }

    fn write_some(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if bufs.iter().all(|b| b.is_empty()) {
            return Poll::Ready(Ok(0));
        }
        loop {
            // One publish (and at most one kick) for all of them.
            match self.stream.try_write_gathered(bufs) {
                Ok(Some(n)) => return Poll::Ready(Ok(n)),
                Ok(None) => ready!(self.poll_event(cx))?,
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
    }
}

impl<S: AsyncRing + Unpin> AsyncRead for AsyncStream<S> {
    /// Reads what the ring holds; end of stream once the peer closed and
    /// the ring is drained.
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().read_some(cx, buf)
    }
}

impl<S: AsyncRing + Unpin> AsyncWrite for AsyncStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().write_some(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().write_some(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.gathers()
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Bytes are visible to the peer as soon as the write returns.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.get_mut().stream.close().map_err(io::Error::from))
    }
}

/// The stream both halves share, each half's waker, and whose waker the
/// reactor holds.
///
/// The reactor keeps one waker for the eventfd: the last half that found
/// nothing to do and registered. A half whose registration was replaced
/// depends on the holder to pass the next event on, so whenever the holder
/// is polled again (woken by the event, or for any reason) it wakes the
/// other half, which then polls and registers again if it still waits.
/// One wake per poll of the holder: no busy loop, no lost event.
#[derive(Debug)]
struct Shared<S> {
    ring: AsyncStream<S>,
    /// [read half, write half]: each half's task while it waits.
    wakers: [Option<Waker>; 2],
    /// The half whose waker the reactor holds.
    holder: Option<usize>,
}

const READ: usize = 0;
const WRITE: usize = 1;

fn lock<S>(shared: &Mutex<Shared<S>>) -> MutexGuard<'_, Shared<S>> {
    // A panic in another half's poll leaves the ring as consistent as any
    // failed call does: keep going.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

impl<S> Shared<S> {
    /// Wakes the other half of `me`, if it waits.
    fn wake_other(&mut self, me: usize) {
        if let Some(w) = self.wakers.get_mut(1 - me).and_then(Option::take) {
            w.wake();
        }
    }
}

impl<S: AsyncRing> Shared<S> {
    /// One poll of a half (`me`): `op` on the ring, passing the reactor's
    /// wake-up on to the other half as described on [`Shared`].
    fn poll_half<T>(
        &mut self,
        me: usize,
        cx: &mut Context<'_>,
        op: impl FnOnce(&mut AsyncStream<S>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if self.holder == Some(me) {
            self.holder = None;
            self.wake_other(me);
        }
        let r = op(&mut self.ring, cx);
        let pending = r.is_pending();
        if let Some(slot) = self.wakers.get_mut(me) {
            *slot = pending.then(|| cx.waker().clone());
        }
        if pending {
            // `op` only waits by registering `cx` with the reactor.
            self.holder = Some(me);
        }
        r
    }
}

/// The reading half of a split [`AsyncStream`].
#[derive(Debug)]
pub struct ReadHalf<S> {
    shared: Arc<Mutex<Shared<S>>>,
}

/// The writing half of a split [`AsyncStream`]; shutting it down closes
/// the stream.
#[derive(Debug)]
pub struct WriteHalf<S> {
    shared: Arc<Mutex<Shared<S>>>,
}

impl<S: AsyncRing + Unpin> AsyncRead for ReadHalf<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        lock(&self.shared).poll_half(READ, cx, |ring, cx| ring.read_some(cx, buf))
    }
}

impl<S: AsyncRing + Unpin> AsyncWrite for WriteHalf<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        lock(&self.shared).poll_half(WRITE, cx, |ring, cx| {
            ring.write_some(cx, &[io::IoSlice::new(buf)])
        })
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        lock(&self.shared).poll_half(WRITE, cx, |ring, cx| ring.write_some(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        lock(&self.shared).ring.stream.gathers()
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(
            lock(&self.shared)
                .ring
                .stream
                .close()
                .map_err(io::Error::from),
        )
    }
}

/// A half going away wakes the other: its waker may be the one the
/// reactor holds, and nobody else would pass the next kick on.
fn wake_other<S>(shared: &Mutex<Shared<S>>, me: usize) {
    let mut s = lock(shared);
    if s.holder == Some(me) {
        s.holder = None;
    }
    s.wake_other(me);
}

impl<S> Drop for ReadHalf<S> {
    fn drop(&mut self) {
        wake_other(&self.shared, READ);
    }
}

impl<S> Drop for WriteHalf<S> {
    fn drop(&mut self) {
        wake_other(&self.shared, WRITE);
    }
}
