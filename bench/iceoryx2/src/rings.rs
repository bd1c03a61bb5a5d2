//! Our contenders: ring-hosted's vchan stream and VMBus pipe between the
//! two processes, set up through the rendezvous, both signals spinning
//! for [`SPIN`] before they would arm a wake-up and sleep — so every wait
//! in these jobs is a busy poll of the ring, and the VMBus readers keep
//! their interrupt mask set ([`poll_vmbus`]). The kick counts in the
//! tables show what is left: none, except a few from the VMBus byte
//! stream's writer, whose first full-size attempt on a nearly full ring
//! arms `pending_send_size` for an instant before it writes a shorter
//! packet.

use crate::pattern::{check_bytes, fill_bytes, CHUNK, PING};
use crate::sys::DEADLINE;
use crate::Timing;
use ring_core::loan::{Drained, Span, SpanReader, SpanWriter};
use ring_core::mem::SharedMem;
use ring_hosted::stream::{PollStream, VchanStream};
use ring_hosted::vmbus::{RingMem, VmbusPipe};
use ring_hosted::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The signals' spin budget: ring-hosted's maximum, far longer than any
/// wait in a job, so neither side ever sleeps.
pub const SPIN: Duration = Duration::from_secs(1);

/// Bytes of each ring (the same both ways).
pub const RING: usize = 256 << 10;

/// The default size of the small buffer the in-place rows stage the
/// pattern through (`--stage`): the span cursors only copy from and into
/// byte slices (`SharedMem::write`/`read`), so a pattern cannot be stored
/// into the ring word by word.
pub const STAGE: usize = 256;

/// How a job drives a ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// The byte stream: `write_all` / `read`.
    Stream,
    /// Whole packets or messages: vchan `send`/`recv`, VMBus
    /// `send_msg`/`recv_msg`.
    Packet,
    /// In place, one attempt at a time: `try_write_with`/`try_read_with`
    /// on the blocking wrapper, spinning on `spin_ready` in between; a
    /// write takes whatever room there is (up to 4 KiB).
    Try,
    /// In place, blocking reservations: `write_with` waits for room for a
    /// whole 4 KiB chunk, `read_with` for something to read.
    Reserve,
}

fn os(what: &'static str) -> impl Fn(Error) -> String {
    move |e| format!("{what}: {e}")
}

/// What the jobs need from either ring: thin doors to ring-hosted and
/// ring-core's blocking wrappers.
pub trait Link {
    /// The memory the ring's spans index.
    type Mem: SharedMem;
    /// One whole packet or message.
    fn send_whole(&mut self, b: &[u8]) -> Result<(), String>;
    /// One whole packet or message of exactly `b.len()` bytes.
    fn recv_whole(&mut self, b: &mut [u8]) -> Result<(), String>;
    /// Blocking stream write of all of `b`.
    fn write_all(&mut self, b: &[u8]) -> Result<(), String>;
    /// Blocking stream read of at least one byte (0: end of stream).
    fn read(&mut self, b: &mut [u8]) -> Result<usize, String>;
    /// One in-place write attempt (`None`: full, wake-up armed).
    fn try_write_with(
        &mut self,
        max: usize,
        fill: impl FnOnce(&Self::Mem, &[Span]) -> usize,
    ) -> Result<Option<usize>, String>;
    /// One in-place read attempt (`None`: empty, wake-up armed).
    fn try_read_with(
        &mut self,
        max: usize,
        drain: impl FnOnce(&Self::Mem, &[Span]) -> usize,
    ) -> Result<Option<Drained>, String>;
    /// Blocking in-place write of exactly `want` bytes' room.
    fn write_with(
        &mut self,
        want: usize,
        fill: impl FnOnce(&Self::Mem, &[Span]) -> usize,
    ) -> Result<usize, String>;
    /// Blocking in-place read of up to `max` bytes.
    fn read_with(
        &mut self,
        max: usize,
        drain: impl FnOnce(&Self::Mem, &[Span]) -> usize,
    ) -> Result<Drained, String>;
    /// Spins for the signal's budget until the ring is ready.
    fn spin_ready(&mut self, read: bool, write: bool) -> bool;
    /// Sleeps until a kick, at most [`DEADLINE`].
    fn wait(&mut self) -> Result<(), String>;
    /// Kicks this side has made so far.
    fn kicks(&self) -> u64;
}

impl Link for VchanStream {
    type Mem = Arc<ring_hosted::memfd::MemFd>;
    fn send_whole(&mut self, b: &[u8]) -> Result<(), String> {
        self.send(b).map_err(os("send"))
    }
    fn recv_whole(&mut self, b: &mut [u8]) -> Result<(), String> {
        self.recv(b).map_err(os("recv"))
    }
    fn write_all(&mut self, b: &[u8]) -> Result<(), String> {
        VchanStream::write_all(self, b).map_err(os("write_all"))
    }
    fn read(&mut self, b: &mut [u8]) -> Result<usize, String> {
        VchanStream::read(self, b).map_err(os("read"))
    }
    fn try_write_with(
        &mut self,
        max: usize,
        fill: impl FnOnce(&Self::Mem, &[Span]) -> usize,
    ) -> Result<Option<usize>, String> {
        let r = self.blocking().try_write_with(max, fill);
        r.map_err(|e| os("try_write_with")(e.into()))
    }
    fn try_read_with(
        &mut self,
        max: usize,
        drain: impl FnOnce(&Self::Mem, &[Span]) -> usize,
    ) -> Result<Option<Drained>, String> {
        let r = self.blocking().try_read_with(max, drain);
        r.map_err(|e| os("try_read_with")(e.into()))
    }
    fn write_with(
        &mut self,
        want: usize,
        fill: impl FnOnce(&Self::Mem, &[Span]) -> usize,
    ) -> Result<usize, String> {
        let r = self.blocking().write_with(want, fill);
        r.map_err(|e| os("write_with")(e.into()))
    }
    fn read_with(
        &mut self,
        max: usize,
        drain: impl FnOnce(&Self::Mem, &[Span]) -> usize,
    ) -> Result<Drained, String> {
        let r = self.blocking().read_with(max, drain);
        r.map_err(|e| os("read_with")(e.into()))
    }
    fn spin_ready(&mut self, read: bool, write: bool) -> bool {
        self.blocking().spin_ready(read, write)
    }
    fn wait(&mut self) -> Result<(), String> {
        let r = self
            .blocking()
            .wait_with(|s| s.wait_timeout(Some(DEADLINE)));
        r.map(drop).map_err(|e| os("wait")(e.into()))
    }
    fn kicks(&self) -> u64 {
        self.signal().kicks()
    }
}

impl Link for VmbusPipe {
    type Mem = RingMem;
    fn send_whole(&mut self, b: &[u8]) -> Result<(), String> {
        self.send_msg(b).map_err(os("send_msg"))
    }
    fn recv_whole(&mut self, b: &mut [u8]) -> Result<(), String> {
        let n = self.recv_msg(b).map_err(os("recv_msg"))?;
        if n != b.len() {
            return Err(format!("recv_msg: a {n}-byte message, not {}", b.len()));
        }
        Ok(())
    }
    fn write_all(&mut self, b: &[u8]) -> Result<(), String> {
        VmbusPipe::write_all(self, b).map_err(os("write_all"))
    }
    fn read(&mut self, b: &mut [u8]) -> Result<usize, String> {
        VmbusPipe::read(self, b).map_err(os("read"))
    }
    fn try_write_with(
        &mut self,
        max: usize,
        fill: impl FnOnce(&Self::Mem, &[Span]) -> usize,
    ) -> Result<Option<usize>, String> {
        let r = self.blocking().try_write_with(max, fill);
        r.map_err(|e| os("try_write_with")(e.into()))
    }
    fn try_read_with(
        &mut self,
        max: usize,
        drain: impl FnOnce(&Self::Mem, &[Span]) -> usize,
    ) -> Result<Option<Drained>, String> {
        let r = self.blocking().try_read_with(max, drain);
        r.map_err(|e| os("try_read_with")(e.into()))
    }
    fn write_with(
        &mut self,
        want: usize,
        fill: impl FnOnce(&Self::Mem, &[Span]) -> usize,
    ) -> Result<usize, String> {
        let r = self.blocking().write_with(want, fill);
        r.map_err(|e| os("write_with")(e.into()))
    }
    fn read_with(
        &mut self,
        max: usize,
        drain: impl FnOnce(&Self::Mem, &[Span]) -> usize,
    ) -> Result<Drained, String> {
        let r = self.blocking().read_with(max, drain);
        r.map_err(|e| os("read_with")(e.into()))
    }
    fn spin_ready(&mut self, read: bool, write: bool) -> bool {
        self.blocking().spin_ready(read, write)
    }
    fn wait(&mut self) -> Result<(), String> {
        let r = self
            .blocking()
            .wait_with(|s| s.wait_timeout(Some(DEADLINE)));
        r.map(drop).map_err(|e| os("wait")(e.into()))
    }
    fn kicks(&self) -> u64 {
        // No inherent `signal()` on VmbusPipe: through the poll trait.
        PollStream::signal(self).kicks()
    }
}

/// Makes a VMBus end a busy-polling reader: the interrupt mask set and
/// left set, so the writer never signals new data. Without it the mask
/// stays clear (the VMBus default) and every packet into an empty ring
/// costs the writer an eventfd kick, although the reader is spinning.
///
/// # Errors
///
/// If the mask cannot be stored.
pub fn poll_vmbus(p: &mut VmbusPipe) -> Result<(), String> {
    let ring = p.blocking().reader().ring();
    ring.set_interrupts(false);
    ring.mask_interrupts()
        .map_err(|e| format!("VMBus mask_interrupts: {e}"))
}

/// `count` round trips of job `job`, each timed into `rtts`; the reply
/// must equal the ping.
pub fn ping<L: Link>(l: &mut L, job: u64, count: u64, rtts: &mut Vec<u64>) -> Result<(), String> {
    let mut buf = [0u8; PING];
    let mut got = [0u8; PING];
    for i in 0..count {
        fill_bytes(&mut buf, job, i * PING as u64);
        let t0 = Instant::now();
        l.send_whole(&buf)?;
        l.recv_whole(&mut got)?;
        let same = got == buf;
        let dt = t0.elapsed();
        if !same {
            return Err(format!(
                "pong {i} differs from its ping: {}",
                check_bytes(&got, job, i * PING as u64)
                    .err()
                    .unwrap_or_default()
            ));
        }
        rtts.push(dt.as_nanos() as u64);
    }
    Ok(())
}

/// Answers `count` pings, checking each against the pattern.
pub fn pong<L: Link>(l: &mut L, job: u64, count: u64) -> Result<(), String> {
    let mut buf = [0u8; PING];
    for i in 0..count {
        l.recv_whole(&mut buf)?;
        check_bytes(&buf, job, i * PING as u64)?;
        l.send_whole(&buf)?;
    }
    Ok(())
}

/// Writes `count` 4 KiB chunks, each filled fresh in a private buffer
/// (`api`: as a stream or as whole packets).
pub fn write_copy<L: Link>(l: &mut L, api: Api, job: u64, count: u64) -> Result<(), String> {
    let mut buf = [0u8; CHUNK];
    for s in 0..count {
        fill_bytes(&mut buf, job, s * CHUNK as u64);
        match api {
            Api::Packet => l.send_whole(&buf)?,
            _ => l.write_all(&buf)?,
        }
    }
    Ok(())
}

/// Reads `count` 4 KiB chunks into a private buffer and checks each.
pub fn read_copy<L: Link>(l: &mut L, api: Api, job: u64, count: u64) -> Result<Timing, String> {
    let mut buf = [0u8; CHUNK];
    let mut first = None;
    for s in 0..count {
        if api == Api::Packet {
            l.recv_whole(&mut buf)?;
        } else {
            let mut have = 0;
            while have < CHUNK {
                match l.read(&mut buf[have..])? {
                    0 => return Err(format!("end of stream in chunk {s} of {count}")),
                    n => have += n,
                }
            }
        }
        check_bytes(&buf, job, s * CHUNK as u64)?;
        if s == 0 {
            first = Some(Instant::now());
        }
    }
    Ok(Timing::since(first, count.saturating_sub(1) * CHUNK as u64))
}

/// Fills the loaned spans with the stream's bytes from offset `pos` on,
/// through a [`SpanWriter`], `stage.len()` bytes at a time from `stage`;
/// returns the bytes written.
fn fill_spans<M: SharedMem>(
    mem: &M,
    spans: &[Span],
    job: u64,
    pos: u64,
    stage: &mut [u8],
) -> usize {
    let mut w = SpanWriter::new(mem, spans);
    let cap = w.capacity();
    while w.len() < cap {
        let k = (cap - w.len()).min(stage.len());
        fill_bytes(&mut stage[..k], job, pos + w.len() as u64);
        if embedded_io::Write::write_all(&mut w, &stage[..k]).is_err() {
            break;
        }
    }
    w.len()
}

/// Checks the loaned spans against the stream from offset `pos` on,
/// reading them through a [`SpanReader`] (`stage.len()` bytes at a time
/// into `stage`); returns the bytes checked good, and puts the first
/// mismatch into `bad`.
fn check_spans<M: SharedMem>(
    mem: &M,
    spans: &[Span],
    job: u64,
    pos: u64,
    stage: &mut [u8],
    bad: &mut Option<String>,
) -> usize {
    let mut r = SpanReader::new(mem, spans);
    let len = r.len();
    while r.consumed() < len {
        let at = r.consumed();
        let k = (len - at).min(stage.len());
        if let Err(e) = embedded_io::Read::read_exact(&mut r, &mut stage[..k]) {
            *bad = Some(format!("reading the loaned span: {e:?}"));
            return at;
        }
        if let Err(e) = check_bytes(&stage[..k], job, pos + at as u64) {
            *bad = Some(e);
            return at;
        }
    }
    r.consumed()
}

/// Writes `count` 4 KiB chunks' worth of the pattern straight into the
/// ring's free space, at most 4 KiB per call (`Api::Try`: whatever room
/// there is; `Api::Reserve`: a whole 4 KiB each time), staged through
/// `stage` bytes.
pub fn write_in_place<L: Link>(
    l: &mut L,
    api: Api,
    job: u64,
    count: u64,
    stage: usize,
) -> Result<(), String> {
    let total = count * CHUNK as u64;
    let mut pos = 0u64;
    let mut buf = vec![0u8; stage.clamp(8, CHUNK)];
    while pos < total {
        let want = (total - pos).min(CHUNK as u64) as usize;
        let at = pos;
        let stage = &mut buf[..];
        let fill = |mem: &L::Mem, spans: &[Span]| fill_spans(mem, spans, job, at, stage);
        if api == Api::Reserve {
            match l.write_with(want, fill)? {
                n if n == want => pos += n as u64,
                n => return Err(format!("write_with({want}) published {n} bytes")),
            }
            continue;
        }
        l.spin_ready(false, true);
        match l.try_write_with(want, fill)? {
            Some(n) => pos += n as u64,
            None => l.wait()?,
        }
    }
    Ok(())
}

/// Reads and checks `count` 4 KiB chunks' worth of the pattern in the
/// ring itself, at most 4 KiB per call (`Api::Try`: `try_read_with` and
/// `spin_ready`; `Api::Reserve`: the blocking `read_with`), staged
/// through `stage` bytes.
pub fn read_in_place<L: Link>(
    l: &mut L,
    api: Api,
    job: u64,
    count: u64,
    stage: usize,
) -> Result<Timing, String> {
    let total = count * CHUNK as u64;
    let mut pos = 0u64;
    let mut first: Option<(Instant, u64)> = None;
    let mut bad = None;
    let mut buf = vec![0u8; stage.clamp(8, CHUNK)];
    while pos < total {
        let want = (total - pos).min(CHUNK as u64) as usize;
        let at = pos;
        let (stage, bad_slot) = (&mut buf[..], &mut bad);
        let drain =
            |mem: &L::Mem, spans: &[Span]| check_spans(mem, spans, job, at, stage, bad_slot);
        let got = if api == Api::Reserve {
            Some(l.read_with(want, drain)?)
        } else {
            l.spin_ready(true, false);
            l.try_read_with(want, drain)?
        };
        match got {
            Some(Drained::Took(n)) => {
                if let Some(e) = bad.take() {
                    return Err(e);
                }
                pos += n as u64;
                if first.is_none() {
                    first = Some((Instant::now(), pos));
                }
            }
            Some(Drained::End) => return Err(format!("end of stream at byte {pos} of {total}")),
            None => l.wait()?,
        }
    }
    let (t, b0) = first.map_or((None, 0), |(t, b)| (Some(t), b));
    Ok(Timing::since(t, total - b0))
}
