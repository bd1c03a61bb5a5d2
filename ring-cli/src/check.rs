//! A deterministic byte pattern and a fast streaming checksum, to prove
//! that bytes crossed a ring intact (used by `ring demo` and the tests).
//!
//! The pattern is a function of (seed, position), so a receiver can check
//! any byte it gets without having seen the ones before; the checksum is
//! independent of how the stream was cut into reads and writes.
//!
//! ```
//! use ring_cli::check::{Checksum, Pattern};
//!
//! let mut p = Pattern::new(7);
//! let mut a = vec![0u8; 100];
//! p.fill(&mut a);
//! let mut whole = Checksum::new();
//! whole.update(&a);
//! let mut parts = Checksum::new();
//! parts.update(&a[..33]);
//! parts.update(&a[33..]);
//! assert_eq!(whole.finish(), parts.finish());
//! assert_eq!(Pattern::new(7).first_mismatch(&a), None);
//! ```

use ring_hosted::stream::{PollStream, StreamSignal};
use ring_hosted::Error;

/// Step between the pattern's consecutive words before mixing (odd, so
/// the words of one seed do not repeat within 2^64 of them).
const STEP: u64 = 0x9E37_79B9_7F4A_7C15;

/// Spreads the bits of a pre-word; cheap shifts only, so filling
/// vectorises and the pattern never limits a transfer.
fn mix(z: u64) -> u64 {
    z ^ (z >> 29) ^ (z << 17)
}

/// The pattern's word at word index `i`.
fn word(seed: u64, i: u64) -> u64 {
    mix(seed.wrapping_add(i.wrapping_mul(STEP)))
}

/// An endless deterministic byte stream, read in pieces of any size.
#[derive(Clone, Debug)]
pub struct Pattern {
    seed: u64,
    pos: u64,
}

impl Pattern {
    /// The stream for `seed`, at position 0.
    pub fn new(seed: u64) -> Self {
        Pattern { seed, pos: 0 }
    }

    /// Bytes produced (or checked) so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Fills `buf` with the next `buf.len()` bytes of the stream.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut pos = self.pos;
        let mut rest = buf;
        // Unaligned head, byte by byte.
        while !pos.is_multiple_of(8) {
            let Some((b, tail)) = std::mem::take(&mut rest).split_first_mut() else {
                break;
            };
            *b = word(self.seed, pos / 8).to_le_bytes()[(pos % 8) as usize];
            rest = tail;
            pos += 1;
        }
        let mut chunks = rest.chunks_exact_mut(8);
        let mut z = self.seed.wrapping_add((pos / 8).wrapping_mul(STEP));
        for c in &mut chunks {
            c.copy_from_slice(&mix(z).to_le_bytes());
            z = z.wrapping_add(STEP);
            pos += 8;
        }
        let tail = chunks.into_remainder();
        let w = word(self.seed, pos / 8).to_le_bytes();
        for (b, v) in tail.iter_mut().zip(w) {
            *b = v;
            pos += 1;
        }
        self.pos = pos;
    }

    /// Checks that `got` is the next `got.len()` bytes of the stream and
    /// advances; returns the stream offset of the first wrong byte.
    pub fn first_mismatch(&mut self, got: &[u8]) -> Option<u64> {
        let start = self.pos;
        let mut want = [0u8; 4096];
        for (n, piece) in got.chunks(want.len()).enumerate() {
            let w = want.get_mut(..piece.len()).unwrap_or(&mut []);
            self.fill(w);
            if w != piece {
                let at = w.iter().zip(piece).position(|(a, b)| a != b).unwrap_or(0);
                return Some(start + (n * 4096 + at) as u64);
            }
        }
        None
    }
}

const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
/// Bytes per checksum block: eight independent 64-bit lanes.
const BLOCK: usize = 64;

/// A fast non-cryptographic checksum over a byte stream, independent of
/// how the stream is split into `update` calls.
///
/// Fletcher-style on 64-bit little-endian words in eight lanes: each lane
/// keeps a running sum and a sum of sums, so a changed, dropped, added or
/// moved word changes the result (with overwhelming likelihood for the
/// accidental damage a transfer bug does; it is no defence against a
/// forger). Only additions: the compiler vectorises it.
#[derive(Clone, Debug)]
pub struct Checksum {
    sum: [u64; 8],
    sum2: [u64; 8],
    pending: [u8; BLOCK],
    fill: usize,
    total: u64,
}

impl Default for Checksum {
    fn default() -> Self {
        Self::new()
    }
}

impl Checksum {
    /// An empty checksum.
    pub fn new() -> Self {
        Checksum {
            sum: [0; 8],
            sum2: [0; 8],
            pending: [0; BLOCK],
            fill: 0,
            total: 0,
        }
    }

    fn block(sum: &mut [u64; 8], sum2: &mut [u64; 8], b: &[u8; BLOCK]) {
        let mut words = [0u64; 8];
        for (w, bytes) in words.iter_mut().zip(b.chunks_exact(8)) {
            let mut a = [0u8; 8];
            a.copy_from_slice(bytes);
            *w = u64::from_le_bytes(a);
        }
        for k in 0..8 {
            sum[k] = sum[k].wrapping_add(words[k]);
            sum2[k] = sum2[k].wrapping_add(sum[k]);
        }
    }

    /// Adds `data` to the stream.
    pub fn update(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        if self.fill > 0 {
            let take = (BLOCK - self.fill).min(data.len());
            let (head, rest) = data.split_at(take);
            self.pending
                .get_mut(self.fill..self.fill + take)
                .unwrap_or(&mut [])
                .copy_from_slice(head);
            self.fill += take;
            data = rest;
            if self.fill < BLOCK {
                return;
            }
            let p = self.pending;
            Self::block(&mut self.sum, &mut self.sum2, &p);
            self.fill = 0;
        }
        let (blocks, tail) = data.as_chunks::<BLOCK>();
        for c in blocks {
            Self::block(&mut self.sum, &mut self.sum2, c);
        }
        self.pending
            .get_mut(..tail.len())
            .unwrap_or(&mut [])
            .copy_from_slice(tail);
        self.fill = tail.len();
    }

    /// Bytes added so far.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// True if nothing was added.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The checksum of everything added so far.
    pub fn finish(&self) -> u64 {
        let (mut sum, mut sum2) = (self.sum, self.sum2);
        if self.fill > 0 {
            let mut last = [0u8; BLOCK];
            last.get_mut(..self.fill)
                .unwrap_or(&mut [])
                .copy_from_slice(self.pending.get(..self.fill).unwrap_or(&[]));
            Self::block(&mut sum, &mut sum2, &last);
        }
        let mut h = self.total.wrapping_mul(P2);
        for (a, b) in sum.into_iter().zip(sum2) {
            for v in [a, b] {
                h = (h ^ v).wrapping_mul(P1).rotate_left(27);
            }
        }
        h ^ (h >> 32)
    }
}

/// What [`duplex`] moved and what it saw.
#[derive(Clone, Debug)]
pub struct DuplexResult {
    /// Checksum of the bytes we wrote.
    pub sent: Checksum,
    /// Checksum of the bytes we read.
    pub received: Checksum,
}

/// Writes `send` bytes of `Pattern::new(seed)` into `stream` while reading
/// `recv` bytes from it, in one thread, both directions at once. Blocks
/// (spinning first) only when neither direction can move. `progress` is
/// called now and then with the bytes sent and received so far.
///
/// # Errors
///
/// [`Error::Closed`] if the peer closes or dies first (also for a clean
/// end of stream before `recv` bytes), and any stream error.
pub fn duplex<S: StreamSignal>(
    stream: &mut impl PollStream<S>,
    seed: u64,
    send: u64,
    recv: u64,
    mut progress: impl FnMut(u64, u64),
) -> Result<DuplexResult, Error> {
    const CHUNK: usize = 256 << 10;
    let mut pattern = Pattern::new(seed);
    let (mut sent, mut received) = (Checksum::new(), Checksum::new());
    let mut out = vec![0u8; CHUNK];
    let mut inb = vec![0u8; CHUNK];
    let (mut out_off, mut out_len) = (0usize, 0usize);
    let (mut done_out, mut done_in) = (0u64, 0u64);
    let mut turns = 0u32;
    // Only a pass with `arm` set may leave wake-up requests armed; the
    // other passes look first, so a busy peer is not asked for kicks.
    let mut arm = false;
    let mut stalled: Option<Option<std::time::Instant>> = None;
    loop {
        let mut moved = false;
        let (has_data, has_room) = if arm { (true, true) } else { stream.ready() };
        let (can_read, can_write) = (arm || has_data, arm || has_room);
        while can_write && done_out < send {
            if out_off == out_len {
                let n = (send - pattern.position()).min(CHUNK as u64) as usize;
                let chunk = out.get_mut(..n).unwrap_or(&mut []);
                pattern.fill(chunk);
                sent.update(chunk);
                (out_off, out_len) = (0, n);
            }
            match stream.try_write(out.get(out_off..out_len).unwrap_or(&[]))? {
                Some(n) => {
                    out_off += n;
                    done_out += n as u64;
                    moved = true;
                }
                None => break,
            }
        }
        while can_read && done_in < recv {
            let want = (recv - done_in).min(CHUNK as u64) as usize;
            let buf = inb.get_mut(..want).unwrap_or(&mut []);
            match stream.try_read(buf)? {
                Some(0) => return Err(Error::Closed),
                Some(n) => {
                    received.update(buf.get(..n).unwrap_or(&[]));
                    done_in += n as u64;
                    moved = true;
                }
                None => break,
            }
        }
        turns = turns.wrapping_add(1);
        if turns.is_multiple_of(64) {
            progress(done_out, done_in);
        }
        if done_out == send && done_in == recv {
            progress(done_out, done_in);
            return Ok(DuplexResult { sent, received });
        }
        if moved {
            arm = false;
            stalled = None;
        } else if arm {
            // One deadline per stall, however often the wait wakes early.
            let deadline = *stalled.get_or_insert_with(|| stream.deadline());
            stream.wait_event(None, deadline)?;
            arm = false;
        } else if !stream.spin_ready(done_in < recv, done_out < send) {
            arm = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_the_same_however_it_is_cut() {
        let mut whole = vec![0u8; 1000];
        Pattern::new(3).fill(&mut whole);
        let mut p = Pattern::new(3);
        let mut pieces = Vec::new();
        for n in [1, 7, 8, 13, 64, 907] {
            let mut b = vec![0u8; n];
            p.fill(&mut b);
            pieces.extend(b);
        }
        assert_eq!(pieces, whole);
        assert_ne!(whole[..8], whole[8..16]);
    }

    #[test]
    fn mismatch_is_located() {
        let mut b = vec![0u8; 10_000];
        Pattern::new(1).fill(&mut b);
        b[5000] ^= 1;
        assert_eq!(Pattern::new(1).first_mismatch(&b), Some(5000));
        let mut p = Pattern::new(1);
        assert_eq!(p.first_mismatch(&b[..4000]), None);
        assert_eq!(p.first_mismatch(&b[4000..]), Some(5000));
    }

    #[test]
    fn checksum_sees_swapped_and_dropped_words() {
        let mut b = vec![0u8; 8192];
        Pattern::new(4).fill(&mut b);
        let sum = |d: &[u8]| {
            let mut c = Checksum::new();
            c.update(d);
            c.finish()
        };
        let base = sum(&b);
        let mut swapped = b.clone();
        swapped.swap(0, 64); // same lane, different position
        assert_ne!(sum(&swapped), base);
        let mut moved = b.clone();
        moved[..4096].rotate_left(8); // words shifted between lanes
        assert_ne!(sum(&moved), base);
        let mut dropped = b[..4096].to_vec();
        dropped.extend_from_slice(&b[4160..]);
        dropped.extend_from_slice(&[0u8; 64]); // same length, a block lost
        assert_ne!(sum(&dropped), base);
    }

    #[test]
    fn checksum_splits_and_detects_changes() {
        let mut b = vec![0u8; 4099];
        Pattern::new(9).fill(&mut b);
        let mut a = Checksum::new();
        a.update(&b);
        for cut in [0, 1, 31, 32, 33, 4098] {
            let mut c = Checksum::new();
            c.update(&b[..cut]);
            c.update(&b[cut..]);
            assert_eq!(c.finish(), a.finish(), "cut at {cut}");
        }
        b[17] ^= 0x80;
        let mut d = Checksum::new();
        d.update(&b);
        assert_ne!(d.finish(), a.finish());
        let mut e = Checksum::new();
        e.update(&b[..4098]);
        assert_ne!(e.finish(), d.finish(), "length matters");
    }
}
