//! A freestanding Linux x86-64 program that uses ring-core's vchan (and
//! its VMBus ring) with no
//! libc and no std: `_start` is ours, memory is a static buffer, and the
//! result leaves through a raw `exit_group` system call.
//!
//! Exit status 0 means every check passed; any other value names the check
//! that failed (see `run`). Given any command-line argument, the program
//! corrupts one received byte before comparing, so a working binary must
//! then exit non-zero (the test uses this to show the status is real).

#![no_std]
#![no_main]

use core::sync::atomic::AtomicU64;
use ring_core::mem::RawMem;
use ring_core::vchan::{self, Error, Orders, ServerOptions};
use ring_core::vmbus::{self, IncomingRing, OutgoingPacket, OutgoingRing, RingLayout};

/// One page: both rings inside the control page, orders (10, 11).
static IN_PAGE: [AtomicU64; 512] = [const { AtomicU64::new(0) }; 512];
/// Three pages: control page plus one external page per ring, (12, 12).
static EXTERNAL: [AtomicU64; 3 * 512] = [const { AtomicU64::new(0) }; 3 * 512];

/// One VMBus ring: control page plus 8 KiB of data.
static VMBUS: [AtomicU64; 3 * 512] = [const { AtomicU64::new(0) }; 3 * 512];

const BUF: usize = 4096;

fn pattern(pos: u32) -> u8 {
    (pos.wrapping_mul(2_654_435_761) >> 24) as u8
}

fn fill(buf: &mut [u8], from: u32) {
    let mut p = from;
    for b in buf.iter_mut() {
        *b = pattern(p);
        p = p.wrapping_add(1);
    }
}

fn same(buf: &[u8], from: u32, sabotage: bool) -> bool {
    let mut p = from;
    for (i, &b) in buf.iter().enumerate() {
        let b = if sabotage && i == 0 { b ^ 0x5a } else { b };
        if b != pattern(p) {
            return false;
        }
        p = p.wrapping_add(1);
    }
    true
}

fn ok(cond: bool, code: i32) -> Result<(), i32> {
    if cond {
        Ok(())
    } else {
        Err(code)
    }
}

/// Moves bytes both ways through a vchan over `words`; `Err(code)` names
/// the first failed step, offset by `base`.
fn run(
    words: &'static [AtomicU64],
    orders: Orders,
    start: u32,
    sabotage: bool,
    base: i32,
) -> Result<(), i32> {
    let mem = RawMem::from_atomics(words);
    let options = ServerOptions {
        initial_index: start,
    };
    let mut server = vchan::serve_flat(mem, orders, options).map_err(|_| base + 1)?;
    let mut client = vchan::connect_flat(mem).map_err(|_| base + 2)?;
    let mut out = [0u8; BUF];
    let mut back = [0u8; BUF];

    // Stream, client -> server: three rings' worth in 700-byte pieces, so
    // copies wrap at the ring end (and at u32::MAX for a high start).
    let total = 3 * client.write_capacity();
    let mut pos = 0usize;
    while pos < total {
        let n = 700.min(total - pos);
        fill(&mut out[..n], pos as u32);
        let t = client.write(&out[..n]).map_err(|_| base + 3)?;
        ok(t.len == n, base + 4)?;
        let r = server.read(&mut back[..n]).map_err(|_| base + 5)?;
        ok(r.len == n, base + 6)?;
        ok(same(&back[..n], pos as u32, sabotage && pos == 0), base + 7)?;
        pos += n;
    }

    // Full ring, server -> client: one write fills it exactly, the next
    // would block, one read empties it.
    let size = server.write_capacity();
    fill(&mut out[..size], 77);
    let t = server.write(&out[..size]).map_err(|_| base + 8)?;
    ok(t.len == size, base + 9)?;
    ok(server.write(&out[..1]) == Err(Error::WouldBlock), base + 10)?;
    ok(client.data_ready() == Ok(size), base + 11)?;
    let r = client.read(&mut back).map_err(|_| base + 12)?;
    ok(r.len == size && same(&back[..size], 77, false), base + 13)?;

    // A packet of exactly ring size, client -> server.
    let size = client.write_capacity();
    fill(&mut out[..size], 1234);
    let t = client.send(&out[..size]).map_err(|_| base + 14)?;
    ok(t.len == size, base + 14)?;
    let r = server.recv(&mut back[..size]).map_err(|_| base + 15)?;
    ok(r.len == size && same(&back[..size], 1234, false), base + 16)?;

    // Close with data pending: the reader drains, then sees end of stream.
    fill(&mut out[..10], 9);
    let t = client.write(&out[..10]).map_err(|_| base + 17)?;
    ok(t.len == 10, base + 17)?;
    let t = client.close().map_err(|_| base + 18)?;
    ok(t.notify, base + 19)?;
    let r = server.read(&mut back).map_err(|_| base + 20)?;
    ok(r.len == 10 && same(&back[..10], 9, false), base + 21)?;
    ok(server.read(&mut back).map(|t| t.len) == Ok(0), base + 22)?;
    ok(server.write(&out[..1]) == Err(Error::Closed), base + 23)?;
    ok(server.poisoned().is_none(), base + 24)?;
    Ok(())
}

/// Sends packets of many sizes through a VMBus ring (wrapping it many
/// times) and reads each back; `Err(code)` names the failed step.
fn run_vmbus(base: i32) -> Result<(), i32> {
    let layout = RingLayout::new(4096, 8192).map_err(|_| base + 1)?;
    let mem = RawMem::from_atomics(&VMBUS);
    vmbus::initialize_ring(&mem, layout).map_err(|_| base + 2)?;
    let mut tx = OutgoingRing::new(mem, layout).map_err(|_| base + 3)?;
    let mut rx = IncomingRing::new(mem, layout).map_err(|_| base + 4)?;
    let mut out = [0u8; 1000];
    let mut back = [0u8; 1000];
    for i in 0..100u32 {
        let n = 1 + (i as usize * 37) % 1000;
        fill(&mut out[..n], i);
        let t = tx
            .send(&OutgoingPacket::in_band(u64::from(i), &[&out[..n]]))
            .map_err(|_| base + 5)?;
        ok(t.notify, base + 6)?;
        let p = rx.read_packet().map_err(|_| base + 7)?;
        ok(
            p.transaction_id() == u64::from(i) && p.payload_len() == n.next_multiple_of(8),
            base + 8,
        )?;
        p.read_payload(0, &mut back[..n]).map_err(|_| base + 9)?;
        ok(same(&back[..n], i, false), base + 10)?;
        let _ = rx.commit().map_err(|_| base + 11)?;
    }
    ok(
        rx.read_packet().err() == Some(vmbus::Error::Empty),
        base + 12,
    )
}

fn main(sabotage: bool) -> i32 {
    let steps = [
        (&IN_PAGE[..], Orders::new(10, 11), 0u32, 0),
        (&EXTERNAL[..], Orders::new(12, 12), 0xffff_ff00, 40),
    ];
    for (words, orders, start, base) in steps {
        let Ok(orders) = orders else {
            return base + 30;
        };
        if let Err(code) = run(words, orders, start, sabotage, base) {
            return code;
        }
    }
    if let Err(code) = run_vmbus(100) {
        return code;
    }
    0
}

fn exit(code: i32) -> ! {
    // SAFETY: `exit_group` takes one integer argument, touches no memory
    // of ours and does not return.
    unsafe {
        core::arch::asm!(
            "syscall",
            in("rax") 231usize,
            in("rdi") code as isize,
            options(noreturn, nostack)
        )
    }
}

/// The process entry point: the kernel jumps here with the stack pointer
/// at `argc`. Align the stack the way the ABI expects at a call, and hand
/// the initial stack pointer to Rust.
///
/// # Safety
///
/// Only the kernel may enter here, once, at process start.
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn _start() -> ! {
    core::arch::naked_asm!(
        "xor ebp, ebp",
        "mov rdi, rsp",
        "and rsp, -16",
        "call {entry}",
        "ud2",
        entry = sym entry,
    )
}

unsafe extern "C" fn entry(sp: *const usize) -> ! {
    // SAFETY: `_start` passes the stack pointer the kernel set up, which
    // points at `argc`.
    let argc = unsafe { sp.read() };
    exit(main(argc > 1))
}

// ---- what the missing C runtime would provide -----------------------------
//
// memcpy & co. and the unwind stub, for a binary without libc.
extern crate freestanding;

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    exit(101)
}
