//! Packet kinds: what a writer is asked to send, and the validated view of
//! a packet a reader has found.

use super::layout::{
    gpa_pfn_count, GpaRangeHeader, PacketFlags, PacketType, TransferPageRange, DESCRIPTOR_SIZE,
    EXTENDED_HEADER_SIZE, GPA_PAGE_SIZE, MAX_GPA_RANGE_OFFSET, MAX_PACKET_LEN, PACKET_ALIGN,
};
use super::{advance, Error};
use crate::error::Corrupt;
use crate::loan::SpanList;
use crate::mem::{SharedMem, WrapRegion};
use core::mem::size_of;
use zerocopy::FromBytes;

/// One GPA-direct range to send: `byte_count` bytes starting `byte_offset`
/// bytes into the first of `pfns` (4 KiB guest page frame numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpaRange<'a> {
    /// Length of the range in bytes.
    pub byte_count: u32,
    /// Offset into the first page (at most 0xFFF).
    pub byte_offset: u32,
    /// Exactly `⌈(byte_offset + byte_count) / 4096⌉` page frame numbers.
    pub pfns: &'a [u64],
}

/// One transfer-page range: a slice of a pre-shared receive buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransferRange {
    /// Length in bytes.
    pub byte_count: u32,
    /// Offset in the transfer page set.
    pub byte_offset: u32,
}

/// The kind of packet to send, with its type-specific header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutgoingKind<'a> {
    /// Type 6: payload only.
    InBand,
    /// Type 0xB: the completion of the request with the same transaction id.
    Completion,
    /// Type 9: guest page ranges (at least one), then the payload.
    GpaDirect {
        /// The ranges.
        ranges: &'a [GpaRange<'a>],
    },
    /// Type 7: ranges of a transfer page set, then the payload.
    TransferPages {
        /// The transfer page set id.
        set_id: u16,
        /// The ranges.
        ranges: &'a [TransferRange],
    },
}

/// A packet to send: kind, flags, transaction id, and a payload gathered
/// from one or more slices (written back to back, then zero-padded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutgoingPacket<'a> {
    /// Type and type-specific header.
    pub kind: OutgoingKind<'a>,
    /// Descriptor flags.
    pub flags: PacketFlags,
    /// Transaction id.
    pub transaction_id: u64,
    /// The payload, in pieces.
    pub payload: &'a [&'a [u8]],
}

impl<'a> OutgoingPacket<'a> {
    /// An in-band packet.
    ///
    /// # Examples
    ///
    /// ```
    /// use ring_core::vmbus::{OutgoingPacket, PacketType};
    ///
    /// // A header and a body, sent as one payload without copying them together.
    /// let header = 4u32.to_le_bytes();
    /// let pieces: [&[u8]; 2] = [&header, b"body"];
    /// let packet = OutgoingPacket::in_band(7, &pieces);
    /// assert_eq!(packet.packet_type(), PacketType::InBand);
    /// assert_eq!(packet.payload_len(), 8);
    /// assert_eq!(packet.wire_len()?, 16 + 8); // descriptor, then the padded payload
    /// # Ok::<(), ring_core::vmbus::Error>(())
    /// ```
    pub const fn in_band(transaction_id: u64, payload: &'a [&'a [u8]]) -> Self {
        OutgoingPacket {
            kind: OutgoingKind::InBand,
            flags: PacketFlags::empty(),
            transaction_id,
            payload,
        }
    }

    /// A completion echoing `transaction_id`.
    ///
    /// # Examples
    ///
    /// ```
    /// use ring_core::vmbus::{OutgoingPacket, PacketType};
    ///
    /// // The answer to request 41, with a status word.
    /// let status = 0u32.to_le_bytes();
    /// let pieces = [&status[..]];
    /// let reply = OutgoingPacket::completion(41, &pieces);
    /// assert_eq!(reply.packet_type(), PacketType::Completion);
    /// assert_eq!(reply.transaction_id, 41);
    /// assert_eq!(reply.wire_len()?, 16 + 8); // 4 payload bytes padded to 8
    /// # Ok::<(), ring_core::vmbus::Error>(())
    /// ```
    pub const fn completion(transaction_id: u64, payload: &'a [&'a [u8]]) -> Self {
        OutgoingPacket {
            kind: OutgoingKind::Completion,
            flags: PacketFlags::empty(),
            transaction_id,
            payload,
        }
    }

    /// A GPA-direct packet. Completion is requested, as every known sender
    /// of this type does.
    pub const fn gpa_direct(
        transaction_id: u64,
        ranges: &'a [GpaRange<'a>],
        payload: &'a [&'a [u8]],
    ) -> Self {
        OutgoingPacket {
            kind: OutgoingKind::GpaDirect { ranges },
            flags: PacketFlags::COMPLETION_REQUESTED,
            transaction_id,
            payload,
        }
    }

    /// A transfer-page packet.
    pub const fn transfer_pages(
        transaction_id: u64,
        set_id: u16,
        ranges: &'a [TransferRange],
        payload: &'a [&'a [u8]],
    ) -> Self {
        OutgoingPacket {
            kind: OutgoingKind::TransferPages { set_id, ranges },
            flags: PacketFlags::empty(),
            transaction_id,
            payload,
        }
    }

    /// The same packet with the completion-requested flag set.
    pub const fn with_completion_requested(mut self) -> Self {
        self.flags = self.flags.union(PacketFlags::COMPLETION_REQUESTED);
        self
    }

    /// The wire packet type.
    pub const fn packet_type(&self) -> PacketType {
        match self.kind {
            OutgoingKind::InBand => PacketType::InBand,
            OutgoingKind::Completion => PacketType::Completion,
            OutgoingKind::GpaDirect { .. } => PacketType::GpaDirect,
            OutgoingKind::TransferPages { .. } => PacketType::TransferPages,
        }
    }

    /// Exact payload length in bytes (before padding).
    pub fn payload_len(&self) -> usize {
        self.payload
            .iter()
            .fold(0usize, |n, s| n.saturating_add(s.len()))
    }

    /// Length of descriptor plus type-specific header (a multiple of 8).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidPacket`] for a GPA-direct packet without ranges or
    /// with a range whose offset or page count is wrong;
    /// [`Error::TooLarge`] if the header alone exceeds the packet limit.
    pub fn header_len(&self) -> Result<usize, Error> {
        let too_large = |len: usize| Error::TooLarge {
            len,
            max: MAX_PACKET_LEN,
        };
        match self.kind {
            OutgoingKind::InBand | OutgoingKind::Completion => Ok(DESCRIPTOR_SIZE),
            OutgoingKind::TransferPages { ranges, .. } => {
                let len = ranges
                    .len()
                    .checked_mul(size_of::<TransferPageRange>())
                    .and_then(|n| n.checked_add(EXTENDED_HEADER_SIZE))
                    .ok_or(too_large(usize::MAX))?;
                if u32::try_from(ranges.len()).is_err() || len > MAX_PACKET_LEN {
                    return Err(too_large(len));
                }
                Ok(len)
            }
            OutgoingKind::GpaDirect { ranges } => {
                if ranges.is_empty() {
                    return Err(Error::InvalidPacket {
                        what: "GPA-direct packet without ranges",
                    });
                }
                let mut len = EXTENDED_HEADER_SIZE;
                for r in ranges {
                    if r.byte_offset > MAX_GPA_RANGE_OFFSET {
                        return Err(Error::InvalidPacket {
                            what: "GPA range offset beyond its first page",
                        });
                    }
                    if gpa_pfn_count(r.byte_offset, r.byte_count) != r.pfns.len() as u64 {
                        return Err(Error::InvalidPacket {
                            what: "GPA range page count does not match its length",
                        });
                    }
                    len = r
                        .pfns
                        .len()
                        .checked_add(1)
                        .and_then(|words| words.checked_mul(PACKET_ALIGN))
                        .and_then(|n| n.checked_add(len))
                        .filter(|&n| n <= MAX_PACKET_LEN)
                        .ok_or(too_large(len))?;
                }
                if u32::try_from(ranges.len()).is_err() {
                    return Err(too_large(len));
                }
                Ok(len)
            }
        }
    }

    /// Length on the wire without the trailer: header plus padded payload
    /// (what `length8 × 8` will say).
    ///
    /// # Errors
    ///
    /// As [`header_len`](Self::header_len); [`Error::TooLarge`] above
    /// [`MAX_PACKET_LEN`].
    pub fn wire_len(&self) -> Result<usize, Error> {
        self.lengths().map(|(_, len)| len)
    }

    /// `(header_len, wire_len)`, computed once.
    pub(super) fn lengths(&self) -> Result<(usize, usize), Error> {
        let header = self.header_len()?;
        let len = self
            .payload_len()
            .checked_next_multiple_of(PACKET_ALIGN)
            .and_then(|p| p.checked_add(header))
            .unwrap_or(usize::MAX);
        if len > MAX_PACKET_LEN {
            return Err(Error::TooLarge {
                len,
                max: MAX_PACKET_LEN,
            });
        }
        Ok((header, len))
    }
}

/// What a packet's type-specific header holds, as validated at read time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeInfo {
    /// In-band or completion: no header beyond the descriptor.
    None,
    /// GPA direct with this many ranges.
    Gpa {
        /// Number of ranges (at least one).
        count: u32,
    },
    /// Transfer pages with this many ranges.
    Transfer {
        /// The transfer page set id.
        set_id: u16,
        /// Number of ranges.
        count: u32,
    },
}

/// Everything about a received packet that was read from its descriptor and
/// header, in private memory and validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketInfo {
    /// The packet type.
    pub packet_type: PacketType,
    /// Descriptor flags (only defined bits).
    pub flags: PacketFlags,
    /// The transaction id.
    pub transaction_id: u64,
    /// Descriptor plus type-specific header, in bytes (`data_offset8 × 8`).
    pub header_len: u32,
    /// Packet length without the trailer, in bytes (`length8 × 8`).
    pub len: u32,
    /// Type-specific header summary.
    pub ranges: RangeInfo,
}

/// A validated packet in an incoming ring, read in place through the memory
/// door.
///
/// It borrows the ring: its bytes stay valid (the writer may not reuse them)
/// until the ring's read index is committed, which needs the borrow back.
/// Nothing here forms a reference into shared memory; every access copies
/// into a caller buffer and handles the wrap.
#[derive(Debug)]
pub struct IncomingPacket<'a, M: ?Sized> {
    pub(super) mem: &'a M,
    pub(super) data: WrapRegion,
    pub(super) size: u32,
    /// Data-area offset of the descriptor.
    pub(super) start: u32,
    pub(super) info: PacketInfo,
}

impl<'a, M: SharedMem + ?Sized> IncomingPacket<'a, M> {
    /// The packet's validated descriptor and header summary.
    pub fn info(&self) -> PacketInfo {
        self.info
    }

    /// The packet type.
    pub fn packet_type(&self) -> PacketType {
        self.info.packet_type
    }

    /// The transaction id.
    pub fn transaction_id(&self) -> u64 {
        self.info.transaction_id
    }

    /// The flags.
    pub fn flags(&self) -> PacketFlags {
        self.info.flags
    }

    /// Whether the sender asked for a completion.
    pub fn completion_requested(&self) -> bool {
        self.info.flags.contains(PacketFlags::COMPLETION_REQUESTED)
    }

    /// Data-area offset of the packet's descriptor.
    pub fn offset(&self) -> u32 {
        self.start
    }

    /// Payload length in bytes, padded to 8 (the ring does not carry the
    /// exact length; the protocol above does).
    pub fn payload_len(&self) -> usize {
        (self.info.len - self.info.header_len) as usize
    }

    /// Copies packet bytes `[at, at + buf.len())`, counted from the
    /// descriptor, into `buf`. `limit` bounds `at + buf.len()`.
    fn read_at(&self, at: u32, limit: u32, buf: &mut [u8]) -> Result<(), Error> {
        let end = (at as usize).saturating_add(buf.len());
        if end > limit as usize {
            return Err(Error::OutOfRange {
                needed: end,
                available: limit as usize,
            });
        }
        // `at < limit ≤ len < size` here (or buf is empty and at ≤ limit).
        if buf.is_empty() {
            return Ok(());
        }
        let pos = advance(self.start, at, self.size);
        self.data.read(self.mem, pos as usize, buf)?;
        Ok(())
    }

    /// Copies payload bytes `[offset, offset + buf.len())` into `buf`.
    ///
    /// # Errors
    ///
    /// [`Error::OutOfRange`] past the padded payload.
    ///
    /// # Examples
    ///
    /// ```
    /// # use core::sync::atomic::AtomicU64;
    /// # use ring_core::mem::RawMem;
    /// # use ring_core::vmbus::{initialize_ring, RingLayout};
    /// use ring_core::vmbus::{Error, IncomingRing, OutgoingPacket, OutgoingRing};
    /// # let layout = RingLayout::new(4096, 4096)?;
    /// # let words: Vec<AtomicU64> = (0..layout.total_size() / 8).map(|_| AtomicU64::new(0)).collect();
    /// # let mem = RawMem::from_atomics(&words);
    /// # initialize_ring(&mem, layout)?;
    /// # let mut tx = OutgoingRing::new(mem, layout)?;
    /// # let mut rx = IncomingRing::new(mem, layout)?;
    /// let _ = tx.send(&OutgoingPacket::in_band(1, &[b"hello"]))?;
    /// let packet = rx.read_packet()?;
    /// let mut tail = [0u8; 3];
    /// packet.read_payload(2, &mut tail)?;
    /// assert_eq!(&tail, b"llo");
    /// // The ring pads payloads to 8 bytes (zeros); past that is out of range.
    /// assert_eq!(packet.payload_len(), 8);
    /// assert!(matches!(packet.read_payload(6, &mut tail), Err(Error::OutOfRange { .. })));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn read_payload(&self, offset: usize, buf: &mut [u8]) -> Result<(), Error> {
        let at = u32::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(self.info.header_len))
            .ok_or(Error::OutOfRange {
                needed: offset.saturating_add(buf.len()),
                available: self.payload_len(),
            })?;
        self.read_at(at, self.info.len, buf).map_err(|e| match e {
            Error::OutOfRange { .. } => Error::OutOfRange {
                needed: offset.saturating_add(buf.len()),
                available: self.payload_len(),
            },
            e => e,
        })
    }

    /// Appends the spans of payload bytes `[offset, offset + len)` (one, or
    /// two when they wrap) to `out`, as offsets in the ring's memory, for
    /// reading in place (see [`loan`](crate::loan)).
    ///
    /// # Errors
    ///
    /// [`Error::OutOfRange`] past the padded payload or when `out` is full.
    pub fn payload_spans(
        &self,
        offset: usize,
        len: usize,
        out: &mut SpanList,
    ) -> Result<(), Error> {
        let out_of_range = Error::OutOfRange {
            needed: offset.saturating_add(len),
            available: self.payload_len(),
        };
        let end = offset.checked_add(len).ok_or(out_of_range)?;
        if end > self.payload_len() {
            return Err(out_of_range);
        }
        if len == 0 {
            return Ok(());
        }
        // offset < payload_len < len ≤ size: fits u32.
        let pos = advance(self.start, self.info.header_len + offset as u32, self.size);
        self.data
            .push_spans(pos as usize, len, out)
            .map_err(|_| out_of_range)
    }

    /// Copies the whole packet from its descriptor (`[offset, ...)` of
    /// `length8 × 8` bytes) into `buf`, as a raw reader would.
    ///
    /// # Errors
    ///
    /// [`Error::OutOfRange`] past the end of the packet.
    pub fn read_raw(&self, offset: usize, buf: &mut [u8]) -> Result<(), Error> {
        let at = u32::try_from(offset).map_err(|_| Error::OutOfRange {
            needed: offset,
            available: self.info.len as usize,
        })?;
        self.read_at(at, self.info.len, buf)
    }

    /// The transfer page set id, for a transfer-page packet.
    pub fn transfer_page_set_id(&self) -> Option<u16> {
        match self.info.ranges {
            RangeInfo::Transfer { set_id, .. } => Some(set_id),
            _ => None,
        }
    }

    /// The ranges of a transfer-page packet (empty for other types).
    ///
    /// The ranges were checked to fit the header when the packet was read;
    /// they are read from the ring again as the iterator advances.
    pub fn transfer_ranges(&self) -> TransferRanges<'_, 'a, M> {
        let count = match self.info.ranges {
            RangeInfo::Transfer { count, .. } => count,
            _ => 0,
        };
        TransferRanges {
            records: Records::new(self, EXTENDED_HEADER_SIZE as u32, count),
        }
    }

    /// The ranges of a GPA-direct packet (empty for other types).
    ///
    /// The ranges were validated when the packet was read. They are read
    /// from the ring again as the iterator advances and re-checked against
    /// the private header length, so a peer that rewrites them meanwhile
    /// produces an `Err` item, never an access outside the packet.
    pub fn gpa_ranges(&self) -> GpaRanges<'_, 'a, M> {
        let count = match self.info.ranges {
            RangeInfo::Gpa { count } => count,
            _ => 0,
        };
        GpaRanges {
            records: Records::new(self, EXTENDED_HEADER_SIZE as u32, count),
        }
    }
}

/// Iterator over the ranges of a transfer-page packet.
#[derive(Debug)]
pub struct TransferRanges<'p, 'a, M: ?Sized> {
    records: Records<'p, 'a, M>,
}

impl<M: SharedMem + ?Sized> Iterator for TransferRanges<'_, '_, M> {
    type Item = Result<TransferRange, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        Some(self.records.next_raw()?.map(|(_, raw)| {
            let r = TransferPageRange::read_from_bytes(&raw).unwrap_or_default();
            TransferRange {
                byte_count: r.byte_count.get(),
                byte_offset: r.byte_offset.get(),
            }
        }))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.records.size_hint()
    }
}

/// Iterator over the ranges of a GPA-direct packet.
#[derive(Debug)]
pub struct GpaRanges<'p, 'a, M: ?Sized> {
    records: Records<'p, 'a, M>,
}

/// One GPA-direct range of a received packet; its page frame numbers are
/// read from the ring on demand.
#[derive(Debug)]
pub struct GpaRangeRef<'p, 'a, M: ?Sized> {
    packet: &'p IncomingPacket<'a, M>,
    /// Length of the range in bytes.
    pub byte_count: u32,
    /// Offset into the first page (at most 0xFFF).
    pub byte_offset: u32,
    /// Number of page frame numbers.
    pub pfn_count: u32,
    pfns_at: u32,
}

impl<'p, 'a, M: SharedMem + ?Sized> GpaRangeRef<'p, 'a, M> {
    /// The range's page frame numbers.
    pub fn pfns(&self) -> Pfns<'p, 'a, M> {
        Pfns {
            records: Records::new(self.packet, self.pfns_at, self.pfn_count),
        }
    }
}

/// Iterator over a GPA range's page frame numbers.
#[derive(Debug)]
pub struct Pfns<'p, 'a, M: ?Sized> {
    records: Records<'p, 'a, M>,
}

impl<M: SharedMem + ?Sized> Iterator for Pfns<'_, '_, M> {
    type Item = Result<u64, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        Some(
            self.records
                .next_raw()?
                .map(|(_, raw)| u64::from_le_bytes(raw)),
        )
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.records.size_hint()
    }
}

impl<'p, 'a, M: SharedMem + ?Sized> Iterator for GpaRanges<'p, 'a, M> {
    type Item = Result<GpaRangeRef<'p, 'a, M>, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let packet = self.records.packet;
        let item = self.records.next_raw()?.and_then(|(at, raw)| {
            let h = GpaRangeHeader::read_from_bytes(&raw).unwrap_or_default();
            let range = check_gpa_range(h, at, packet.info.header_len)?;
            Ok(GpaRangeRef {
                packet,
                byte_count: h.byte_count.get(),
                byte_offset: h.byte_offset.get(),
                pfn_count: range.pfn_count,
                pfns_at: at + 8,
            })
        });
        match &item {
            // The next range head follows this range's page numbers.
            Ok(r) => self.records.at = r.pfns_at + 8 * r.pfn_count,
            Err(_) => self.records.left = 0,
        }
        Some(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.records.size_hint()
    }
}

/// A cursor over the 8-byte records in a packet's header (transfer-page
/// ranges, GPA range heads, page numbers). Every read goes through the
/// packet's bounds check against its private header length; an error ends
/// the cursor.
#[derive(Debug)]
struct Records<'p, 'a, M: ?Sized> {
    packet: &'p IncomingPacket<'a, M>,
    at: u32,
    left: u32,
}

impl<'p, 'a, M: SharedMem + ?Sized> Records<'p, 'a, M> {
    fn new(packet: &'p IncomingPacket<'a, M>, at: u32, left: u32) -> Self {
        Records { packet, at, left }
    }

    /// The next record and the offset it was read from.
    fn next_raw(&mut self) -> Option<Result<(u32, [u8; 8]), Error>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let mut raw = [0u8; 8];
        let at = self.at;
        match self
            .packet
            .read_at(at, self.packet.info.header_len, &mut raw)
        {
            Ok(()) => {
                self.at = at.saturating_add(8);
                Some(Ok((at, raw)))
            }
            Err(e) => {
                self.left = 0;
                Some(Err(e))
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.left as usize))
    }
}

/// A GPA range head that passed the checks.
pub(super) struct CheckedGpaRange {
    pub(super) pfn_count: u32,
    /// Offset just past the range's PFNs, from the descriptor.
    pub(super) end: u32,
}

/// Checks one GPA range head found at `at` (from the descriptor): offset
/// within the first page, PFNs inside the header, no overflow.
pub(super) fn check_gpa_range(
    h: GpaRangeHeader,
    at: u32,
    header_len: u32,
) -> Result<CheckedGpaRange, Error> {
    let corrupt = |what| Error::Corrupt(Corrupt { what });
    if h.byte_offset.get() > MAX_GPA_RANGE_OFFSET {
        return Err(corrupt("GPA range offset beyond its first page"));
    }
    let pfns = gpa_pfn_count(h.byte_offset.get(), h.byte_count.get());
    let end = u64::from(at) + 8 + pfns * 8;
    if end > u64::from(header_len) {
        return Err(corrupt("GPA range page list runs past the packet header"));
    }
    // `end ≤ header_len < 2^19`, so both fit in u32.
    Ok(CheckedGpaRange {
        pfn_count: pfns as u32,
        end: end as u32,
    })
}

const _: () = assert!(GPA_PAGE_SIZE == 4096);
