//! Pipes: byte streams and message streams over in-band packets, framed as
//! hv_sock and OpenVMM's pipe channels frame them.
//!
//! Every in-band packet of a pipe starts with an 8-byte [`PipeHeader`]:
//! the pipe packet type (1 = data) and the exact data size, which the ring
//! itself does not carry (it only knows lengths padded to 8). A data packet
//! of size 0 is end of stream. One packet carries at most 16 KiB of data
//! ([`MAX_PIPE_PAYLOAD`]).
//!
//! - **Byte mode** ([`PipeWriter::write_bytes`], [`PipeReader::read_bytes`]):
//!   the writer splits the stream into packets; the reader may consume a
//!   packet partly. We remember partial consumption privately (as Linux
//!   hv_sock does) and release a packet only when it is fully read; unlike
//!   OpenVMM we never rewrite the header in the ring, so type 2 ("partial")
//!   never appears in a ring we read and is rejected if the peer sends it.
//! - **Message mode** ([`PipeWriter::write_message`],
//!   [`PipeReader::read_message`]): one message per packet.
//!
//! The setup/teardown GPA-direct pipe packets (types 3 and 4) are not
//! supported; a peer sending them poisons the pipe's ring.
//!
//! # Example
//!
//! ```
//! use core::sync::atomic::AtomicU64;
//! use ring_core::mem::RawMem;
//! use ring_core::vmbus::pipe::{PipeReader, PipeWriter};
//! use ring_core::vmbus::{initialize_ring, IncomingRing, OutgoingRing, RingLayout};
//!
//! let layout = RingLayout::new(4096, 16384).unwrap();
//! let words: Vec<AtomicU64> = (0..layout.total_size() / 8).map(|_| AtomicU64::new(0)).collect();
//! let mem = RawMem::from_atomics(&words);
//! initialize_ring(&mem, layout).unwrap();
//! let mut writer = PipeWriter::new(OutgoingRing::new(mem, layout).unwrap());
//! let mut reader = PipeReader::new(IncomingRing::new(mem, layout).unwrap());
//!
//! let sent = writer.write_bytes(b"hello, world").unwrap();
//! assert_eq!(sent.len, 12);
//! let _ = writer.write_eof().unwrap();
//!
//! let mut buf = [0u8; 5];
//! assert_eq!(reader.read_bytes(&mut buf).unwrap().len, 5); // part of a packet
//! assert_eq!(&buf, b"hello");
//! let mut rest = [0u8; 64];
//! let got = reader.read_bytes(&mut rest).unwrap().len;
//! assert_eq!(&rest[..got], b", world");
//! assert_eq!(reader.read_bytes(&mut rest).unwrap().len, 0); // end of stream
//! ```

use super::layout::{PacketType, DESCRIPTOR_SIZE, TRAILER_SIZE};
use super::{
    Error, IncomingPacket, IncomingRing, OutgoingPacket, OutgoingRing, ReadMark, Transfer,
};
use crate::loan::{Span, SpanList, MAX_SPANS};
use crate::mem::SharedMem;
use zerocopy::byteorder::little_endian::U32;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Largest data size of one pipe packet (the host's design limit).
pub const MAX_PIPE_PAYLOAD: usize = 16 * 1024;

/// Size of [`PipeHeader`].
pub const PIPE_HEADER_SIZE: usize = 8;

/// Default data per byte-mode packet: a packet with its descriptor, pipe
/// header and trailer then takes exactly 4 KiB of ring.
pub const DEFAULT_CHUNK: usize = 4096 - DESCRIPTOR_SIZE - PIPE_HEADER_SIZE - TRAILER_SIZE;

/// The header at the start of every pipe packet's payload.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct PipeHeader {
    /// [`PipePacketType`] value.
    pub packet_type: U32,
    /// Exact data bytes after the header (for type 2 the low 16 bits are
    /// the size and the high 16 the bytes already consumed).
    pub data_size: U32,
}

const _: () = assert!(core::mem::size_of::<PipeHeader>() == PIPE_HEADER_SIZE);

/// Pipe packet types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum PipePacketType {
    /// Data (size 0: end of stream).
    Data = 1,
    /// Partly consumed data, written by a reader into its own ring.
    Partial = 2,
    /// Set up GPA-direct transfers.
    SetupGpaDirect = 3,
    /// Tear down GPA-direct transfers.
    TeardownGpaDirect = 4,
}

/// How a pipe channel frames its stream (the first `u32` of the offer's
/// user-defined area says which).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum PipeMode {
    /// A byte stream (offer value 0).
    Byte = 0,
    /// One message per packet (offer value 4).
    Message = 4,
}

/// The writing half of a pipe.
#[derive(Debug)]
pub struct PipeWriter<M> {
    ring: OutgoingRing<M>,
    chunk: usize,
}

impl<M: SharedMem> PipeWriter<M> {
    /// A pipe writing into `ring`, with [`DEFAULT_CHUNK`] bytes per
    /// byte-mode packet (less if the ring is small).
    ///
    /// # Examples
    ///
    /// ```
    /// # use core::sync::atomic::AtomicU64;
    /// # use ring_core::mem::RawMem;
    /// use ring_core::vmbus::pipe::{PipeReader, PipeWriter, DEFAULT_CHUNK};
    /// use ring_core::vmbus::{initialize_ring, IncomingRing, OutgoingRing, RingLayout};
    /// let layout = RingLayout::new(4096, 16384)?;
    /// # let words: Vec<AtomicU64> = (0..layout.total_size() / 8).map(|_| AtomicU64::new(0)).collect();
    /// # let mem = RawMem::from_atomics(&words);
    /// initialize_ring(&mem, layout)?;
    /// let mut writer = PipeWriter::new(OutgoingRing::new(mem, layout)?);
    /// assert_eq!(writer.chunk(), DEFAULT_CHUNK); // a packet takes 4 KiB of ring
    /// // 10 000 bytes go out as three packets, under one commit.
    /// assert_eq!(writer.write_bytes(&[1u8; 10_000])?.len, 10_000);
    /// let mut reader = PipeReader::new(IncomingRing::new(mem, layout)?);
    /// let mut buf = vec![0u8; 10_000];
    /// assert_eq!(reader.read_bytes(&mut buf)?.len, 10_000);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(ring: OutgoingRing<M>) -> Self {
        let mut w = PipeWriter { ring, chunk: 0 };
        w.set_chunk(DEFAULT_CHUNK);
        w
    }

    /// Sets the data bytes per byte-mode packet, clamped to 1..=16 KiB and
    /// to what the ring can hold.
    pub fn set_chunk(&mut self, chunk: usize) {
        let ring_max = self
            .ring
            .max_packet_len()
            .saturating_sub(DESCRIPTOR_SIZE + PIPE_HEADER_SIZE)
            & !7;
        self.chunk = chunk.min(MAX_PIPE_PAYLOAD).min(ring_max).max(1);
    }

    /// The data bytes per byte-mode packet (see [`set_chunk`](Self::set_chunk)).
    pub fn chunk(&self) -> usize {
        self.chunk
    }

    /// The ring underneath.
    pub fn ring(&mut self) -> &mut OutgoingRing<M> {
        &mut self.ring
    }

    /// Takes the ring back.
    pub fn into_inner(self) -> OutgoingRing<M> {
        self.ring
    }

    fn write_data(&mut self, data: &[u8]) -> Result<(), Error> {
        let header = PipeHeader {
            packet_type: U32::new(PipePacketType::Data as u32),
            data_size: U32::new(data.len() as u32),
        };
        let pieces: [&[u8]; 2] = [header.as_bytes(), data];
        self.ring.write(&OutgoingPacket::in_band(0, &pieces))
    }

    /// Sends `message` as one packet.
    ///
    /// A message is never empty: a data packet of size 0 is end of stream
    /// on the wire (hv_sock's rule, and our [`write_eof`](Self::write_eof)),
    /// so the reader could not tell the two apart.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidPacket`] for an empty message; [`Error::TooLarge`]
    /// above 16 KiB or the ring's limit; [`Error::Full`] (armed) if it does
    /// not fit now; [`Error::Corrupt`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use core::sync::atomic::AtomicU64;
    /// # use ring_core::mem::RawMem;
    /// # use ring_core::vmbus::{initialize_ring, IncomingRing, OutgoingRing, RingLayout};
    /// # use ring_core::vmbus::pipe::{PipeReader, PipeWriter};
    /// # let layout = RingLayout::new(4096, 16384)?;
    /// # let words: Vec<AtomicU64> = (0..layout.total_size() / 8).map(|_| AtomicU64::new(0)).collect();
    /// # let mem = RawMem::from_atomics(&words);
    /// # initialize_ring(&mem, layout)?;
    /// # let mut writer = PipeWriter::new(OutgoingRing::new(mem, layout)?);
    /// # let mut reader = PipeReader::new(IncomingRing::new(mem, layout)?);
    /// use ring_core::vmbus::Error;
    /// let _ = writer.write_message(b"first")?;
    /// let _ = writer.write_message(b"second")?;
    /// let mut buf = [0u8; 64];
    /// let got = reader.read_message(&mut buf)?; // one message, never merged
    /// assert_eq!(&buf[..got.len], b"first");
    /// let mut small = [0u8; 3];
    /// let err = reader.read_message(&mut small).unwrap_err();
    /// assert!(matches!(err, Error::OutOfRange { needed: 6, .. })); // still there
    /// let got = reader.read_message(&mut buf)?;
    /// assert_eq!(&buf[..got.len], b"second");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write_message(&mut self, message: &[u8]) -> Result<Transfer, Error> {
        if message.is_empty() {
            return Err(Error::InvalidPacket {
                what: "an empty message (size 0 is end of stream)",
            });
        }
        if message.len() > MAX_PIPE_PAYLOAD {
            return Err(Error::TooLarge {
                len: message.len(),
                max: MAX_PIPE_PAYLOAD,
            });
        }
        self.write_data(message)?;
        let c = self.ring.commit()?;
        Ok(Transfer {
            len: message.len(),
            notify: c.notify,
        })
    }

    /// Writes as much of `buf` as fits now, in packets of at most the chunk
    /// size, and commits once. `len` in the result is data bytes written.
    ///
    /// # Errors
    ///
    /// [`Error::Full`] (armed) if not even one byte fits; [`Error::Corrupt`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use core::sync::atomic::AtomicU64;
    /// # use ring_core::mem::RawMem;
    /// # use ring_core::vmbus::{initialize_ring, IncomingRing, OutgoingRing, RingLayout};
    /// # use ring_core::vmbus::pipe::{PipeReader, PipeWriter};
    /// # let layout = RingLayout::new(4096, 4096)?;
    /// # let words: Vec<AtomicU64> = (0..layout.total_size() / 8).map(|_| AtomicU64::new(0)).collect();
    /// # let mem = RawMem::from_atomics(&words);
    /// # initialize_ring(&mem, layout)?;
    /// # let mut writer = PipeWriter::new(OutgoingRing::new(mem, layout)?);
    /// # let mut reader = PipeReader::new(IncomingRing::new(mem, layout)?);
    /// use ring_core::vmbus::Error;
    /// // A 4 KiB ring: only part of 10 000 bytes fits now.
    /// let sent = writer.write_bytes(&[1u8; 10_000])?;
    /// assert!(sent.len > 0 && sent.len < 10_000);
    /// assert!(matches!(writer.write_bytes(b"more"), Err(Error::Full { .. })));
    /// let mut buf = vec![0u8; 10_000];
    /// assert_eq!(reader.read_bytes(&mut buf)?.len, sent.len);
    /// let _ = writer.write_bytes(b"more")?; // room again
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write_bytes(&mut self, buf: &[u8]) -> Result<Transfer, Error> {
        let mut done = 0;
        for piece in buf.chunks(self.chunk) {
            match self.write_data(piece) {
                Ok(()) => done += piece.len(),
                Err(Error::Full { .. }) if done > 0 => break,
                Err(Error::Full { .. }) => {
                    // A short piece may still fit in what is left.
                    let room = self
                        .ring
                        .available()?
                        .saturating_sub(DESCRIPTOR_SIZE + PIPE_HEADER_SIZE + TRAILER_SIZE)
                        & !7;
                    let Some(part) = piece.get(..room.min(piece.len())) else {
                        break;
                    };
                    if part.is_empty() {
                        return Err(Error::Full {
                            needed: DESCRIPTOR_SIZE + PIPE_HEADER_SIZE + 8 + TRAILER_SIZE,
                            available: room,
                        });
                    }
                    self.write_data(part)?;
                    done += part.len();
                    break;
                }
                Err(e) => {
                    self.ring.revert();
                    return Err(e);
                }
            }
        }
        let t = self.ring.commit()?;
        Ok(Transfer {
            len: done,
            notify: t.notify,
        })
    }

    /// Byte mode in place: offers up to `max` bytes of free space to
    /// `fill` — the data areas of as many packets (of at most the chunk
    /// size) as fit now, as spans of the ring's memory in stream order —
    /// and commits the packets holding the `n` bytes it says it wrote
    /// (clamped to what was offered). See [`loan`](crate::loan).
    ///
    /// `len` in the result is the data bytes written; 0 if `fill` wrote
    /// none.
    ///
    /// # Errors
    ///
    /// [`Error::Full`] (armed; `fill` not called) if not even a short
    /// packet fits; [`Error::Corrupt`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use core::sync::atomic::AtomicU64;
    /// # use ring_core::mem::RawMem;
    /// # use ring_core::vmbus::{initialize_ring, IncomingRing, OutgoingRing, RingLayout};
    /// # use ring_core::vmbus::pipe::{PipeReader, PipeWriter};
    /// # let layout = RingLayout::new(4096, 16384)?;
    /// # let words: Vec<AtomicU64> = (0..layout.total_size() / 8).map(|_| AtomicU64::new(0)).collect();
    /// # let mem = RawMem::from_atomics(&words);
    /// # initialize_ring(&mem, layout)?;
    /// # let mut writer = PipeWriter::new(OutgoingRing::new(mem, layout)?);
    /// # let mut reader = PipeReader::new(IncomingRing::new(mem, layout)?);
    /// use ring_core::loan::SpanWriter;
    /// let sent = writer.write_with(64, |mem, spans| {
    ///     let mut w = SpanWriter::new(mem, spans);
    ///     w.write_at(0, b"in place").map_or(0, |()| w.len())
    /// })?;
    /// assert_eq!(sent.len, 8); // one packet, cut to what was written
    /// let mut buf = [0u8; 64];
    /// let got = reader.read_bytes(&mut buf)?;
    /// assert_eq!(&buf[..got.len], b"in place");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write_with(
        &mut self,
        max: usize,
        fill: impl FnOnce(&M, &[Span]) -> usize,
    ) -> Result<Transfer, Error> {
        if max == 0 {
            return Ok(Transfer::default());
        }
        let header = |len: usize| -> [u8; PIPE_HEADER_SIZE] {
            zerocopy::transmute!(PipeHeader {
                packet_type: U32::new(PipePacketType::Data as u32),
                // len ≤ the chunk ≤ 16 KiB.
                data_size: U32::new(len as u32),
            })
        };
        let len = self
            .ring
            .write_in_band_with(self.chunk, max, header, fill)?;
        let t = self.ring.commit()?;
        Ok(Transfer {
            len,
            notify: t.notify,
        })
    }

    /// Sends end of stream (a data packet of size 0).
    ///
    /// # Errors
    ///
    /// [`Error::Full`] (armed); [`Error::Corrupt`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use core::sync::atomic::AtomicU64;
    /// # use ring_core::mem::RawMem;
    /// # use ring_core::vmbus::{initialize_ring, IncomingRing, OutgoingRing, RingLayout};
    /// # use ring_core::vmbus::pipe::{PipeReader, PipeWriter};
    /// # let layout = RingLayout::new(4096, 16384)?;
    /// # let words: Vec<AtomicU64> = (0..layout.total_size() / 8).map(|_| AtomicU64::new(0)).collect();
    /// # let mem = RawMem::from_atomics(&words);
    /// # initialize_ring(&mem, layout)?;
    /// # let mut writer = PipeWriter::new(OutgoingRing::new(mem, layout)?);
    /// # let mut reader = PipeReader::new(IncomingRing::new(mem, layout)?);
    /// let _ = writer.write_bytes(b"bye")?;
    /// let _ = writer.write_eof()?;
    /// let mut buf = [0u8; 8];
    /// assert_eq!(reader.read_bytes(&mut buf)?.len, 3);
    /// assert_eq!(reader.read_bytes(&mut buf)?.len, 0); // end of stream
    /// assert!(reader.is_eof());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write_eof(&mut self) -> Result<Transfer, Error> {
        self.write_data(&[])?;
        let c = self.ring.commit()?;
        Ok(Transfer {
            len: 0,
            notify: c.notify,
        })
    }
}

/// The reading half of a pipe.
#[derive(Debug)]
pub struct PipeReader<M> {
    ring: IncomingRing<M>,
    /// Data bytes of the front packet already handed out.
    consumed: usize,
    eof: bool,
}

/// What the front packet of a pipe held, after copying from it.
enum Step {
    /// End of stream (not copied from).
    Eof,
    /// Data of `size` bytes, of which `copied` were copied (`None`: the
    /// caller's buffer was too small for a whole message).
    Data { size: usize, copied: Option<usize> },
}

impl<M: SharedMem> PipeReader<M> {
    /// A pipe reading from `ring`.
    ///
    /// # Examples
    ///
    /// ```
    /// # use core::sync::atomic::AtomicU64;
    /// # use ring_core::mem::RawMem;
    /// use ring_core::vmbus::pipe::{PipeReader, PipeWriter};
    /// use ring_core::vmbus::{initialize_ring, Error, IncomingRing, OutgoingRing, RingLayout};
    /// let layout = RingLayout::new(4096, 16384)?;
    /// # let words: Vec<AtomicU64> = (0..layout.total_size() / 8).map(|_| AtomicU64::new(0)).collect();
    /// # let mem = RawMem::from_atomics(&words);
    /// initialize_ring(&mem, layout)?;
    /// let mut reader = PipeReader::new(IncomingRing::new(mem, layout)?);
    /// let mut buf = [0u8; 16];
    /// assert_eq!(reader.read_bytes(&mut buf), Err(Error::Empty)); // armed
    /// let mut writer = PipeWriter::new(OutgoingRing::new(mem, layout)?);
    /// let _ = writer.write_bytes(b"data")?;
    /// assert_eq!(reader.read_bytes(&mut buf)?.len, 4);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(ring: IncomingRing<M>) -> Self {
        PipeReader {
            ring,
            consumed: 0,
            eof: false,
        }
    }

    /// The ring underneath.
    pub fn ring(&mut self) -> &mut IncomingRing<M> {
        &mut self.ring
    }

    /// Takes the ring back.
    pub fn into_inner(self) -> IncomingRing<M> {
        self.ring
    }

    /// Whether end of stream has been read.
    pub fn is_eof(&self) -> bool {
        self.eof
    }

    /// Reads the front packet and checks its pipe header; for a data
    /// packet, calls `with(packet, size)` (`size`: its data bytes, more
    /// than the private partial-read offset). The ring is left after the
    /// packet; the returned mark is where it started. `None`: end of
    /// stream (`with` not called).
    fn front<T>(
        &mut self,
        with: impl FnOnce(&IncomingPacket<'_, M>, usize) -> Result<T, Error>,
    ) -> Result<(Option<T>, ReadMark), Error> {
        let mark = self.ring.mark();
        let consumed = self.consumed;
        let packet = self.ring.read_packet()?;
        let payload = packet.payload_len();
        let mut raw = [0u8; PIPE_HEADER_SIZE];
        let verdict = if packet.packet_type() != PacketType::InBand || payload < PIPE_HEADER_SIZE {
            Err("pipe packet is not in-band or lacks its header")
        } else {
            packet.read_payload(0, &mut raw)?;
            let header = PipeHeader::read_from_bytes(&raw).unwrap_or_default();
            let size = header.data_size.get() as usize;
            if header.packet_type.get() != PipePacketType::Data as u32 {
                Err("pipe packet type other than data")
            } else if size > payload - PIPE_HEADER_SIZE || size > MAX_PIPE_PAYLOAD {
                Err("pipe data size exceeds its packet")
            } else if size < consumed || (size == consumed && size > 0) {
                Err("pipe packet shrank while partly read")
            } else {
                Ok(size)
            }
        };
        let got = match verdict {
            Ok(0) => None,
            Ok(size) => Some(with(&packet, size)?),
            // `packet` (a borrow of the ring) is not used past here.
            Err(what) => return Err(self.ring.poison(what)),
        };
        Ok((got, mark))
    }

    /// The front packet, with data copied from it into `buf`: from the
    /// private partial-read offset, as much as fits (`whole`: all of it or
    /// nothing).
    fn take(&mut self, buf: &mut [u8], whole: bool) -> Result<(Step, ReadMark), Error> {
        let consumed = self.consumed;
        let (got, mark) = self.front(|packet, size| {
            let left = size - consumed;
            let n = left.min(buf.len());
            let copied = match buf.get_mut(..n) {
                Some(dst) if !whole || n == left => {
                    packet.read_payload(PIPE_HEADER_SIZE + consumed, dst)?;
                    Some(n)
                }
                _ => None,
            };
            Ok(Step::Data { size, copied })
        })?;
        Ok((got.unwrap_or(Step::Eof), mark))
    }

    /// Byte mode: reads up to `buf.len()` bytes across as many packets as
    /// are there, commits once. `len == 0` (with a non-empty `buf`) is end
    /// of stream.
    ///
    /// # Errors
    ///
    /// [`Error::Empty`] (wake-up armed) when no data is there;
    /// [`Error::Corrupt`] for a malformed pipe packet (poisons).
    ///
    /// # Examples
    ///
    /// ```
    /// # use core::sync::atomic::AtomicU64;
    /// # use ring_core::mem::RawMem;
    /// # use ring_core::vmbus::{initialize_ring, IncomingRing, OutgoingRing, RingLayout};
    /// # use ring_core::vmbus::pipe::{PipeReader, PipeWriter};
    /// # let layout = RingLayout::new(4096, 16384)?;
    /// # let words: Vec<AtomicU64> = (0..layout.total_size() / 8).map(|_| AtomicU64::new(0)).collect();
    /// # let mem = RawMem::from_atomics(&words);
    /// # initialize_ring(&mem, layout)?;
    /// # let mut writer = PipeWriter::new(OutgoingRing::new(mem, layout)?);
    /// # let mut reader = PipeReader::new(IncomingRing::new(mem, layout)?);
    /// let _ = writer.write_bytes(b"abc")?;
    /// let _ = writer.write_bytes(b"def")?; // a second packet
    /// let mut buf = [0u8; 4];
    /// assert_eq!(reader.read_bytes(&mut buf)?.len, 4); // across both packets
    /// assert_eq!(&buf, b"abcd");
    /// assert_eq!(reader.read_bytes(&mut buf)?.len, 2); // the rest of the second
    /// assert_eq!(&buf[..2], b"ef");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn read_bytes(&mut self, buf: &mut [u8]) -> Result<Transfer, Error> {
        if buf.is_empty() || self.eof {
            return Ok(Transfer::default());
        }
        let mut done = 0;
        while let Some(rest) = buf.get_mut(done..).filter(|r| !r.is_empty()) {
            let (step, mark) = match self.take(rest, false) {
                Ok(s) => s,
                Err(Error::Empty) if done > 0 => break,
                Err(e) => {
                    self.ring.revert();
                    return Err(e);
                }
            };
            match step {
                Step::Eof if done == 0 => {
                    self.eof = true;
                    break;
                }
                Step::Eof => {
                    // Deliver the data first; end of stream next call.
                    self.ring.rewind(mark);
                    break;
                }
                Step::Data { size, copied } => {
                    let n = copied.unwrap_or(0);
                    done += n;
                    if self.consumed + n < size {
                        // Partly read: keep the packet, remember how far.
                        self.consumed += n;
                        self.ring.rewind(mark);
                        break;
                    }
                    self.consumed = 0;
                }
            }
        }
        let t = self.ring.commit()?;
        Ok(Transfer {
            len: done,
            notify: t.notify,
        })
    }

    /// Byte mode in place: offers up to `max` data bytes — the rest of the
    /// front packet and those after it, up to [`MAX_SPANS`]` / 2` packets —
    /// to `drain` as spans of the ring's memory in stream order, then
    /// consumes the `n` bytes it says it took (clamped to what was
    /// offered) and commits once. See [`loan`](crate::loan).
    ///
    /// Returns the bytes taken (0 if `drain` took none). The call that
    /// reads the end-of-stream packet returns 0 without calling `drain`
    /// and [`is_eof`](Self::is_eof) is then true; every call after it
    /// returns `None`.
    ///
    /// # Errors
    ///
    /// [`Error::Empty`] (wake-up armed; `drain` not called) when no data is
    /// there; [`Error::Corrupt`] for a malformed pipe packet (poisons).
    ///
    /// # Examples
    ///
    /// ```
    /// # use core::sync::atomic::AtomicU64;
    /// # use ring_core::mem::RawMem;
    /// # use ring_core::vmbus::{initialize_ring, IncomingRing, OutgoingRing, RingLayout};
    /// # use ring_core::vmbus::pipe::{PipeReader, PipeWriter};
    /// # let layout = RingLayout::new(4096, 16384)?;
    /// # let words: Vec<AtomicU64> = (0..layout.total_size() / 8).map(|_| AtomicU64::new(0)).collect();
    /// # let mem = RawMem::from_atomics(&words);
    /// # initialize_ring(&mem, layout)?;
    /// # let mut writer = PipeWriter::new(OutgoingRing::new(mem, layout)?);
    /// # let mut reader = PipeReader::new(IncomingRing::new(mem, layout)?);
    /// use ring_core::loan::SpanReader;
    /// let _ = writer.write_bytes(b"abc")?;
    /// let _ = writer.write_bytes(b"def")?;
    /// let mut got = [0u8; 6];
    /// let took = reader.read_with(64, |mem, spans| {
    ///     // Both packets' data, as spans in stream order.
    ///     SpanReader::new(mem, spans).read_at(0, &mut got).map_or(0, |()| 6)
    /// })?;
    /// assert_eq!((took.map(|t| t.len), &got), (Some(6), b"abcdef"));
    /// let _ = writer.write_eof()?;
    /// assert_eq!(reader.read_with(64, |_, _| 0)?.map(|t| t.len), Some(0));
    /// assert!(reader.is_eof());
    /// assert_eq!(reader.read_with(64, |_, _| 0)?, None); // and from now on
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn read_with(
        &mut self,
        max: usize,
        drain: impl FnOnce(&M, &[Span]) -> usize,
    ) -> Result<Option<Transfer>, Error> {
        if self.eof {
            return Ok(None);
        }
        if max == 0 {
            return Ok(Some(Transfer::default()));
        }
        let mut spans = SpanList::new();
        // (where the packet starts, its data size, the bytes offered from it)
        let mut plan: heapless::Vec<(ReadMark, usize, usize), { MAX_SPANS / 2 }> =
            heapless::Vec::new();
        let start_consumed = self.consumed;
        let mut offered = 0;
        while offered < max && !plan.is_full() {
            let from = if plan.is_empty() { start_consumed } else { 0 };
            self.consumed = from;
            let limit = max - offered;
            let step = self.front(|packet, size| {
                let n = (size - from).min(limit);
                packet.payload_spans(PIPE_HEADER_SIZE + from, n, &mut spans)?;
                Ok((size, n))
            });
            match step {
                Ok((Some((size, n)), mark)) => {
                    let _ = plan.push((mark, size, n));
                    offered += n;
                    if from + n < size {
                        break;
                    }
                }
                Ok((None, mark)) => {
                    if plan.is_empty() {
                        // Consume the end mark: its space may be what the
                        // writer waits for.
                        self.eof = true;
                        self.consumed = 0;
                        let t = self.ring.commit()?;
                        return Ok(Some(Transfer {
                            len: 0,
                            notify: t.notify,
                        }));
                    }
                    // Deliver the data first; end of stream next call.
                    self.ring.rewind(mark);
                    break;
                }
                Err(Error::Empty) if !plan.is_empty() => break,
                Err(e) => {
                    self.consumed = start_consumed;
                    self.ring.revert();
                    return Err(e);
                }
            }
        }
        let took = drain(self.ring.memory(), &spans).min(offered);
        // Keep the packets `drain` took whole; go back to the first it did
        // not, remembering how far into it we are.
        let mut rest = took;
        self.consumed = 0;
        for (i, &(mark, size, n)) in plan.iter().enumerate() {
            let from = if i == 0 { start_consumed } else { 0 };
            if rest >= n && from + n == size {
                rest -= n;
                continue;
            }
            self.ring.rewind(mark);
            self.consumed = from + rest;
            break;
        }
        let t = self.ring.commit()?;
        Ok(Some(Transfer {
            len: took,
            notify: t.notify,
        }))
    }

    /// Message mode: reads one whole message into `buf`. `len` is its size;
    /// `len` 0 is end of stream (a data packet of size 0, which no message
    /// is), and every read after it is end of stream too, as in
    /// [`read_bytes`](Self::read_bytes).
    ///
    /// # Errors
    ///
    /// [`Error::OutOfRange`] if `buf` is too small (nothing is consumed);
    /// [`Error::Empty`] (armed); [`Error::Corrupt`] (poisons).
    ///
    /// # Examples
    ///
    /// ```
    /// # use core::sync::atomic::AtomicU64;
    /// # use ring_core::mem::RawMem;
    /// # use ring_core::vmbus::{initialize_ring, IncomingRing, OutgoingRing, RingLayout};
    /// # use ring_core::vmbus::pipe::{PipeReader, PipeWriter};
    /// # let layout = RingLayout::new(4096, 16384)?;
    /// # let words: Vec<AtomicU64> = (0..layout.total_size() / 8).map(|_| AtomicU64::new(0)).collect();
    /// # let mem = RawMem::from_atomics(&words);
    /// # initialize_ring(&mem, layout)?;
    /// # let mut writer = PipeWriter::new(OutgoingRing::new(mem, layout)?);
    /// # let mut reader = PipeReader::new(IncomingRing::new(mem, layout)?);
    /// use ring_core::vmbus::Error;
    /// let _ = writer.write_message(b"x")?;
    /// let mut buf = [0u8; 8];
    /// assert_eq!(reader.read_message(&mut buf)?.len, 1);
    /// assert_eq!(reader.read_message(&mut buf), Err(Error::Empty));
    /// // No empty messages: size 0 on the wire is end of stream.
    /// assert!(matches!(writer.write_message(b""), Err(Error::InvalidPacket { .. })));
    /// let _ = writer.write_eof()?;
    /// assert_eq!(reader.read_message(&mut buf)?.len, 0);
    /// assert_eq!(reader.read_message(&mut buf)?.len, 0); // and stays so
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn read_message(&mut self, buf: &mut [u8]) -> Result<Transfer, Error> {
        if self.eof {
            return Ok(Transfer::default());
        }
        self.consumed = 0;
        let (step, _) = match self.take(buf, true) {
            Ok(s) => s,
            Err(e) => {
                self.ring.revert();
                return Err(e);
            }
        };
        let len = match step {
            Step::Eof => {
                self.eof = true;
                0
            }
            Step::Data {
                copied: Some(n), ..
            } => n,
            Step::Data { size, copied: None } => {
                self.ring.revert();
                return Err(Error::OutOfRange {
                    needed: size,
                    available: buf.len(),
                });
            }
        };
        let t = self.ring.commit()?;
        Ok(Transfer {
            len,
            notify: t.notify,
        })
    }
}
