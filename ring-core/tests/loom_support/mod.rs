//! The memory door and an event channel over loom's types, shared by the
//! loom models of both protocols.
//!
//! Control words are loom atomics (so orderings and fences are modelled);
//! ring data lives in loom `UnsafeCell`s of a chosen size, so a copy that is
//! not ordered by the index publication is reported as a race; a lost
//! wake-up leaves a thread blocked in [`LoomSignal::wait`] for ever, which
//! loom reports as a deadlock.
// Each model binary uses part of it (the async models have signals of
// their own).
#![allow(dead_code)]

use loom::cell::UnsafeCell;
use loom::sync::atomic::{fence, AtomicU32, Ordering};
use loom::sync::{Arc, Condvar, Mutex};
use ring_core::mem::{MemError, SharedMem};
use ring_core::signal::Signal;

/// Which parts of the region are modelled, and how.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Bytes `[0, atomic)` are loom atomic words.
    pub atomic: usize,
    /// Bytes `[data, data + data_len)` are loom cells of `chunk` bytes;
    /// anything between `atomic` and `data` is not modelled (reads as zero,
    /// writes are dropped).
    pub data: usize,
    /// Length of the data window.
    pub data_len: usize,
    /// Race-tracking granularity of the data window.
    pub chunk: usize,
}

/// Shared memory for loom models.
pub struct LoomMem {
    shape: Shape,
    words: Vec<AtomicU32>,
    chunks: Vec<UnsafeCell<Vec<u8>>>,
}

/// One word of the atomic area or one cell of the data area, and the first
/// byte of interest in it.
enum Segment<'a> {
    Word(&'a AtomicU32, usize),
    Cell(&'a UnsafeCell<Vec<u8>>, usize),
    Unmodelled,
}

impl LoomMem {
    pub fn new(shape: Shape) -> Self {
        LoomMem {
            shape,
            words: (0..shape.atomic / 4).map(|_| AtomicU32::new(0)).collect(),
            chunks: (0..shape.data_len / shape.chunk)
                .map(|_| UnsafeCell::new(vec![0; shape.chunk]))
                .collect(),
        }
    }

    fn end(&self) -> usize {
        self.shape.data + self.shape.data_len
    }

    fn check(&self, offset: usize, len: usize) -> Result<(), MemError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.end() => Ok(()),
            _ => Err(MemError::OutOfBounds {
                offset,
                len,
                size: self.end(),
            }),
        }
    }

    /// The atomic word holding byte `offset`, and that byte's bit shift.
    fn word(&self, offset: usize) -> Result<Option<(&AtomicU32, u32)>, MemError> {
        self.check(offset, 1)?;
        Ok(self
            .words
            .get(offset / 4)
            .map(|w| (w, 8 * (offset % 4) as u32)))
    }

    /// Visits `[offset, offset + len)` one word, cell or unmodelled stretch
    /// at a time, so a copy costs one loom operation per word or cell.
    fn segments(&self, offset: usize, len: usize, mut f: impl FnMut(Segment<'_>, usize, usize)) {
        let (atomic, data, chunk) = (self.shape.atomic, self.shape.data, self.shape.chunk);
        let end = offset + len;
        let mut at = offset;
        while at < end {
            let (segment, n) = if at < atomic {
                let base = at - at % 4;
                (
                    Segment::Word(&self.words[base / 4], at - base),
                    (base + 4).min(end) - at,
                )
            } else if at < data {
                (Segment::Unmodelled, data.min(end) - at)
            } else {
                let rel = at - data;
                let base = rel - rel % chunk;
                (
                    Segment::Cell(&self.chunks[base / chunk], rel - base),
                    (data + base + chunk).min(end) - at,
                )
            };
            f(segment, at - offset, n);
            at += n;
        }
    }
}

impl SharedMem for LoomMem {
    fn size(&self) -> usize {
        self.end()
    }
    fn load_u32(&self, offset: usize) -> Result<u32, MemError> {
        if !offset.is_multiple_of(4) {
            return Err(MemError::Misaligned { offset });
        }
        Ok(self
            .word(offset)?
            .map_or(0, |(w, _)| w.load(Ordering::Acquire)))
    }
    fn store_u32(&self, offset: usize, value: u32) -> Result<(), MemError> {
        if !offset.is_multiple_of(4) {
            return Err(MemError::Misaligned { offset });
        }
        if let Some((w, _)) = self.word(offset)? {
            w.store(value, Ordering::Release);
        }
        Ok(())
    }
    fn load_u8(&self, offset: usize) -> Result<u8, MemError> {
        Ok(self
            .word(offset)?
            .map_or(0, |(w, shift)| (w.load(Ordering::Acquire) >> shift) as u8))
    }
    fn store_u8(&self, offset: usize, value: u8) -> Result<(), MemError> {
        if let Some((w, shift)) = self.word(offset)? {
            let _ = w.fetch_update(Ordering::Release, Ordering::Relaxed, |v| {
                Some((v & !(0xff << shift)) | (u32::from(value) << shift))
            });
        }
        Ok(())
    }
    fn fetch_or_u8(&self, offset: usize, bits: u8) -> Result<u8, MemError> {
        let (w, shift) = self.word(offset)?.ok_or(MemError::Misaligned { offset })?;
        Ok((w.fetch_or(u32::from(bits) << shift, Ordering::SeqCst) >> shift) as u8)
    }
    fn fetch_and_u8(&self, offset: usize, bits: u8) -> Result<u8, MemError> {
        let (w, shift) = self.word(offset)?.ok_or(MemError::Misaligned { offset })?;
        let mask = !(u32::from(!bits) << shift);
        Ok((w.fetch_and(mask, Ordering::SeqCst) >> shift) as u8)
    }
    fn fence(&self) {
        fence(Ordering::SeqCst);
    }
    fn read(&self, offset: usize, dst: &mut [u8]) -> Result<(), MemError> {
        self.check(offset, dst.len())?;
        self.segments(offset, dst.len(), |seg, to, n| match seg {
            Segment::Word(w, first) => {
                let bytes = w.load(Ordering::Relaxed).to_le_bytes();
                dst[to..to + n].copy_from_slice(&bytes[first..first + n]);
            }
            Segment::Cell(c, first) => c.with(|p| {
                // SAFETY: loom tracks this access; one that races with the
                // other thread's is reported, which is the point.
                let bytes = unsafe { &*p };
                dst[to..to + n].copy_from_slice(&bytes[first..first + n]);
            }),
            Segment::Unmodelled => dst[to..to + n].fill(0),
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
            Segment::Cell(c, first) => c.with_mut(|p| {
                // SAFETY: as in `read`: loom checks the access.
                let bytes = unsafe { &mut *p };
                bytes[first..first + n].copy_from_slice(&src[from..from + n]);
            }),
            Segment::Unmodelled => {}
        });
        Ok(())
    }
}

/// A cheap, clonable handle to one [`LoomMem`] (std's `Arc`: the reference
/// count is not part of what we model).
#[derive(Clone)]
pub struct Mem(std::sync::Arc<LoomMem>);

impl Mem {
    // Loom runs every modelled thread on one OS thread; the handle only
    // has to be shared between them, never sent to a real thread.
    #[allow(clippy::arc_with_non_send_sync)]
    pub fn new(shape: Shape) -> Self {
        Mem(std::sync::Arc::new(LoomMem::new(shape)))
    }
}

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

/// One side's pending-event flag.
#[derive(Default)]
pub struct Event {
    pub pending: Mutex<bool>,
    pub ready: Condvar,
}

/// One side of an event channel over loom's mutex and condvar.
pub struct LoomSignal {
    own: Arc<Event>,
    peer: Arc<Event>,
}

impl LoomSignal {
    pub fn pair() -> (Self, Self) {
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

/// Runs `f` under loom and prints how many interleavings it explored.
/// The preemption bound is 4 unless `LOOM_MAX_PREEMPTIONS` says otherwise.
pub fn model(name: &str, f: impl Fn() + Sync + Send + 'static) {
    model_bounded(name, 4, f);
}

/// As [`model`], with `bound` preemptions unless `LOOM_MAX_PREEMPTIONS`
/// says otherwise (models of three threads run with fewer).
pub fn model_bounded(name: &str, bound: usize, f: impl Fn() + Sync + Send + 'static) {
    if let Ok(m) = std::env::var(MUTATION_VAR) {
        match ring_core::mutation::Mutation::from_name(&m) {
            Some(m) => ring_core::mutation::apply(Some(m)),
            // A bug of the host a model stands for, which that model
            // applies itself (see `model_mutation`).
            None if MODEL_MUTATIONS.contains(&m.as_str()) => {}
            None => panic!("{MUTATION_VAR}={m}: no such mutation"),
        }
    }
    use std::sync::atomic::{AtomicU64, Ordering};
    let runs = std::sync::Arc::new(AtomicU64::new(0));
    let counter = runs.clone();
    let mut builder = loom::model::Builder::new();
    if std::env::var_os("LOOM_MAX_PREEMPTIONS").is_none() {
        builder.preemption_bound = Some(bound);
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

/// The environment variable that makes [`model`] run with a deliberate
/// bug applied (a `ring_core::mutation::Mutation` name).
pub const MUTATION_VAR: &str = "RING_LOOM_MUTATION";

/// Deliberate bugs of a host rather than of ring-core, which the models
/// that stand for that host apply themselves.
pub const MODEL_MUTATIONS: &[&str] = &["SharedRegistration"];

/// Whether the model mutation `name` (one of [`MODEL_MUTATIONS`]) is on.
pub fn model_mutation(name: &str) -> bool {
    std::env::var(MUTATION_VAR).is_ok_and(|m| m == name)
}

/// As [`must_fail`], for a bug of [`MODEL_MUTATIONS`].
pub fn must_fail_named(name: &str, test: &str) {
    assert!(MODEL_MUTATIONS.contains(&name), "{name}: no such mutation");
    run_failing(name, test);
}

/// A negative control: runs the model test `test` of this binary in a
/// child process with the deliberate bug `m` applied, and requires it to
/// fail (loom reports a lost wake-up as a deadlock, a torn copy as a data
/// race; either may abort the child). A child keeps each failing model's
/// unwinding, and loom's state after it, away from the other tests.
pub fn must_fail(m: ring_core::mutation::Mutation, test: &str) {
    run_failing(&format!("{m:?}"), test);
}

fn run_failing(m: &str, test: &str) {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(MUTATION_VAR, m)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{test} with {m}: still running after 600 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("running 1 test"),
        "{test} with {m}: the child did not run the model:\n{text}"
    );
    assert!(
        !status.success(),
        "{test} passed with {m} applied: the model no longer catches that bug"
    );
    // The panic's message is the line after "panicked at <location>:".
    let mut lines = text.lines();
    let why = lines
        .by_ref()
        .find(|l| l.contains("panicked at"))
        .and_then(|_| lines.next())
        .unwrap_or("(no panic message)");
    println!("negative control {m} on {test}: caught ({status}): {why}");
}
