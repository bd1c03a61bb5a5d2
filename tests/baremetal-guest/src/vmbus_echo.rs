//! The VMBus half of the exchange: two packet rings in BAR2, host→guest at
//! [`H2G_AT`] and guest→host at [`G2H_AT`], each a control page and a
//! [`DATA_SIZE`]-byte data area that the host initialised.
//!
//! Each host request is an in-band packet with the completion-requested
//! flag, transaction id `n ≥ 1`, and a payload of `len: u32, seq: u32` then
//! `len` bytes. The guest answers each with a completion echoing the
//! transaction id (payload `status = 0: u32, len: u32`) and an in-band reply
//! with the same id and header and every data byte XOR [`TRANSFORM`],
//! written as one batch and committed once. The host ends with an in-band
//! packet, id 0, `len = END`, `seq = request count`; the guest answers it
//! with an in-band packet, id 0, of `requests: u64, bytes: u64,
//! FNV-1a 64 of the data: u64`.

use crate::{fail, TRANSFORM};
use core::hint::spin_loop;
use ring_core::mem::RawMem;
use ring_core::vmbus::{Error, IncomingRing, OutgoingPacket, OutgoingRing, PacketType, RingLayout};

/// Offset of the host→guest ring in BAR2.
pub const H2G_AT: usize = 0x8_0000;
/// Offset of the guest→host ring in BAR2.
pub const G2H_AT: usize = 0xc_0000;
/// Each ring's data area.
pub const DATA_SIZE: usize = 64 * 1024;
/// Largest request data.
const MAX_DATA: usize = 4096;
/// `len` of the host's final packet.
const END: u32 = u32::MAX;

/// What the guest saw.
pub struct Stats {
    /// Requests answered.
    pub requests: u64,
    /// Data bytes received (and sent back).
    pub bytes: u64,
    /// FNV-1a 64 of the data received.
    pub hash: u64,
    /// Polls that found no packet.
    pub empty: u64,
    /// Writes that found the outgoing ring full.
    pub full: u64,
}

/// The ring layout both sides use.
pub fn layout() -> Result<RingLayout, Error> {
    Ok(RingLayout::new(4096, DATA_SIZE)?)
}

/// Writes `packet` after the uncommitted batch, committing the batch and
/// retrying while the ring is full.
fn write_all(
    tx: &mut OutgoingRing<RawMem<'_>>,
    packet: &OutgoingPacket<'_>,
    full: &mut u64,
) -> Result<(), Error> {
    loop {
        match tx.write(packet) {
            Err(Error::Full { .. }) => {
                *full += 1;
                let _ = tx.commit()?;
                spin_loop();
            }
            other => return other,
        }
    }
}

fn word(bytes: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(w)
}

/// Answers the host's requests until its final packet.
pub fn serve(h2g: RawMem<'_>, g2h: RawMem<'_>) -> Result<Stats, Error> {
    let layout = layout()?;
    let mut rx = IncomingRing::new(h2g, layout)?;
    // A polling reader: never touch the interrupt mask.
    rx.set_interrupts(false);
    let mut tx = OutgoingRing::new(g2h, layout)?;
    let mut stats = Stats {
        requests: 0,
        bytes: 0,
        hash: crate::FNV_OFFSET,
        empty: 0,
        full: 0,
    };
    let mut buf = [0u8; 8 + MAX_DATA];
    loop {
        let (id, len) = loop {
            let packet = match rx.read_packet() {
                Err(Error::Empty) => {
                    stats.empty += 1;
                    spin_loop();
                    continue;
                }
                other => other?,
            };
            if packet.packet_type() != PacketType::InBand {
                fail("vmbus: expected an in-band packet");
            }
            packet.read_payload(0, &mut buf[..8])?;
            let len = word(&buf, 0);
            if len == END {
                break (packet.transaction_id(), None);
            }
            if len as usize > MAX_DATA || !packet.completion_requested() {
                fail("vmbus: bad request");
            }
            let len = len as usize;
            packet.read_payload(8, &mut buf[8..8 + len])?;
            break (packet.transaction_id(), Some(len));
        };
        // The request is copied out: give its bytes back to the host.
        let _ = rx.commit()?;
        let Some(len) = len else {
            if id != 0 || u64::from(word(&buf, 4)) != stats.requests {
                fail("vmbus: bad final packet");
            }
            let mut tail = [0u8; 24];
            tail[..8].copy_from_slice(&stats.requests.to_le_bytes());
            tail[8..16].copy_from_slice(&stats.bytes.to_le_bytes());
            tail[16..].copy_from_slice(&stats.hash.to_le_bytes());
            write_all(
                &mut tx,
                &OutgoingPacket::in_band(0, &[&tail]),
                &mut stats.full,
            )?;
            let _ = tx.commit()?;
            return Ok(stats);
        };
        let data = &mut buf[8..8 + len];
        stats.hash = crate::fnv1a(stats.hash, data);
        for b in data.iter_mut() {
            *b ^= TRANSFORM;
        }
        stats.requests += 1;
        stats.bytes += len as u64;
        let mut status = [0u8; 8];
        status[4..].copy_from_slice(&(len as u32).to_le_bytes());
        write_all(
            &mut tx,
            &OutgoingPacket::completion(id, &[&status]),
            &mut stats.full,
        )?;
        write_all(
            &mut tx,
            &OutgoingPacket::in_band(id, &[&buf[..8 + len]]),
            &mut stats.full,
        )?;
        let _ = tx.commit()?;
    }
}
