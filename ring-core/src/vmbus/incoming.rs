//! The reader's side of a ring.

use super::layout::{
    FeatureBits, GpaDirectHeader, GpaRangeHeader, PacketDescriptor, PacketFlags, PacketType,
    RingLayout, TransferPageHeader, DESCRIPTOR_SIZE, EXTENDED_HEADER_SIZE, FEATURE_BITS,
    INTERRUPT_MASK, PENDING_SEND_SIZE, READ_INDEX, TRAILER_SIZE, WRITE_INDEX,
};
use super::packet::{check_gpa_range, IncomingPacket, PacketInfo, RangeInfo};
use super::Commit;
use super::{advance, check_memory, distance, index_ok, Error, SetupError};
use crate::error::{Corrupt, Poison};
use crate::mem::{SharedMem, WrapRegion};
use crate::mutation::{self, Mutation};
use core::mem::size_of;
use zerocopy::FromBytes;

/// The reader of one ring.
///
/// [`read_packet`](Self::read_packet) hands out validated packets one at a
/// time against a private read offset; [`commit`](Self::commit) publishes
/// the read index once for all of them and says whether the writer must be
/// signalled. [`revert`](Self::revert) un-reads everything since the last
/// commit.
///
/// The write index is loaded from shared memory only when the cached copy
/// says the ring is empty.
///
/// # Example: drain a batch, commit once
///
/// ```
/// # use core::sync::atomic::AtomicU64;
/// # use ring_core::mem::RawMem;
/// # use ring_core::vmbus::{initialize_ring, OutgoingPacket, OutgoingRing, RingLayout};
/// use ring_core::vmbus::{Error, IncomingRing};
/// # let layout = RingLayout::new(4096, 8192).unwrap();
/// # let words: Vec<AtomicU64> = (0..layout.total_size() / 8).map(|_| AtomicU64::new(0)).collect();
/// # let mem = RawMem::from_atomics(&words);
/// # initialize_ring(&mem, layout).unwrap();
/// # let mut tx = OutgoingRing::new(mem, layout).unwrap();
/// # for id in 0..3 { let _ = tx.send(&OutgoingPacket::in_band(id, &[b"x"])).unwrap(); }
/// let mut rx = IncomingRing::new(mem, layout).unwrap();
/// // Woken by the writer: ask not to be signalled while we drain.
/// rx.mask_interrupts().unwrap();
/// let mut ids = Vec::new();
/// loop {
///     match rx.read_packet() {
///         Ok(packet) => ids.push(packet.transaction_id()),
///         // The mask is clear again and the ring re-checked.
///         Err(Error::Empty) => break,
///         Err(e) => panic!("peer broke the protocol: {e}"),
///     }
/// }
/// assert_eq!(ids, [0, 1, 2]);
/// // Publish the read index once; signal the writer if it was waiting.
/// let done = rx.commit().unwrap();
/// assert!(!done.notify);
/// // ...only now may we sleep until the next signal.
/// ```
#[derive(Debug)]
pub struct IncomingRing<M> {
    mem: M,
    layout: RingLayout,
    data: WrapRegion,
    size: u32,
    /// The read index as last published.
    committed: u32,
    /// Where the next packet starts (after the uncommitted reads).
    next: u32,
    /// The write index as last loaded and validated.
    cached_write: u32,
    /// Clear the mask and re-check before reporting empty.
    interrupts: bool,
    /// We cleared the mask (running out of packets) and have not set it
    /// since: the next packet found sets it again.
    unmasked: bool,
    poison: Poison,
}

/// A private position in an incoming ring, to [`rewind`](IncomingRing::rewind) to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadMark(u32);

impl<M: SharedMem> IncomingRing<M> {
    /// Becomes the reader of the ring at the start of `mem`.
    ///
    /// Takes both indices from the control page and writes nothing, so it
    /// can attach to a live ring.
    ///
    /// # Errors
    ///
    /// [`SetupError::MemoryTooSmall`], or [`SetupError::BadIndex`] for a
    /// misaligned or out-of-range index.
    ///
    /// # Examples
    ///
    /// ```
    /// # use core::sync::atomic::AtomicU64;
    /// # use ring_core::mem::RawMem;
    /// use ring_core::mem::SharedMem;
    /// use ring_core::vmbus::{initialize_ring, Error, IncomingRing, RingLayout};
    ///
    /// let layout = RingLayout::new(4096, 4096)?;
    /// # let words: Vec<AtomicU64> = (0..layout.total_size() / 8).map(|_| AtomicU64::new(0)).collect();
    /// # let mem = RawMem::from_atomics(&words);
    /// initialize_ring(&mem, layout)?;
    /// let mut rx = IncomingRing::new(mem, layout)?;
    /// assert_eq!(rx.available()?, 0);
    /// assert!(matches!(rx.read_packet(), Err(Error::Empty)));
    /// // A write index the peer left misaligned is refused at attach.
    /// mem.store_u32(0, 3)?;
    /// assert!(IncomingRing::new(mem, layout).is_err());
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
        Ok(IncomingRing {
            data: WrapRegion::new(layout.data_offset(), size as usize),
            mem,
            layout,
            size,
            committed: read,
            next: read,
            cached_write: write,
            interrupts: true,
            unmasked: false,
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

    /// Bytes read but not yet committed.
    pub fn uncommitted(&self) -> usize {
        distance(self.committed, self.next, self.size) as usize
    }

    fn usable(&self) -> Result<(), Error> {
        Ok(self.poison.check()?)
    }

    /// Latches `what` as corruption (also for protocols layered on top).
    pub(super) fn poison(&mut self, what: &'static str) -> Error {
        self.poison.latch(what).into()
    }

    fn corrupt(&mut self, what: &'static str) -> Result<(PacketInfo, u32), Error> {
        Err(self.poison(what))
    }

    /// Loads and validates the writer's index: 8-aligned, in range, and
    /// never moving backwards relative to our read index (the writer can
    /// only add data; it can never wrap past us because the ring is never
    /// full).
    fn refresh_write(&mut self) -> Result<(), Error> {
        let write = self.mem.load_u32(WRITE_INDEX)?;
        if !index_ok(write, self.size) {
            return Err(self.poison("write index misaligned or out of range"));
        }
        let seen = distance(self.committed, self.cached_write, self.size);
        if distance(self.committed, write, self.size) < seen {
            return Err(self.poison("write index moved backwards"));
        }
        self.cached_write = write;
        Ok(())
    }

    /// Unread bytes by the cached write index, after the uncommitted reads.
    fn readable(&self) -> u32 {
        distance(self.next, self.cached_write, self.size)
    }

    /// Chooses whether running out of packets clears the interrupt mask
    /// (`true`, the default: the writer will signal new data) or leaves it
    /// alone (`false`: a polling reader that never sleeps).
    pub fn set_interrupts(&mut self, enabled: bool) {
        self.interrupts = enabled;
    }

    /// Sets the interrupt mask: "don't signal me, I am draining".
    /// [`read_packet`](Self::read_packet) sets it by itself on the first
    /// packet it finds after running dry, and clears it again (and
    /// re-checks) when it runs out; call this to mask before that (when
    /// woken, say, to drain without the writer's signals).
    ///
    /// # Errors
    ///
    /// [`Error::Memory`] only.
    pub fn mask_interrupts(&mut self) -> Result<(), Error> {
        self.mem.store_u32(INTERRUPT_MASK, 1)?;
        self.unmasked = false;
        Ok(())
    }

    /// Clears the interrupt mask, fences, and re-reads the write index:
    /// `true` if data arrived meanwhile (keep reading instead of sleeping).
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] for an invalid write index.
    pub fn unmask_and_recheck(&mut self) -> Result<bool, Error> {
        self.usable()?;
        // The mask may have been set behind our back (uio_hv_generic's
        // interrupt handler does), so look at the page, not a private flag.
        if self.mem.load_u32(INTERRUPT_MASK)? != 0 {
            self.mem.store_u32(INTERRUPT_MASK, 0)?;
        }
        self.unmasked = true;
        if mutation::on(Mutation::NoRecheck) {
            return Ok(self.readable() > 0);
        }
        // Full fence: the mask store is ordered before the index load (the
        // Dekker pair with the writer's publish-then-check-mask).
        self.mem.fence();
        self.refresh_write()?;
        Ok(self.readable() > 0)
    }

    /// Unread bytes now (reloading the write index), after uncommitted
    /// reads.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] for an invalid write index.
    pub fn available(&mut self) -> Result<usize, Error> {
        self.usable()?;
        self.refresh_write()?;
        Ok(self.readable() as usize)
    }

    /// Returns the next packet, validated, and moves the private read
    /// offset past it. The packet's bytes stay valid until
    /// [`commit`](Self::commit).
    ///
    /// The descriptor is copied once into private memory and checked:
    /// - at least 16 bytes published, `2 ≤ data_offset8 ≤ length8`, and
    ///   `length8 × 8 + 8` bytes published (a packet longer than what the
    ///   writer published is corruption: writers publish whole packets);
    /// - flags within [`PacketFlags::COMPLETION_REQUESTED`], type one of
    ///   6, 7, 9, 0xB;
    /// - transfer-page and GPA-direct packets have their 24-byte header,
    ///   their ranges fit inside `data_offset8 × 8`, GPA direct has at least
    ///   one range, each with an offset ≤ 0xFFF and exactly
    ///   `⌈(offset + count) / 4096⌉` page numbers, all without overflow.
    ///
    /// # Errors
    ///
    /// - [`Error::Empty`] when there is no packet. Unless interrupts are
    ///   off ([`set_interrupts`](Self::set_interrupts)), the mask has been
    ///   cleared and the ring re-checked first, so the caller may sleep —
    ///   after committing what it read: the writer only signals when the
    ///   *published* read index shows the ring empty, so a reader that
    ///   sleeps on uncommitted reads is never woken;
    /// - [`Error::Corrupt`] when a check fails (poisons the ring).
    ///
    /// # Examples
    ///
    /// ```
    /// # use core::sync::atomic::AtomicU64;
    /// # use ring_core::mem::RawMem;
    /// use ring_core::vmbus::{Error, IncomingRing, OutgoingPacket, OutgoingRing, PacketType};
    /// # use ring_core::vmbus::{initialize_ring, RingLayout};
    /// # let layout = RingLayout::new(4096, 8192)?;
    /// # let words: Vec<AtomicU64> = (0..layout.total_size() / 8).map(|_| AtomicU64::new(0)).collect();
    /// # let mem = RawMem::from_atomics(&words);
    /// # initialize_ring(&mem, layout)?;
    /// # let mut tx = OutgoingRing::new(mem, layout)?;
    /// let mut rx = IncomingRing::new(mem, layout)?;
    /// let request = OutgoingPacket::in_band(41, &[b"request"]).with_completion_requested();
    /// let _ = tx.send(&request)?;
    ///
    /// let packet = rx.read_packet()?;
    /// assert_eq!(packet.packet_type(), PacketType::InBand);
    /// assert_eq!(packet.transaction_id(), 41);
    /// assert!(packet.completion_requested());
    /// let mut body = [0u8; 7];
    /// packet.read_payload(0, &mut body)?;
    /// assert_eq!(&body, b"request");
    /// // No more: the mask is clear again and the ring re-checked.
    /// assert_eq!(rx.read_packet().unwrap_err(), Error::Empty);
    /// let _ = rx.commit()?; // now the writer may reuse the space
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn read_packet(&mut self) -> Result<IncomingPacket<'_, M>, Error> {
        self.usable()?;
        if self.readable() == 0 {
            self.refresh_write()?;
        }
        if self.readable() == 0 && self.interrupts && !self.unmask_and_recheck()? {
            return Err(Error::Empty);
        }
        if self.readable() == 0 {
            return Err(Error::Empty);
        }
        if self.unmasked && self.interrupts {
            // Found data after running dry: we are draining again, so the
            // writer need not signal until we next run out (and unmask).
            // A reader spinning between reads is then never kicked.
            self.mask_interrupts()?;
        }
        let start = self.next;
        let (info, total) = self.parse(start)?;
        self.next = advance(start, total, self.size);
        Ok(IncomingPacket {
            mem: &self.mem,
            data: self.data,
            size: self.size,
            start,
            info,
        })
    }

    /// Reads `buf.len()` bytes at `at` bytes from `start` (all within the
    /// published data, checked by the caller).
    fn copy(&self, start: u32, at: u32, buf: &mut [u8]) -> Result<(), Error> {
        let pos = advance(start, at, self.size);
        self.data.read(&self.mem, pos as usize, buf)?;
        Ok(())
    }

    /// Reads and validates the packet at `start`; returns what it says and
    /// its length including the trailer.
    fn parse(&mut self, start: u32) -> Result<(PacketInfo, u32), Error> {
        let readable = self.readable();
        if (readable as usize) < DESCRIPTOR_SIZE + TRAILER_SIZE {
            return self.corrupt("published data shorter than a packet");
        }
        let mut raw = [0u8; DESCRIPTOR_SIZE];
        self.copy(start, 0, &mut raw)?;
        let d = PacketDescriptor::read_from_bytes(&raw).unwrap_or_default();
        let data_offset8 = d.data_offset8.get();
        let length8 = d.length8.get();
        if data_offset8 < 2 || data_offset8 > length8 {
            return self.corrupt(
                "packet data offset outside 2..=length (a packet over the 524 280-byte \
                 descriptor cap has no valid length)",
            );
        }
        let header_len = u32::from(data_offset8) * 8;
        let len = u32::from(length8) * 8;
        let total = len + TRAILER_SIZE as u32;
        if total > readable {
            return self.corrupt("packet longer than the published data");
        }
        let Some(flags) = PacketFlags::from_bits(d.flags.get()) else {
            return self.corrupt("packet has undefined flags");
        };
        let Some(packet_type) = PacketType::from_wire(d.packet_type.get()) else {
            return self
                .corrupt("packet type not in-band, transfer pages, GPA direct or completion");
        };
        let ranges = match packet_type {
            PacketType::InBand | PacketType::Completion => RangeInfo::None,
            PacketType::TransferPages | PacketType::GpaDirect => {
                if (header_len as usize) < EXTENDED_HEADER_SIZE {
                    return self.corrupt("range packet shorter than its 24-byte header");
                }
                let mut ext = [0u8; 8];
                self.copy(start, DESCRIPTOR_SIZE as u32, &mut ext)?;
                if packet_type == PacketType::TransferPages {
                    let h = TransferPageHeader::read_from_bytes(&ext).unwrap_or_default();
                    let count = h.range_count.get();
                    let need = u64::from(count) * 8 + EXTENDED_HEADER_SIZE as u64;
                    if need > u64::from(header_len) {
                        return self.corrupt("transfer page ranges run past the packet header");
                    }
                    RangeInfo::Transfer {
                        set_id: h.transfer_page_set_id.get(),
                        count,
                    }
                } else {
                    let h = GpaDirectHeader::read_from_bytes(&ext).unwrap_or_default();
                    let count = h.range_count.get();
                    if count == 0 {
                        return self.corrupt("GPA-direct packet without ranges");
                    }
                    self.check_gpa_ranges(start, count, header_len)?;
                    RangeInfo::Gpa { count }
                }
            }
        };
        Ok((
            PacketInfo {
                packet_type,
                flags,
                transaction_id: d.transaction_id.get(),
                header_len,
                len,
                ranges,
            },
            total,
        ))
    }

    /// Walks the GPA ranges once. Bounded: each range takes at least 8
    /// bytes of a header of at most 524 280 bytes.
    fn check_gpa_ranges(&mut self, start: u32, count: u32, header_len: u32) -> Result<(), Error> {
        let mut at = EXTENDED_HEADER_SIZE as u32;
        for _ in 0..count {
            if at as usize + size_of::<GpaRangeHeader>() > header_len as usize {
                return Err(self.poison("GPA ranges run past the packet header"));
            }
            let mut raw = [0u8; 8];
            self.copy(start, at, &mut raw)?;
            let h = GpaRangeHeader::read_from_bytes(&raw).unwrap_or_default();
            match check_gpa_range(h, at, header_len) {
                Ok(r) => at = r.end,
                Err(Error::Corrupt(c)) => return Err(self.poison(c.what)),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// A mark of the current private read offset.
    pub fn mark(&self) -> ReadMark {
        ReadMark(self.next)
    }

    /// Goes back to `mark` (taken since the last commit), un-reading the
    /// packets after it. A mark from before the last commit is ignored.
    pub fn rewind(&mut self, mark: ReadMark) {
        let back = distance(self.committed, mark.0, self.size);
        if back <= distance(self.committed, self.next, self.size) {
            self.next = mark.0;
        }
    }

    /// Un-reads every packet since the last commit.
    pub fn revert(&mut self) {
        self.next = self.committed;
    }

    /// Publishes the read index once for every packet read since the last
    /// commit, freeing their space.
    ///
    /// `notify` is set when the writer must be signalled: it advertises
    /// [`FeatureBits::PENDING_SEND_SIZE`] (we honour the bit as Linux and
    /// DPDK do), its `pending_send_size` is non-zero, and, after a full
    /// fence, this commit moved the free space from at most that many bytes
    /// to more (`free_before ≤ pending < free_after`).
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] if the write index is invalid (poisons; the read
    /// index is published all the same).
    ///
    /// # Examples
    ///
    /// A writer that ran out of space waits for our commit:
    ///
    /// ```
    /// # use core::sync::atomic::AtomicU64;
    /// # use ring_core::mem::RawMem;
    /// use ring_core::vmbus::{IncomingRing, OutgoingPacket, OutgoingRing};
    /// # use ring_core::vmbus::{initialize_ring, RingLayout};
    /// # let layout = RingLayout::new(4096, 4096)?;
    /// # let words: Vec<AtomicU64> = (0..layout.total_size() / 8).map(|_| AtomicU64::new(0)).collect();
    /// # let mem = RawMem::from_atomics(&words);
    /// # initialize_ring(&mem, layout)?;
    /// # let mut tx = OutgoingRing::new(mem, layout)?;
    /// # let mut rx = IncomingRing::new(mem, layout)?;
    /// let block = [0u8; 1000]; // 1 KiB of ring with descriptor and trailer
    /// for _ in 0..3 {
    ///     let _ = tx.send(&OutgoingPacket::in_band(0, &[&block]))?;
    /// }
    /// // A fourth does not fit: the writer asks for a signal once it does.
    /// assert!(tx.write(&OutgoingPacket::in_band(3, &[&block])).is_err());
    ///
    /// let _ = rx.read_packet()?;
    /// let freed = rx.commit()?;
    /// assert_eq!(freed.ring_bytes, 1024);
    /// assert!(freed.notify); // signal the writer: its packet fits now
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn commit(&mut self) -> Result<Commit, Error> {
        self.usable()?;
        if self.next == self.committed {
            return Ok(Commit::default());
        }
        let before = self.committed;
        let len = distance(before, self.next, self.size) as usize;
        // Release: our copies out of the packets complete before the writer
        // may reuse their space.
        self.mem.store_u32(READ_INDEX, self.next)?;
        self.committed = self.next;
        // Full fence: the index store is ordered before the loads below.
        self.mem.fence();
        let pending = self.mem.load_u32(PENDING_SEND_SIZE)?;
        if pending == 0 {
            return Ok(Commit {
                ring_bytes: len,
                notify: false,
            });
        }
        let features = FeatureBits::from_bits_retain(self.mem.load_u32(FEATURE_BITS)?);
        if !features.contains(FeatureBits::PENDING_SEND_SIZE) {
            return Ok(Commit {
                ring_bytes: len,
                notify: false,
            });
        }
        self.refresh_write()?;
        let free_before = self.size - distance(before, self.cached_write, self.size);
        let free_after = self.size - distance(self.committed, self.cached_write, self.size);
        Ok(Commit {
            ring_bytes: len,
            notify: free_before <= pending && pending < free_after,
        })
    }

    /// Whether, by the control page alone, the writer is owed a signal: it
    /// advertises the feature, waits for more than is free now. For
    /// inspection and unsticking; the data path uses [`commit`](Self::commit).
    ///
    /// # Errors
    ///
    /// [`Error::Memory`] only.
    pub fn writer_needs_signal(&self) -> Result<bool, Error> {
        let pending = self.mem.load_u32(PENDING_SEND_SIZE)?;
        let features = FeatureBits::from_bits_retain(self.mem.load_u32(FEATURE_BITS)?);
        let write = self.mem.load_u32(WRITE_INDEX)?;
        if pending == 0 || !features.contains(FeatureBits::PENDING_SEND_SIZE) {
            return Ok(false);
        }
        let used = if index_ok(write, self.size) {
            distance(self.committed, write, self.size)
        } else {
            0
        };
        Ok(pending < self.size - used)
    }
}
