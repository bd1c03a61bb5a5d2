//! In-place access to ring bytes: the free or used space of a ring handed
//! to the caller as byte ranges of the ring's memory, so a host can move
//! bytes between a ring and somewhere else (a socket, a file, a
//! serializer) with one copy instead of two.
//!
//! The core never gives out a Rust reference into shared memory. It hands
//! out [`Span`]s — offsets and lengths in the [`SharedMem`] the ring lives
//! in — and the caller fills or drains them through that memory: with
//! [`SharedMem::write`]/[`SharedMem::read`], or, on a host that owns the
//! mapping, with `readv(2)`/`writev(2)` straight into it (ring-hosted does
//! this in its memfd module).
//!
//! ```text
//!   write_with(max, fill)                  read_with(max, drain)
//!   ┌────────────┬─────────┬──────┐        ┌──────┬─────────┬──────┐
//!   │ free span 2│  used   │ free │        │ used │  free   │ used │
//!   └────────────┴─────────┴──────┘        └──────┴─────────┴──────┘
//!    ^ wraps here          ^ span 1          span 2 ^        ^ span 1
//!   fill says n: the first n bytes of the   drain says n: the first n
//!   spans are published under one index     bytes are given back under
//!   store and one fence.                    one index store and one fence.
//! ```
//!
//! The closure reports how many bytes it moved; the core clamps that to
//! what it offered, so a wrong count can publish stale bytes but never
//! bytes outside the ring.
//!
//! [`SharedMem`]: crate::mem::SharedMem
//! [`SharedMem::write`]: crate::mem::SharedMem::write
//! [`SharedMem::read`]: crate::mem::SharedMem::read

/// `len` bytes at byte `offset` of a ring's memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    /// First byte, as an offset into the memory the ring lives in.
    pub offset: usize,
    /// Number of bytes.
    pub len: usize,
}

/// Most spans one in-place call offers: a vchan ring needs two (the wrap);
/// a VMBus pipe offers one or two per packet, for up to 32 packets.
pub const MAX_SPANS: usize = 64;

/// The spans of one in-place call, in stream order.
pub type SpanList = heapless::Vec<Span, MAX_SPANS>;

/// The bytes the spans cover together.
pub fn total(spans: &[Span]) -> usize {
    spans.iter().fold(0usize, |n, s| n.saturating_add(s.len))
}

/// What one in-place read did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drained {
    /// The closure took this many bytes (0: it could take none now, and
    /// the ring is as it was).
    Took(usize),
    /// End of stream: the peer ended it and every byte before the end has
    /// been read. The closure was not called.
    End,
}

/// One in-place read attempt for either protocol's blocking wrapper:
/// `read` runs the protocol's read with the closure it is given (which
/// passes the spans on to `drain`, taking it out of its slot) and returns
/// the bytes consumed (`None`: nothing to read, wake-up armed). Nothing
/// consumed is the end of the stream unless `drain` was offered bytes and
/// took none; a `max` of 0 reads nothing. The slot lets a blocking read
/// retry with the same `drain` until it is offered bytes.
pub(crate) fn read_in_place<M: ?Sized, E>(
    max: usize,
    drain: &mut Option<impl FnOnce(&M, &[Span]) -> usize>,
    read: impl FnOnce(&mut dyn FnMut(&M, &[Span]) -> usize) -> Result<Option<usize>, E>,
) -> Result<Option<Drained>, E> {
    if max == 0 {
        return Ok(Some(Drained::Took(0)));
    }
    let mut offered = false;
    let took = read(&mut |mem, spans| {
        offered = true;
        drain.take().map_or(0, |d| d(mem, spans))
    })?;
    Ok(took.map(|n| match n {
        0 if !offered => Drained::End,
        n => Drained::Took(n),
    }))
}

/// Why a [`SpanWriter`] or [`SpanReader`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LoanError {
    /// The spans are full (a write) or an offset write runs past them.
    Full,
    /// The memory door refused (spans outside the memory: a caller's bug,
    /// never the peer's).
    Memory(crate::mem::MemError),
}

impl core::fmt::Display for LoanError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LoanError::Full => f.write_str("the loaned space is full"),
            LoanError::Memory(e) => write!(f, "loaned space: {e}"),
        }
    }
}

impl core::error::Error for LoanError {}

impl embedded_io::Error for LoanError {
    fn kind(&self) -> embedded_io::ErrorKind {
        match self {
            LoanError::Full => embedded_io::ErrorKind::OutOfMemory,
            LoanError::Memory(_) => embedded_io::ErrorKind::Other,
        }
    }
}

impl From<crate::mem::MemError> for LoanError {
    fn from(e: crate::mem::MemError) -> Self {
        LoanError::Memory(e)
    }
}

/// Where byte `at` of the spans lies: (span index, offset in it).
fn locate(spans: &[Span], mut at: usize) -> Option<(usize, usize)> {
    for (i, s) in spans.iter().enumerate() {
        if at < s.len {
            return Some((i, at));
        }
        at -= s.len;
    }
    None
}

/// Copies between `buf` and the spans' bytes `[at, at + buf.len())`,
/// through the memory door, wrapping from span to span. `write`: into the
/// spans.
fn copy<M: crate::mem::SharedMem + ?Sized>(
    mem: &M,
    spans: &[Span],
    at: usize,
    buf: &mut [u8],
    from: Option<&[u8]>,
) -> Result<(), LoanError> {
    let n = from.map_or(buf.len(), <[u8]>::len);
    if at.checked_add(n).is_none_or(|end| end > total(spans)) {
        return Err(LoanError::Full);
    }
    let mut done = 0;
    let mut pos = locate(spans, at);
    while done < n {
        let Some((i, off)) = pos else {
            return Err(LoanError::Full);
        };
        let Some(s) = spans.get(i) else {
            return Err(LoanError::Full);
        };
        let k = (s.len - off).min(n - done);
        match from {
            Some(src) => mem.write(
                s.offset.saturating_add(off),
                src.get(done..done + k).unwrap_or_default(),
            )?,
            None => mem.read(
                s.offset.saturating_add(off),
                buf.get_mut(done..done + k).unwrap_or_default(),
            )?,
        }
        done += k;
        pos = Some((i + 1, 0));
    }
    Ok(())
}

/// A cursor that writes into loaned free space, in order, for the closure
/// of an in-place write (`vchan::Endpoint::write_with`,
/// `vmbus::pipe::PipeWriter::write_with`): a serializer writes straight
/// into the ring through it (`embedded_io::Write`), or at offsets of its
/// choosing ([`write_at`](Self::write_at)), and the closure returns
/// [`len`](Self::len) — the bytes to publish.
///
/// ```
/// # use core::sync::atomic::AtomicU64;
/// # use ring_core::mem::RawMem;
/// use embedded_io::Write;
/// use ring_core::loan::SpanWriter;
/// use ring_core::vchan::{self, Orders, ServerOptions};
/// # let orders = Orders::new(10, 11).unwrap();
/// # let words: Vec<AtomicU64> = (0..vchan::FlatLayout::new(orders).size / 8).map(|_| AtomicU64::new(0)).collect();
/// # let mem = RawMem::from_atomics(&words);
/// # let mut server = vchan::serve_flat(mem, orders, ServerOptions::default()).unwrap();
/// # let mut client = vchan::connect_flat(mem).unwrap();
/// let sent = client.write_with(64, |mem, spans| {
///     let mut w = SpanWriter::new(mem, spans);
///     write!(w, "id={} ", 7).unwrap();
///     w.write_at(0, b"ID").unwrap(); // patch a header in place
///     w.len()
/// }).unwrap();
/// assert_eq!(sent.len, 5);
/// let mut buf = [0u8; 5];
/// server.read(&mut buf).unwrap();
/// assert_eq!(&buf, b"ID=7 ");
/// ```
#[derive(Debug)]
pub struct SpanWriter<'a, M: ?Sized> {
    mem: &'a M,
    spans: &'a [Span],
    len: usize,
}

impl<'a, M: crate::mem::SharedMem + ?Sized> SpanWriter<'a, M> {
    /// A writer at the start of `spans` of `mem`.
    pub fn new(mem: &'a M, spans: &'a [Span]) -> Self {
        SpanWriter { mem, spans, len: 0 }
    }

    /// Bytes written from the start (the furthest sequential write or
    /// offset write reached).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing has been written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes the spans hold in all.
    pub fn capacity(&self) -> usize {
        total(self.spans)
    }

    /// Writes `bytes` at `offset` from the start of the spans (a length
    /// field filled in after the body, say); extends [`len`](Self::len) if
    /// it writes past it.
    ///
    /// # Errors
    ///
    /// [`LoanError::Full`] if it would run past the spans.
    pub fn write_at(&mut self, offset: usize, bytes: &[u8]) -> Result<(), LoanError> {
        copy(self.mem, self.spans, offset, &mut [], Some(bytes))?;
        self.len = self.len.max(offset + bytes.len());
        Ok(())
    }
}

impl<M: ?Sized> embedded_io::ErrorType for SpanWriter<'_, M> {
    type Error = LoanError;
}

impl<M: crate::mem::SharedMem + ?Sized> embedded_io::Write for SpanWriter<'_, M> {
    fn write(&mut self, buf: &[u8]) -> Result<usize, LoanError> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = buf.len().min(self.capacity() - self.len);
        if n == 0 {
            return Err(LoanError::Full);
        }
        let at = self.len;
        self.write_at(at, buf.get(..n).unwrap_or_default())?;
        Ok(n)
    }

    fn flush(&mut self) -> Result<(), LoanError> {
        Ok(())
    }
}

/// A cursor that reads loaned used space, in order, for the closure of an
/// in-place read (`vchan::Endpoint::read_with`,
/// `vmbus::pipe::PipeReader::read_with`): a parser reads straight out of
/// the ring through it (`embedded_io::Read`, end of file at the end of the
/// spans) or at offsets ([`read_at`](Self::read_at)), and the closure
/// returns [`consumed`](Self::consumed) — the bytes to give back.
///
/// # Examples
///
/// A one-byte tag and a five-byte name, parsed straight out of the ring:
///
/// ```
/// # use core::sync::atomic::AtomicU64;
/// # use ring_core::mem::RawMem;
/// use embedded_io::Read;
/// use ring_core::loan::SpanReader;
/// use ring_core::vchan::{self, Orders, ServerOptions};
/// # let words: Vec<AtomicU64> = (0..512).map(|_| AtomicU64::new(0)).collect();
/// # let mem = RawMem::from_atomics(&words);
/// # let mut server = vchan::serve_flat(mem, Orders::new(10, 11)?, ServerOptions::default())?;
/// # let mut client = vchan::connect_flat(mem)?;
/// let _ = client.write(b"\x05hello world")?;
/// let (mut tag, mut name) = ([0u8; 1], [0u8; 5]);
/// let took = server.read_with(64, |mem, spans| {
///     let mut r = SpanReader::new(mem, spans);
///     let parsed = r.read_exact(&mut tag).and_then(|()| r.read_exact(&mut name));
///     parsed.map_or(0, |()| r.consumed()) // give back nothing unless it parsed
/// })?;
/// assert_eq!(took.map(|t| t.len), Some(6)); // " world" stays in the ring
/// assert_eq!((tag, &name), ([5], b"hello"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct SpanReader<'a, M: ?Sized> {
    mem: &'a M,
    spans: &'a [Span],
    at: usize,
}

impl<'a, M: crate::mem::SharedMem + ?Sized> SpanReader<'a, M> {
    /// A reader at the start of `spans` of `mem`.
    pub fn new(mem: &'a M, spans: &'a [Span]) -> Self {
        SpanReader { mem, spans, at: 0 }
    }

    /// Bytes read in order so far.
    pub fn consumed(&self) -> usize {
        self.at
    }

    /// Bytes the spans hold in all.
    pub fn len(&self) -> usize {
        total(self.spans)
    }

    /// Whether the spans hold nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies `buf.len()` bytes at `offset` from the start of the spans,
    /// without moving the cursor.
    ///
    /// # Errors
    ///
    /// [`LoanError::Full`] if that runs past the spans.
    pub fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<(), LoanError> {
        copy(self.mem, self.spans, offset, buf, None)
    }
}

impl<M: ?Sized> embedded_io::ErrorType for SpanReader<'_, M> {
    type Error = LoanError;
}

impl<M: crate::mem::SharedMem + ?Sized> embedded_io::Read for SpanReader<'_, M> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, LoanError> {
        let n = buf.len().min(self.len() - self.at);
        let dst = buf.get_mut(..n).unwrap_or_default();
        self.read_at(self.at, dst)?;
        self.at += n;
        Ok(n)
    }
}

/// The cursors as `std::io` streams, for serializers and parsers written
/// against `std::io::{Write, Read}` (serde_json, bincode, prost, ...).
///
/// A full [`SpanWriter`] takes nothing (`Ok(0)`), so `write_all` reports
/// [`std::io::ErrorKind::WriteZero`] once the loan is used up; a
/// [`SpanReader`] at the end of its spans reads `Ok(0)`, end of file.
#[cfg(feature = "std")]
mod std_io {
    use super::{LoanError, SpanReader, SpanWriter};
    use crate::mem::SharedMem;
    use std::io;

    impl From<LoanError> for io::Error {
        fn from(e: LoanError) -> Self {
            let kind = match e {
                LoanError::Full => io::ErrorKind::WriteZero,
                LoanError::Memory(_) => io::ErrorKind::InvalidInput,
            };
            io::Error::new(kind, e)
        }
    }

    impl<M: SharedMem + ?Sized> io::Write for SpanWriter<'_, M> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            match embedded_io::Write::write(self, buf) {
                Err(LoanError::Full) => Ok(0),
                r => Ok(r?),
            }
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<M: SharedMem + ?Sized> io::Read for SpanReader<'_, M> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            Ok(embedded_io::Read::read(self, buf)?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::{RawMem, SharedMem};
    use core::sync::atomic::AtomicU64;
    use embedded_io::{Read, Write};
    extern crate std;

    #[test]
    fn cursors_cross_span_boundaries_and_stop_at_the_end() {
        let words: std::vec::Vec<AtomicU64> = (0..16).map(|_| AtomicU64::new(0)).collect();
        let mem = RawMem::from_atomics(&words);
        // A wrapped loan: 5 bytes at 120, then 6 at 0.
        let spans = [
            Span {
                offset: 120,
                len: 5,
            },
            Span { offset: 0, len: 6 },
        ];
        let mut w = SpanWriter::new(&mem, &spans);
        assert_eq!(w.capacity(), 11);
        assert_eq!(w.write(b"abcdefg"), Ok(7));
        w.write_at(0, b"AB").unwrap();
        assert_eq!(w.len(), 7);
        assert_eq!(w.write(b"hijklmn"), Ok(4));
        assert_eq!(w.write(b"x"), Err(LoanError::Full));
        assert_eq!(w.write_at(10, b"yz"), Err(LoanError::Full));
        assert_eq!(w.write_at(usize::MAX, b"yz"), Err(LoanError::Full));
        let mut raw = [0u8; 5];
        mem.read(120, &mut raw).unwrap();
        assert_eq!(&raw, b"ABcde");
        let mut r = SpanReader::new(&mem, &spans);
        let mut all = [0u8; 16];
        assert_eq!(r.read(&mut all[..3]), Ok(3));
        assert_eq!(r.read(&mut all[3..]), Ok(8));
        assert_eq!(&all[..11], b"ABcdefghijk");
        assert_eq!(r.read(&mut all), Ok(0), "end of the spans is end of file");
        assert_eq!(r.consumed(), 11);
        let mut two = [0u8; 2];
        r.read_at(4, &mut two).unwrap();
        assert_eq!(&two, b"ef");
        assert_eq!(r.read_at(10, &mut two), Err(LoanError::Full));
    }

    /// `read_in_place` tells its outcomes apart: nothing asked reads
    /// nothing; nothing there keeps `drain` for the retry; bytes taken are
    /// `Took(n)`; nothing consumed without an offer is the end, but an
    /// offer the closure declined is `Took(0)`; errors pass through.
    #[test]
    fn read_in_place_tells_its_outcomes_apart() {
        let spans = [Span { offset: 8, len: 5 }];
        type Offer<'f> = &'f mut dyn FnMut(&(), &[Span]) -> usize;
        let take_all = |_: &(), s: &[Span]| total(s);
        let run =
            |max: usize,
             drain: &mut Option<fn(&(), &[Span]) -> usize>,
             read: &mut dyn FnMut(Offer<'_>) -> Result<Option<usize>, &'static str>| {
                read_in_place(max, drain, |offer| read(offer))
            };
        let mut slot: Option<fn(&(), &[Span]) -> usize> = Some(take_all);
        let mut never = |_: Offer<'_>| -> Result<Option<usize>, &'static str> {
            panic!("a read of 0 bytes reads nothing")
        };
        assert_eq!(run(0, &mut slot, &mut never), Ok(Some(Drained::Took(0))));
        assert!(slot.is_some());
        let mut empty = |_: Offer<'_>| Ok(None);
        assert_eq!(run(9, &mut slot, &mut empty), Ok(None));
        assert!(slot.is_some(), "kept for the retry");
        let mut offered = |offer: Offer<'_>| Ok(Some(offer(&(), &spans)));
        assert_eq!(run(9, &mut slot, &mut offered), Ok(Some(Drained::Took(5))));
        assert!(slot.is_none(), "used once");
        let mut ended = |_: Offer<'_>| Ok(Some(0));
        assert_eq!(run(9, &mut slot, &mut ended), Ok(Some(Drained::End)));
        let mut declined: Option<fn(&(), &[Span]) -> usize> = Some(|_, _| 0);
        assert_eq!(
            run(9, &mut declined, &mut offered),
            Ok(Some(Drained::Took(0)))
        );
        let mut failed = |_: Offer<'_>| Err("corrupt");
        assert_eq!(run(9, &mut slot, &mut failed), Err("corrupt"));
    }

    /// An offset exactly at a span's end is the next span's first byte;
    /// a writer is empty until it writes, a reader when its spans hold
    /// nothing; refusals say what they are.
    #[test]
    fn offsets_at_a_span_boundary_land_in_the_next_span() {
        let words: std::vec::Vec<AtomicU64> = (0..16).map(|_| AtomicU64::new(0)).collect();
        let mem = RawMem::from_atomics(&words);
        let spans = [
            Span {
                offset: 120,
                len: 5,
            },
            Span { offset: 0, len: 6 },
        ];
        let mut w = SpanWriter::new(&mem, &spans);
        assert!(w.is_empty());
        w.write_at(5, b"X").unwrap();
        assert!(!w.is_empty());
        assert_eq!((w.len(), w.capacity()), (6, 11));
        assert_eq!(mem.load_u8(0), Ok(b'X'));
        assert_eq!(mem.load_u8(125), Ok(0), "nothing past the first span");
        let mut one = [0u8; 1];
        let r = SpanReader::new(&mem, &spans);
        assert!(!r.is_empty());
        r.read_at(5, &mut one).unwrap();
        assert_eq!(one, *b"X");
        assert!(SpanReader::new(&mem, &[]).is_empty());
        assert!(SpanReader::new(&mem, &[Span { offset: 3, len: 0 }]).is_empty());
        use std::string::ToString;
        assert_eq!(LoanError::Full.to_string(), "the loaned space is full");
        let e = LoanError::from(crate::mem::MemError::Misaligned { offset: 3 });
        assert!(e.to_string().starts_with("loaned space: "), "{e}");
    }
}

#[cfg(all(test, feature = "std"))]
mod std_tests {
    use super::*;
    use crate::mem::RawMem;
    use core::sync::atomic::AtomicU64;
    use std::io::{ErrorKind, Read, Write};

    /// The same wrapped loan through `std::io`: `write_all` past the end
    /// is `WriteZero` after filling what fits; `read_to_end` stops at the
    /// end of the spans.
    #[test]
    fn cursors_are_std_io_streams() {
        let words: std::vec::Vec<AtomicU64> = (0..16).map(|_| AtomicU64::new(0)).collect();
        let mem = RawMem::from_atomics(&words);
        let spans = [
            Span {
                offset: 124,
                len: 4,
            },
            Span { offset: 8, len: 4 },
        ];
        let mut w = SpanWriter::new(&mem, &spans);
        write!(w, "{:03}-", 42).unwrap();
        let err = w.write_all(b"abcdef").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::WriteZero);
        assert_eq!(w.len(), 8);
        let mut r = SpanReader::new(&mem, &spans);
        let mut out = std::vec::Vec::new();
        assert_eq!(r.read_to_end(&mut out).unwrap(), 8);
        assert_eq!(&out, b"042-abcd");
    }
}
