//! The VMBus ring's wire layout: the control page, the packet descriptor,
//! the type-specific headers and the trailer, as types and checked facts.
//!
//! Every multi-byte field is little-endian; the zerocopy byte-order types
//! make that explicit, so these structs can be read from and written to
//! private byte buffers on any host.

use core::mem::{offset_of, size_of};
use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::SetupError;

/// Size of the control page as the hypervisor sees it (one 4 KiB "hyp
/// page"), whatever the guest's page size.
pub const CONTROL_PAGE_SIZE: usize = 4096;

/// Where the data area starts on guests with 4 KiB pages. Guests with
/// larger pages (arm64 with 64 KiB pages) map the data area at their system
/// page size instead; see [`RingLayout::new`].
pub const DEFAULT_DATA_OFFSET: usize = 4096;

/// Granularity of the data area's size: it is made of 4 KiB hyp pages.
pub const DATA_SIZE_GRANULE: usize = 4096;

/// Every packet, and both indices, are aligned to this many bytes.
pub const PACKET_ALIGN: usize = 8;

/// Size of the per-packet trailer.
pub const TRAILER_SIZE: usize = 8;

/// Largest packet the descriptor can describe: `length8` is a `u16` count of
/// 8-byte units, so descriptor + extension + padded payload is at most
/// 65 535 × 8 bytes (the trailer comes on top). No known writer checks
/// this; we do.
pub const MAX_PACKET_LEN: usize = u16::MAX as usize * PACKET_ALIGN;

/// Size of a GPA page frame (the unit of page frame numbers).
pub const GPA_PAGE_SIZE: usize = 4096;

/// Largest byte offset of a GPA range within its first page.
pub const MAX_GPA_RANGE_OFFSET: u32 = GPA_PAGE_SIZE as u32 - 1;

/// The shared control header at the start of each ring.
///
/// Only its first 0x44 bytes are defined; the rest of the 4 KiB page is
/// padding that nobody reads.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct ControlHeader {
    /// Byte offset into the data area where the next packet will start.
    /// Written by the ring's writer, after the packet bytes.
    pub write_index: U32,
    /// Byte offset of the first unconsumed byte. Written by the reader.
    pub read_index: U32,
    /// Non-zero: the reader asks not to be signalled for new data (it is
    /// draining or polling). Written by the reader.
    pub interrupt_mask: U32,
    /// Zero, or the number of free bytes a blocked writer waits for.
    /// Written by the writer.
    pub pending_send_size: U32,
    /// Reserved, zero.
    pub reserved: [U32; 12],
    /// [`FeatureBits`], written by the ring's writer.
    pub feature_bits: U32,
}

/// Byte offset of [`ControlHeader::write_index`].
pub const WRITE_INDEX: usize = offset_of!(ControlHeader, write_index);
/// Byte offset of [`ControlHeader::read_index`].
pub const READ_INDEX: usize = offset_of!(ControlHeader, read_index);
/// Byte offset of [`ControlHeader::interrupt_mask`].
pub const INTERRUPT_MASK: usize = offset_of!(ControlHeader, interrupt_mask);
/// Byte offset of [`ControlHeader::pending_send_size`].
pub const PENDING_SEND_SIZE: usize = offset_of!(ControlHeader, pending_send_size);
/// Byte offset of [`ControlHeader::feature_bits`].
pub const FEATURE_BITS: usize = offset_of!(ControlHeader, feature_bits);

bitflags::bitflags! {
    /// Feature bits in [`ControlHeader::feature_bits`].
    ///
    /// The bits in ring X are set by X's writer.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct FeatureBits: u32 {
        /// "I set `pending_send_size` in this ring when I am blocked, and I
        /// honour the peer's `pending_send_size` in the opposite ring."
        const PENDING_SEND_SIZE = 1;
    }
}

/// The 16-byte descriptor at the start of every packet.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct PacketDescriptor {
    /// The packet type ([`PacketType`] values).
    pub packet_type: U16,
    /// Offset of the payload from the start of the descriptor, in 8-byte
    /// units; covers the descriptor and any type-specific header.
    pub data_offset8: U16,
    /// Length of the packet from the descriptor to the end of the padded
    /// payload, in 8-byte units; the trailer is not included.
    pub length8: U16,
    /// [`PacketFlags`].
    pub flags: U16,
    /// Opaque request id, echoed by the completion.
    pub transaction_id: U64,
}

/// Size of [`PacketDescriptor`].
pub const DESCRIPTOR_SIZE: usize = size_of::<PacketDescriptor>();

/// The 8-byte trailer after every packet. As a little-endian `u64` its value
/// is `start << 32`, where `start` is the write index at which the packet's
/// descriptor begins ("previous packet offset"). Readers skip it.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct Trailer {
    /// Reserved, zero.
    pub reserved: U32,
    /// Data-area offset of the packet's descriptor.
    pub start: U32,
}

impl Trailer {
    /// The trailer of a packet whose descriptor starts at `start`.
    pub const fn for_start(start: u32) -> Self {
        Trailer {
            reserved: U32::ZERO,
            start: U32::new(start),
        }
    }

    /// The trailer as the `u64` value the specification describes.
    pub const fn value(&self) -> u64 {
        (self.start.get() as u64) << 32 | self.reserved.get() as u64
    }
}

/// The header that follows the descriptor of a transfer-page packet
/// (type 7); the ranges follow it.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct TransferPageHeader {
    /// Id of the pre-shared transfer page set (receive buffer).
    pub transfer_page_set_id: U16,
    /// "Sender owns set" byte in Microsoft's headers; peers may leave
    /// garbage here, so readers ignore it.
    pub sender_owns_set: u8,
    /// Reserved.
    pub reserved: u8,
    /// Number of [`TransferPageRange`]s that follow.
    pub range_count: U32,
}

/// One range of a transfer-page packet: a slice of the receive buffer.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct TransferPageRange {
    /// Length of the range in bytes.
    pub byte_count: U32,
    /// Offset of the range in the transfer page set.
    pub byte_offset: U32,
}

/// The header that follows the descriptor of a GPA-direct packet (type 9).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct GpaDirectHeader {
    /// Reserved; peers may leave garbage here.
    pub reserved: U32,
    /// Number of ranges that follow (at least one).
    pub range_count: U32,
}

/// The head of one GPA-direct range; `⌈(byte_offset + byte_count) / 4096⌉`
/// little-endian `u64` page frame numbers follow it.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct GpaRangeHeader {
    /// Length of the range in bytes.
    pub byte_count: U32,
    /// Offset of the range within its first page (at most 0xFFF).
    pub byte_offset: U32,
}

/// Size of the descriptor plus the transfer-page or GPA-direct header.
pub const EXTENDED_HEADER_SIZE: usize = DESCRIPTOR_SIZE + size_of::<GpaDirectHeader>();

/// Number of page frame numbers a GPA range of `byte_count` bytes starting
/// `byte_offset` bytes into its first page needs. Computed in `u64`, so it
/// cannot overflow for any `u32` inputs.
pub const fn gpa_pfn_count(byte_offset: u32, byte_count: u32) -> u64 {
    (byte_offset as u64 + byte_count as u64).div_ceil(GPA_PAGE_SIZE as u64)
}

const _: () = {
    assert!(size_of::<ControlHeader>() == 0x44);
    assert!(WRITE_INDEX == 0x00);
    assert!(READ_INDEX == 0x04);
    assert!(INTERRUPT_MASK == 0x08);
    assert!(PENDING_SEND_SIZE == 0x0C);
    assert!(FEATURE_BITS == 0x40);
    assert!(size_of::<ControlHeader>() <= CONTROL_PAGE_SIZE);
    assert!(DESCRIPTOR_SIZE == 16);
    assert!(offset_of!(PacketDescriptor, packet_type) == 0);
    assert!(offset_of!(PacketDescriptor, data_offset8) == 2);
    assert!(offset_of!(PacketDescriptor, length8) == 4);
    assert!(offset_of!(PacketDescriptor, flags) == 6);
    assert!(offset_of!(PacketDescriptor, transaction_id) == 8);
    assert!(size_of::<Trailer>() == TRAILER_SIZE);
    assert!(offset_of!(Trailer, start) == 4);
    assert!(size_of::<TransferPageHeader>() == 8);
    assert!(offset_of!(TransferPageHeader, range_count) == 4);
    assert!(size_of::<TransferPageRange>() == 8);
    assert!(size_of::<GpaDirectHeader>() == 8);
    assert!(offset_of!(GpaDirectHeader, range_count) == 4);
    assert!(size_of::<GpaRangeHeader>() == 8);
    assert!(EXTENDED_HEADER_SIZE == 24);
    assert!(MAX_PACKET_LEN == 524_280);
};

/// The packet types the rings carry today.
///
/// Types 0–5, 8, 0xA, 0xC and 0xD are defined by Microsoft's headers but
/// not used on rings by any implementation we interoperate with; our reader
/// rejects them as corruption (as OpenVMM's does).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum PacketType {
    /// Data in-band: the payload follows the descriptor.
    InBand = 0x6,
    /// Data in transfer pages: ranges of a pre-shared receive buffer.
    TransferPages = 0x7,
    /// Data by GPA direct: guest page ranges, plus an in-band payload.
    GpaDirect = 0x9,
    /// Completion of an earlier request; echoes its transaction id.
    Completion = 0xB,
}

impl PacketType {
    /// Decodes a wire value; `None` for types we do not accept.
    pub const fn from_wire(value: u16) -> Option<Self> {
        match value {
            0x6 => Some(PacketType::InBand),
            0x7 => Some(PacketType::TransferPages),
            0x9 => Some(PacketType::GpaDirect),
            0xB => Some(PacketType::Completion),
            _ => None,
        }
    }

    /// The wire value.
    pub const fn wire(self) -> u16 {
        self as u16
    }
}

bitflags::bitflags! {
    /// Flags in [`PacketDescriptor::flags`].
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct PacketFlags: u16 {
        /// The sender wants a completion packet for this one.
        const COMPLETION_REQUESTED = 1;
    }
}

/// Where one ring lives in its memory: the control page at offset 0, the
/// data area at `data_offset`, `data_size` bytes long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingLayout {
    data_offset: usize,
    data_size: u32,
}

impl RingLayout {
    /// A ring whose data area of `data_size` bytes starts at
    /// `data_offset`.
    ///
    /// `data_offset` is 4096 ([`DEFAULT_DATA_OFFSET`]) normally, and the
    /// system page size for guests whose pages are larger (the kernel then
    /// gives the control page a whole system page, of which the host sees
    /// only the first 4 KiB). Take it from the system, not a constant.
    ///
    /// # Errors
    ///
    /// [`SetupError::BadDataOffset`] unless `data_offset` is a non-zero
    /// multiple of 4096; [`SetupError::BadDataSize`] unless `data_size` is a
    /// non-zero multiple of 4096 that fits in `u32`.
    ///
    /// # Examples
    ///
    /// ```
    /// use ring_core::vmbus::{RingLayout, SetupError};
    ///
    /// let layout = RingLayout::new(4096, 16384)?;
    /// assert_eq!(layout.data_size(), 16384);
    /// assert_eq!(layout.total_size(), 4096 + 16384); // control page, then data
    /// // The data area comes in whole 4 KiB pages, after the control page.
    /// assert_eq!(
    ///     RingLayout::new(4096, 1000),
    ///     Err(SetupError::BadDataSize { data_size: 1000 })
    /// );
    /// assert!(matches!(RingLayout::new(0, 4096), Err(SetupError::BadDataOffset { .. })));
    /// # Ok::<(), SetupError>(())
    /// ```
    pub const fn new(data_offset: usize, data_size: usize) -> Result<Self, SetupError> {
        if data_offset == 0 || !data_offset.is_multiple_of(CONTROL_PAGE_SIZE) {
            return Err(SetupError::BadDataOffset { data_offset });
        }
        if data_size == 0
            || !data_size.is_multiple_of(DATA_SIZE_GRANULE)
            || data_size > u32::MAX as usize
        {
            return Err(SetupError::BadDataSize { data_size });
        }
        Ok(RingLayout {
            data_offset,
            data_size: data_size as u32,
        })
    }

    /// The layout of a ring that fills `total` bytes with its data area at
    /// `data_offset` (e.g. half of a uio `txrx_rings` map).
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new), with `data_size = total − data_offset`.
    ///
    /// # Examples
    ///
    /// ```
    /// use ring_core::vmbus::{RingLayout, SetupError};
    ///
    /// // One ring in a 64 KiB mapping.
    /// let layout = RingLayout::for_total(4096, 65536)?;
    /// assert_eq!(layout.data_size(), 65536 - 4096);
    /// // A mapping of just the control page leaves no data area.
    /// assert!(RingLayout::for_total(4096, 4096).is_err());
    /// # Ok::<(), SetupError>(())
    /// ```
    pub const fn for_total(data_offset: usize, total: usize) -> Result<Self, SetupError> {
        match total.checked_sub(data_offset) {
            Some(data_size) => Self::new(data_offset, data_size),
            None => Err(SetupError::BadDataSize { data_size: 0 }),
        }
    }

    /// Offset of the data area from the start of the ring.
    pub const fn data_offset(&self) -> usize {
        self.data_offset
    }

    /// Size of the data area in bytes.
    pub const fn data_size(&self) -> u32 {
        self.data_size
    }

    /// Bytes of memory the ring occupies.
    pub const fn total_size(&self) -> usize {
        self.data_offset + self.data_size as usize
    }

    /// Largest packet (descriptor + header + padded payload, without the
    /// trailer) a writer can put in an empty ring of this layout: the ring
    /// keeps 8 bytes free, and `length8` caps packets at 524 280 bytes.
    pub const fn max_packet_len(&self) -> usize {
        let ring = self.data_size as usize - TRAILER_SIZE - PACKET_ALIGN;
        if ring < MAX_PACKET_LEN {
            ring
        } else {
            MAX_PACKET_LEN
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_page_offsets() {
        assert_eq!(WRITE_INDEX, 0x00);
        assert_eq!(READ_INDEX, 0x04);
        assert_eq!(INTERRUPT_MASK, 0x08);
        assert_eq!(PENDING_SEND_SIZE, 0x0C);
        assert_eq!(FEATURE_BITS, 0x40);
        assert_eq!(size_of::<ControlHeader>(), 0x44);
        let h = ControlHeader {
            write_index: U32::new(0x11),
            read_index: U32::new(0x22),
            interrupt_mask: U32::new(0x33),
            pending_send_size: U32::new(0x44),
            reserved: [U32::ZERO; 12],
            feature_bits: U32::new(FeatureBits::PENDING_SEND_SIZE.bits()),
        };
        let b = h.as_bytes();
        assert_eq!(b[0x00], 0x11);
        assert_eq!(b[0x04], 0x22);
        assert_eq!(b[0x08], 0x33);
        assert_eq!(b[0x0C], 0x44);
        assert_eq!(b[0x40], 1);
    }

    #[test]
    fn descriptor_offsets_and_byte_order() {
        let d = PacketDescriptor {
            packet_type: U16::new(0x0B),
            data_offset8: U16::new(2),
            length8: U16::new(0x0102),
            flags: U16::new(1),
            transaction_id: U64::new(0x0807_0605_0403_0201),
        };
        assert_eq!(
            d.as_bytes(),
            &[0x0B, 0, 2, 0, 0x02, 0x01, 1, 0, 1, 2, 3, 4, 5, 6, 7, 8]
        );
        assert_eq!(offset_of!(PacketDescriptor, packet_type), 0);
        assert_eq!(offset_of!(PacketDescriptor, data_offset8), 2);
        assert_eq!(offset_of!(PacketDescriptor, length8), 4);
        assert_eq!(offset_of!(PacketDescriptor, flags), 6);
        assert_eq!(offset_of!(PacketDescriptor, transaction_id), 8);
    }

    #[test]
    fn trailer_is_start_shifted_left_32() {
        let t = Trailer::for_start(0x1238);
        assert_eq!(t.value(), 0x1238u64 << 32);
        assert_eq!(t.as_bytes(), &(0x1238u64 << 32).to_le_bytes());
    }

    #[test]
    fn extension_offsets() {
        assert_eq!(offset_of!(TransferPageHeader, transfer_page_set_id), 0);
        assert_eq!(offset_of!(TransferPageHeader, sender_owns_set), 2);
        assert_eq!(offset_of!(TransferPageHeader, range_count), 4);
        assert_eq!(offset_of!(TransferPageRange, byte_count), 0);
        assert_eq!(offset_of!(TransferPageRange, byte_offset), 4);
        assert_eq!(offset_of!(GpaDirectHeader, reserved), 0);
        assert_eq!(offset_of!(GpaDirectHeader, range_count), 4);
        assert_eq!(offset_of!(GpaRangeHeader, byte_count), 0);
        assert_eq!(offset_of!(GpaRangeHeader, byte_offset), 4);
        assert_eq!(EXTENDED_HEADER_SIZE, 24);
    }

    #[test]
    fn type_and_flag_values() {
        assert_eq!(PacketType::InBand.wire(), 6);
        assert_eq!(PacketType::TransferPages.wire(), 7);
        assert_eq!(PacketType::GpaDirect.wire(), 9);
        assert_eq!(PacketType::Completion.wire(), 0xB);
        for t in [6u16, 7, 9, 0xB] {
            assert_eq!(PacketType::from_wire(t).map(PacketType::wire), Some(t));
        }
        for t in [0u16, 1, 2, 3, 4, 5, 8, 0xA, 0xC, 0xD, 0x42, u16::MAX] {
            assert_eq!(PacketType::from_wire(t), None);
        }
        assert_eq!(PacketFlags::COMPLETION_REQUESTED.bits(), 1);
        assert_eq!(FeatureBits::PENDING_SEND_SIZE.bits(), 1);
    }

    #[test]
    fn pfn_counts() {
        assert_eq!(gpa_pfn_count(0, 0), 0);
        assert_eq!(gpa_pfn_count(0, 1), 1);
        assert_eq!(gpa_pfn_count(0, 4096), 1);
        assert_eq!(gpa_pfn_count(1, 4096), 2);
        assert_eq!(gpa_pfn_count(0xFFF, 2), 2);
        assert_eq!(gpa_pfn_count(u32::MAX, u32::MAX), 2_097_152);
    }

    #[test]
    fn layouts() {
        let l = RingLayout::new(4096, 8192).unwrap();
        assert_eq!(l.total_size(), 12288);
        assert_eq!(l.max_packet_len(), 8192 - 16);
        let big = RingLayout::new(65536, 2 << 20).unwrap();
        assert_eq!(big.data_offset(), 65536);
        assert_eq!(big.max_packet_len(), MAX_PACKET_LEN);
        assert!(RingLayout::new(0, 4096).is_err());
        assert!(RingLayout::new(100, 4096).is_err());
        assert!(RingLayout::new(4096, 0).is_err());
        assert!(RingLayout::new(4096, 4100).is_err());
        assert!(RingLayout::new(4096, 1 << 32).is_err());
        assert_eq!(
            RingLayout::for_total(4096, 4096 + 16384),
            RingLayout::new(4096, 16384)
        );
        assert!(RingLayout::for_total(4096, 100).is_err());
    }
}
