//! A vchan endpoint between two processes, made blocking on an
//! [`EventSignal`], with `std::io` streams and a message API on top.
//!
//! # Peer death
//!
//! A peer that closes cleanly stores 0 to its live byte and kicks us; reads
//! then return the bytes still in the ring and then end of stream (`Ok(0)`).
//! A peer that *dies* (SIGKILL, crash) never gets to do that, so the wait
//! also watches the rendezvous socket: when the kernel closes the dead
//! peer's end, the wait returns, the reader makes one last pass over the
//! ring (bytes already there are still delivered, in order), and then every
//! call returns [`Error::Closed`]. Writers return `Closed` at once.
//!
//! # Spinning
//!
//! Before a blocking call arms its wake-up request it re-checks the ring
//! for the signal's spin budget ([`EventSignal::set_spin`], 20 µs by
//! default). A peer on another core usually moves within that time, and a
//! side that has not armed its request costs the peer no kick.

use crate::eventfd::{EventSignal, Woken};
use crate::memfd::MemFd;
use crate::Error;
use ring_core::signal::Signal;
use ring_core::vchan::{self, Endpoint, Role};
use std::io;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::eventfd::LIVENESS_POLL;

/// Bytes of the length prefix [`VchanStream::send_msg`] puts before each
/// message.
pub const MSG_HEADER: usize = 4;

/// The non-blocking face of a ring stream between two processes, which
/// poll loops ([`check::duplex`](crate::check::duplex), `ring listen`) drive
/// the same way whatever the protocol.
pub trait PollStream {
    /// Reads what is there: `Some(n)` bytes (`n == 0`: clean end of
    /// stream), `None` nothing yet (wake-up armed).
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once the peer is gone and the ring drained, or a
    /// protocol error.
    fn try_read(&mut self, buf: &mut [u8]) -> Result<Option<usize>, Error>;

    /// Writes what fits: `Some(n)` bytes, `None` the ring is full (wake-up
    /// armed).
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] if the peer closed or died, or a protocol error.
    fn try_write(&mut self, buf: &[u8]) -> Result<Option<usize>, Error>;

    /// A cheap look that arms nothing: (something to read, room to write).
    fn ready(&mut self) -> (bool, bool);

    /// Spins for the spin budget until [`ready`](Self::ready) shows what
    /// is wanted; returns whether it did.
    fn spin_ready(&mut self, read: bool, write: bool) -> bool;

    /// Waits for a kick, the peer's death, or `extra`, until `deadline`;
    /// may return early with nothing set (re-check and call again).
    ///
    /// # Errors
    ///
    /// [`Error::TimedOut`] after `deadline`; [`Error::Os`].
    fn wait_event(
        &mut self,
        extra: Option<BorrowedFd<'_>>,
        deadline: Option<Instant>,
    ) -> Result<Woken, Error>;

    /// The deadline for a blocking call starting now.
    fn deadline(&self) -> Option<Instant>;

    /// The event channel (counters).
    fn signal(&self) -> &EventSignal;

    /// Ends our side of the stream (the peer reads what is left, then end
    /// of stream).
    ///
    /// # Errors
    ///
    /// As the protocol's close.
    fn close(&mut self) -> Result<(), Error>;
}

/// Spins for at most `budget` until `ready` says yes; returns its last
/// answer.
pub(crate) fn spin_for(budget: Duration, mut ready: impl FnMut() -> bool) -> bool {
    if budget.is_zero() {
        return false;
    }
    let start = Instant::now();
    loop {
        if ready() {
            return true;
        }
        if start.elapsed() >= budget {
            return false;
        }
        std::hint::spin_loop();
    }
}

/// A connected vchan endpoint over a memfd with its event channel.
///
/// Blocking calls ([`read`](Self::read), [`write`](Self::write),
/// [`send_packet`](Self::send_packet), ...) spin, then sleep on the
/// eventfd; the `try_` calls never block and leave the wake-up request
/// armed when they return `Ok(None)`, so an outside poll loop can wait with
/// [`wait_event`](Self::wait_event). One thread at a time: the type is
/// `Send`, not shared.
#[derive(Debug)]
pub struct VchanStream {
    ep: Endpoint<Arc<MemFd>>,
    signal: EventSignal,
    peer_gone: bool,
    msg_broken: bool,
    scratch: Vec<u8>,
}

impl VchanStream {
    /// Wraps a connected endpoint and its signal.
    pub fn new(ep: Endpoint<Arc<MemFd>>, signal: EventSignal) -> Self {
        VchanStream {
            ep,
            signal,
            peer_gone: false,
            msg_broken: false,
            scratch: Vec::new(),
        }
    }

    /// Which end this is.
    pub fn role(&self) -> Role {
        self.ep.role()
    }

    /// The endpoint inside (for readiness queries and introspection).
    pub fn endpoint(&mut self) -> &mut Endpoint<Arc<MemFd>> {
        &mut self.ep
    }

    /// The signal inside (counters, spin and timeout settings).
    pub fn signal(&self) -> &EventSignal {
        &self.signal
    }

    /// The signal inside, to change its spin or timeout.
    pub fn signal_mut(&mut self) -> &mut EventSignal {
        &mut self.signal
    }

    /// The shared memory (for `ring inspect`-style dumps).
    pub fn memory(&self) -> &Arc<MemFd> {
        self.ep.control()
    }

    fn kick_if(&self, t: vchan::Transfer) -> Result<usize, Error> {
        if t.notify {
            self.signal.notify().map_err(Error::from)?;
        }
        Ok(t.len)
    }

    /// Non-blocking read: `Ok(Some(n))` bytes read (`n == 0` is a clean end
    /// of stream), `Ok(None)` nothing yet (wake-up armed).
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once the peer is gone and the ring drained;
    /// [`Error::Ring`] if the peer broke the protocol.
    pub fn try_read(&mut self, buf: &mut [u8]) -> Result<Option<usize>, Error> {
        match self.ep.read(buf) {
            Ok(t) => self.kick_if(t).map(Some),
            Err(vchan::Error::WouldBlock) if self.peer_gone => Err(Error::Closed),
            Err(vchan::Error::WouldBlock) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Non-blocking write: `Ok(Some(n))` bytes written, `Ok(None)` the ring
    /// is full (wake-up armed).
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] if the peer closed or died.
    pub fn try_write(&mut self, buf: &[u8]) -> Result<Option<usize>, Error> {
        self.try_write_vectored(&[buf])
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
        if self.peer_gone {
            return Err(Error::Closed);
        }
        match self.ep.write_vectored(bufs) {
            Ok(t) => self.kick_if(t).map(Some),
            Err(vchan::Error::WouldBlock) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Waits for a kick, the peer's death, or `extra` to become readable,
    /// until `deadline` (`None`: no limit).
    ///
    /// It also returns, with nothing set in [`Woken`], at least every
    /// [`LIVENESS_POLL`], so the caller re-checks the ring: a peer that
    /// clears its live byte without kicking us is still noticed in time.
    /// After the peer's death it returns at once (and the `try_` calls
    /// report `Closed` once drained).
    ///
    /// # Errors
    ///
    /// [`Error::TimedOut`] once `deadline` has passed; [`Error::Os`].
    pub fn wait_event(
        &mut self,
        extra: Option<BorrowedFd<'_>>,
        deadline: Option<Instant>,
    ) -> Result<Woken, Error> {
        self.signal.wait_slice(&mut self.peer_gone, extra, deadline)
    }

    /// The deadline for a blocking call starting now, from the signal's
    /// timeout.
    pub fn deadline(&self) -> Option<Instant> {
        self.signal.timeout().map(|t| Instant::now() + t)
    }

    /// Spins for at most the spin budget until the ring has data to read
    /// (`read`) or space to write (`write`), without arming anything.
    /// Returns whether it found either.
    pub fn spin_ready(&mut self, read: bool, write: bool) -> bool {
        let mut found = false;
        self.spin(|ep| {
            found = (read && ep.data_ready().map_or(true, |n| n > 0))
                || (write && ep.buffer_space().map_or(true, |n| n > 0));
            found
        });
        found
    }

    /// Spins while `ready` says no, for at most the spin budget.
    fn spin(&mut self, mut ready: impl FnMut(&mut Endpoint<Arc<MemFd>>) -> bool) {
        let budget = self.signal.spin();
        let ep = &mut self.ep;
        spin_for(budget, || ready(ep));
    }

    /// Runs a non-blocking operation until it makes progress, spinning and
    /// then waiting in between.
    fn block<T>(
        &mut self,
        want_read: usize,
        want_write: usize,
        mut op: impl FnMut(&mut Self) -> Result<Option<T>, Error>,
    ) -> Result<T, Error> {
        let deadline = self.deadline();
        loop {
            if want_read > 0 {
                self.spin(|ep| ep.data_ready().map_or(true, |n| n >= want_read));
            } else if want_write > 0 {
                self.spin(|ep| ep.buffer_space().map_or(true, |n| n >= want_write));
            }
            if let Some(v) = op(self)? {
                return Ok(v);
            }
            self.wait_event(None, deadline)?;
        }
    }

    /// Reads at least one byte, blocking; `Ok(0)` is a clean end of stream.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] if the peer died (after the bytes it left in the
    /// ring were read); [`Error::TimedOut`]; [`Error::Ring`].
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.block(1, 0, |s| s.try_read(buf))
    }

    /// Writes at least one byte of `buf`, blocking.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] if the peer closed or died; [`Error::TimedOut`].
    pub fn write(&mut self, buf: &[u8]) -> Result<usize, Error> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.block(0, 1, |s| s.try_write(buf))
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
        if bufs.iter().all(|b| b.is_empty()) {
            return Ok(0);
        }
        self.block(0, 1, |s| s.try_write_vectored(bufs))
    }

    /// Writes all of `buf`.
    ///
    /// # Errors
    ///
    /// As [`write`](Self::write).
    pub fn write_all(&mut self, mut buf: &[u8]) -> Result<(), Error> {
        while !buf.is_empty() {
            let n = VchanStream::write(self, buf)?;
            buf = buf.get(n..).unwrap_or(&[]);
        }
        Ok(())
    }

    /// Sends `buf` as one packet: all of it, or (after blocking) nothing.
    ///
    /// # Errors
    ///
    /// [`Error::Ring`] with `TooLarge` if it can never fit; [`Error::Closed`].
    pub fn send_packet(&mut self, buf: &[u8]) -> Result<(), Error> {
        let want = buf.len();
        self.block(0, want, |s| {
            if s.peer_gone {
                return Err(Error::Closed);
            }
            match s.ep.send(buf) {
                Ok(t) => s.kick_if(t).map(Some),
                Err(vchan::Error::WouldBlock) => Ok(None),
                Err(e) => Err(e.into()),
            }
        })
        .map(drop)
    }

    /// Receives exactly `buf.len()` bytes, blocking until all are there.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] if the peer closed or died with fewer bytes left;
    /// [`Error::Ring`] with `TooLarge` if `buf` exceeds the ring.
    pub fn recv_packet(&mut self, buf: &mut [u8]) -> Result<(), Error> {
        let want = buf.len();
        self.block(want, 0, |s| match s.ep.recv(buf) {
            Ok(t) => s.kick_if(t).map(Some),
            Err(vchan::Error::WouldBlock) if s.peer_gone => Err(Error::Closed),
            Err(vchan::Error::WouldBlock) => Ok(None),
            Err(e) => Err(e.into()),
        })
        .map(drop)
    }

    /// Largest message [`send_msg`](Self::send_msg) accepts: the ring we
    /// write, less the length prefix.
    pub fn max_msg(&self) -> usize {
        self.ep.write_capacity() - MSG_HEADER
    }

    /// Sends one message: a 4-byte little-endian length and the bytes, as
    /// one packet, so the peer never sees half a message.
    ///
    /// # Errors
    ///
    /// [`Error::Ring`] with `TooLarge` above [`max_msg`](Self::max_msg);
    /// else as [`send_packet`](Self::send_packet).
    pub fn send_msg(&mut self, msg: &[u8]) -> Result<(), Error> {
        let len = u32::try_from(msg.len()).unwrap_or(u32::MAX);
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        scratch.extend_from_slice(&len.to_le_bytes());
        scratch.extend_from_slice(msg);
        let r = self.send_packet(&scratch);
        self.scratch = scratch;
        r
    }

    /// Receives one message into `buf` and returns its length.
    ///
    /// # Errors
    ///
    /// A length prefix larger than `buf` or the ring is the peer's error
    /// (or a too-small `buf`); the stream is then out of step, and this and
    /// every later message call return [`Error::Ring`]. Else as
    /// [`recv_packet`](Self::recv_packet).
    pub fn recv_msg(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        let capacity = self.ep.read_capacity() - MSG_HEADER;
        if self.msg_broken {
            return Err(Error::Ring(vchan::Error::Corrupt(ring_core::Corrupt {
                what: "message stream out of step after a bad length",
            })));
        }
        let mut head = [0u8; MSG_HEADER];
        self.recv_packet(&mut head)?;
        let len = u32::from_le_bytes(head) as usize;
        let Some(dst) = buf.get_mut(..len).filter(|_| len <= capacity) else {
            self.msg_broken = true;
            return Err(Error::Ring(vchan::Error::TooLarge {
                len,
                capacity: capacity.min(buf.len()),
            }));
        };
        self.recv_packet(dst)?;
        Ok(len)
    }

    /// Closes our end: the peer reads what is left and then end of stream,
    /// and its writes fail. Idempotent.
    ///
    /// # Errors
    ///
    /// [`Error::Os`] if the final kick fails.
    pub fn close(&mut self) -> Result<(), Error> {
        match self.ep.close() {
            Ok(t) => self.kick_if(t).map(drop),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether the peer has been seen to hang up.
    pub fn peer_gone(&self) -> bool {
        self.peer_gone
    }

    /// Kicks the peer whether or not it asked: unsticks a peer that sleeps
    /// although the ring says it has work (`ring inspect` shows a signal
    /// owed to it).
    ///
    /// # Errors
    ///
    /// [`Error::Os`] if the eventfd write fails.
    pub fn kick(&self) -> Result<(), Error> {
        self.signal.notify().map_err(Error::from)
    }
}

/// A connected server/client pair in this process over a fresh memfd and
/// eventfds (no socket, so no hang-up detection): for tests, examples and
/// in-process benchmarks. `left` and `right` are the minimum ring sizes
/// (client→server, server→client).
///
/// # Errors
///
/// [`Error::Ring`] for sizes vchan cannot make; [`Error::Os`].
pub fn pair(left: usize, right: usize) -> Result<(VchanStream, VchanStream), Error> {
    let orders = vchan::Orders::for_sizes(left, right).map_err(|e| Error::Ring(e.into()))?;
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

impl PollStream for VchanStream {
    fn try_read(&mut self, buf: &mut [u8]) -> Result<Option<usize>, Error> {
        VchanStream::try_read(self, buf)
    }
    fn try_write(&mut self, buf: &[u8]) -> Result<Option<usize>, Error> {
        VchanStream::try_write(self, buf)
    }
    fn ready(&mut self) -> (bool, bool) {
        (
            self.ep.data_ready().map_or(true, |n| n > 0),
            self.ep.buffer_space().map_or(true, |n| n > 0),
        )
    }
    fn spin_ready(&mut self, read: bool, write: bool) -> bool {
        VchanStream::spin_ready(self, read, write)
    }
    fn wait_event(
        &mut self,
        extra: Option<BorrowedFd<'_>>,
        deadline: Option<Instant>,
    ) -> Result<Woken, Error> {
        VchanStream::wait_event(self, extra, deadline)
    }
    fn deadline(&self) -> Option<Instant> {
        VchanStream::deadline(self)
    }
    fn signal(&self) -> &EventSignal {
        VchanStream::signal(self)
    }
    fn close(&mut self) -> Result<(), Error> {
        VchanStream::close(self)
    }
}

impl Drop for VchanStream {
    fn drop(&mut self) {
        // Best effort: a peer blocked on us must learn that we are gone.
        let _ = self.close();
    }
}

impl io::Read for VchanStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        VchanStream::read(self, buf).map_err(io::Error::from)
    }
}

impl io::Write for VchanStream {
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
