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

/// What an in-place read attempt found, from the bytes it consumed
/// (`None`: nothing to read, wake-up armed) and whether the closure was
/// offered any: nothing consumed and nothing offered is the end of the
/// stream.
pub(crate) fn drained(took: Option<usize>, offered: bool) -> Option<Drained> {
    took.map(|n| match n {
        0 if !offered => Drained::End,
        n => Drained::Took(n),
    })
}
