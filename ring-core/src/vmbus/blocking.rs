//! Blocking use of a channel (a ring each way) on a host-supplied
//! [`Signal`], and a blocking byte pipe with the `embedded-io` traits.
//!
//! A VMBus channel has one event for both directions, so one [`Signal`]
//! serves both: every wake-up may mean "data arrived" or "space freed",
//! and each wait is preceded by an arm-and-re-check in the ring, so merged
//! or stolen events cannot lose a wake-up.

use super::pipe::{PipeReader, PipeWriter};
use super::{Commit, Error, IncomingPacket, IncomingRing, OutgoingPacket, OutgoingRing, Transfer};
use crate::loan::{Drained, Span};
use crate::mem::SharedMem;
use crate::signal::{Attempt, Signal, Waiter};

/// Why a blocking call on a VMBus ring failed.
pub type BlockingError<E> = crate::signal::BlockingError<Error, E>;

impl<E> From<Error> for BlockingError<E> {
    fn from(e: Error) -> Self {
        BlockingError::Ring(e)
    }
}

fn settled<S: Signal>(w: &Waiter<S>, t: Transfer) -> Result<usize, BlockingError<S::Error>> {
    w.settle(t.notify, t.len)
}

/// Signals the peer if a ring commit says so; passes the ring bytes on.
fn committed<S: Signal>(w: &Waiter<S>, c: Commit) -> Result<usize, BlockingError<S::Error>> {
    w.settle(c.notify, c.ring_bytes)
}

/// The two rings of a [`Blocking`] channel, apart from its waiter.
#[derive(Debug)]
struct Rings<M> {
    incoming: IncomingRing<M>,
    outgoing: OutgoingRing<M>,
}

impl<M: SharedMem> Rings<M> {
    /// One receive: the next packet's payload into `buf`, committed.
    fn recv_into<S: Signal>(
        &mut self,
        w: &Waiter<S>,
        buf: &mut [u8],
    ) -> Attempt<(super::PacketInfo, usize), Error, S::Error> {
        match self.incoming.read_packet() {
            Ok(packet) => {
                let len = packet.payload_len();
                let info = packet.info();
                let copied = match buf.get_mut(..len) {
                    Some(dst) => packet.read_payload(0, dst),
                    None => Err(Error::OutOfRange {
                        needed: len,
                        available: buf.len(),
                    }),
                };
                if let Err(e) = copied {
                    self.incoming.revert();
                    return Err(e.into());
                }
                committed(w, self.incoming.commit()?)?;
                Ok(Some((info, len)))
            }
            Err(Error::Empty) => w.nothing(),
            Err(e) => Err(e.into()),
        }
    }
}

/// A channel endpoint that waits on a [`Signal`] instead of returning
/// [`Error::Empty`] or [`Error::Full`], and signals the peer whenever a
/// commit says so.
#[derive(Debug)]
pub struct Blocking<M, S> {
    rings: Rings<M>,
    waiter: Waiter<S>,
}

impl<M: SharedMem, S: Signal> Blocking<M, S> {
    /// Wraps the ring we read, the ring we write, and the channel's event.
    ///
    /// # Examples
    ///
    /// ```
    /// # use core::sync::atomic::AtomicU64;
    /// use ring_core::mem::RawMem;
    /// use ring_core::signal::NoSignal;
    /// use ring_core::vmbus::{initialize_ring, Blocking, IncomingRing, OutgoingRing, RingLayout};
    /// use ring_core::vmbus::OutgoingPacket;
    ///
    /// let layout = RingLayout::new(4096, 8192)?;
    /// // One ring each way: a writes `a_to_b`, b writes `b_to_a`.
    /// let words: Vec<AtomicU64> = (0..2 * layout.total_size() / 8).map(|_| AtomicU64::new(0)).collect();
    /// let (a_to_b, b_to_a) = words.split_at(layout.total_size() / 8);
    /// let (a_to_b, b_to_a) = (RawMem::from_atomics(a_to_b), RawMem::from_atomics(b_to_a));
    /// initialize_ring(&a_to_b, layout)?;
    /// initialize_ring(&b_to_a, layout)?;
    /// let (a_in, a_out) = (IncomingRing::new(b_to_a, layout)?, OutgoingRing::new(a_to_b, layout)?);
    /// let (b_in, b_out) = (IncomingRing::new(a_to_b, layout)?, OutgoingRing::new(b_to_a, layout)?);
    /// let mut a = Blocking::new(a_in, a_out, NoSignal);
    /// let mut b = Blocking::new(b_in, b_out, NoSignal);
    ///
    /// a.send(&OutgoingPacket::in_band(1, &[b"ping"]))?;
    /// let mut buf = [0u8; 64];
    /// let (info, len) = b.recv(&mut buf)?;
    /// assert_eq!((info.transaction_id, &buf[..4], len), (1, &b"ping"[..], 8));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(incoming: IncomingRing<M>, outgoing: OutgoingRing<M>, signal: S) -> Self {
        Blocking {
            rings: Rings { incoming, outgoing },
            waiter: Waiter::new(signal),
        }
    }

    /// The ring we read.
    pub fn incoming(&mut self) -> &mut IncomingRing<M> {
        &mut self.rings.incoming
    }

    /// The ring we write.
    pub fn outgoing(&mut self) -> &mut OutgoingRing<M> {
        &mut self.rings.outgoing
    }

    /// The signal.
    pub fn signal(&self) -> &S {
        &self.waiter.signal
    }

    /// The signal, mutably (e.g. to set a timeout).
    pub fn signal_mut(&mut self) -> &mut S {
        &mut self.waiter.signal
    }

    /// Whether the signal has reported the peer gone.
    pub fn peer_gone(&self) -> bool {
        self.waiter.peer_gone()
    }

    /// Takes the parts back.
    pub fn into_parts(self) -> (IncomingRing<M>, OutgoingRing<M>, S) {
        (self.rings.incoming, self.rings.outgoing, self.waiter.signal)
    }

    /// Waits once with `wait` (see the vchan
    /// [`Blocking::wait_with`](crate::vchan::Blocking::wait_with)).
    ///
    /// # Errors
    ///
    /// The signal's error, when it does not mean the peer is gone.
    pub fn wait_with<W>(
        &mut self,
        wait: impl FnOnce(&S) -> Result<W, S::Error>,
    ) -> Result<Option<W>, BlockingError<S::Error>> {
        self.waiter.wait_with(wait)
    }

    /// A look that arms nothing: (a packet to read, room for a small one).
    pub fn ready(&mut self) -> (bool, bool) {
        (
            self.rings.incoming.available().map_or(true, |n| n > 0),
            self.rings.outgoing.available().map_or(true, |n| n > 24),
        )
    }

    /// Spins for the signal's budget until [`ready`](Self::ready) shows
    /// what is wanted; returns whether it did.
    pub fn spin_ready(&mut self, read: bool, write: bool) -> bool {
        let rings = &mut self.rings;
        self.waiter.signal.spin(&mut || {
            (read && rings.incoming.available().map_or(true, |n| n > 0))
                || (write && rings.outgoing.available().map_or(true, |n| n > 24))
        })
    }

    /// One non-blocking send of one packet (committing anything written
    /// before it): `Some(())` sent, `None` no room (pending send size
    /// armed, what was pending committed).
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send).
    pub fn try_send(&mut self, packet: &OutgoingPacket<'_>) -> Attempt<(), Error, S::Error> {
        self.waiter.writable()?;
        let r = &mut self.rings;
        match r.outgoing.write(packet) {
            Ok(()) => committed(&self.waiter, r.outgoing.commit()?).map(|_| Some(())),
            Err(Error::Full { .. }) => {
                committed(&self.waiter, r.outgoing.commit()?)?;
                self.waiter.nothing()
            }
            Err(e) => Err(e.into()),
        }
    }

    /// One non-blocking receive: copies the next packet's payload into
    /// `buf` and returns its id, type and flags and the padded payload
    /// length; `None` no packet (interrupts unmasked, ring re-checked).
    ///
    /// # Errors
    ///
    /// As [`recv`](Self::recv).
    ///
    /// # Examples
    ///
    /// ```
    /// # use core::sync::atomic::AtomicU64;
    /// # use ring_core::mem::RawMem;
    /// # use ring_core::signal::NoSignal;
    /// # use ring_core::vmbus::{initialize_ring, Blocking, IncomingRing, OutgoingRing, RingLayout};
    /// # let layout = RingLayout::new(4096, 8192)?;
    /// # let words: Vec<AtomicU64> = (0..2 * layout.total_size() / 8).map(|_| AtomicU64::new(0)).collect();
    /// # let (a_to_b, b_to_a) = words.split_at(layout.total_size() / 8);
    /// # let (a_to_b, b_to_a) = (RawMem::from_atomics(a_to_b), RawMem::from_atomics(b_to_a));
    /// # initialize_ring(&a_to_b, layout)?;
    /// # initialize_ring(&b_to_a, layout)?;
    /// # let mut a = Blocking::new(IncomingRing::new(b_to_a, layout)?, OutgoingRing::new(a_to_b, layout)?, NoSignal);
    /// # let mut b = Blocking::new(IncomingRing::new(a_to_b, layout)?, OutgoingRing::new(b_to_a, layout)?, NoSignal);
    /// use ring_core::vmbus::OutgoingPacket;
    /// let mut buf = [0u8; 16];
    /// assert_eq!(b.try_recv(&mut buf)?, None); // armed: wait for a's signal
    /// a.send(&OutgoingPacket::in_band(2, &[b"now"]))?;
    /// let (info, _) = b.try_recv(&mut buf)?.ok_or("no packet")?;
    /// assert_eq!(info.transaction_id, 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_recv(
        &mut self,
        buf: &mut [u8],
    ) -> Attempt<(super::PacketInfo, usize), Error, S::Error> {
        self.rings.recv_into(&self.waiter, buf)
    }

    /// Whether the reader has consumed every packet we committed:
    /// `Some(())` yes, `None` not yet (its draining read will signal us).
    ///
    /// # Errors
    ///
    /// [`BlockingError::PeerGone`]; [`Error::Corrupt`].
    pub fn try_delivered(&mut self) -> Attempt<(), Error, S::Error> {
        match self.rings.outgoing.arm_drained()? {
            true => Ok(Some(())),
            false => self.waiter.nothing(),
        }
    }

    /// Waits until the reader has consumed every packet we committed.
    ///
    /// # Errors
    ///
    /// As [`try_delivered`](Self::try_delivered).
    pub fn wait_delivered(&mut self) -> Result<(), BlockingError<S::Error>> {
        self.waiter.block(
            &mut self.rings,
            |r| r.outgoing.unread_by_peer().map_or(true, |n| n == 0),
            |r, w| match r.outgoing.arm_drained()? {
                true => Ok(Some(())),
                false => w.nothing(),
            },
        )
    }

    /// Sends one packet (committing anything written before it), waiting
    /// for space as long as needed, and signals the reader if it is owed.
    ///
    /// While blocked here we do not read: if the peer is likewise blocked
    /// sending to us, both wait for ever. Protocols bound what is in flight
    /// (as VMBus devices do) so that replies always fit.
    ///
    /// # Errors
    ///
    /// [`Error::TooLarge`], [`Error::InvalidPacket`], [`Error::Corrupt`],
    /// [`BlockingError::PeerGone`], or the signal's error.
    ///
    /// # Examples
    ///
    /// ```
    /// # use core::sync::atomic::AtomicU64;
    /// # use ring_core::mem::RawMem;
    /// # use ring_core::signal::NoSignal;
    /// # use ring_core::vmbus::{initialize_ring, Blocking, IncomingRing, OutgoingRing, RingLayout};
    /// # let layout = RingLayout::new(4096, 8192)?;
    /// # let words: Vec<AtomicU64> = (0..2 * layout.total_size() / 8).map(|_| AtomicU64::new(0)).collect();
    /// # let (a_to_b, b_to_a) = words.split_at(layout.total_size() / 8);
    /// # let (a_to_b, b_to_a) = (RawMem::from_atomics(a_to_b), RawMem::from_atomics(b_to_a));
    /// # initialize_ring(&a_to_b, layout)?;
    /// # initialize_ring(&b_to_a, layout)?;
    /// # let mut a = Blocking::new(IncomingRing::new(b_to_a, layout)?, OutgoingRing::new(a_to_b, layout)?, NoSignal);
    /// # let mut b = Blocking::new(IncomingRing::new(a_to_b, layout)?, OutgoingRing::new(b_to_a, layout)?, NoSignal);
    /// use ring_core::vmbus::{BlockingError, Error, OutgoingPacket};
    /// let request = [7u8; 100];
    /// a.send(&OutgoingPacket::in_band(1, &[&request]))?;
    /// let mut buf = [0u8; 128];
    /// let (info, len) = b.recv(&mut buf)?;
    /// assert_eq!((info.transaction_id, len), (1, 104)); // padded to 8
    /// // Larger than the 8 KiB ring: an error at once, not a wait for ever.
    /// let big = [0u8; 9000];
    /// let err = a.send(&OutgoingPacket::in_band(2, &[&big])).unwrap_err();
    /// assert!(matches!(err, BlockingError::Ring(Error::TooLarge { .. })));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn send(&mut self, packet: &OutgoingPacket<'_>) -> Result<(), BlockingError<S::Error>> {
        self.waiter
            .block(
                &mut self.rings,
                |r| r.outgoing.available().map_or(true, |n| n > 0),
                |r, w| {
                    w.writable()?;
                    match r.outgoing.write(packet) {
                        Ok(()) => committed(w, r.outgoing.commit()?).map(Some),
                        Err(Error::Full { .. }) => {
                            // Publish what is pending so the reader can make
                            // room.
                            committed(w, r.outgoing.commit()?)?;
                            w.nothing()
                        }
                        Err(e) => Err(e.into()),
                    }
                },
            )
            .map(drop)
    }

    /// Waits for the next packet, hands it to `f`, then commits the read
    /// and signals the writer if it is owed.
    ///
    /// The interrupt mask is left clear, so a caller that next sleeps on
    /// the event source by other means is still woken. To drain many
    /// packets with the writer's signals suppressed, use
    /// [`drain_with`](Self::drain_with).
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`], [`BlockingError::PeerGone`], or the signal's
    /// error.
    ///
    /// # Examples
    ///
    /// ```
    /// # use core::sync::atomic::AtomicU64;
    /// # use ring_core::mem::RawMem;
    /// # use ring_core::signal::NoSignal;
    /// # use ring_core::vmbus::{initialize_ring, Blocking, IncomingRing, OutgoingRing, RingLayout};
    /// # let layout = RingLayout::new(4096, 8192)?;
    /// # let words: Vec<AtomicU64> = (0..2 * layout.total_size() / 8).map(|_| AtomicU64::new(0)).collect();
    /// # let (a_to_b, b_to_a) = words.split_at(layout.total_size() / 8);
    /// # let (a_to_b, b_to_a) = (RawMem::from_atomics(a_to_b), RawMem::from_atomics(b_to_a));
    /// # initialize_ring(&a_to_b, layout)?;
    /// # initialize_ring(&b_to_a, layout)?;
    /// # let mut a = Blocking::new(IncomingRing::new(b_to_a, layout)?, OutgoingRing::new(a_to_b, layout)?, NoSignal);
    /// # let mut b = Blocking::new(IncomingRing::new(a_to_b, layout)?, OutgoingRing::new(b_to_a, layout)?, NoSignal);
    /// use ring_core::vmbus::{OutgoingPacket, PacketType};
    /// a.send(&OutgoingPacket::in_band(5, &[b"status?"]).with_completion_requested())?;
    /// // Look at the packet where it lies; it is committed after `f` returns.
    /// let (id, wants_reply) = b.recv_with(|p| (p.transaction_id(), p.completion_requested()))?;
    /// assert_eq!((id, wants_reply), (5, true));
    /// b.send(&OutgoingPacket::completion(id, &[b"ok"]))?;
    /// let kind = a.recv_with(|p| p.packet_type())?;
    /// assert_eq!(kind, PacketType::Completion);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn recv_with<R>(
        &mut self,
        f: impl FnOnce(&IncomingPacket<'_, M>) -> R,
    ) -> Result<R, BlockingError<S::Error>> {
        let mut f = Some(f);
        self.waiter.block(
            &mut self.rings,
            |r| r.incoming.available().map_or(true, |n| n > 0),
            |r, w| match r.incoming.read_packet() {
                Ok(packet) => {
                    let out = f.take().map(|f| f(&packet));
                    committed(w, r.incoming.commit()?)?;
                    Ok(out)
                }
                Err(Error::Empty) => w.nothing(),
                Err(e) => Err(e.into()),
            },
        )
    }

    /// Waits for at least one packet, then hands `f` every packet there is
    /// (at most `max`, so a peer that never stops writing cannot keep us
    /// here), commits once and signals the writer if it is owed. Returns the
    /// number of packets.
    ///
    /// While draining, the interrupt mask is set so the writer does not
    /// signal for each packet; it is clear again (and the ring re-checked)
    /// when this returns.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`], [`BlockingError::PeerGone`], or the signal's
    /// error.
    ///
    /// # Examples
    ///
    /// ```
    /// # use core::sync::atomic::AtomicU64;
    /// # use ring_core::mem::RawMem;
    /// # use ring_core::signal::NoSignal;
    /// # use ring_core::vmbus::{initialize_ring, Blocking, IncomingRing, OutgoingRing, RingLayout};
    /// # let layout = RingLayout::new(4096, 8192)?;
    /// # let words: Vec<AtomicU64> = (0..2 * layout.total_size() / 8).map(|_| AtomicU64::new(0)).collect();
    /// # let (a_to_b, b_to_a) = words.split_at(layout.total_size() / 8);
    /// # let (a_to_b, b_to_a) = (RawMem::from_atomics(a_to_b), RawMem::from_atomics(b_to_a));
    /// # initialize_ring(&a_to_b, layout)?;
    /// # initialize_ring(&b_to_a, layout)?;
    /// # let mut a = Blocking::new(IncomingRing::new(b_to_a, layout)?, OutgoingRing::new(a_to_b, layout)?, NoSignal);
    /// # let mut b = Blocking::new(IncomingRing::new(a_to_b, layout)?, OutgoingRing::new(b_to_a, layout)?, NoSignal);
    /// use ring_core::vmbus::OutgoingPacket;
    /// for id in 0..5 {
    ///     a.send(&OutgoingPacket::in_band(id, &[b"x"]))?;
    /// }
    /// let mut ids = Vec::new();
    /// assert_eq!(b.drain_with(3, |p| ids.push(p.transaction_id()))?, 3); // at most 3
    /// assert_eq!(b.drain_with(16, |p| ids.push(p.transaction_id()))?, 2);
    /// assert_eq!(ids, [0, 1, 2, 3, 4]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn drain_with(
        &mut self,
        max: usize,
        mut f: impl FnMut(&IncomingPacket<'_, M>),
    ) -> Result<usize, BlockingError<S::Error>> {
        let max = max.max(1);
        self.waiter.block(
            &mut self.rings,
            |r| r.incoming.available().map_or(true, |n| n > 0),
            |r, w| {
                let mut count = 0;
                while count < max {
                    match r.incoming.read_packet() {
                        Ok(packet) => {
                            f(&packet);
                            count += 1;
                            if count == 1 {
                                r.incoming.mask_interrupts()?;
                            }
                        }
                        // Empty has cleared the mask and re-checked.
                        Err(Error::Empty) if count > 0 => break,
                        Err(Error::Empty) => return w.nothing(),
                        Err(e) => return Err(e.into()),
                    }
                }
                if count == max {
                    // Stopped early: never leave the mask set behind us.
                    let _more = r.incoming.unmask_and_recheck()?;
                }
                committed(w, r.incoming.commit()?)?;
                Ok(Some(count))
            },
        )
    }

    /// Waits for the next packet and copies its payload into `buf`;
    /// returns the packet's id, type and flags and the padded payload length.
    ///
    /// # Errors
    ///
    /// [`Error::OutOfRange`] if `buf` is smaller than the payload (the
    /// packet is left unread); [`Error::Corrupt`];
    /// [`BlockingError::PeerGone`]; the signal's error.
    ///
    /// # Examples
    ///
    /// ```
    /// # use core::sync::atomic::AtomicU64;
    /// # use ring_core::mem::RawMem;
    /// # use ring_core::signal::NoSignal;
    /// # use ring_core::vmbus::{initialize_ring, Blocking, IncomingRing, OutgoingRing, RingLayout};
    /// # let layout = RingLayout::new(4096, 8192)?;
    /// # let words: Vec<AtomicU64> = (0..2 * layout.total_size() / 8).map(|_| AtomicU64::new(0)).collect();
    /// # let (a_to_b, b_to_a) = words.split_at(layout.total_size() / 8);
    /// # let (a_to_b, b_to_a) = (RawMem::from_atomics(a_to_b), RawMem::from_atomics(b_to_a));
    /// # initialize_ring(&a_to_b, layout)?;
    /// # initialize_ring(&b_to_a, layout)?;
    /// # let mut a = Blocking::new(IncomingRing::new(b_to_a, layout)?, OutgoingRing::new(a_to_b, layout)?, NoSignal);
    /// # let mut b = Blocking::new(IncomingRing::new(a_to_b, layout)?, OutgoingRing::new(b_to_a, layout)?, NoSignal);
    /// use ring_core::vmbus::{BlockingError, Error, OutgoingPacket, PacketType};
    /// a.send(&OutgoingPacket::completion(3, &[b"done"]))?;
    /// let mut small = [0u8; 4];
    /// // The payload is padded to 8: too big for 4 bytes, and left unread.
    /// let err = b.recv(&mut small).unwrap_err();
    /// assert!(matches!(err, BlockingError::Ring(Error::OutOfRange { needed: 8, .. })));
    /// let mut buf = [0u8; 8];
    /// let (info, len) = b.recv(&mut buf)?;
    /// assert_eq!((info.packet_type, len, &buf[..4]), (PacketType::Completion, 8, &b"done"[..]));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn recv(
        &mut self,
        buf: &mut [u8],
    ) -> Result<(super::PacketInfo, usize), BlockingError<S::Error>> {
        self.waiter.block(
            &mut self.rings,
            |r| r.incoming.available().map_or(true, |n| n > 0),
            |r, w| r.recv_into(w, buf),
        )
    }
}

/// The two halves of a [`BlockingPipe`] and what went through them, apart
/// from its waiter.
#[derive(Debug)]
struct Ends<M> {
    reader: PipeReader<M>,
    writer: PipeWriter<M>,
    /// We sent end of stream.
    closed: bool,
    read: u64,
    written: u64,
}

/// Room a pipe packet with at least one byte of data takes.
const SMALLEST_PACKET: usize =
    super::layout::DESCRIPTOR_SIZE + super::pipe::PIPE_HEADER_SIZE + 8 + 8;

impl<M: SharedMem> Ends<M> {
    fn readable(&mut self) -> bool {
        self.reader.is_eof() || self.reader.ring().available().map_or(true, |n| n > 0)
    }

    fn room(&mut self, want: usize) -> bool {
        self.writer.ring().available().map_or(true, |n| n >= want)
    }

    /// One read of the pipe by `op` (bytes or a message).
    fn read_with<S: Signal>(
        &mut self,
        w: &Waiter<S>,
        op: impl FnOnce(&mut PipeReader<M>) -> Result<Transfer, Error>,
    ) -> Attempt<usize, Error, S::Error> {
        let declared = w.signal.peer_write_closed();
        match op(&mut self.reader) {
            Ok(t) => {
                self.read += t.len as u64;
                settled(w, t).map(Some)
            }
            Err(Error::Empty) => w.empty(declared, self.read),
            Err(e) => Err(e.into()),
        }
    }

    /// One write to the pipe by `op`; refused after our end of stream.
    fn write_with<S: Signal>(
        &mut self,
        w: &Waiter<S>,
        op: impl FnOnce(&mut PipeWriter<M>) -> Result<Transfer, Error>,
    ) -> Attempt<usize, Error, S::Error> {
        w.writable()?;
        if self.closed {
            return Err(Error::Closed.into());
        }
        match op(&mut self.writer) {
            Ok(t) => {
                self.written += t.len as u64;
                settled(w, t).map(Some)
            }
            Err(Error::Full { .. }) => w.nothing(),
            Err(e) => Err(e.into()),
        }
    }

    fn close<S: Signal>(&mut self, w: &Waiter<S>) -> Attempt<(), Error, S::Error> {
        if self.closed {
            return Ok(Some(()));
        }
        w.writable()?;
        match self.writer.write_eof() {
            Ok(t) => {
                self.closed = true;
                settled(w, t).map(|_| Some(()))
            }
            Err(Error::Full { .. }) => w.nothing(),
            Err(e) => Err(e.into()),
        }
    }

    fn delivered<S: Signal>(&mut self, w: &Waiter<S>) -> Attempt<(), Error, S::Error> {
        match self.writer.ring().arm_drained()? {
            true => Ok(Some(())),
            false => w.nothing(),
        }
    }
}

/// A byte pipe that blocks on a [`Signal`]: `embedded-io` `Read` and
/// `Write` over a [`PipeReader`] and a [`PipeWriter`], plus messages, one
/// attempt at a time, and the wait for delivery. ring-std builds
/// `std::io` on it, ring-hosted its process-to-process pipe.
///
/// The pipe has a half-close: [`close`](Self::close) sends end of stream
/// in our direction only; the peer's direction flows on until it sends
/// its own.
#[derive(Debug)]
pub struct BlockingPipe<M, S> {
    ends: Ends<M>,
    waiter: Waiter<S>,
}

impl<M: SharedMem, S: Signal> BlockingPipe<M, S> {
    /// Wraps the two halves of a pipe and the channel's event.
    ///
    /// # Examples
    ///
    /// ```
    /// # use core::sync::atomic::AtomicU64;
    /// use ring_core::mem::RawMem;
    /// use ring_core::signal::NoSignal;
    /// use ring_core::vmbus::pipe::{PipeReader, PipeWriter};
    /// use ring_core::vmbus::{initialize_ring, BlockingPipe, IncomingRing, OutgoingRing, RingLayout};
    ///
    /// let layout = RingLayout::new(4096, 16384)?;
    /// let words: Vec<AtomicU64> = (0..2 * layout.total_size() / 8).map(|_| AtomicU64::new(0)).collect();
    /// let (a_to_b, b_to_a) = words.split_at(layout.total_size() / 8);
    /// let (a_to_b, b_to_a) = (RawMem::from_atomics(a_to_b), RawMem::from_atomics(b_to_a));
    /// initialize_ring(&a_to_b, layout)?;
    /// initialize_ring(&b_to_a, layout)?;
    /// let reader = |m| IncomingRing::new(m, layout).map(PipeReader::new);
    /// let writer = |m| OutgoingRing::new(m, layout).map(PipeWriter::new);
    /// let mut a = BlockingPipe::new(reader(b_to_a)?, writer(a_to_b)?, NoSignal);
    /// let mut b = BlockingPipe::new(reader(a_to_b)?, writer(b_to_a)?, NoSignal);
    ///
    /// a.write_all(b"over the pipe")?;
    /// let mut buf = [0u8; 32];
    /// let n = b.read(&mut buf)?;
    /// assert_eq!(&buf[..n], b"over the pipe");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(reader: PipeReader<M>, writer: PipeWriter<M>, signal: S) -> Self {
        BlockingPipe {
            ends: Ends {
                reader,
                writer,
                closed: false,
                read: 0,
                written: 0,
            },
            waiter: Waiter::new(signal),
        }
    }

    /// The reading half.
    pub fn reader(&mut self) -> &mut PipeReader<M> {
        &mut self.ends.reader
    }

    /// The writing half.
    pub fn writer(&mut self) -> &mut PipeWriter<M> {
        &mut self.ends.writer
    }

    /// The signal.
    pub fn signal(&self) -> &S {
        &self.waiter.signal
    }

    /// The signal, mutably (e.g. to set a timeout).
    pub fn signal_mut(&mut self) -> &mut S {
        &mut self.waiter.signal
    }

    /// Takes the parts back.
    pub fn into_parts(self) -> (PipeReader<M>, PipeWriter<M>, S) {
        (self.ends.reader, self.ends.writer, self.waiter.signal)
    }

    /// Whether the signal has reported the peer gone.
    pub fn peer_gone(&self) -> bool {
        self.waiter.peer_gone()
    }

    /// Whether we have sent end of stream.
    pub fn is_closed(&self) -> bool {
        self.ends.closed
    }

    /// Data bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.ends.read
    }

    /// Data bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.ends.written
    }

    /// A look that arms nothing: (something to read or end of stream,
    /// room for a small packet).
    pub fn ready(&mut self) -> (bool, bool) {
        (self.ends.readable(), self.ends.room(SMALLEST_PACKET))
    }

    /// Spins for the signal's budget until [`ready`](Self::ready) shows
    /// what is wanted (`read`, `write`); returns whether it did.
    pub fn spin_ready(&mut self, read: bool, write: bool) -> bool {
        let ends = &mut self.ends;
        self.waiter
            .signal
            .spin(&mut || (read && ends.readable()) || (write && ends.room(SMALLEST_PACKET)))
    }

    /// Kicks the peer unconditionally.
    ///
    /// # Errors
    ///
    /// The signal's error.
    pub fn kick(&self) -> Result<(), BlockingError<S::Error>> {
        self.waiter.settle(true, 0).map(drop)
    }

    /// Asks to be woken when a read would not answer "not now", without
    /// reading anything: `Some(())` a [`try_read`](Self::try_read) (or a
    /// message receive) would return data, end of stream or an error now,
    /// `None` the ring is empty (the interrupt mask cleared, fenced, and
    /// the write index re-read: the writer's next publish signals us). The
    /// readiness wait of an async host; nothing is consumed, and a
    /// corrupt write index is an error, not a wait.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] (the ring is poisoned).
    ///
    /// # Examples
    ///
    /// ```
    /// # use core::sync::atomic::AtomicU64;
    /// # use ring_core::mem::RawMem;
    /// # use ring_core::signal::NoSignal;
    /// # use ring_core::vmbus::pipe::{PipeReader, PipeWriter};
    /// # use ring_core::vmbus::{initialize_ring, BlockingPipe, IncomingRing, OutgoingRing, RingLayout};
    /// # let layout = RingLayout::new(4096, 16384)?;
    /// # let words: Vec<AtomicU64> = (0..2 * layout.total_size() / 8).map(|_| AtomicU64::new(0)).collect();
    /// # let (a_to_b, b_to_a) = words.split_at(layout.total_size() / 8);
    /// # let (a_to_b, b_to_a) = (RawMem::from_atomics(a_to_b), RawMem::from_atomics(b_to_a));
    /// # initialize_ring(&a_to_b, layout)?;
    /// # initialize_ring(&b_to_a, layout)?;
    /// # let reader = |m| IncomingRing::new(m, layout).map(PipeReader::new);
    /// # let writer = |m| OutgoingRing::new(m, layout).map(PipeWriter::new);
    /// # let mut a = BlockingPipe::new(reader(b_to_a)?, writer(a_to_b)?, NoSignal);
    /// # let mut b = BlockingPipe::new(reader(a_to_b)?, writer(b_to_a)?, NoSignal);
    /// assert_eq!(b.try_readable()?, None); // unmasked: a's next packet signals b
    /// a.send_msg(b"hello")?;
    /// assert_eq!(b.try_readable()?, Some(()));
    /// let mut buf = [0u8; 8];
    /// assert_eq!(b.try_recv_msg(&mut buf)?, Some(5)); // still there to read
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_readable(&mut self) -> Attempt<(), Error, S::Error> {
        if self.ends.reader.is_eof() {
            return Ok(Some(()));
        }
        // Asked before the ring is looked at, as a read asks it.
        let declared = self.waiter.signal.peer_write_closed();
        // The ring first: a poisoned ring says so, gone peer or not.
        let ring = self.ends.reader.ring();
        if ring.available()? > 0 || ring.unmask_and_recheck()? {
            return Ok(Some(()));
        }
        Ok((declared.is_some() || self.waiter.peer_gone()).then_some(()))
    }

    /// Asks to be woken when a write would not answer "not now", without
    /// writing: `Some(())` there is room for a packet with at least one
    /// byte (or a write would fail at once: our end of stream sent, the
    /// peer gone), `None` the ring is full (`pending_send_size` armed and
    /// the read index re-read: the reader's commit that frees the room
    /// signals us).
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] (the ring is poisoned).
    pub fn try_writable(&mut self) -> Attempt<(), Error, S::Error> {
        if self.ends.closed {
            return Ok(Some(()));
        }
        let packet = SMALLEST_PACKET - super::layout::TRAILER_SIZE;
        let ready = self.ends.writer.ring().wait_for_space(packet)? || self.waiter.peer_gone();
        Ok(ready.then_some(()))
    }

    /// One non-blocking read: `Some(n)` bytes (`Some(0)`: end of stream),
    /// `None` nothing yet (wake-up armed).
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`]; [`BlockingError::PeerGone`] once the peer is
    /// gone and the ring drained.
    ///
    /// # Examples
    ///
    /// ```
    /// # use core::sync::atomic::AtomicU64;
    /// # use ring_core::mem::RawMem;
    /// # use ring_core::signal::NoSignal;
    /// # use ring_core::vmbus::pipe::{PipeReader, PipeWriter};
    /// # use ring_core::vmbus::{initialize_ring, BlockingPipe, IncomingRing, OutgoingRing, RingLayout};
    /// # let layout = RingLayout::new(4096, 16384)?;
    /// # let words: Vec<AtomicU64> = (0..2 * layout.total_size() / 8).map(|_| AtomicU64::new(0)).collect();
    /// # let (a_to_b, b_to_a) = words.split_at(layout.total_size() / 8);
    /// # let (a_to_b, b_to_a) = (RawMem::from_atomics(a_to_b), RawMem::from_atomics(b_to_a));
    /// # initialize_ring(&a_to_b, layout)?;
    /// # initialize_ring(&b_to_a, layout)?;
    /// # let reader = |m| IncomingRing::new(m, layout).map(PipeReader::new);
    /// # let writer = |m| OutgoingRing::new(m, layout).map(PipeWriter::new);
    /// # let mut a = BlockingPipe::new(reader(b_to_a)?, writer(a_to_b)?, NoSignal);
    /// # let mut b = BlockingPipe::new(reader(a_to_b)?, writer(b_to_a)?, NoSignal);
    /// let mut buf = [0u8; 8];
    /// assert_eq!(b.try_read(&mut buf)?, None); // armed: wait for a's signal
    /// assert_eq!(a.try_write(b"hi")?, Some(2));
    /// assert_eq!(b.try_read(&mut buf)?, Some(2));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_read(&mut self, buf: &mut [u8]) -> Attempt<usize, Error, S::Error> {
        self.ends.read_with(&self.waiter, |r| r.read_bytes(buf))
    }

    /// One non-blocking write: `Some(n)` bytes, `None` the ring is full
    /// (wake-up armed).
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after our [`close`](Self::close);
    /// [`BlockingError::PeerGone`]; [`Error::Corrupt`].
    pub fn try_write(&mut self, buf: &[u8]) -> Attempt<usize, Error, S::Error> {
        if buf.is_empty() {
            return Ok(Some(0));
        }
        self.ends.write_with(&self.waiter, |w| w.write_bytes(buf))
    }

    /// One non-blocking write in place (see [`PipeWriter::write_with`]):
    /// `Some(n)` bytes committed (0 if `fill` wrote none), `None` the ring
    /// is full (wake-up armed, `fill` not called).
    ///
    /// # Errors
    ///
    /// As [`try_write`](Self::try_write).
    pub fn try_write_with(
        &mut self,
        max: usize,
        fill: impl FnOnce(&M, &[Span]) -> usize,
    ) -> Attempt<usize, Error, S::Error> {
        if max == 0 {
            return Ok(Some(0));
        }
        self.ends
            .write_with(&self.waiter, |w| w.write_with(max, fill))
    }

    /// One non-blocking read in place (see [`PipeReader::read_with`]):
    /// `Some(Drained::Took(n))` (0 if `drain` took none),
    /// `Some(Drained::End)` end of stream, `None` nothing yet (wake-up
    /// armed, `drain` not called).
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
            let (ends, waiter) = (&mut self.ends, &self.waiter);
            ends.read_with(waiter, |r| Ok(r.read_with(max, offer)?.unwrap_or_default()))
        })
    }

    /// One non-blocking message send (one packet, at most 16 KiB).
    ///
    /// # Errors
    ///
    /// As [`try_write`](Self::try_write), and [`Error::TooLarge`].
    pub fn try_send_msg(&mut self, msg: &[u8]) -> Attempt<(), Error, S::Error> {
        let r = self.ends.write_with(&self.waiter, |w| {
            w.write_message(msg).map(|t| Transfer {
                len: msg.len(),
                notify: t.notify,
            })
        });
        Ok(r?.map(drop))
    }

    /// One non-blocking message receive into `buf`: `Some(len)`.
    ///
    /// # Errors
    ///
    /// [`Error::OutOfRange`] if `buf` is too small (nothing consumed);
    /// otherwise as [`try_read`](Self::try_read).
    pub fn try_recv_msg(&mut self, buf: &mut [u8]) -> Attempt<usize, Error, S::Error> {
        self.ends.read_with(&self.waiter, |r| r.read_message(buf))
    }

    /// One non-blocking attempt to send end of stream: `Some(())` sent (or
    /// sent before), `None` no room yet (wake-up armed).
    ///
    /// # Errors
    ///
    /// [`BlockingError::PeerGone`]; [`Error::Corrupt`].
    pub fn try_close(&mut self) -> Attempt<(), Error, S::Error> {
        self.ends.close(&self.waiter)
    }

    /// Whether the peer has consumed every packet we committed: `Some(())`
    /// yes, `None` not yet (its next read that drains the ring will signal
    /// us).
    ///
    /// # Errors
    ///
    /// [`BlockingError::PeerGone`]; [`Error::Corrupt`].
    pub fn try_delivered(&mut self) -> Attempt<(), Error, S::Error> {
        self.ends.delivered(&self.waiter)
    }

    /// Waits once with `wait` (see the vchan
    /// [`Blocking::wait_with`](crate::vchan::Blocking::wait_with)).
    ///
    /// # Errors
    ///
    /// The signal's error, when it does not mean the peer is gone.
    pub fn wait_with<W>(
        &mut self,
        wait: impl FnOnce(&S) -> Result<W, S::Error>,
    ) -> Result<Option<W>, BlockingError<S::Error>> {
        self.waiter.wait_with(wait)
    }

    /// Reads at least one byte; `Ok(0)` is end of stream.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`], [`BlockingError::PeerGone`], or the signal's
    /// error.
    ///
    /// # Examples
    ///
    /// ```
    /// # use core::sync::atomic::AtomicU64;
    /// # use ring_core::mem::RawMem;
    /// # use ring_core::signal::NoSignal;
    /// # use ring_core::vmbus::pipe::{PipeReader, PipeWriter};
    /// # use ring_core::vmbus::{initialize_ring, BlockingPipe, IncomingRing, OutgoingRing, RingLayout};
    /// # let layout = RingLayout::new(4096, 16384)?;
    /// # let words: Vec<AtomicU64> = (0..2 * layout.total_size() / 8).map(|_| AtomicU64::new(0)).collect();
    /// # let (a_to_b, b_to_a) = words.split_at(layout.total_size() / 8);
    /// # let (a_to_b, b_to_a) = (RawMem::from_atomics(a_to_b), RawMem::from_atomics(b_to_a));
    /// # initialize_ring(&a_to_b, layout)?;
    /// # initialize_ring(&b_to_a, layout)?;
    /// # let reader = |m| IncomingRing::new(m, layout).map(PipeReader::new);
    /// # let writer = |m| OutgoingRing::new(m, layout).map(PipeWriter::new);
    /// # let mut a = BlockingPipe::new(reader(b_to_a)?, writer(a_to_b)?, NoSignal);
    /// # let mut b = BlockingPipe::new(reader(a_to_b)?, writer(b_to_a)?, NoSignal);
    /// a.write_all(b"abc")?;
    /// a.write_all(b"def")?;
    /// a.close()?;
    /// let mut buf = [0u8; 16];
    /// assert_eq!(b.read(&mut buf)?, 6); // across packets
    /// assert_eq!(&buf[..6], b"abcdef");
    /// assert_eq!(b.read(&mut buf)?, 0); // end of stream
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, BlockingError<S::Error>> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.waiter.block(
            &mut self.ends,
            |e| e.readable(),
            |e, w| e.read_with(w, |r| r.read_bytes(buf)),
        )
    }

    /// Writes at least one byte of `buf` (as much as fits).
    ///
    /// # Errors
    ///
    /// [`Error::Closed`], [`Error::Corrupt`], [`BlockingError::PeerGone`],
    /// or the signal's error.
    ///
    /// # Examples
    ///
    /// ```
    /// # use core::sync::atomic::AtomicU64;
    /// # use ring_core::mem::RawMem;
    /// # use ring_core::signal::NoSignal;
    /// # use ring_core::vmbus::pipe::{PipeReader, PipeWriter};
    /// # use ring_core::vmbus::{initialize_ring, BlockingPipe, IncomingRing, OutgoingRing, RingLayout};
    /// # let layout = RingLayout::new(4096, 16384)?;
    /// # let words: Vec<AtomicU64> = (0..2 * layout.total_size() / 8).map(|_| AtomicU64::new(0)).collect();
    /// # let (a_to_b, b_to_a) = words.split_at(layout.total_size() / 8);
    /// # let (a_to_b, b_to_a) = (RawMem::from_atomics(a_to_b), RawMem::from_atomics(b_to_a));
    /// # initialize_ring(&a_to_b, layout)?;
    /// # initialize_ring(&b_to_a, layout)?;
    /// # let reader = |m| IncomingRing::new(m, layout).map(PipeReader::new);
    /// # let writer = |m| OutgoingRing::new(m, layout).map(PipeWriter::new);
    /// # let mut a = BlockingPipe::new(reader(b_to_a)?, writer(a_to_b)?, NoSignal);
    /// # let mut b = BlockingPipe::new(reader(a_to_b)?, writer(b_to_a)?, NoSignal);
    /// // The 16 KiB ring takes only part of 20 000 bytes at once.
    /// let n = a.write(&[1u8; 20_000])?;
    /// assert!(n > 0 && n < 20_000);
    /// let mut buf = vec![0u8; 20_000];
    /// assert_eq!(b.read(&mut buf)?, n);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write(&mut self, buf: &[u8]) -> Result<usize, BlockingError<S::Error>> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.waiter.block(
            &mut self.ends,
            |e| e.room(SMALLEST_PACKET),
            |e, w| e.write_with(w, |wr| wr.write_bytes(buf)),
        )
    }

    /// Writes in place: blocks until one packet with `want` data bytes
    /// fits (`want` is clamped to the pipe's chunk, at most 16 KiB), then
    /// offers exactly that data area to `fill` as spans of the ring (see
    /// [`PipeWriter::write_with`]) and commits the first `n` bytes it
    /// returns as one packet. A serializer whose message fits a chunk
    /// writes it straight into the ring, through a
    /// [`SpanWriter`](crate::loan::SpanWriter), and the peer sees all of
    /// it or none. While it waits, `pending_send_size` asks the reader for
    /// exactly that room.
    ///
    /// Returns the bytes committed (0 if `want` is 0).
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
    /// # use ring_core::vmbus::pipe::{PipeReader, PipeWriter};
    /// # use ring_core::vmbus::{initialize_ring, BlockingPipe, IncomingRing, OutgoingRing, RingLayout};
    /// # let layout = RingLayout::new(4096, 16384)?;
    /// # let words: Vec<AtomicU64> = (0..2 * layout.total_size() / 8).map(|_| AtomicU64::new(0)).collect();
    /// # let (a_to_b, b_to_a) = words.split_at(layout.total_size() / 8);
    /// # let (a_to_b, b_to_a) = (RawMem::from_atomics(a_to_b), RawMem::from_atomics(b_to_a));
    /// # initialize_ring(&a_to_b, layout)?;
    /// # initialize_ring(&b_to_a, layout)?;
    /// # let reader = |m| IncomingRing::new(m, layout).map(PipeReader::new);
    /// # let writer = |m| OutgoingRing::new(m, layout).map(PipeWriter::new);
    /// # let mut a = BlockingPipe::new(reader(b_to_a)?, writer(a_to_b)?, NoSignal);
    /// # let mut b = BlockingPipe::new(reader(a_to_b)?, writer(b_to_a)?, NoSignal);
    /// use ring_core::loan::SpanWriter;
    /// let n = a.write_with(64, |mem, spans| {
    ///     let mut w = SpanWriter::new(mem, spans);
    ///     let header = w.write_at(0, b"len=").and_then(|()| w.write_at(4, b"0042"));
    ///     header.map_or(0, |()| w.len())
    /// })?;
    /// assert_eq!(n, 8); // one packet of the 8 bytes written
    /// let mut buf = [0u8; 64];
    /// let got = b.read(&mut buf)?;
    /// assert_eq!(&buf[..got], b"len=0042");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write_with(
        &mut self,
        want: usize,
        fill: impl FnOnce(&M, &[Span]) -> usize,
    ) -> Result<usize, BlockingError<S::Error>> {
        let want = want.min(self.ends.writer.chunk());
        if want == 0 {
            return Ok(0);
        }
        // The packet without its trailer, and with it (as `room` counts).
        let packet = super::layout::DESCRIPTOR_SIZE + super::pipe::PIPE_HEADER_SIZE + want;
        let occupies = packet.next_multiple_of(8) + 8;
        let mut fill = Some(fill);
        self.waiter.block(
            &mut self.ends,
            |e| e.room(occupies),
            |e, w| {
                e.write_with(w, |wr| {
                    if !wr.ring().wait_for_space(packet)? {
                        return Err(Error::Full {
                            needed: occupies,
                            available: 0,
                        });
                    }
                    wr.write_with(want, |mem, spans| fill.take().map_or(0, |f| f(mem, spans)))
                })
            },
        )
    }

    /// Reads in place: blocks until there is something to read, then
    /// offers up to `max` bytes to `drain` (see [`PipeReader::read_with`])
    /// and gives back the first `n` it returns.
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
    /// # use ring_core::vmbus::pipe::{PipeReader, PipeWriter};
    /// # use ring_core::vmbus::{initialize_ring, BlockingPipe, IncomingRing, OutgoingRing, RingLayout};
    /// # let layout = RingLayout::new(4096, 16384)?;
    /// # let words: Vec<AtomicU64> = (0..2 * layout.total_size() / 8).map(|_| AtomicU64::new(0)).collect();
    /// # let (a_to_b, b_to_a) = words.split_at(layout.total_size() / 8);
    /// # let (a_to_b, b_to_a) = (RawMem::from_atomics(a_to_b), RawMem::from_atomics(b_to_a));
    /// # initialize_ring(&a_to_b, layout)?;
    /// # initialize_ring(&b_to_a, layout)?;
    /// # let reader = |m| IncomingRing::new(m, layout).map(PipeReader::new);
    /// # let writer = |m| OutgoingRing::new(m, layout).map(PipeWriter::new);
    /// # let mut a = BlockingPipe::new(reader(b_to_a)?, writer(a_to_b)?, NoSignal);
    /// # let mut b = BlockingPipe::new(reader(a_to_b)?, writer(b_to_a)?, NoSignal);
    /// use ring_core::loan::{Drained, SpanReader};
    /// a.write_all(b"header:body")?;
    /// let mut head = [0u8; 7];
    /// // Take the header in place; the body stays for the next read.
    /// let took = b.read_with(64, |mem, spans| {
    ///     SpanReader::new(mem, spans).read_at(0, &mut head).map_or(0, |()| 7)
    /// })?;
    /// assert_eq!((took, &head), (Drained::Took(7), b"header:"));
    /// let mut body = [0u8; 8];
    /// let n = b.read(&mut body)?;
    /// assert_eq!(&body[..n], b"body");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn read_with(
        &mut self,
        max: usize,
        drain: impl FnOnce(&M, &[Span]) -> usize,
    ) -> Result<Drained, BlockingError<S::Error>> {
        let mut drain = Some(drain);
        self.waiter.block(
            &mut self.ends,
            |e| e.readable(),
            |e, w| {
                crate::loan::read_in_place(max, &mut drain, |offer| {
                    e.read_with(w, |r| Ok(r.read_with(max, offer)?.unwrap_or_default()))
                })
            },
        )
    }

    /// Writes all of `buf`.
    ///
    /// # Errors
    ///
    /// As [`write`](Self::write).
    pub fn write_all(&mut self, mut buf: &[u8]) -> Result<(), BlockingError<S::Error>> {
        while !buf.is_empty() {
            let n = self.write(buf)?;
            buf = buf.get(n..).unwrap_or(&[]);
        }
        Ok(())
    }

    /// Sends one message as one packet, waiting for room.
    ///
    /// # Errors
    ///
    /// As [`try_send_msg`](Self::try_send_msg).
    ///
    /// # Examples
    ///
    /// ```
    /// # use core::sync::atomic::AtomicU64;
    /// # use ring_core::mem::RawMem;
    /// # use ring_core::signal::NoSignal;
    /// # use ring_core::vmbus::pipe::{PipeReader, PipeWriter};
    /// # use ring_core::vmbus::{initialize_ring, BlockingPipe, IncomingRing, OutgoingRing, RingLayout};
    /// # let layout = RingLayout::new(4096, 16384)?;
    /// # let words: Vec<AtomicU64> = (0..2 * layout.total_size() / 8).map(|_| AtomicU64::new(0)).collect();
    /// # let (a_to_b, b_to_a) = words.split_at(layout.total_size() / 8);
    /// # let (a_to_b, b_to_a) = (RawMem::from_atomics(a_to_b), RawMem::from_atomics(b_to_a));
    /// # initialize_ring(&a_to_b, layout)?;
    /// # initialize_ring(&b_to_a, layout)?;
    /// # let reader = |m| IncomingRing::new(m, layout).map(PipeReader::new);
    /// # let writer = |m| OutgoingRing::new(m, layout).map(PipeWriter::new);
    /// # let mut a = BlockingPipe::new(reader(b_to_a)?, writer(a_to_b)?, NoSignal);
    /// # let mut b = BlockingPipe::new(reader(a_to_b)?, writer(b_to_a)?, NoSignal);
    /// a.send_msg(b"first")?;
    /// a.send_msg(b"second")?;
    /// let mut buf = [0u8; 64];
    /// let n = b.recv_msg(&mut buf)?; // one message per call, never merged
    /// assert_eq!(&buf[..n], b"first");
    /// let n = b.recv_msg(&mut buf)?;
    /// assert_eq!(&buf[..n], b"second");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn send_msg(&mut self, msg: &[u8]) -> Result<(), BlockingError<S::Error>> {
        let want = SMALLEST_PACKET + msg.len();
        self.waiter
            .block(
                &mut self.ends,
                |e| e.room(want),
                |e, w| {
                    e.write_with(w, |wr| {
                        wr.write_message(msg).map(|t| Transfer {
                            len: msg.len(),
                            notify: t.notify,
                        })
                    })
                },
            )
            .map(drop)
    }

    /// Receives one message into `buf`, waiting for it; returns its length.
    ///
    /// # Errors
    ///
    /// As [`try_recv_msg`](Self::try_recv_msg).
    ///
    /// # Examples
    ///
    /// ```
    /// # use core::sync::atomic::AtomicU64;
    /// # use ring_core::mem::RawMem;
    /// # use ring_core::signal::NoSignal;
    /// # use ring_core::vmbus::pipe::{PipeReader, PipeWriter};
    /// # use ring_core::vmbus::{initialize_ring, BlockingPipe, IncomingRing, OutgoingRing, RingLayout};
    /// # let layout = RingLayout::new(4096, 16384)?;
    /// # let words: Vec<AtomicU64> = (0..2 * layout.total_size() / 8).map(|_| AtomicU64::new(0)).collect();
    /// # let (a_to_b, b_to_a) = words.split_at(layout.total_size() / 8);
    /// # let (a_to_b, b_to_a) = (RawMem::from_atomics(a_to_b), RawMem::from_atomics(b_to_a));
    /// # initialize_ring(&a_to_b, layout)?;
    /// # initialize_ring(&b_to_a, layout)?;
    /// # let reader = |m| IncomingRing::new(m, layout).map(PipeReader::new);
    /// # let writer = |m| OutgoingRing::new(m, layout).map(PipeWriter::new);
    /// # let mut a = BlockingPipe::new(reader(b_to_a)?, writer(a_to_b)?, NoSignal);
    /// # let mut b = BlockingPipe::new(reader(a_to_b)?, writer(b_to_a)?, NoSignal);
    /// use ring_core::vmbus::{BlockingError, Error};
    /// a.send_msg(b"a message")?;
    /// let mut small = [0u8; 4];
    /// // Too small for the whole message: an error, and nothing consumed.
    /// let err = b.recv_msg(&mut small).unwrap_err();
    /// assert!(matches!(err, BlockingError::Ring(Error::OutOfRange { needed: 9, .. })));
    /// let mut buf = [0u8; 16];
    /// let n = b.recv_msg(&mut buf)?;
    /// assert_eq!(&buf[..n], b"a message");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn recv_msg(&mut self, buf: &mut [u8]) -> Result<usize, BlockingError<S::Error>> {
        self.waiter.block(
            &mut self.ends,
            |e| e.readable(),
            |e, w| e.read_with(w, |r| r.read_message(buf)),
        )
    }

    /// Sends end of stream, waiting for room if needed. Idempotent.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`], [`BlockingError::PeerGone`], or the signal's
    /// error.
    ///
    /// # Examples
    ///
    /// ```
    /// # use core::sync::atomic::AtomicU64;
    /// # use ring_core::mem::RawMem;
    /// # use ring_core::signal::NoSignal;
    /// # use ring_core::vmbus::pipe::{PipeReader, PipeWriter};
    /// # use ring_core::vmbus::{initialize_ring, BlockingPipe, IncomingRing, OutgoingRing, RingLayout};
    /// # let layout = RingLayout::new(4096, 16384)?;
    /// # let words: Vec<AtomicU64> = (0..2 * layout.total_size() / 8).map(|_| AtomicU64::new(0)).collect();
    /// # let (a_to_b, b_to_a) = words.split_at(layout.total_size() / 8);
    /// # let (a_to_b, b_to_a) = (RawMem::from_atomics(a_to_b), RawMem::from_atomics(b_to_a));
    /// # initialize_ring(&a_to_b, layout)?;
    /// # initialize_ring(&b_to_a, layout)?;
    /// # let reader = |m| IncomingRing::new(m, layout).map(PipeReader::new);
    /// # let writer = |m| OutgoingRing::new(m, layout).map(PipeWriter::new);
    /// # let mut a = BlockingPipe::new(reader(b_to_a)?, writer(a_to_b)?, NoSignal);
    /// # let mut b = BlockingPipe::new(reader(a_to_b)?, writer(b_to_a)?, NoSignal);
    /// use ring_core::vmbus::{BlockingError, Error};
    /// a.write_all(b"request")?;
    /// a.close()?; // a's direction only
    /// let mut buf = [0u8; 16];
    /// assert_eq!(b.read(&mut buf)?, 7);
    /// assert_eq!(b.read(&mut buf)?, 0); // end of a's stream
    /// b.write_all(b"reply")?; // b's direction still flows
    /// assert_eq!(a.read(&mut buf)?, 5);
    /// assert!(matches!(a.write(b"more"), Err(BlockingError::Ring(Error::Closed))));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn close(&mut self) -> Result<(), BlockingError<S::Error>> {
        self.waiter.block(
            &mut self.ends,
            |e| e.room(SMALLEST_PACKET),
            |e, w| e.close(w),
        )
    }

    /// Waits until the peer has consumed every packet we committed.
    ///
    /// # Errors
    ///
    /// As [`try_delivered`](Self::try_delivered).
    pub fn wait_delivered(&mut self) -> Result<(), BlockingError<S::Error>> {
        self.waiter.block(
            &mut self.ends,
            |e| e.writer.ring().unread_by_peer().map_or(true, |n| n == 0),
            |e, w| e.delivered(w),
        )
    }
}

impl<M, S: Signal> embedded_io::ErrorType for BlockingPipe<M, S> {
    type Error = BlockingError<S::Error>;
}

impl<M: SharedMem, S: Signal> embedded_io::Read for BlockingPipe<M, S> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        BlockingPipe::read(self, buf)
    }
}

impl<M: SharedMem, S: Signal> embedded_io::Write for BlockingPipe<M, S> {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        BlockingPipe::write(self, buf)
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        // Every write commits: the bytes are visible to the peer already.
        Ok(())
    }
}

impl<M: SharedMem, S: Signal> embedded_io::ReadReady for BlockingPipe<M, S> {
    fn read_ready(&mut self) -> Result<bool, Self::Error> {
        Ok(self.ends.reader.is_eof() || self.ends.reader.ring().available()? > 0)
    }
}

impl<M: SharedMem, S: Signal> embedded_io::WriteReady for BlockingPipe<M, S> {
    fn write_ready(&mut self) -> Result<bool, Self::Error> {
        Ok(self.ends.writer.ring().available()? >= SMALLEST_PACKET)
    }
}
