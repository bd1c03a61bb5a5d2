//! Loom models of the vchan notify protocol and index publication.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p ring-core --release --test loom_vchan`
//! (scripts/test does). Loom explores every interleaving of the two
//! threads within a preemption bound, with C11 memory-model reorderings.
//!
//! The memory door is implemented over loom's types: control words are
//! loom atomics, ring data lives in loom `UnsafeCell`s, so a data copy that
//! is not ordered by the index publication is reported as a race, a lost
//! wake-up leaves both threads blocked (loom reports the deadlock), and a
//! wrong byte fails the assertions.
#![cfg(loom)]

use loom::cell::UnsafeCell;
use loom::sync::atomic::{fence, AtomicU32, Ordering};
use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;
use ring_core::mem::{MemError, SharedMem};
use ring_core::signal::Signal;
use ring_core::vchan::{self, Blocking, Orders, ServerOptions};

/// Granularity of race tracking in the data area: one byte, so neighbouring
/// bytes owned by different sides never look like a race.
const CHUNK: usize = 1;

/// Shared memory for loom: `split` bytes of atomic words, then data bytes
/// in `UnsafeCell` chunks.
struct LoomMem {
    words: Vec<AtomicU32>,
    chunks: Vec<UnsafeCell<[u8; CHUNK]>>,
    split: usize,
    size: usize,
}

impl LoomMem {
    fn new(size: usize, split: usize) -> Self {
        LoomMem {
            words: (0..split / 4).map(|_| AtomicU32::new(0)).collect(),
            chunks: (0..(size - split) / CHUNK)
                .map(|_| UnsafeCell::new([0; CHUNK]))
                .collect(),
            split,
            size,
        }
    }

    fn check(&self, offset: usize, len: usize) -> Result<(), MemError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(MemError::OutOfBounds {
                offset,
                len,
                size: self.size,
            }),
        }
    }

    fn word(&self, offset: usize) -> Result<(&AtomicU32, u32), MemError> {
        self.check(offset, 1)?;
        let word = self
            .words
            .get(offset / 4)
            .ok_or(MemError::Misaligned { offset })?;
        Ok((word, 8 * (offset % 4) as u32))
    }

    /// Visits `[offset, offset + len)` one atomic word or data chunk at a
    /// time, so a copy costs one loom operation per word or chunk.
    fn segments(&self, offset: usize, len: usize, mut f: impl FnMut(Segment<'_>, usize, usize)) {
        let mut at = offset;
        let end = offset + len;
        while at < end {
            if at < self.split {
                let base = at - at % 4;
                let n = (base + 4).min(end) - at;
                f(
                    Segment::Word(&self.words[base / 4], at - base),
                    at - offset,
                    n,
                );
                at += n;
            } else {
                let rel = at - self.split;
                let base = rel - rel % CHUNK;
                let n = (self.split + base + CHUNK).min(end) - at;
                f(
                    Segment::Chunk(&self.chunks[base / CHUNK], rel - base),
                    at - offset,
                    n,
                );
                at += n;
            }
        }
    }
}

/// One word of the atomic area or one chunk of the data area, and the
/// first byte of interest in it.
enum Segment<'a> {
    Word(&'a AtomicU32, usize),
    Chunk(&'a UnsafeCell<[u8; CHUNK]>, usize),
}

impl SharedMem for LoomMem {
    fn size(&self) -> usize {
        self.size
    }
    fn load_u32(&self, offset: usize) -> Result<u32, MemError> {
        Ok(self.word(offset)?.0.load(Ordering::Acquire))
    }
    fn store_u32(&self, offset: usize, value: u32) -> Result<(), MemError> {
        self.word(offset)?.0.store(value, Ordering::Release);
        Ok(())
    }
    fn load_u8(&self, offset: usize) -> Result<u8, MemError> {
        let (w, shift) = self.word(offset)?;
        Ok((w.load(Ordering::Acquire) >> shift) as u8)
    }
    fn store_u8(&self, offset: usize, value: u8) -> Result<(), MemError> {
        let (w, shift) = self.word(offset)?;
        let _ = w.fetch_update(Ordering::Release, Ordering::Relaxed, |v| {
            Some((v & !(0xff << shift)) | (u32::from(value) << shift))
        });
        Ok(())
    }
    fn fetch_or_u8(&self, offset: usize, bits: u8) -> Result<u8, MemError> {
        let (w, shift) = self.word(offset)?;
        Ok((w.fetch_or(u32::from(bits) << shift, Ordering::SeqCst) >> shift) as u8)
    }
    fn fetch_and_u8(&self, offset: usize, bits: u8) -> Result<u8, MemError> {
        let (w, shift) = self.word(offset)?;
        let mask = !(u32::from(!bits) << shift);
        Ok((w.fetch_and(mask, Ordering::SeqCst) >> shift) as u8)
    }
    fn fence(&self) {
        fence(Ordering::SeqCst);
    }
    fn read(&self, offset: usize, dst: &mut [u8]) -> Result<(), MemError> {
        self.check(offset, dst.len())?;
        self.segments(offset, dst.len(), |seg, from, n| match seg {
            Segment::Word(w, first) => {
                let bytes = w.load(Ordering::Relaxed).to_le_bytes();
                dst[from..from + n].copy_from_slice(&bytes[first..first + n]);
            }
            Segment::Chunk(c, first) => c.with(|p| {
                // SAFETY: loom tracks this access; an access that races with
                // the other thread's is reported, which is the point.
                let chunk = unsafe { &*p };
                dst[from..from + n].copy_from_slice(&chunk[first..first + n]);
            }),
        });
        Ok(())
    }
    fn write(&self, offset: usize, src: &[u8]) -> Result<(), MemError> {
        self.check(offset, src.len())?;
        self.segments(offset, src.len(), |seg, from, n| match seg {
            Segment::Word(w, first) => {
                let mut bytes = w.load(Ordering::Relaxed).to_le_bytes();
                bytes[first..first + n].copy_from_slice(&src[from..from + n]);
                w.store(u32::from_le_bytes(bytes), Ordering::Relaxed);
            }
            Segment::Chunk(c, first) => c.with_mut(|p| {
                // SAFETY: as in `read`: loom checks the access.
                let chunk = unsafe { &mut *p };
                chunk[first..first + n].copy_from_slice(&src[from..from + n]);
            }),
        });
        Ok(())
    }
}

/// A cheap, clonable handle to one `LoomMem` (std's `Arc`: the reference
/// count is not part of what we model).
#[derive(Clone)]
struct Mem(std::sync::Arc<LoomMem>);

impl SharedMem for Mem {
    fn size(&self) -> usize {
        self.0.size()
    }
    fn load_u32(&self, offset: usize) -> Result<u32, MemError> {
        self.0.load_u32(offset)
    }
    fn store_u32(&self, offset: usize, value: u32) -> Result<(), MemError> {
        self.0.store_u32(offset, value)
    }
    fn load_u8(&self, offset: usize) -> Result<u8, MemError> {
        self.0.load_u8(offset)
    }
    fn store_u8(&self, offset: usize, value: u8) -> Result<(), MemError> {
        self.0.store_u8(offset, value)
    }
    fn fetch_or_u8(&self, offset: usize, bits: u8) -> Result<u8, MemError> {
        self.0.fetch_or_u8(offset, bits)
    }
    fn fetch_and_u8(&self, offset: usize, bits: u8) -> Result<u8, MemError> {
        self.0.fetch_and_u8(offset, bits)
    }
    fn fence(&self) {
        self.0.fence()
    }
    fn read(&self, offset: usize, dst: &mut [u8]) -> Result<(), MemError> {
        self.0.read(offset, dst)
    }
    fn write(&self, offset: usize, src: &[u8]) -> Result<(), MemError> {
        self.0.write(offset, src)
    }
}

/// A counting event per side over loom's mutex and condvar.
#[derive(Default)]
struct Event {
    pending: Mutex<bool>,
    ready: Condvar,
}

struct LoomSignal {
    own: Arc<Event>,
    peer: Arc<Event>,
}

impl LoomSignal {
    fn pair() -> (Self, Self) {
        let a = Arc::new(Event::default());
        let b = Arc::new(Event::default());
        (
            LoomSignal {
                own: a.clone(),
                peer: b.clone(),
            },
            LoomSignal { own: b, peer: a },
        )
    }
}

impl Signal for LoomSignal {
    type Error = ();
    fn notify(&self) -> Result<(), ()> {
        *self.peer.pending.lock().unwrap() = true;
        self.peer.ready.notify_one();
        Ok(())
    }
    fn wait(&self) -> Result<(), ()> {
        let mut pending = self.own.pending.lock().unwrap();
        while !*pending {
            pending = self.own.ready.wait(pending).unwrap();
        }
        *pending = false;
        Ok(())
    }
}

/// Both rings in the control page; atomics for the header, cells for the
/// ring bytes (1024.. is the left ring, 2048.. the right ring).
///
/// The set-up's standing requests (the server asks for the client's first
/// write and vice versa) are cleared, as if those first kicks had been
/// sent, so every wake-up in a model must come from the protocol itself.
fn setup() -> (Mem, vchan::Endpoint<Mem>, vchan::Endpoint<Mem>) {
    let mem = Mem(std::sync::Arc::new(LoomMem::new(4096, 1024)));
    let orders = Orders::new(10, 11).unwrap();
    let server = vchan::serve_flat(mem.clone(), orders, ServerOptions::default()).unwrap();
    let client = vchan::connect_flat(mem.clone()).unwrap();
    mem.store_u8(22, 0).unwrap();
    mem.store_u8(23, 0).unwrap();
    (mem, server, client)
}

/// Runs `f` under loom and prints how many interleavings it explored.
fn model(name: &str, f: impl Fn() + Sync + Send + 'static) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let runs = std::sync::Arc::new(AtomicU64::new(0));
    let counter = runs.clone();
    let mut builder = loom::model::Builder::new();
    // LOOM_MAX_PREEMPTIONS overrides the bound for longer runs.
    if std::env::var_os("LOOM_MAX_PREEMPTIONS").is_none() {
        builder.preemption_bound = Some(4);
    }
    builder.max_branches = 100_000;
    builder.check(move || {
        counter.fetch_add(1, Ordering::Relaxed);
        f();
    });
    println!(
        "loom {name}: {} interleavings explored",
        runs.load(Ordering::Relaxed)
    );
}

fn read_to_end<M: SharedMem, S: Signal>(s: &mut Blocking<M, S>) -> Vec<u8>
where
    S::Error: std::fmt::Debug,
{
    let mut got = Vec::new();
    loop {
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            return got;
        }
        got.extend_from_slice(&buf[..n]);
    }
}

/// A reader that blocks on an empty ring is woken by a single write: no
/// second write or close comes to rescue a lost wake-up.
#[test]
fn blocked_reader_is_woken_by_one_write() {
    model("vchan blocked_reader_is_woken_by_one_write", || {
        let (_mem, server, client) = setup();
        let (server_signal, client_signal) = LoomSignal::pair();
        let writer = thread::spawn(move || {
            let mut c = Blocking::new(client, client_signal);
            c.write_all(&[1]).unwrap();
            c
        });
        let mut s = Blocking::new(server, server_signal);
        let mut buf = [0u8; 4];
        assert_eq!(s.read(&mut buf).unwrap(), 1);
        assert_eq!(buf[0], 1);
        drop(writer.join().unwrap());
    });
}

/// A writer that blocks on a full ring is woken by a single read.
#[test]
fn blocked_writer_is_woken_by_one_read() {
    model("vchan blocked_writer_is_woken_by_one_read", || {
        let (_mem, server, mut client) = setup();
        // Fill the 1 KiB left ring before the threads start.
        assert_eq!(client.write(&[7u8; 1024]).unwrap().len, 1024);
        let (server_signal, client_signal) = LoomSignal::pair();
        let writer = thread::spawn(move || {
            let mut c = Blocking::new(client, client_signal);
            c.write_all(&[9]).unwrap();
            c
        });
        let mut s = Blocking::new(server, server_signal);
        let mut buf = [0u8; 1024];
        s.recv(&mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 7));
        s.recv(&mut buf[..1]).unwrap();
        assert_eq!(buf[0], 9);
        drop(writer.join().unwrap());
    });
}

/// Two writes and a close: the reader sees both bytes in order, then end of
/// stream (data written before the close is never lost).
#[test]
fn close_after_data_is_seen_after_the_data() {
    model("vchan close_after_data_is_seen_after_the_data", || {
        let (_mem, server, client) = setup();
        let (server_signal, client_signal) = LoomSignal::pair();
        let writer = thread::spawn(move || {
            let mut c = Blocking::new(client, client_signal);
            c.write_all(&[1]).unwrap();
            c.write_all(&[2]).unwrap();
            c.close().unwrap();
        });
        let mut s = Blocking::new(server, server_signal);
        assert_eq!(read_to_end(&mut s), [1, 2]);
        writer.join().unwrap();
    });
}

/// Packet calls: a blocked `recv` of two bytes completes only with both,
/// published by one `send`, and the bytes are visible once the index is.
#[test]
fn packet_publication_is_atomic() {
    model("vchan packet_publication_is_atomic", || {
        let (_mem, server, client) = setup();
        let (server_signal, client_signal) = LoomSignal::pair();
        let writer = thread::spawn(move || {
            let mut c = Blocking::new(client, client_signal);
            c.send(&[3, 4]).unwrap();
            c
        });
        let mut s = Blocking::new(server, server_signal);
        let mut buf = [0u8; 2];
        s.recv(&mut buf).unwrap();
        assert_eq!(buf, [3, 4]);
        drop(writer.join().unwrap());
    });
}
