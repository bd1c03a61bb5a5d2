//! The writer's side of a ring.

use super::layout::{
    FeatureBits, GpaDirectHeader, PacketDescriptor, PacketFlags, PacketType, RingLayout, Trailer,
    TransferPageHeader, TransferPageRange, DESCRIPTOR_SIZE, FEATURE_BITS, INTERRUPT_MASK,
    PACKET_ALIGN, PENDING_SEND_SIZE, READ_INDEX, TRAILER_SIZE, WRITE_INDEX,
};
use super::packet::{OutgoingKind, OutgoingPacket};
use super::Commit;
use super::{advance, check_memory, distance, index_ok, Error, SetupError};
use crate::error::{Corrupt, Poison};
use crate::loan::{Span, SpanList, MAX_SPANS};
use crate::mem::{SharedMem, WrapRegion};
use crate::mutation::{self, Mutation};
use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::IntoBytes;

/// The writer of one ring.
///
/// Packets are written against a private write offset with
/// [`write`](Self::write) and become visible to the reader together at
/// [`commit`](Self::commit), which says whether the reader must be
/// signalled. [`send`](Self::send) is write + commit for one packet.
///
/// The read index is loaded from shared memory only when the cached copy
/// says the packet would not fit.
#[derive(Debug)]
pub struct OutgoingRing<M> {
    mem: M,
    layout: RingLayout,
    data: WrapRegion,
    size: u32,
    /// The write index as last published.
    committed: u32,
    /// Where the next packet goes (after the uncommitted batch).
    next: u32,
    /// The read index as last loaded and validated.
    cached_read: u32,
    /// We have stored a non-zero `pending_send_size`.
    pending_armed: bool,
    poison: Poison,
}

impl<M: SharedMem> OutgoingRing<M> {
    /// Becomes the writer of the ring at the start of `mem`.
    ///
    /// Takes both indices from the control page (so it can attach to a
    /// live ring, e.g. a uio mapping), clears `pending_send_size` and sets
    /// [`FeatureBits::PENDING_SEND_SIZE`] — both fields belong to the
    /// writer. Call [`initialize_ring`](super::initialize_ring) first on a
    /// fresh ring.
    ///
    /// # Errors
    ///
    /// [`SetupError::MemoryTooSmall`] if `mem` cannot hold the layout;
    /// [`SetupError::BadIndex`] if an index is misaligned or out of range.
    ///
    /// # Examples
    ///
    /// ```
    /// # use core::sync::atomic::AtomicU64;
    /// # use ring_core::mem::RawMem;
    /// use ring_core::vmbus::{self, FeatureBits, OutgoingRing, RingLayout};
    ///
    /// let layout = RingLayout::new(4096, 8192)?;
    /// # let words: Vec<AtomicU64> = (0..layout.total_size() / 8).map(|_| AtomicU64::new(0)).collect();
    /// # let mem = RawMem::from_atomics(&words);
    /// vmbus::initialize_ring(&mem, layout)?; // a fresh ring we own
    /// let mut tx = OutgoingRing::new(mem, layout)?;
    /// assert_eq!(tx.available()?, 8192 - 8); // 8 bytes always stay unused
    /// // The writer tells the reader it uses `pending_send_size`.
    /// let features = FeatureBits::from_bits_truncate(vmbus::inspect(&mem)?.feature_bits.get());
    /// assert!(features.contains(FeatureBits::PENDING_SEND_SIZE));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(mem: M, layout: RingLayout) -> Result<Self, Error> {
        check_memory(&mem, layout)?;
        let size = layout.data_size();
        let write = mem.load_u32(WRITE_INDEX)?;
        let read = mem.load_u32(READ_INDEX)?;
        for index in [write, read] {
            if !index_ok(index, size) {
                return Err(SetupError::BadIndex { index }.into());
            }
        }
        mem.store_u32(PENDING_SEND_SIZE, 0)?;
        let features = mem.load_u32(FEATURE_BITS)?;
        mem.store_u32(
            FEATURE_BITS,
            features | FeatureBits::PENDING_SEND_SIZE.bits(),
        )?;
        Ok(OutgoingRing {
            data: WrapRegion::new(layout.data_offset(), size as usize),
            mem,
            layout,
            size,
            committed: write,
            next: write,
            cached_read: read,
            pending_armed: false,
            poison: Poison::default(),
        })
    }

    /// The ring's layout.
    pub fn layout(&self) -> RingLayout {
        self.layout
    }

    /// The ring's memory.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// The corruption that poisoned this ring, if any.
    pub fn poisoned(&self) -> Option<Corrupt> {
        self.poison.get()
    }

    /// Bytes written but not yet committed.
    pub fn uncommitted(&self) -> usize {
        distance(self.committed, self.next, self.size) as usize
    }

    /// The largest packet (without trailer) this ring can ever take.
    pub fn max_packet_len(&self) -> usize {
        self.layout.max_packet_len()
    }

    fn usable(&self) -> Result<(), Error> {
        Ok(self.poison.check()?)
    }

    fn poison(&mut self, what: &'static str) -> Error {
        self.poison.latch(what).into()
    }

    /// Loads and validates the reader's index: 8-aligned, in range, and
    /// only ever moving forward from where we last saw it, up to the
    /// published write index.
    fn refresh_read(&mut self) -> Result<(), Error> {
        let read = self.mem.load_u32(READ_INDEX)?;
        if !index_ok(read, self.size) {
            return Err(self.poison("read index misaligned or out of range"));
        }
        let moved = distance(self.cached_read, read, self.size);
        let room = distance(self.cached_read, self.committed, self.size);
        if moved > room {
            return Err(self.poison("read index moved backwards or past the write index"));
        }
        self.cached_read = read;
        Ok(())
    }

    /// Bytes free by the cached read index (never 0: the ring is never
    /// full).
    fn free(&self) -> u32 {
        self.size - distance(self.cached_read, self.next, self.size)
    }

    /// Bytes a packet (with trailer) may occupy now, reloading the read
    /// index. The ring keeps 8 bytes unused, so this is free − 8.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] if the reader's index is invalid.
    pub fn available(&mut self) -> Result<usize, Error> {
        self.usable()?;
        self.refresh_read()?;
        Ok(self.free().saturating_sub(PACKET_ALIGN as u32) as usize)
    }

    /// Bytes of committed packets the reader has not consumed yet (a fresh
    /// load of its read index).
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] if the reader's index is invalid.
    pub fn unread_by_peer(&mut self) -> Result<usize, Error> {
        self.usable()?;
        self.refresh_read()?;
        Ok(distance(self.cached_read, self.committed, self.size) as usize)
    }

    /// Asks to be signalled once the reader has consumed every committed
    /// packet: `true` if it already has (any request withdrawn), `false`
    /// if `pending_send_size` is armed for a drained ring and the ring
    /// re-checked, so the caller may wait for the reader's signal.
    ///
    /// The reader signals when its commit lifts the free space above
    /// `pending_send_size`; only a drained ring has more than `size - 1`
    /// bytes free.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] if the reader's index is invalid.
    pub fn arm_drained(&mut self) -> Result<bool, Error> {
        if self.unread_by_peer()? == 0 {
            return self.disarm_pending().map(|()| true);
        }
        self.mem.store_u32(PENDING_SEND_SIZE, self.size - 1)?;
        self.pending_armed = true;
        self.mem.fence();
        if self.unread_by_peer()? == 0 {
            return self.disarm_pending().map(|()| true);
        }
        Ok(false)
    }

    fn disarm_pending(&mut self) -> Result<(), Error> {
        if self.pending_armed {
            self.mem.store_u32(PENDING_SEND_SIZE, 0)?;
            self.pending_armed = false;
        }
        Ok(())
    }

    /// Makes room for `total` bytes (trailer included): from the cache,
    /// then a fresh read index, then by arming `pending_send_size` and
    /// looking once more.
    fn make_room(&mut self, total: u32) -> Result<(), Error> {
        // Never-full rule, as Linux, DPDK and FreeBSD write it: free > total.
        if self.free() <= total {
            self.refresh_read()?;
        }
        if self.free() <= total {
            // The reader computes free space from the published write
            // index, which does not count our uncommitted batch: ask for
            // that much more. A batch that fills the ring would ask for
            // more than a drained ring frees (the reader signals only when
            // free space passes the request, at most `size`), so ask for
            // a drained ring at most: the caller may then commit the batch
            // and wait, and the reader's last commit wakes it.
            let batch = distance(self.committed, self.next, self.size);
            let want = total.saturating_add(batch).min(self.size - 1);
            self.mem.store_u32(PENDING_SEND_SIZE, want)?;
            self.pending_armed = true;
            self.mem.fence();
            self.refresh_read()?;
            if self.free() <= total {
                return Err(Error::Full {
                    needed: total as usize,
                    available: self.free().saturating_sub(PACKET_ALIGN as u32) as usize,
                });
            }
        }
        // Clear before writing, so the reader does not signal for space we
        // no longer wait for.
        self.disarm_pending()
    }

    /// Writes one packet after the uncommitted batch. The reader sees it at
    /// the next [`commit`](Self::commit).
    ///
    /// # Errors
    ///
    /// - [`Error::TooLarge`] if the packet exceeds 524 280 bytes or could
    ///   never fit this ring;
    /// - [`Error::InvalidPacket`] for malformed GPA ranges;
    /// - [`Error::Full`] if it does not fit now. `pending_send_size` is then
    ///   armed (counting the uncommitted batch, which the reader cannot see
    ///   yet, and at most a drained ring) and the ring re-checked, so after
    ///   committing the batch the caller may wait for the reader's signal;
    /// - [`Error::Corrupt`] if the reader's index is invalid (poisons).
    ///
    /// # Examples
    ///
    /// ```
    /// # use core::sync::atomic::AtomicU64;
    /// # use ring_core::mem::RawMem;
    /// # use ring_core::vmbus::{initialize_ring, RingLayout};
    /// # let layout = RingLayout::new(4096, 4096)?;
    /// # let words: Vec<AtomicU64> = (0..layout.total_size() / 8).map(|_| AtomicU64::new(0)).collect();
    /// # let mem = RawMem::from_atomics(&words);
    /// # initialize_ring(&mem, layout)?;
    /// use ring_core::vmbus::{Error, IncomingRing, OutgoingPacket, OutgoingRing};
    /// let mut tx = OutgoingRing::new(mem, layout)?;
    /// let mut rx = IncomingRing::new(mem, layout)?;
    /// let block = [7u8; 1000]; // with descriptor and trailer: 1024 bytes of ring
    /// for id in 0..3 {
    ///     tx.write(&OutgoingPacket::in_band(id, &[&block]))?;
    /// }
    /// assert_eq!(tx.uncommitted(), 3 * 1024);
    /// // A fourth does not fit in the 4 KiB ring, which keeps 8 bytes free.
    /// let full = tx.write(&OutgoingPacket::in_band(3, &[&block])).unwrap_err();
    /// assert_eq!(full, Error::Full { needed: 1024, available: 1016 });
    /// // The reader sees nothing before the commit.
    /// assert!(matches!(rx.read_packet(), Err(Error::Empty)));
    /// let _ = tx.commit()?;
    /// assert_eq!(rx.read_packet()?.transaction_id(), 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write(&mut self, packet: &OutgoingPacket<'_>) -> Result<(), Error> {
        self.usable()?;
        let (header_len, len) = packet.lengths()?;
        let max = self.max_packet_len();
        if len > max {
            return Err(Error::TooLarge { len, max });
        }
        // header_len ≤ len ≤ size − 16, so none of these overflow.
        let header_len = header_len as u32;
        let len = len as u32;
        let total = len + TRAILER_SIZE as u32;
        self.make_room(total)?;

        let start = self.next;
        let mut out = Staged::new(self, start);
        let descriptor = PacketDescriptor {
            packet_type: U16::new(packet.packet_type().wire()),
            data_offset8: U16::new((header_len / 8) as u16),
            length8: U16::new((len / 8) as u16),
            // Only defined flags go on the wire (readers reject the rest).
            flags: U16::new((packet.flags & PacketFlags::all()).bits()),
            transaction_id: U64::new(packet.transaction_id),
        };
        out.put(descriptor.as_bytes())?;
        match packet.kind {
            OutgoingKind::InBand | OutgoingKind::Completion => {}
            OutgoingKind::TransferPages { set_id, ranges } => {
                let head = TransferPageHeader {
                    transfer_page_set_id: U16::new(set_id),
                    sender_owns_set: 0,
                    reserved: 0,
                    range_count: U32::new(ranges.len() as u32),
                };
                out.put(head.as_bytes())?;
                for r in ranges {
                    let range = TransferPageRange {
                        byte_count: U32::new(r.byte_count),
                        byte_offset: U32::new(r.byte_offset),
                    };
                    out.put(range.as_bytes())?;
                }
            }
            OutgoingKind::GpaDirect { ranges } => {
                let head = GpaDirectHeader {
                    reserved: U32::ZERO,
                    range_count: U32::new(ranges.len() as u32),
                };
                out.put(head.as_bytes())?;
                for r in ranges {
                    let range = super::layout::GpaRangeHeader {
                        byte_count: U32::new(r.byte_count),
                        byte_offset: U32::new(r.byte_offset),
                    };
                    out.put(range.as_bytes())?;
                    for pfn in r.pfns {
                        out.put(&pfn.to_le_bytes())?;
                    }
                }
            }
        }
        for piece in packet.payload {
            out.put(piece)?;
        }
        let padding = packet.payload_len().wrapping_neg() % PACKET_ALIGN;
        out.put([0u8; PACKET_ALIGN].get(..padding).unwrap_or_default())?;
        out.put(Trailer::for_start(start).as_bytes())?;
        out.flush()?;
        self.next = advance(start, total, self.size);
        Ok(())
    }

    /// Writes in-band packets in place after the uncommitted batch, each a
    /// `P`-byte prefix and up to `chunk` data bytes, as many as fit now (up
    /// to `max` data bytes, at most [`MAX_SPANS`]` / 2` packets).
    ///
    /// Their data areas are offered to `fill` as spans of the ring's memory,
    /// in order; `fill` returns how many bytes it wrote there. The packets
    /// it filled are then finished (descriptor, `prefix(len)`, padding,
    /// trailer); the last one is cut to the bytes it got, the ones after it
    /// dropped. Returns the data bytes written (0 if `fill` wrote none);
    /// the reader sees them at the next [`commit`](Self::commit).
    ///
    /// # Errors
    ///
    /// [`Error::Full`] (armed as for [`write`](Self::write)) if not even a
    /// packet of 8 data bytes fits; `fill` is not called then.
    /// [`Error::Corrupt`] if the reader's index is invalid.
    pub(super) fn write_in_band_with<const P: usize>(
        &mut self,
        chunk: usize,
        max: usize,
        prefix: impl Fn(usize) -> [u8; P],
        fill: impl FnOnce(&M, &[Span]) -> usize,
    ) -> Result<usize, Error> {
        self.usable()?;
        let align = PACKET_ALIGN;
        let overhead = DESCRIPTOR_SIZE + P.next_multiple_of(align) + TRAILER_SIZE;
        // The smallest packet (8 data bytes) with its trailer.
        let short = overhead + align;
        // What this call could lay out: `max` bytes in packets of `chunk`.
        let packets = max.div_ceil(chunk.max(1)).clamp(1, MAX_SPANS / 2);
        let wanted = max.saturating_add(packets.saturating_mul(overhead + align));
        // As `write`: the cached read index first, one fresh load only when
        // it shows too little, and the arm-and-re-check only when not even
        // a short packet fits.
        if (self.free() as usize).saturating_sub(align) < wanted {
            self.refresh_read()?;
        }
        if (self.free() as usize).saturating_sub(align) < short {
            self.make_room(short as u32)?;
        } else {
            self.disarm_pending()?;
        }
        let mut room = (self.free() as usize).saturating_sub(align);
        // (start of the packet, data bytes it can take)
        let mut plan: heapless::Vec<(u32, usize), { MAX_SPANS / 2 }> = heapless::Vec::new();
        let mut spans = SpanList::new();
        let mut pos = self.next;
        let mut left = max;
        while left > 0 {
            let fits = room.saturating_sub(overhead) & !(align - 1);
            let cap = chunk.min(left).min(fits);
            if cap == 0 || plan.is_full() {
                break;
            }
            let data_at = advance(pos, (DESCRIPTOR_SIZE + P) as u32, self.size);
            self.data.push_spans(data_at as usize, cap, &mut spans)?;
            let _ = plan.push((pos, cap));
            let total = overhead + cap.next_multiple_of(align);
            pos = advance(pos, total as u32, self.size);
            room -= total;
            left -= cap;
        }
        let offered = plan.iter().map(|&(_, cap)| cap).sum::<usize>();
        let filled = fill(&self.mem, &spans).min(offered);
        let mut rest = filled;
        for &(start, cap) in &plan {
            if rest == 0 {
                break;
            }
            let len = rest.min(cap);
            rest -= len;
            let payload = P + len;
            let padded = payload.next_multiple_of(align);
            // payload ≤ chunk + P ≤ the ring's largest packet: no overflow.
            let descriptor = PacketDescriptor {
                packet_type: U16::new(PacketType::InBand.wire()),
                data_offset8: U16::new((DESCRIPTOR_SIZE / 8) as u16),
                length8: U16::new(((DESCRIPTOR_SIZE + padded) / 8) as u16),
                flags: U16::new(0),
                transaction_id: U64::new(0),
            };
            let mut head = Staged::new(self, start);
            head.put(descriptor.as_bytes())?;
            head.put(&prefix(len))?;
            head.flush()?;
            let mut tail = Staged::new(self, advance(head.pos, len as u32, self.size));
            tail.put(
                [0u8; PACKET_ALIGN]
                    .get(..padded - payload)
                    .unwrap_or_default(),
            )?;
            tail.put(Trailer::for_start(start).as_bytes())?;
            tail.flush()?;
            self.next = tail.pos;
        }
        Ok(filled)
    }

    /// Publishes every packet written since the last commit, with one store
    /// of the write index.
    ///
    /// `notify` is set when the reader must be signalled: its mask was clear
    /// and, after a full fence, its read index still equalled the write
    /// index from before this batch (the ring went from empty to
    /// non-empty).
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] if the reader's index is invalid (poisons; the
    /// batch is published all the same).
    ///
    /// # Examples
    ///
    /// ```
    /// # use core::sync::atomic::AtomicU64;
    /// # use ring_core::mem::RawMem;
    /// # use ring_core::vmbus::{initialize_ring, RingLayout};
    /// # let layout = RingLayout::new(4096, 4096)?;
    /// # let words: Vec<AtomicU64> = (0..layout.total_size() / 8).map(|_| AtomicU64::new(0)).collect();
    /// # let mem = RawMem::from_atomics(&words);
    /// # initialize_ring(&mem, layout)?;
    /// use ring_core::vmbus::{OutgoingPacket, OutgoingRing};
    /// let mut tx = OutgoingRing::new(mem, layout)?;
    /// tx.write(&OutgoingPacket::in_band(1, &[b"one"]))?;
    /// tx.write(&OutgoingPacket::in_band(2, &[b"two"]))?;
    /// let first = tx.commit()?; // one index store for both
    /// assert_eq!(first.ring_bytes, 2 * 32); // 16 + 8 (padded) + 8 (trailer) each
    /// assert!(first.notify); // the ring went from empty to non-empty
    /// tx.write(&OutgoingPacket::in_band(3, &[b"three"]))?;
    /// let second = tx.commit()?;
    /// assert!(!second.notify); // the reader has not drained the first batch
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn commit(&mut self) -> Result<Commit, Error> {
        self.usable()?;
        if self.next == self.committed {
            return Ok(Commit::default());
        }
        let before = self.committed;
        let len = distance(before, self.next, self.size) as usize;
        // Release: the packet bytes are in place before the index moves.
        self.mem.store_u32(WRITE_INDEX, self.next)?;
        self.committed = self.next;
        // Before the fence: the lines we fill next start moving to us while
        // it waits for the stores above.
        self.data
            .prefetch_for_producer(&self.mem, self.next as usize, self.free() as usize);
        // Full fence: the index store is ordered before the loads below
        // (the Dekker pair with the reader's unmask-then-recheck).
        if !mutation::on(Mutation::NoPublishFence) {
            self.mem.fence();
        }
        if self.mem.load_u32(INTERRUPT_MASK)? != 0 {
            return Ok(Commit {
                ring_bytes: len,
                notify: false,
            });
        }
        self.refresh_read()?;
        Ok(Commit {
            ring_bytes: len,
            notify: self.cached_read == before,
        })
    }

    /// Drops every packet written since the last commit.
    pub fn revert(&mut self) {
        self.next = self.committed;
    }

    /// Writes one packet and commits (with anything written before it).
    ///
    /// # Errors
    ///
    /// As [`write`](Self::write) and [`commit`](Self::commit).
    ///
    /// # Examples
    ///
    /// ```
    /// # use core::sync::atomic::AtomicU64;
    /// # use ring_core::mem::RawMem;
    /// # use ring_core::vmbus::{initialize_ring, RingLayout};
    /// # let layout = RingLayout::new(4096, 4096)?;
    /// # let words: Vec<AtomicU64> = (0..layout.total_size() / 8).map(|_| AtomicU64::new(0)).collect();
    /// # let mem = RawMem::from_atomics(&words);
    /// # initialize_ring(&mem, layout)?;
    /// use ring_core::vmbus::{IncomingRing, OutgoingPacket, OutgoingRing, PacketType};
    /// let mut tx = OutgoingRing::new(mem, layout)?;
    /// let mut rx = IncomingRing::new(mem, layout)?;
    /// // The payload is gathered from its pieces, back to back.
    /// let sent = tx.send(&OutgoingPacket::completion(9, &[b"st", b"atus"]))?;
    /// assert!(sent.notify); // signal the reader
    /// let packet = rx.read_packet()?;
    /// assert_eq!(packet.packet_type(), PacketType::Completion);
    /// let mut status = [0u8; 6];
    /// packet.read_payload(0, &mut status)?;
    /// assert_eq!((packet.transaction_id(), &status), (9, b"status"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn send(&mut self, packet: &OutgoingPacket<'_>) -> Result<Commit, Error> {
        self.write(packet)?;
        self.commit()
    }

    /// Checks that a packet of `len` bytes (descriptor to padded payload,
    /// as [`OutgoingPacket::wire_len`] reports) fits after the uncommitted
    /// batch, so a caller can reserve room before preparing the packet.
    /// Nothing is written; a following [`write`](Self::write) of that size
    /// succeeds unless the ring is poisoned meanwhile.
    ///
    /// # Errors
    ///
    /// [`Error::TooLarge`] if it could never fit; [`Error::Full`] after
    /// arming `pending_send_size` and re-checking; [`Error::Corrupt`].
    pub fn reserve(&mut self, len: usize) -> Result<(), Error> {
        self.usable()?;
        let max = self.max_packet_len();
        if len > max {
            return Err(Error::TooLarge { len, max });
        }
        let total = len.next_multiple_of(PACKET_ALIGN) as u32 + TRAILER_SIZE as u32;
        self.make_room(total)
    }

    /// [`reserve`](Self::reserve) as a question: `true` if the packet fits
    /// now (any pending request withdrawn), `false` if `pending_send_size`
    /// is armed and the caller may wait for the reader's signal.
    ///
    /// # Errors
    ///
    /// [`Error::TooLarge`] if it could never fit; [`Error::Corrupt`].
    pub fn wait_for_space(&mut self, len: usize) -> Result<bool, Error> {
        match self.reserve(len) {
            Ok(()) => Ok(true),
            Err(Error::Full { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether, by the control page alone, the reader is owed a signal:
    /// unread data and the mask clear. For inspection and for unsticking a
    /// channel after a lost event; the data path uses [`commit`](Self::commit).
    ///
    /// # Errors
    ///
    /// [`Error::Memory`] only.
    pub fn reader_needs_signal(&self) -> Result<bool, Error> {
        let mask = self.mem.load_u32(INTERRUPT_MASK)?;
        let read = self.mem.load_u32(READ_INDEX)?;
        Ok(mask == 0 && read != self.committed)
    }
}

/// Bytes stored per copy when a packet's small pieces are gathered.
const STAGE: usize = 128;

/// The pieces of one packet gathered on the stack and stored into the
/// ring in as few copies as possible. A packet is a descriptor, headers,
/// payload pieces, padding and a trailer; stored one by one, each piece
/// costs a bounds-checked, wrap-checked copy, and for a 64-byte message
/// those copies were most of the write (callgrind: about 590 of 2 300
/// instructions per write and read). Pieces are gathered until one does
/// not fit the stage; a piece larger than the stage goes straight in.
struct Staged<'r, M> {
    ring: &'r OutgoingRing<M>,
    /// Ring position of the stage's first byte.
    pos: u32,
    buf: [u8; STAGE],
    len: usize,
}

impl<'r, M: SharedMem> Staged<'r, M> {
    fn new(ring: &'r OutgoingRing<M>, pos: u32) -> Self {
        Staged {
            ring,
            pos,
            buf: [0; STAGE],
            len: 0,
        }
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), Error> {
        if bytes.len() > STAGE - self.len {
            self.flush()?;
            if bytes.len() > STAGE {
                return self.store(bytes);
            }
        }
        let at = self.len;
        if let Some(dst) = self.buf.get_mut(at..at + bytes.len()) {
            dst.copy_from_slice(bytes);
            self.len += bytes.len();
        }
        Ok(())
    }

    /// Stores what is staged.
    fn flush(&mut self) -> Result<(), Error> {
        let len = core::mem::take(&mut self.len);
        self.pos = store(self.ring, self.pos, self.buf.get(..len).unwrap_or_default())?;
        Ok(())
    }

    fn store(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.pos = store(self.ring, self.pos, bytes)?;
        Ok(())
    }
}

/// Stores `bytes` at ring position `pos`; returns the position after them.
fn store<M: SharedMem>(ring: &OutgoingRing<M>, pos: u32, bytes: &[u8]) -> Result<u32, Error> {
    if bytes.is_empty() {
        return Ok(pos);
    }
    ring.data.write(&ring.mem, pos as usize, bytes)?;
    Ok(advance(pos, bytes.len() as u32, ring.size))
}
