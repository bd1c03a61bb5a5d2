//! A freestanding x86_64 guest for QEMU that runs `ring-core`'s vchan and
//! VMBus rings, unchanged, over an `ivshmem-plain` BAR shared with a host
//! process.
//!
//! QEMU boots it through the PVH ELF note (`src/boot.s`), the guest finds
//! the ivshmem device on PCI bus 0, wraps BAR2 in [`RawMem`] and connects to
//! the vchan the host laid out at its start as the server. Then, on
//! ring-core's blocking layer with a signal that only spins (or, with
//! `ivshmem-doorbell`, on MSI-X: see [`interrupt_run`] and [`irq`]):
//!
//! 1. receive a 16-byte header packet: [`HEADER_MAGIC`], stream length;
//! 2. read the stream, send every byte back XOR [`TRANSFORM`];
//! 3. send a 16-byte trailer packet: bytes received, FNV-1a 64 of them;
//! 4. wait for the host to close the vchan, and close it too;
//! 5. answer VMBus requests on two packet rings further up the BAR, polling
//!    (see [`vmbus_echo`]; not in the interrupt run);
//! 6. exit through `isa-debug-exit` (QEMU status 33).
//!
//! Any failure prints a line and exits with status 35; a panic does too.

#![no_std]
#![no_main]

// memcpy & co. for a binary without libc.
extern crate freestanding;
mod irq;
mod pci;
mod vmbus_echo;
mod x86;

use core::cell::Cell;
use core::convert::Infallible;
use core::fmt::Write;
use core::hint::spin_loop;
use ring_core::mem::RawMem;
use ring_core::signal::Signal;
use ring_core::vchan::{self, Endpoint, Error, FlatLayout};
use x86::{exit, Serial, EXIT_FAIL, EXIT_PASS};

core::arch::global_asm!(include_str!("boot.s"), options(att_syntax));

/// First word of the host's header packet ("RINGECHO", little-endian).
const HEADER_MAGIC: u64 = u64::from_le_bytes(*b"RINGECHO");
/// Every echoed byte is XORed with this.
const TRANSFORM: u8 = 0x5a;
/// FNV-1a 64's starting value.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// The PVH `hvm_start_info` magic.
const PVH_MAGIC: u32 = 0x336e_c578;
const IVSHMEM_VENDOR: u16 = 0x1af4;
const IVSHMEM_DEVICE: u16 = 0x1110;

/// Called by `boot.s` in long mode with the PVH start-info address.
#[no_mangle]
pub extern "C" fn rust_main(start_info: u32) -> ! {
    let mut out = Serial;
    // SAFETY: the PVH loader passes the address of its start-info block, in
    // low memory that our identity map covers; one aligned 4-byte read.
    let magic = unsafe { (start_info as usize as *const u32).read_volatile() };
    let _ = writeln!(
        out,
        "guest: booted, start info {start_info:#x}, magic {magic:#x}"
    );
    if magic != PVH_MAGIC {
        fail("not started through PVH");
    }
    let Some(dev) = pci::find(IVSHMEM_VENDOR, IVSHMEM_DEVICE) else {
        fail("no ivshmem-plain device on PCI bus 0");
    };
    // ivshmem-doorbell has MSI-X (ivshmem-plain has none): the run on
    // interrupts.
    if dev.capability(0x11).is_some() {
        interrupt_run(dev);
    }
    let bar = match dev.bar2() {
        Ok(bar) => bar,
        Err(e) => {
            let _ = writeln!(out, "guest: {e}");
            exit(EXIT_FAIL);
        }
    };
    let _ = writeln!(
        out,
        "guest: ivshmem at 00:{:02x}.{} BAR2 {:#x} size {:#x}{}",
        dev.device,
        dev.function,
        bar.base,
        bar.size,
        if bar.assigned_here {
            " (assigned here)"
        } else {
            ""
        }
    );
    // BAR2 is only ever touched through `RawMem` views (atomics and raw
    // copies), here and by the host.
    let Some(mem) =
        // SAFETY: BAR2 is the ivshmem RAM, identity-mapped below 4 GiB (see
        // `pci`) and mapped for the guest's whole life.
        (unsafe { RawMem::from_raw_parts(bar.base as usize as *mut u8, bar.size as usize) })
    else {
        fail("BAR2 is not 8-byte aligned");
    };
    match echo(
        mem,
        PollSignal {
            polls: Cell::new(0),
        },
    ) {
        Ok((len, sum, sig)) => {
            let _ = writeln!(
                out,
                "guest: vchan echoed {len} bytes, fnv {sum:#018x}; polls that found nothing to do {}",
                sig.polls.get()
            );
        }
        Err(e) => {
            let _ = writeln!(out, "guest: vchan error: {e}");
            exit(EXIT_FAIL);
        }
    }
    let ring_size = match vmbus_echo::layout() {
        Ok(layout) => layout.total_size(),
        Err(e) => {
            let _ = writeln!(out, "guest: vmbus layout: {e}");
            exit(EXIT_FAIL);
        }
    };
    if bar.size < (vmbus_echo::G2H_AT + ring_size) as u64 {
        fail("BAR2 too small for the vmbus rings");
    }
    let base = bar.base as usize as *mut u8;
    // SAFETY: as for `mem`: the ring lies inside BAR2 (checked above) and is
    // only touched through `RawMem`; the host→guest ring's bytes.
    let h2g = unsafe { RawMem::from_raw_parts(base.wrapping_add(vmbus_echo::H2G_AT), ring_size) };
    // SAFETY: as above, for the guest→host ring.
    let g2h = unsafe { RawMem::from_raw_parts(base.wrapping_add(vmbus_echo::G2H_AT), ring_size) };
    let (Some(h2g), Some(g2h)) = (h2g, g2h) else {
        fail("vmbus rings are not 8-byte aligned");
    };
    match vmbus_echo::serve(h2g, g2h) {
        Ok(s) => {
            let _ = writeln!(
                out,
                "guest: vmbus answered {} requests, {} bytes, fnv {:#018x}; polls that found the ring empty {}, full {}",
                s.requests, s.bytes, s.hash, s.empty, s.full
            );
        }
        Err(e) => {
            let _ = writeln!(out, "guest: vmbus error: {e}");
            exit(EXIT_FAIL);
        }
    }
    let _ = writeln!(out, "guest: done");
    exit(EXIT_PASS);
}

/// The signal of the polling run (`ivshmem-plain` has no interrupts):
/// `notify` does nothing (the host polls too), `wait` is one spin, counted.
struct PollSignal {
    polls: Cell<u64>,
}

impl Signal for PollSignal {
    type Error = Infallible;

    fn notify(&self) -> Result<(), Infallible> {
        Ok(())
    }

    fn wait(&self) -> Result<(), Infallible> {
        self.polls.set(self.polls.get() + 1);
        spin_loop();
        Ok(())
    }
}

/// FNV-1a 64 over `bytes`, continuing from `hash`.
fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Where BAR0 (registers) and BAR1 (MSI-X table) go when unassigned: high
/// in q35's 32-bit PCI hole, clear of its MMCONFIG window (0xb000_0000,
/// 256 MiB), of BAR2's fallback and of the I/O APIC (0xfec0_0000).
const BAR0_FALLBACK: u32 = 0xfe00_0000;
const BAR1_FALLBACK: u32 = 0xfe00_1000;

/// The ivshmem-doorbell run: the same echo as [`echo`], on ring-core's
/// blocking layer, woken only by MSI-X (sleeping in `hlt`) and kicking the
/// host through the doorbell. Exits QEMU.
fn interrupt_run(dev: pci::Function) -> ! {
    let mut out = Serial;
    let (Some(regs), Some(table)) = (dev.bar32(0, BAR0_FALLBACK), dev.bar32(1, BAR1_FALLBACK))
    else {
        fail("ivshmem-doorbell without 32-bit BAR0 and BAR1");
    };
    let bar = match dev.bar2() {
        Ok(bar) => bar,
        Err(e) => {
            let _ = writeln!(out, "guest: {e}");
            exit(EXIT_FAIL);
        }
    };
    irq::init();
    let Some(vectors) = irq::enable_msix(dev, |i| match i {
        0 => Some(regs.base),
        1 => Some(table.base),
        _ => None,
    }) else {
        fail("MSI-X table not in BAR0 or BAR1");
    };
    let _ = writeln!(
        out,
        "guest: ivshmem-doorbell BAR0 {:#x} BAR1 {:#x} BAR2 {:#x} size {:#x}; {vectors} MSI-X vectors, vector 0 -> {:#x}",
        regs.base, table.base, bar.base, bar.size, irq::VECTOR
    );
    let Some(mem) =
        // SAFETY: BAR2 is the ivshmem RAM, identity-mapped below 4 GiB (see
        // `pci`) and mapped for the guest's whole life.
        (unsafe { RawMem::from_raw_parts(bar.base as usize as *mut u8, bar.size as usize) })
    else {
        fail("BAR2 is not 8-byte aligned");
    };
    // Self-test before joining the ring: ring our own doorbell and see the
    // MSI-X interrupt arrive (a device or APIC set up wrong fails here, in
    // its own words, rather than as a lost wake-up later).
    // SAFETY: BAR0's IVPosition register (offset 8), identity-mapped MMIO.
    let me = unsafe { ((regs.base as usize + 8) as *const u32).read_volatile() };
    // SAFETY: the doorbell (offset 12): ring ourselves on vector 0.
    unsafe { ((regs.base as usize + 12) as *mut u32).write_volatile(me << 16) };
    // Interrupts stay off: the message waits in the APIC's request register.
    let mut spins = 0u64;
    while !irq::pending() && spins < 20_000_000 {
        spins += 1;
        spin_loop();
    }
    if !irq::pending() {
        let cap = dev.capability(0x11).unwrap_or(0);
        // SAFETY: MSI-X table entry 0, in BAR1 (MMIO).
        let e0 = unsafe { (table.base as usize as *const [u32; 4]).read_volatile() };
        let _ = writeln!(
            out,
            "guest: MSI-X self-test: no interrupt after {spins} spins; command {:#x}, MSI-X control {:#x}, entry 0 {e0:x?}",
            dev.read(0x04),
            dev.read16(cap + 2)
        );
        exit(EXIT_FAIL);
    }
    let signal = irq::DoorbellSignal {
        doorbell: (regs.base as usize + 12) as *mut u32,
        seen: Cell::new(0),
        kicks: Cell::new(0),
        sleeps: Cell::new(0),
    };
    // Take the self-test's interrupt (it ends the first `hlt` at once).
    let _ = signal.wait();
    let _ = writeln!(
        out,
        "guest: MSI-X self-test: peer {me} rang itself, interrupt {:?} taken",
        irq::counts()
    );
    match echo(mem, signal) {
        Ok((len, sum, sig)) => {
            let (ours, other) = irq::counts();
            let _ = writeln!(
                out,
                "guest: interrupts echoed {len} bytes, fnv {sum:#018x}; interrupts {ours} (other vectors {other}), doorbell kicks {}, hlt sleeps {}",
                sig.kicks.get(),
                sig.sleeps.get()
            );
            let _ = writeln!(out, "guest: done");
            exit(EXIT_PASS);
        }
        Err(e) => {
            let (ours, other) = irq::counts();
            let _ = writeln!(
                out,
                "guest: vchan error: {e:?} (interrupts {ours}, other {other})"
            );
            exit(EXIT_FAIL);
        }
    }
}

/// The guest's side of the exchange, on ring-core's blocking layer over
/// `signal` (a spin for the polling run, MSI-X and `hlt` for the
/// interrupt run): the header, every byte back XOR [`TRANSFORM`], the
/// trailer, then the host's close. Returns the bytes echoed, their hash and
/// the signal (with its counts).
fn echo<S: Signal<Error = Infallible>>(
    mem: RawMem<'_>,
    signal: S,
) -> Result<(u64, u64, S), vchan::BlockingError<Infallible>> {
    let ep: Endpoint<RawMem<'_>> = vchan::connect_flat(mem)?;
    let mut s = vchan::Blocking::new(ep, signal);
    // As libxenvchan's client: one event once connected.
    s.kick()?;
    let mut header = [0u8; 16];
    s.recv(&mut header)?;
    let (magic, len) = split_words(&header);
    if magic != HEADER_MAGIC {
        fail("bad header magic");
    }
    if FlatLayout::new(s.endpoint().orders()).size > vmbus_echo::H2G_AT {
        fail("vchan rings would overlap the vmbus rings");
    }
    let mut buf = [0u8; 16 * 1024];
    let mut hash = FNV_OFFSET;
    let mut done = 0u64;
    while done < len {
        let want = buf
            .len()
            .min(usize::try_from(len - done).unwrap_or(usize::MAX));
        let got = s.read(&mut buf[..want])?;
        if got == 0 {
            return Err(Error::Closed.into());
        }
        let chunk = &mut buf[..got];
        hash = fnv1a(hash, chunk);
        for b in chunk.iter_mut() {
            *b ^= TRANSFORM;
        }
        s.write_all(&buf[..got])?;
        done += got as u64;
    }
    let mut trailer = [0u8; 16];
    trailer[..8].copy_from_slice(&done.to_le_bytes());
    trailer[8..].copy_from_slice(&hash.to_le_bytes());
    s.send(&trailer)?;
    // The host closes once it has read everything.
    if s.read(&mut [0u8; 1])? != 0 {
        fail("unexpected byte after the stream");
    }
    let _ = s.close();
    let (_, signal) = s.into_parts();
    Ok((done, hash, signal))
}

/// The two little-endian `u64`s of a 16-byte packet.
fn split_words(packet: &[u8; 16]) -> (u64, u64) {
    let mut a = [0u8; 8];
    let mut b = [0u8; 8];
    a.copy_from_slice(&packet[..8]);
    b.copy_from_slice(&packet[8..]);
    (u64::from_le_bytes(a), u64::from_le_bytes(b))
}

fn fail(what: &str) -> ! {
    let _ = writeln!(Serial, "guest: {what}");
    exit(EXIT_FAIL);
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let _ = writeln!(Serial, "guest: panic: {info}");
    exit(EXIT_FAIL);
}
