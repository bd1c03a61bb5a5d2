//! Blocking use of a channel (a ring each way) on a host-supplied
//! [`Signal`], and a blocking byte pipe with the `embedded-io` traits.
//!
//! A VMBus channel has one event for both directions, so one [`Signal`]
//! serves both: every wake-up may mean "data arrived" or "space freed",
//! and each wait is preceded by an arm-and-re-check in the ring, so merged
//! or stolen events cannot lose a wake-up.

use super::pipe::{PipeReader, PipeWriter};
use super::{Error, IncomingPacket, IncomingRing, OutgoingPacket, OutgoingRing, Transfer};
use crate::mem::SharedMem;
use crate::signal::{wait_or_last_pass, Signal};

/// Why a blocking call on a VMBus ring failed.
pub type BlockingError<E> = crate::signal::BlockingError<Error, E>;

impl<E> From<Error> for BlockingError<E> {
    fn from(e: Error) -> Self {
        BlockingError::Ring(e)
    }
}

fn settle<S: Signal>(signal: &S, t: Transfer) -> Result<usize, BlockingError<S::Error>> {
    if t.notify {
        signal.notify().map_err(BlockingError::Signal)?;
    }
    Ok(t.len)
}

/// A channel endpoint that waits on a [`Signal`] instead of returning
/// [`Error::Empty`] or [`Error::Full`], and signals the peer whenever a
/// commit says so.
#[derive(Debug)]
pub struct Blocking<M, S> {
    incoming: IncomingRing<M>,
    outgoing: OutgoingRing<M>,
    signal: S,
    /// The signal reported the peer gone; the ring gets one last look.
    last_pass: bool,
}

impl<M: SharedMem, S: Signal> Blocking<M, S> {
    /// Wraps the ring we read, the ring we write, and the channel's event.
    pub fn new(incoming: IncomingRing<M>, outgoing: OutgoingRing<M>, signal: S) -> Self {
        Blocking {
            incoming,
            outgoing,
            signal,
            last_pass: false,
        }
    }

    /// The ring we read.
    pub fn incoming(&mut self) -> &mut IncomingRing<M> {
        &mut self.incoming
    }

    /// The ring we write.
    pub fn outgoing(&mut self) -> &mut OutgoingRing<M> {
        &mut self.outgoing
    }

    /// The signal.
    pub fn signal(&self) -> &S {
        &self.signal
    }

    /// Takes the parts back.
    pub fn into_parts(self) -> (IncomingRing<M>, OutgoingRing<M>, S) {
        (self.incoming, self.outgoing, self.signal)
    }

    fn wait(&mut self) -> Result<(), BlockingError<S::Error>> {
        wait_or_last_pass(&self.signal, &mut self.last_pass)
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
    /// [`Error::TooLarge`], [`Error::InvalidPacket`], [`Error::Corrupt`], or
    /// the signal's error.
    pub fn send(&mut self, packet: &OutgoingPacket<'_>) -> Result<(), BlockingError<S::Error>> {
        loop {
            match self.outgoing.write(packet) {
                Ok(()) => break,
                Err(Error::Full { .. }) => {
                    // Publish what is pending so the reader can make room.
                    let t = self.outgoing.commit()?;
                    settle(&self.signal, t)?;
                    self.wait()?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        let t = self.outgoing.commit()?;
        settle(&self.signal, t).map(drop)
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
    /// [`Error::Corrupt`], or the signal's error.
    pub fn recv_with<R>(
        &mut self,
        f: impl FnOnce(&IncomingPacket<'_, M>) -> R,
    ) -> Result<R, BlockingError<S::Error>> {
        loop {
            match self.incoming.read_packet() {
                Ok(packet) => {
                    let r = f(&packet);
                    let t = self.incoming.commit()?;
                    settle(&self.signal, t)?;
                    return Ok(r);
                }
                Err(Error::Empty) => self.wait()?,
                Err(e) => return Err(e.into()),
            }
        }
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
    /// [`Error::Corrupt`], or the signal's error.
    pub fn drain_with(
        &mut self,
        max: usize,
        mut f: impl FnMut(&IncomingPacket<'_, M>),
    ) -> Result<usize, BlockingError<S::Error>> {
        let mut count = 0;
        while count < max.max(1) {
            match self.incoming.read_packet() {
                Ok(packet) => {
                    f(&packet);
                    count += 1;
                    if count == 1 {
                        self.incoming.mask_interrupts()?;
                    }
                }
                // Empty has cleared the mask and re-checked.
                Err(Error::Empty) if count > 0 => break,
                Err(Error::Empty) => self.wait()?,
                Err(e) => return Err(e.into()),
            }
        }
        if count == max.max(1) {
            // Stopped early: never leave the mask set behind us.
            let _more = self.incoming.unmask_and_recheck()?;
        }
        let t = self.incoming.commit()?;
        settle(&self.signal, t)?;
        Ok(count)
    }

    /// Waits for the next packet and copies its payload into `buf`;
    /// returns the packet's id, type and flags and the padded payload length.
    ///
    /// # Errors
    ///
    /// [`Error::OutOfRange`] if `buf` is smaller than the payload (the
    /// packet is left unread); [`Error::Corrupt`]; the signal's error.
    pub fn recv(
        &mut self,
        buf: &mut [u8],
    ) -> Result<(super::PacketInfo, usize), BlockingError<S::Error>> {
        loop {
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
                    let t = self.incoming.commit()?;
                    settle(&self.signal, t)?;
                    return Ok((info, len));
                }
                Err(Error::Empty) => self.wait()?,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// A byte pipe that blocks on a [`Signal`]: `embedded-io` `Read` and
/// `Write` over a [`PipeReader`] and a [`PipeWriter`]. ring-std builds
/// `std::io` on it.
#[derive(Debug)]
pub struct BlockingPipe<M, S> {
    reader: PipeReader<M>,
    writer: PipeWriter<M>,
    signal: S,
    /// The signal reported the peer gone; the ring gets one last look.
    last_pass: bool,
}

impl<M: SharedMem, S: Signal> BlockingPipe<M, S> {
    /// Wraps the two halves of a pipe and the channel's event.
    pub fn new(reader: PipeReader<M>, writer: PipeWriter<M>, signal: S) -> Self {
        BlockingPipe {
            reader,
            writer,
            signal,
            last_pass: false,
        }
    }

    /// The reading half.
    pub fn reader(&mut self) -> &mut PipeReader<M> {
        &mut self.reader
    }

    /// The writing half.
    pub fn writer(&mut self) -> &mut PipeWriter<M> {
        &mut self.writer
    }

    /// Takes the parts back.
    pub fn into_parts(self) -> (PipeReader<M>, PipeWriter<M>, S) {
        (self.reader, self.writer, self.signal)
    }

    /// Reads at least one byte; `Ok(0)` is end of stream.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] or the signal's error.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, BlockingError<S::Error>> {
        loop {
            match self.reader.read_bytes(buf) {
                Ok(t) => return settle(&self.signal, t),
                Err(Error::Empty) => wait_or_last_pass(&self.signal, &mut self.last_pass)?,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Writes at least one byte of `buf` (as much as fits).
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] or the signal's error.
    pub fn write(&mut self, buf: &[u8]) -> Result<usize, BlockingError<S::Error>> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match self.writer.write_bytes(buf) {
                Ok(t) => return settle(&self.signal, t),
                Err(Error::Full { .. }) => wait_or_last_pass(&self.signal, &mut self.last_pass)?,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Sends end of stream, waiting for room if needed.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] or the signal's error.
    pub fn close(&mut self) -> Result<(), BlockingError<S::Error>> {
        loop {
            match self.writer.write_eof() {
                Ok(t) => return settle(&self.signal, t).map(drop),
                Err(Error::Full { .. }) => wait_or_last_pass(&self.signal, &mut self.last_pass)?,
                Err(e) => return Err(e.into()),
            }
        }
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
        Ok(self.reader.is_eof() || self.reader.ring().available()? > 0)
    }
}

impl<M: SharedMem, S: Signal> embedded_io::WriteReady for BlockingPipe<M, S> {
    fn write_ready(&mut self) -> Result<bool, Self::Error> {
        let need = super::layout::DESCRIPTOR_SIZE + super::pipe::PIPE_HEADER_SIZE + 8 + 8;
        Ok(self.writer.ring().available()? >= need)
    }
}
