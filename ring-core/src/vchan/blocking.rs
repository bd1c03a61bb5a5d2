//! Blocking use of an endpoint on a host-supplied [`Signal`], and a
//! spin-locked handle for sharing one endpoint between tasks.

use super::{Endpoint, Error, Readiness, Transfer};
use crate::loan::{Drained, Span};
use crate::mem::SharedMem;
use crate::signal::{Attempt, Signal, Waiter};

/// Why a blocking call on a vchan ring failed.
pub type BlockingError<E> = crate::signal::BlockingError<Error, E>;

impl<E> From<Error> for BlockingError<E> {
    fn from(e: Error) -> Self {
        BlockingError::Ring(e)
    }
}

/// The endpoint and the byte counts of a [`Blocking`], apart from its
/// waiter so the blocking loop can borrow both.
#[derive(Debug)]
struct Side<M> {
    ep: Endpoint<M>,
    read: u64,
    written: u64,
}

/// An endpoint that blocks on a [`Signal`] instead of returning
/// [`Error::WouldBlock`], and kicks the peer whenever the protocol says so.
///
/// Two ways to use it, on the same code:
///
/// - blocking calls ([`read`](Self::read), [`write`](Self::write),
///   [`send`](Self::send), ...): spin on readiness for the signal's budget,
///   try, and wait on the signal whenever the ring says "not now";
/// - one attempt at a time ([`try_read`](Self::try_read),
///   [`try_write`](Self::try_write), ...), each returning `Ok(None)` only
///   after arming its wake-up request and re-checking the ring, and
///   [`wait_with`](Self::wait_with) for a host that waits on more than the
///   signal (a poll loop over other fds, a deadline).
///
/// Either way the peer's death, once the signal reports it, is taken as a
/// last wake-up: what the peer published before it went is still
/// delivered, then calls fail with [`BlockingError::PeerGone`].
///
/// Implements the `embedded-io` traits; ring-std builds `std::io` on it.
#[derive(Debug)]
pub struct Blocking<M, S> {
    side: Side<M>,
    waiter: Waiter<S>,
}

fn read_ready<M: SharedMem>(ep: &mut Endpoint<M>, want: usize) -> bool {
    ep.data_ready().map_or(true, |n| n >= want) || !ep.is_open().unwrap_or(false)
}

fn write_ready<M: SharedMem>(ep: &mut Endpoint<M>, want: usize) -> bool {
    ep.buffer_space().map_or(true, |n| n >= want) || !ep.is_open().unwrap_or(false)
}

impl<M: SharedMem> Side<M> {
    fn wrote<S: Signal>(
        &mut self,
        w: &Waiter<S>,
        r: Result<Transfer, Error>,
    ) -> Attempt<usize, Error, S::Error> {
        match r {
            Ok(t) => {
                self.written += t.len as u64;
                w.settle(t.notify, t.len).map(Some)
            }
            Err(Error::WouldBlock) => w.nothing(),
            Err(e) => Err(e.into()),
        }
    }

    /// One read or receive: `op` on the endpoint, with the peer's declared
    /// end (asked before the ring is looked at) turning an empty ring into
    /// end of stream.
    fn read_with<S: Signal>(
        &mut self,
        w: &Waiter<S>,
        op: impl FnOnce(&mut Endpoint<M>) -> Result<Transfer, Error>,
    ) -> Attempt<usize, Error, S::Error> {
        let declared = w.signal.peer_write_closed();
        match op(&mut self.ep) {
            Ok(t) => {
                self.read += t.len as u64;
                w.settle(t.notify, t.len).map(Some)
            }
            Err(Error::WouldBlock) => w.empty(declared, self.read),
            Err(e) => Err(e.into()),
        }
    }

    fn delivered<S: Signal>(&mut self, w: &Waiter<S>) -> Attempt<(), Error, S::Error> {
        let capacity = self.ep.write_capacity();
        let ready = self.ep.arm_writable(capacity)?;
        match (self.ep.unread_by_peer()?, ready) {
            (0, _) => Ok(Some(())),
            // Ready with bytes unread: the peer closed without them.
            (_, Readiness::Ready) => Err(Error::Closed.into()),
            (_, Readiness::Armed) => w.nothing(),
        }
    }
}

impl<M: SharedMem, S: Signal> Blocking<M, S> {
    /// Wraps a connected endpoint and the event channel to its peer.
    ///
    /// # Examples
    ///
    /// ```
    /// # use core::sync::atomic::AtomicU64;
    /// # use ring_core::mem::RawMem;
    /// use ring_core::signal::NoSignal;
    /// use ring_core::vchan::{self, Blocking, Orders, ServerOptions};
    /// # let words: Vec<AtomicU64> = (0..512).map(|_| AtomicU64::new(0)).collect();
    /// # let mem = RawMem::from_atomics(&words);
    /// let server = vchan::serve_flat(mem, Orders::new(10, 11)?, ServerOptions::default())?;
    /// let client = vchan::connect_flat(mem)?;
    /// // NoSignal polls; a host passes its event channel instead.
    /// let mut server = Blocking::new(server, NoSignal);
    /// let mut client = Blocking::new(client, NoSignal);
    /// client.kick()?; // a new client's first event, as libxenvchan sends it
    /// client.write_all(b"hello")?;
    /// let mut buf = [0u8; 5];
    /// server.recv(&mut buf)?;
    /// assert_eq!((&buf, server.bytes_read()), (b"hello", 5));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(endpoint: Endpoint<M>, signal: S) -> Self {
        Blocking {
            side: Side {
                ep: endpoint,
                read: 0,
                written: 0,
            },
            waiter: Waiter::new(signal),
        }
    }

    /// The endpoint inside.
    pub fn endpoint(&mut self) -> &mut Endpoint<M> {
        &mut self.side.ep
    }

    /// The memory of the endpoint's control page.
    pub fn control(&self) -> &M {
        self.side.ep.control()
    }

    /// Which end we are.
    pub fn role(&self) -> super::Role {
        self.side.ep.role()
    }

    /// The capacity of the ring we write, in bytes.
    pub fn write_capacity(&self) -> usize {
        self.side.ep.write_capacity()
    }

    /// The capacity of the ring we read, in bytes.
    pub fn read_capacity(&self) -> usize {
        self.side.ep.read_capacity()
    }

    /// The signal inside.
    pub fn signal(&self) -> &S {
        &self.waiter.signal
    }

    /// The signal inside, mutably (e.g. to set a timeout).
    pub fn signal_mut(&mut self) -> &mut S {
        &mut self.waiter.signal
    }

    /// Takes the endpoint and signal apart again.
    pub fn into_parts(self) -> (Endpoint<M>, S) {
        (self.side.ep, self.waiter.signal)
    }

    /// Whether the signal has reported the peer gone (it died or hung up).
    pub fn peer_gone(&self) -> bool {
        self.waiter.peer_gone()
    }

    /// Bytes read through this wrapper so far.
    pub fn bytes_read(&self) -> u64 {
        self.side.read
    }

    /// Bytes written through this wrapper so far.
    pub fn bytes_written(&self) -> u64 {
        self.side.written
    }

    /// A look that arms nothing: (something to read or the stream ended,
    /// room to write or the peer closed).
    pub fn ready(&mut self) -> (bool, bool) {
        (
            read_ready(&mut self.side.ep, 1),
            write_ready(&mut self.side.ep, 1),
        )
    }

    /// Spins for the signal's budget until [`ready`](Self::ready) shows
    /// what is wanted (`read`, `write`); returns whether it did.
    pub fn spin_ready(&mut self, read: bool, write: bool) -> bool {
        let ep = &mut self.side.ep;
        self.waiter
            .signal
            .spin(&mut || (read && read_ready(ep, 1)) || (write && write_ready(ep, 1)))
    }

    /// Kicks the peer unconditionally (e.g. once after a client connects).
    pub fn kick(&self) -> Result<(), BlockingError<S::Error>> {
        self.waiter.settle(true, 0).map(drop)
    }

    /// Asks to be woken when a read would not answer "not now", without
    /// reading: `Some(())` a [`try_read`](Self::try_read) would return
    /// bytes, end of stream or an error now (including the peer's death
    /// or its declared end), `None` nothing yet (the `WRITE` request armed
    /// and the ring re-checked: the peer's next write kicks us). The
    /// readiness wait of an async host, for a caller that reads later.
    ///
    /// # Errors
    ///
    /// The ring's errors ([`Error::Corrupt`] for a peer that broke the
    /// protocol, [`Error::Held`] with bytes held).
    ///
    /// # Examples
    ///
    /// ```
    /// # use core::sync::atomic::AtomicU64;
    /// # use ring_core::mem::RawMem;
    /// # use ring_core::signal::NoSignal;
    /// # use ring_core::vchan::{self, Blocking, Orders, ServerOptions};
    /// # let words: Vec<AtomicU64> = (0..512).map(|_| AtomicU64::new(0)).collect();
    /// # let mem = RawMem::from_atomics(&words);
    /// # let server = vchan::serve_flat(mem, Orders::new(10, 11)?, ServerOptions::default())?;
    /// # let mut client = Blocking::new(vchan::connect_flat(mem)?, NoSignal);
    /// # let mut server = Blocking::new(server, NoSignal);
    /// assert_eq!(server.try_readable()?, None); // armed: wait for the kick
    /// client.write_all(b"ping")?;
    /// assert_eq!(server.try_readable()?, Some(()));
    /// assert_eq!(server.bytes_read(), 0); // nothing was read
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_readable(&mut self) -> Attempt<(), Error, S::Error> {
        // Asked before the ring is looked at, as a read asks it.
        let declared = self.waiter.signal.peer_write_closed();
        // The ring first: a poisoned endpoint says so, gone peer or not.
        match self.side.ep.arm_readable(1) {
            Ok(Readiness::Ready) => Ok(Some(())),
            Ok(Readiness::Armed) if declared.is_some() || self.waiter.peer_gone() => Ok(Some(())),
            Ok(Readiness::Armed) => Ok(None),
            // After our close a read answers at once (end of stream).
            Err(Error::Closed) => Ok(Some(())),
            Err(e) => Err(e.into()),
        }
    }

    /// Asks to be woken when a write would not answer "not now", without
    /// writing: `Some(())` a [`try_write`](Self::try_write) would write or
    /// fail now (room, the peer closed or gone, our own hang-up), `None`
    /// the ring is full (the `READ` request armed and the ring re-checked).
    ///
    /// # Errors
    ///
    /// As [`try_readable`](Self::try_readable).
    pub fn try_writable(&mut self) -> Attempt<(), Error, S::Error> {
        if self.side.ep.is_hung_up() {
            return Ok(Some(()));
        }
        match self.side.ep.arm_writable(1) {
            Ok(Readiness::Ready) => Ok(Some(())),
            Ok(Readiness::Armed) if self.waiter.peer_gone() => Ok(Some(())),
            Ok(Readiness::Armed) => Ok(None),
            Err(Error::Closed) => Ok(Some(())),
            Err(e) => Err(e.into()),
        }
    }

    /// One non-blocking stream read: `Some(n)` bytes (`Some(0)`: end of
    /// stream), `None` nothing yet (wake-up armed).
    ///
    /// # Errors
    ///
    /// [`BlockingError::PeerGone`] once the peer is gone and the ring
    /// drained; the ring's errors; the signal's, if a kick fails.
    ///
    /// # Examples
    ///
    /// ```
    /// # use core::sync::atomic::AtomicU64;
    /// # use ring_core::mem::RawMem;
    /// # use ring_core::signal::NoSignal;
    /// # use ring_core::vchan::{self, Blocking, Orders, ServerOptions};
    /// # let words: Vec<AtomicU64> = (0..512).map(|_| AtomicU64::new(0)).collect();
    /// # let mem = RawMem::from_atomics(&words);
    /// # let server = vchan::serve_flat(mem, Orders::new(10, 11)?, ServerOptions::default())?;
    /// # let mut client = Blocking::new(vchan::connect_flat(mem)?, NoSignal);
    /// # let mut server = Blocking::new(server, NoSignal);
    /// let mut buf = [0u8; 8];
    /// assert_eq!(server.try_read(&mut buf)?, None); // armed: wait, then try again
    /// client.write_all(b"ping")?;
    /// assert_eq!(server.try_read(&mut buf)?, Some(4));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_read(&mut self, buf: &mut [u8]) -> Attempt<usize, Error, S::Error> {
        self.side.read_with(&self.waiter, |ep| ep.read(buf))
    }

    /// One non-blocking stream write: `Some(n)` bytes, `None` the ring is
    /// full (wake-up armed).
    ///
    /// # Errors
    ///
    /// [`BlockingError::PeerGone`]; [`Error::Closed`] if the peer closed.
    pub fn try_write(&mut self, buf: &[u8]) -> Attempt<usize, Error, S::Error> {
        self.waiter.writable()?;
        let r = self.side.ep.write(buf);
        self.side.wrote(&self.waiter, r)
    }

    /// As [`try_write`](Self::try_write), gathered from `bufs` in order
    /// under one publish.
    ///
    /// # Errors
    ///
    /// As [`try_write`](Self::try_write).
    pub fn try_write_vectored<B: core::ops::Deref<Target = [u8]>>(
        &mut self,
        bufs: &[B],
    ) -> Attempt<usize, Error, S::Error> {
        self.waiter.writable()?;
        let r = self.side.ep.write_vectored(bufs);
        self.side.wrote(&self.waiter, r)
    }

    /// One non-blocking stream write in place (see
    /// [`Endpoint::write_with`]): `Some(n)` bytes published (0 if `fill`
    /// wrote none), `None` the ring is full (wake-up armed, `fill` not
    /// called).
    ///
    /// # Errors
    ///
    /// As [`try_write`](Self::try_write).
    pub fn try_write_with(
        &mut self,
        max: usize,
        fill: impl FnOnce(&M, &[Span]) -> usize,
    ) -> Attempt<usize, Error, S::Error> {
        self.waiter.writable()?;
        let r = self.side.ep.write_with(max, fill);
        self.side.wrote(&self.waiter, r)
    }

    /// One non-blocking stream read in place (see
    /// [`Endpoint::read_with`]): `Some(Drained::Took(n))` (0 if `drain`
    /// took none), `Some(Drained::End)` end of stream, `None` nothing yet
    /// (wake-up armed, `drain` not called).
    ///
    /// # Errors
    ///
    /// As [`try_read`](Self::try_read).
    pub fn try_read_with(
        &mut self,
        max: usize,
        drain: impl FnOnce(&M, &[Span]) -> usize,
    ) -> Attempt<Drained, Error, S::Error> {
        crate::loan::read_in_place(max, &mut Some(drain), |offer| {
            let (side, waiter) = (&mut self.side, &self.waiter);
            side.read_with(waiter, |ep| {
                Ok(ep.read_with(max, offer)?.unwrap_or(Transfer::NOTHING))
            })
        })
    }

    /// One non-blocking packet send (all of `buf` or nothing).
    ///
    /// # Errors
    ///
    /// As [`try_write`](Self::try_write), and [`Error::TooLarge`].
    pub fn try_send(&mut self, buf: &[u8]) -> Attempt<(), Error, S::Error> {
        self.waiter.writable()?;
        let r = self.side.ep.send(buf);
        Ok(self.side.wrote(&self.waiter, r)?.map(drop))
    }

    /// One non-blocking packet receive (all of `buf` or nothing).
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] if the stream ended with fewer bytes left;
    /// otherwise as [`try_read`](Self::try_read).
    pub fn try_recv(&mut self, buf: &mut [u8]) -> Attempt<(), Error, S::Error> {
        match self.side.read_with(&self.waiter, |ep| ep.recv(buf))? {
            // End of stream before the packet was whole.
            Some(0) if !buf.is_empty() => Err(Error::Closed.into()),
            other => Ok(other.map(drop)),
        }
    }

    /// Whether the peer has read every byte we wrote: `Some(())` yes,
    /// `None` not yet (its next read will wake us).
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] if the peer closed with bytes of ours unread;
    /// [`BlockingError::PeerGone`].
    pub fn try_delivered(&mut self) -> Attempt<(), Error, S::Error> {
        self.side.delivered(&self.waiter)
    }

    /// Waits once with `wait`: the signal's own [`Signal::wait`], or a
    /// host's wait on more sources. `Ok(None)` if the wait reported the peer
    /// gone: the next attempt takes the last look at the ring.
    ///
    /// # Errors
    ///
    /// The signal's error, when it does not mean the peer is gone;
    /// [`BlockingError::PeerGone`] for a wait after the peer was reported
    /// gone (nothing can wake it any more).
    pub fn wait_with<W>(
        &mut self,
        wait: impl FnOnce(&S) -> Result<W, S::Error>,
    ) -> Result<Option<W>, BlockingError<S::Error>> {
        self.waiter.wait_with(wait)
    }

    /// Reads at least one byte; `Ok(0)` is end of stream.
    ///
    /// # Examples
    ///
    /// ```
    /// # use core::sync::atomic::AtomicU64;
    /// # use ring_core::mem::RawMem;
    /// # use ring_core::signal::NoSignal;
    /// # use ring_core::vchan::{self, Blocking, Orders, ServerOptions};
    /// # let words: Vec<AtomicU64> = (0..512).map(|_| AtomicU64::new(0)).collect();
    /// # let mem = RawMem::from_atomics(&words);
    /// # let server = vchan::serve_flat(mem, Orders::new(10, 11)?, ServerOptions::default())?;
    /// # let mut client = Blocking::new(vchan::connect_flat(mem)?, NoSignal);
    /// # let mut server = Blocking::new(server, NoSignal);
    /// client.write_all(b"abc")?;
    /// client.close()?;
    /// let mut buf = [0u8; 8];
    /// assert_eq!(server.read(&mut buf)?, 3);
    /// assert_eq!(server.read(&mut buf)?, 0); // the client closed: end of stream
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, BlockingError<S::Error>> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.waiter.block(
            &mut self.side,
            |s| read_ready(&mut s.ep, 1),
            |s, w| s.read_with(w, |ep| ep.read(buf)),
        )
    }

    /// Writes at least one byte of `buf` (all of it if it fits).
    ///
    /// # Examples
    ///
    /// ```
    /// # use core::sync::atomic::AtomicU64;
    /// # use ring_core::mem::RawMem;
    /// # use ring_core::signal::NoSignal;
    /// # use ring_core::vchan::{self, Blocking, Orders, ServerOptions};
    /// # let words: Vec<AtomicU64> = (0..512).map(|_| AtomicU64::new(0)).collect();
    /// # let mem = RawMem::from_atomics(&words);
    /// # let server = vchan::serve_flat(mem, Orders::new(10, 11)?, ServerOptions::default())?;
    /// # let mut client = Blocking::new(vchan::connect_flat(mem)?, NoSignal);
    /// # let mut server = Blocking::new(server, NoSignal);
    /// // Blocks only while the ring is full, then takes what fits.
    /// assert_eq!(client.write(&[1u8; 1500])?, 1024);
    /// let mut buf = [0u8; 1000];
    /// assert_eq!(server.read(&mut buf)?, 1000);
    /// assert_eq!(client.write(&[2u8; 1500])?, 1000); // the room just freed
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write(&mut self, buf: &[u8]) -> Result<usize, BlockingError<S::Error>> {
        self.write_vectored(&[buf])
    }

    /// Writes at least one byte of `bufs`, gathered in order under one
    /// publish (all of them if they fit); see [`Endpoint::write_vectored`].
    pub fn write_vectored<B: core::ops::Deref<Target = [u8]>>(
        &mut self,
        bufs: &[B],
    ) -> Result<usize, BlockingError<S::Error>> {
        if bufs.iter().all(|b| b.is_empty()) {
            return Ok(0);
        }
        self.waiter.block(
            &mut self.side,
            |s| write_ready(&mut s.ep, 1),
            |s, w| {
                w.writable()?;
                let r = s.ep.write_vectored(bufs);
                s.wrote(w, r)
            },
        )
    }

    /// Writes in place: blocks until `want` bytes are free (at most the
    /// ring's capacity), then offers exactly those to `fill` as spans of
    /// the ring (see [`Endpoint::write_with`]) and publishes the first `n`
    /// under one index store, where `n` is what `fill` returns. So a
    /// serializer that knows its message's bound writes it straight into
    /// the ring, through a [`SpanWriter`](crate::loan::SpanWriter), and the
    /// peer sees all of it or none.
    ///
    /// Returns the bytes published (0 if `want` is 0).
    ///
    /// # Errors
    ///
    /// As [`write`](Self::write).
    ///
    /// # Examples
    ///
    /// ```
    /// # use core::sync::atomic::AtomicU64;
    /// # use ring_core::mem::RawMem;
    /// # use ring_core::signal::NoSignal;
    /// # use ring_core::vchan::{self, Blocking, Orders, ServerOptions};
    /// # let words: Vec<AtomicU64> = (0..512).map(|_| AtomicU64::new(0)).collect();
    /// # let mem = RawMem::from_atomics(&words);
    /// # let server = vchan::serve_flat(mem, Orders::new(10, 11)?, ServerOptions::default())?;
    /// # let mut client = Blocking::new(vchan::connect_flat(mem)?, NoSignal);
    /// # let mut server = Blocking::new(server, NoSignal);
    /// use ring_core::loan::SpanWriter;
    /// let body = b"reading=17";
    /// // A length-prefixed frame, built in the ring and published whole.
    /// let n = client.write_with(4 + body.len(), |mem, spans| {
    ///     let mut w = SpanWriter::new(mem, spans);
    ///     let len = (body.len() as u32).to_le_bytes();
    ///     let built = w.write_at(0, &len).and_then(|()| w.write_at(4, body));
    ///     built.map_or(0, |()| w.len())
    /// })?;
    /// assert_eq!(n, 14);
    /// let mut frame = [0u8; 14];
    /// server.recv(&mut frame)?;
    /// assert_eq!((&frame[..4], &frame[4..]), (&10u32.to_le_bytes()[..], &body[..]));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write_with(
        &mut self,
        want: usize,
        fill: impl FnOnce(&M, &[Span]) -> usize,
    ) -> Result<usize, BlockingError<S::Error>> {
        let want = want.min(self.side.ep.write_capacity());
        if want == 0 {
            return Ok(0);
        }
        let mut fill = Some(fill);
        self.waiter.block(
            &mut self.side,
            |s| write_ready(&mut s.ep, want),
            |s, w| {
                w.writable()?;
                if s.ep.arm_writable(want)? == Readiness::Armed {
                    return w.nothing();
                }
                let r =
                    s.ep.write_with(want, |mem, spans| fill.take().map_or(0, |f| f(mem, spans)));
                s.wrote(w, r)
            },
        )
    }

    /// Reads in place: blocks until there is something to read, then
    /// offers up to `max` readable bytes to `drain` (see
    /// [`Endpoint::read_with`]) and gives back the first `n` it returns.
    ///
    /// # Errors
    ///
    /// As [`read`](Self::read).
    ///
    /// # Examples
    ///
    /// ```
    /// # use core::sync::atomic::AtomicU64;
    /// # use ring_core::mem::RawMem;
    /// # use ring_core::signal::NoSignal;
    /// # use ring_core::vchan::{self, Blocking, Orders, ServerOptions};
    /// # let words: Vec<AtomicU64> = (0..512).map(|_| AtomicU64::new(0)).collect();
    /// # let mem = RawMem::from_atomics(&words);
    /// # let server = vchan::serve_flat(mem, Orders::new(10, 11)?, ServerOptions::default())?;
    /// # let mut client = Blocking::new(vchan::connect_flat(mem)?, NoSignal);
    /// # let mut server = Blocking::new(server, NoSignal);
    /// use ring_core::loan::{Drained, SpanReader};
    /// client.write_all(b"12345678")?;
    /// let mut word = [0u8; 4];
    /// let took = server.read_with(64, |mem, spans| {
    ///     SpanReader::new(mem, spans).read_at(0, &mut word).map_or(0, |()| 4)
    /// })?;
    /// assert_eq!((took, &word), (Drained::Took(4), b"1234")); // "5678" stays
    /// client.close()?;
    /// assert_eq!(server.read_with(64, |_, _| 4)?, Drained::Took(4));
    /// assert_eq!(server.read_with(64, |_, _| 4)?, Drained::End);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn read_with(
        &mut self,
        max: usize,
        drain: impl FnOnce(&M, &[Span]) -> usize,
    ) -> Result<Drained, BlockingError<S::Error>> {
        let mut drain = Some(drain);
        self.waiter.block(
            &mut self.side,
            |s| read_ready(&mut s.ep, 1),
            |s, w| {
                crate::loan::read_in_place(max, &mut drain, |offer| {
                    s.read_with(w, |ep| {
                        Ok(ep.read_with(max, offer)?.unwrap_or(Transfer::NOTHING))
                    })
                })
            },
        )
    }

    /// Sends `bufs` as one packet (all or nothing); see
    /// [`Endpoint::send_vectored`].
    pub fn send_vectored<B: core::ops::Deref<Target = [u8]>>(
        &mut self,
        bufs: &[B],
    ) -> Result<(), BlockingError<S::Error>> {
        let want: usize = bufs.iter().map(|b| b.len()).sum();
        self.waiter
            .block(
                &mut self.side,
                |s| write_ready(&mut s.ep, want),
                |s, w| {
                    w.writable()?;
                    let r = s.ep.send_vectored(bufs);
                    s.wrote(w, r)
                },
            )
            .map(drop)
    }

    /// Writes all of `buf`, in as many pieces as the ring needs.
    ///
    /// # Examples
    ///
    /// 4 KiB through a 1 KiB ring: the writer waits for the reader to make
    /// room.
    ///
    /// ```
    /// # use core::sync::atomic::AtomicU64;
    /// # use ring_core::mem::RawMem;
    /// # use ring_core::signal::NoSignal;
    /// # use ring_core::vchan::{self, Blocking, Orders, ServerOptions};
    /// # let words: Vec<AtomicU64> = (0..512).map(|_| AtomicU64::new(0)).collect();
    /// # let mem = RawMem::from_atomics(&words);
    /// # let server = vchan::serve_flat(mem, Orders::new(10, 11)?, ServerOptions::default())?;
    /// # let mut client = Blocking::new(vchan::connect_flat(mem)?, NoSignal);
    /// # let mut server = Blocking::new(server, NoSignal);
    /// let data = [42u8; 4096];
    /// std::thread::scope(|s| {
    ///     let writer = s.spawn(|| client.write_all(&data));
    ///     let mut got = Vec::new();
    ///     let mut buf = [0u8; 512];
    ///     while got.len() < data.len() {
    ///         let n = server.read(&mut buf)?;
    ///         got.extend_from_slice(&buf[..n]);
    ///     }
    ///     assert_eq!(got, data);
    ///     writer.join().expect("writer panicked")
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write_all(&mut self, mut buf: &[u8]) -> Result<(), BlockingError<S::Error>> {
        while !buf.is_empty() {
            let n = self.write(buf)?;
            buf = buf.get(n..).unwrap_or(&[]);
        }
        Ok(())
    }

    /// Receives exactly `buf.len()` bytes as one packet.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] if the stream ends before the packet is whole.
    ///
    /// # Examples
    ///
    /// ```
    /// # use core::sync::atomic::AtomicU64;
    /// # use ring_core::mem::RawMem;
    /// # use ring_core::signal::NoSignal;
    /// # use ring_core::vchan::{self, Blocking, Orders, ServerOptions};
    /// # let words: Vec<AtomicU64> = (0..512).map(|_| AtomicU64::new(0)).collect();
    /// # let mem = RawMem::from_atomics(&words);
    /// # let server = vchan::serve_flat(mem, Orders::new(10, 11)?, ServerOptions::default())?;
    /// # let mut client = Blocking::new(vchan::connect_flat(mem)?, NoSignal);
    /// # let mut server = Blocking::new(server, NoSignal);
    /// use ring_core::vchan::{BlockingError, Error};
    /// client.send(b"abcd")?;
    /// client.write_all(b"xyz")?;
    /// client.close()?;
    /// let mut four = [0u8; 4];
    /// server.recv(&mut four)?;
    /// assert_eq!(&four, b"abcd");
    /// // Three bytes left, then the end: never a whole packet.
    /// assert!(matches!(server.recv(&mut four), Err(BlockingError::Ring(Error::Closed))));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn recv(&mut self, buf: &mut [u8]) -> Result<(), BlockingError<S::Error>> {
        let want = buf.len();
        let got = self.waiter.block(
            &mut self.side,
            |s| read_ready(&mut s.ep, want),
            |s, w| s.read_with(w, |ep| ep.recv(buf)),
        )?;
        match got {
            0 if want > 0 => Err(Error::Closed.into()),
            _ => Ok(()),
        }
    }

    /// Sends `buf` as one packet (all or nothing).
    ///
    /// # Examples
    ///
    /// ```
    /// # use core::sync::atomic::AtomicU64;
    /// # use ring_core::mem::RawMem;
    /// # use ring_core::signal::NoSignal;
    /// # use ring_core::vchan::{self, Blocking, Orders, ServerOptions};
    /// # let words: Vec<AtomicU64> = (0..512).map(|_| AtomicU64::new(0)).collect();
    /// # let mem = RawMem::from_atomics(&words);
    /// # let server = vchan::serve_flat(mem, Orders::new(10, 11)?, ServerOptions::default())?;
    /// # let mut client = Blocking::new(vchan::connect_flat(mem)?, NoSignal);
    /// # let mut server = Blocking::new(server, NoSignal);
    /// use ring_core::vchan::{BlockingError, Error};
    /// client.send(&[1u8; 1000])?;
    /// let mut packet = [0u8; 1000];
    /// server.recv(&mut packet)?;
    /// assert_eq!(packet, [1u8; 1000]);
    /// // Larger than the 1 KiB ring: an error at once, not a wait for ever.
    /// let err = client.send(&[0u8; 2000]).unwrap_err();
    /// assert!(matches!(err, BlockingError::Ring(Error::TooLarge { .. })));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn send(&mut self, buf: &[u8]) -> Result<(), BlockingError<S::Error>> {
        self.send_vectored(&[buf])
    }

    /// Waits until the peer has read every byte we wrote.
    ///
    /// # Errors
    ///
    /// As [`try_delivered`](Self::try_delivered).
    pub fn wait_delivered(&mut self) -> Result<(), BlockingError<S::Error>> {
        let size = self.side.ep.write_capacity();
        self.waiter.block(
            &mut self.side,
            |s| write_ready(&mut s.ep, size),
            |s, w| s.delivered(w),
        )
    }

    /// Clears our live byte and kicks the peer, but goes on reading (see
    /// [`Endpoint::hang_up`]): the last look at what the peer sent before it
    /// saw the close.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after [`close`](Self::close), [`Error::Corrupt`],
    /// or the signal's error.
    pub fn hang_up(&mut self) -> Result<(), BlockingError<S::Error>> {
        let t = self.side.ep.hang_up()?;
        self.waiter.settle(t.notify, t.len).map(drop)
    }

    /// Closes our end and kicks the peer.
    pub fn close(&mut self) -> Result<(), BlockingError<S::Error>> {
        let t = self.side.ep.close()?;
        self.waiter.settle(t.notify, t.len).map(drop)
    }
}

impl<M, S: Signal> embedded_io::ErrorType for Blocking<M, S> {
    type Error = BlockingError<S::Error>;
}

impl<M: SharedMem, S: Signal> embedded_io::Read for Blocking<M, S> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        Blocking::read(self, buf)
    }
}

impl<M: SharedMem, S: Signal> embedded_io::Write for Blocking<M, S> {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        Blocking::write(self, buf)
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        // Bytes are visible to the peer as soon as `write` returns.
        Ok(())
    }
}

impl<M: SharedMem, S: Signal> embedded_io::ReadReady for Blocking<M, S> {
    fn read_ready(&mut self) -> Result<bool, Self::Error> {
        // Ready if data is waiting, or if a read would report end of stream.
        Ok(self.side.ep.data_ready()? > 0 || !self.side.ep.is_open()?)
    }
}

impl<M: SharedMem, S: Signal> embedded_io::WriteReady for Blocking<M, S> {
    fn write_ready(&mut self) -> Result<bool, Self::Error> {
        Ok(self.side.ep.buffer_space()? > 0 || !self.side.ep.is_open()?)
    }
}

/// One endpoint shared by several tasks of a `no_std` guest behind a spin
/// lock. Each call holds the lock for one non-blocking operation only, so a
/// task never sleeps while holding it.
#[derive(Debug)]
pub struct SharedEndpoint<M> {
    inner: spin::Mutex<Endpoint<M>>,
}

impl<M: SharedMem> SharedEndpoint<M> {
    /// Shares `endpoint`.
    pub fn new(endpoint: Endpoint<M>) -> Self {
        SharedEndpoint {
            inner: spin::Mutex::new(endpoint),
        }
    }

    /// Runs one operation on the endpoint under the lock.
    pub fn with<R>(&self, op: impl FnOnce(&mut Endpoint<M>) -> R) -> R {
        op(&mut self.inner.lock())
    }

    /// Non-blocking stream read; see [`Endpoint::read`].
    pub fn read(&self, buf: &mut [u8]) -> Result<Transfer, Error> {
        self.with(|ep| ep.read(buf))
    }

    /// Non-blocking stream write; see [`Endpoint::write`].
    pub fn write(&self, buf: &[u8]) -> Result<Transfer, Error> {
        self.with(|ep| ep.write(buf))
    }

    /// Non-blocking packet receive; see [`Endpoint::recv`].
    pub fn recv(&self, buf: &mut [u8]) -> Result<Transfer, Error> {
        self.with(|ep| ep.recv(buf))
    }

    /// Non-blocking packet send; see [`Endpoint::send`].
    pub fn send(&self, buf: &[u8]) -> Result<Transfer, Error> {
        self.with(|ep| ep.send(buf))
    }

    /// Takes the endpoint back.
    pub fn into_inner(self) -> Endpoint<M> {
        self.inner.into_inner()
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use crate::mem::RawMem;
    use crate::signal::NoSignal;
    use crate::vchan::{connect_flat, serve_flat, Orders, ServerOptions};
    use core::sync::atomic::AtomicU64;
    use embedded_io::{Read, ReadReady, Write, WriteReady};
    use std::vec::Vec;

    /// A host signal that answers each wait from a script, and counts.
    /// `Gone` is its "the peer is gone" error; `Broken` any other.
    #[derive(Default)]
    struct Script<'a> {
        waits: core::cell::RefCell<std::collections::VecDeque<Result<(), Fail>>>,
        /// Called at each wait, before its answer (the peer moving while
        /// we sleep).
        during_wait: core::cell::RefCell<Option<std::boxed::Box<dyn FnMut() + 'a>>>,
        notified: core::cell::Cell<u32>,
        spins: core::cell::Cell<u32>,
        closed: core::cell::Cell<Option<u64>>,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Fail {
        Gone,
        Broken,
    }

    impl Signal for Script<'_> {
        type Error = Fail;
        fn notify(&self) -> Result<(), Fail> {
            self.notified.set(self.notified.get() + 1);
            Ok(())
        }
        fn wait(&self) -> Result<(), Fail> {
            if let Some(f) = self.during_wait.borrow_mut().as_mut() {
                f();
            }
            self.waits
                .borrow_mut()
                .pop_front()
                .unwrap_or(Err(Fail::Broken))
        }
        fn is_peer_gone(e: &Fail) -> bool {
            *e == Fail::Gone
        }
        fn spin(&self, ready: &mut dyn FnMut() -> bool) -> bool {
            self.spins.set(self.spins.get() + 1);
            ready()
        }
        fn peer_write_closed(&self) -> Option<u64> {
            self.closed.get()
        }
    }

    /// A signal that overrides nothing it need not.
    struct Plain;

    impl Signal for Plain {
        type Error = ();
        fn notify(&self) -> Result<(), ()> {
            Ok(())
        }
        fn wait(&self) -> Result<(), ()> {
            Err(())
        }
    }

    fn words() -> Vec<AtomicU64> {
        (0..512).map(|_| AtomicU64::new(0)).collect()
    }

    fn ends(mem: RawMem<'_>) -> (Endpoint<RawMem<'_>>, Endpoint<RawMem<'_>>) {
        let orders = Orders::new(10, 11).unwrap();
        let server = serve_flat(mem, orders, ServerOptions::default()).unwrap();
        (server, connect_flat(mem).unwrap())
    }

    /// A wait that reports the peer gone gets one more look at the ring
    /// (what the peer published before it went is delivered), then
    /// `PeerGone`; writes after that fail at once; through `&Script` the
    /// same, every trait method forwarded.
    #[test]
    fn a_peer_gone_wait_delivers_the_last_bytes_then_says_so() {
        for by_ref in [false, true] {
            let w = words();
            let mem = RawMem::from_atomics(&w);
            let (server, client) = ends(mem);
            let script = Script::default();
            script.waits.borrow_mut().push_back(Err(Fail::Gone));
            let client = core::cell::RefCell::new(Some(client));
            *script.during_wait.borrow_mut() = Some(std::boxed::Box::new(move || {
                if let Some(mut c) = client.borrow_mut().take() {
                    // Its last words, then it dies (no close, no kick).
                    assert_eq!(c.write(b"last").unwrap().len, 4);
                }
            }));
            let mut buf = [0u8; 8];
            let (read, more, write, spins, gone) = if by_ref {
                let mut s = Blocking::new(server, &script);
                assert!(!s.peer_gone());
                let r = s.read(&mut buf);
                let gone = s.peer_gone();
                (r, s.read(&mut buf), s.write(b"x"), script.spins.get(), gone)
            } else {
                let mut s = Blocking::new(server, script);
                assert!(!s.peer_gone());
                let r = s.read(&mut buf);
                let gone = s.peer_gone();
                let (more, write) = (s.read(&mut buf), s.write(b"x"));
                (r, more, write, s.signal().spins.get(), gone)
            };
            assert_eq!(read, Ok(4), "by_ref {by_ref}");
            assert!(gone, "peer_gone() after the wait said so");
            assert_eq!(&buf[..4], b"last");
            assert_eq!(more, Err(BlockingError::PeerGone));
            assert_eq!(write, Err(BlockingError::PeerGone));
            assert!(spins > 0, "the host's spin was not asked");
        }
    }

    /// A wait that fails for another reason is the signal's failure, not
    /// the peer's death; a signal that does not say what "gone" looks like
    /// never reports it.
    #[test]
    fn other_wait_failures_are_the_signals() {
        let w = words();
        let mem = RawMem::from_atomics(&w);
        let (server, _client) = ends(mem);
        let script = Script::default();
        script.waits.borrow_mut().push_back(Err(Fail::Broken));
        let mut s = Blocking::new(server, &script);
        assert_eq!(
            s.read(&mut [0u8; 4]),
            Err(BlockingError::Signal(Fail::Broken))
        );
        let w = words();
        let mem = RawMem::from_atomics(&w);
        let (server, _client) = ends(mem);
        let mut s = Blocking::new(server, Plain);
        assert_eq!(s.read(&mut [0u8; 4]), Err(BlockingError::Signal(())));
    }

    /// The peer's declared end (outside the ring) is end of stream only
    /// when we have read exactly what it says it wrote.
    #[test]
    fn a_declared_end_must_match_what_was_read() {
        for (declared, wrote, want) in [
            (3, 3, Ok(0)),
            (4, 3, Err("other than")),
            (2, 3, Err("other than")),
        ] {
            let w = words();
            let mem = RawMem::from_atomics(&w);
            let (server, mut client) = ends(mem);
            assert_eq!(client.write(&[7u8; 8][..wrote]).unwrap().len, wrote);
            let script = Script::default();
            script.closed.set(Some(declared));
            let mut s = Blocking::new(server, &script);
            let mut buf = [0u8; 8];
            assert_eq!(s.read(&mut buf), Ok(wrote));
            match (s.read(&mut buf), want) {
                (Ok(n), Ok(m)) => assert_eq!(n, m),
                (Err(BlockingError::Ring(Error::Corrupt(c))), Err(what)) => {
                    assert!(c.what.contains(what), "{}", c.what)
                }
                (got, _) => panic!("declared {declared}, wrote {wrote}: {got:?}"),
            }
        }
    }

    /// The host's kick and spin are what the blocking layer asks, through
    /// a reference as through the signal itself; a signal that does not
    /// spin never reports readiness from a spin.
    #[test]
    fn the_hosts_kick_and_spin_are_asked_through_references() {
        let w = words();
        let mem = RawMem::from_atomics(&w);
        let (server, client) = ends(mem);
        let (to_server, to_client) = (Script::default(), Script::default());
        let mut server = Blocking::new(server, &to_client);
        let mut client = Blocking::new(client, &to_server);
        assert!(!server.spin_ready(true, false), "nothing to read yet");
        // The server asked for the client's first write at set-up.
        client.write_all(b"x").unwrap();
        assert_eq!(to_server.notified.get(), 1);
        assert!(server.spin_ready(true, false));
        // A blocking read spins (arming nothing) before it tries, while
        // the peer lives.
        let spins = to_client.spins.get();
        let mut one = [0u8; 1];
        assert_eq!(server.read(&mut one), Ok(1));
        assert_eq!(to_client.spins.get(), spins + 1);
        let w = words();
        let mem = RawMem::from_atomics(&w);
        let (server, mut client) = ends(mem);
        assert_eq!(client.write(b"y").unwrap().len, 1);
        let mut plain = Blocking::new(server, Plain);
        assert!(!plain.spin_ready(true, false), "a default signal spins not");
    }

    /// How each blocking error reads, and where it came from.
    #[test]
    fn blocking_errors_say_what_failed() {
        use core::error::Error as _;
        let ring: BlockingError<()> = BlockingError::Ring(Error::Closed);
        let signal: BlockingError<&str> = BlockingError::Signal("dead fd");
        let gone: BlockingError<()> = BlockingError::PeerGone;
        assert_eq!(std::format!("{ring}"), std::format!("{}", Error::Closed));
        assert_eq!(std::format!("{signal}"), "signal failed: \"dead fd\"");
        assert_eq!(std::format!("{gone}"), "the peer is gone");
        assert!(ring.source().is_some());
        assert!(gone.source().is_none());
    }

    #[test]
    fn embedded_io_over_a_polling_signal() {
        let words: Vec<AtomicU64> = (0..512).map(|_| AtomicU64::new(0)).collect();
        let mem = RawMem::from_atomics(&words);
        let orders = Orders::new(10, 11).unwrap();
        let server = serve_flat(mem, orders, ServerOptions::default()).unwrap();
        let client = connect_flat(mem).unwrap();
        let mut server = Blocking::new(server, NoSignal);
        let mut client = Blocking::new(client, NoSignal);
        assert!(!server.read_ready().unwrap());
        assert!(client.write_ready().unwrap());
        Write::write_all(&mut client, b"over embedded-io").unwrap();
        assert!(server.read_ready().unwrap());
        let mut buf = [0u8; 16];
        Read::read_exact(&mut server, &mut buf).unwrap();
        assert_eq!(&buf, b"over embedded-io");
        client.close().unwrap();
        // End of stream is readable (it reports EOF at once).
        assert!(server.read_ready().unwrap());
        assert_eq!(Read::read(&mut server, &mut buf).unwrap(), 0);
        let err = Write::write(&mut server, b"x").unwrap_err();
        assert_eq!(
            embedded_io::Error::kind(&err),
            embedded_io::ErrorKind::BrokenPipe
        );
    }

    #[test]
    fn shared_endpoint_serialises_tasks() {
        let words: Vec<AtomicU64> = (0..512).map(|_| AtomicU64::new(0)).collect();
        let mem = RawMem::from_atomics(&words);
        let orders = Orders::new(10, 11).unwrap();
        let server =
            SharedEndpoint::new(serve_flat(mem, orders, ServerOptions::default()).unwrap());
        let client = SharedEndpoint::new(connect_flat(mem).unwrap());
        std::thread::scope(|s| {
            for task in 0..4u8 {
                let client = &client;
                s.spawn(move || {
                    let mut sent = 0;
                    while sent < 100 {
                        match client.send(&[task; 4]) {
                            Ok(_) => sent += 1,
                            Err(Error::WouldBlock) => std::thread::yield_now(),
                            Err(e) => panic!("{e:?}"),
                        }
                    }
                });
            }
            let mut counts = [0u32; 4];
            let mut got = 0;
            while got < 400 {
                let mut packet = [0u8; 4];
                match server.recv(&mut packet) {
                    Ok(_) => {
                        // Packets from different tasks never interleave.
                        assert!(packet.iter().all(|&b| b == packet[0]));
                        counts[usize::from(packet[0])] += 1;
                        got += 1;
                    }
                    Err(Error::WouldBlock) => std::thread::yield_now(),
                    Err(e) => panic!("{e:?}"),
                }
            }
            assert_eq!(counts, [100; 4]);
        });
    }

    /// A peer that publishes bytes and dies while we are about to sleep:
    /// the wait reports it gone, and the bytes are still delivered before
    /// the error.
    #[test]
    fn bytes_published_before_the_peer_died_are_delivered() {
        use core::cell::RefCell;

        struct DyingPeer<'a> {
            peer: RefCell<Endpoint<RawMem<'a>>>,
        }
        impl Signal for DyingPeer<'_> {
            type Error = &'static str;
            fn notify(&self) -> Result<(), &'static str> {
                Ok(())
            }
            fn wait(&self) -> Result<(), &'static str> {
                // The peer's last act: publish three bytes, then vanish
                // without closing and without a kick.
                let _ = self.peer.borrow_mut().write(b"end");
                Err("peer gone")
            }
            fn is_peer_gone(error: &&'static str) -> bool {
                *error == "peer gone"
            }
        }

        let words: Vec<AtomicU64> = (0..512).map(|_| AtomicU64::new(0)).collect();
        let mem = RawMem::from_atomics(&words);
        let orders = Orders::new(10, 11).unwrap();
        let server = serve_flat(mem, orders, ServerOptions::default()).unwrap();
        let client = connect_flat(mem).unwrap();
        let mut server = Blocking::new(
            server,
            DyingPeer {
                peer: RefCell::new(client),
            },
        );
        let mut buf = [0u8; 8];
        assert_eq!(server.read(&mut buf).unwrap(), 3);
        assert_eq!(&buf[..3], b"end");
        // Now the error surfaces.
        assert!(matches!(
            server.read(&mut buf),
            Err(BlockingError::PeerGone)
        ));
    }

    /// The readiness waits arm and answer without moving a byte: a read
    /// waits for bytes, the peer's declared end, its death or its close;
    /// a write for room, our hang-up or the peer's death; a poisoned
    /// endpoint is an error, gone peer or not.
    #[test]
    fn readiness_waits_move_nothing_and_answer_every_end() {
        let w = words();
        let mem = RawMem::from_atomics(&w);
        let (server, client) = ends(mem);
        let mut s = Blocking::new(server, Script::default());
        let mut c = Blocking::new(client, Plain);
        assert_eq!(s.try_readable(), Ok(None));
        assert_eq!(c.try_write(b"ab"), Ok(Some(2)));
        assert_eq!(s.try_readable(), Ok(Some(())));
        assert_eq!(s.bytes_read(), 0, "nothing read");
        let mut buf = [0u8; 4];
        assert_eq!(s.try_read(&mut buf), Ok(Some(2)));
        assert_eq!(s.try_readable(), Ok(None));
        // The peer's declared end makes an empty ring an answer.
        s.signal().closed.set(Some(2));
        assert_eq!(s.try_readable(), Ok(Some(())));
        assert_eq!(s.try_read(&mut buf), Ok(Some(0)));
        s.signal().closed.set(None);

        // The server's 2 KiB ring full: armed, until the end below.
        assert_eq!(s.try_write(&[2u8; 2048]), Ok(Some(2048)));
        assert_eq!(s.try_writable(), Ok(None));

        // Writing: the client's 1 KiB ring full, then room again.
        assert_eq!(c.try_writable(), Ok(Some(())));
        assert_eq!(c.try_write(&[1u8; 1024]), Ok(Some(1024)));
        assert_eq!(c.try_writable(), Ok(None));
        assert_eq!(s.try_read(&mut buf[..1]), Ok(Some(1)));
        assert_eq!(c.try_writable(), Ok(Some(())));
        assert_eq!(c.try_write(&[1u8; 2]), Ok(Some(1)));
        assert_eq!(c.try_writable(), Ok(None));
        let _ = c.endpoint().hang_up().unwrap(); // the peer needs no kick here
        assert_eq!(c.try_writable(), Ok(Some(())), "a write fails now");

        // The peer's death, as a wait reports it, is an answer for both
        // (our own ring is full: only the death answers).
        s.signal().waits.borrow_mut().push_back(Err(Fail::Gone));
        assert_eq!(s.wait_with(|sig| sig.wait()), Ok(None));
        let mut all = [0u8; 1024];
        assert_eq!(s.try_read(&mut all), Ok(Some(1024)));
        assert_eq!(s.try_readable(), Ok(Some(())));
        assert_eq!(s.try_writable(), Ok(Some(())));
        // A poisoned endpoint: an error first.
        mem.store_u32(super::super::layout::LEFT_PROD, 0x4000_0000)
            .unwrap();
        assert!(matches!(
            s.try_readable(),
            Err(BlockingError::Ring(Error::Corrupt(_)))
        ));
        assert!(matches!(
            s.try_writable(),
            Err(BlockingError::Ring(Error::Corrupt(_)))
        ));

        // A peer that dies with its live byte still set (no close): only
        // the wait that reports it gone answers a full ring's writer.
        let w = words();
        let mem = RawMem::from_atomics(&w);
        let (server, _client) = ends(mem);
        let mut s = Blocking::new(server, Script::default());
        assert_eq!(s.try_write(&[2u8; 2048]), Ok(Some(2048)));
        assert_eq!(s.try_writable(), Ok(None));
        s.signal().waits.borrow_mut().push_back(Err(Fail::Gone));
        assert_eq!(s.wait_with(|sig| sig.wait()), Ok(None));
        assert_eq!(s.try_writable(), Ok(Some(())));
        assert_eq!(s.try_readable(), Ok(Some(())));
    }
}
