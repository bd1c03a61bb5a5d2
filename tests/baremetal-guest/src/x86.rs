//! The little hardware this guest touches: port I/O, the COM1 serial port
//! and QEMU's `isa-debug-exit` device.

use core::arch::asm;
use core::fmt;

/// Writes a byte to an I/O port.
pub fn outb(port: u16, value: u8) {
    // SAFETY: port writes touch only device state, never memory; this guest
    // owns the whole machine and runs with interrupts off.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    };
}

/// Reads a byte from an I/O port.
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as for `outb`: a port read has no effect on memory.
    unsafe {
        asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    value
}

/// Writes a 32-bit word to an I/O port.
pub fn outl(port: u16, value: u32) {
    // SAFETY: as for `outb`.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    };
}

/// Reads a 32-bit word from an I/O port.
pub fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: as for `outb`.
    unsafe {
        asm!("in eax, dx", out("eax") value, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    value
}

const COM1: u16 = 0x3f8;
/// Line status register bit: the transmit holding register is empty.
const LSR_THR_EMPTY: u8 = 0x20;

/// COM1, as QEMU sets it up; `-serial stdio` shows what we write.
pub struct Serial;

impl Serial {
    fn put(&mut self, byte: u8) {
        // QEMU's UART is always ready, but a real one is not: bounded wait.
        for _ in 0..100_000 {
            if inb(COM1 + 5) & LSR_THR_EMPTY != 0 {
                break;
            }
        }
        outb(COM1, byte);
    }
}

impl fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for byte in s.bytes() {
            if byte == b'\n' {
                self.put(b'\r');
            }
            self.put(byte);
        }
        Ok(())
    }
}

/// `isa-debug-exit` at its default port: QEMU exits with `(code << 1) | 1`.
const DEBUG_EXIT: u16 = 0xf4;
/// QEMU exits with status 33.
pub const EXIT_PASS: u32 = 0x10;
/// QEMU exits with status 35.
pub const EXIT_FAIL: u32 = 0x11;

/// Ends the virtual machine with `code`; halts if no exit device is there.
pub fn exit(code: u32) -> ! {
    outl(DEBUG_EXIT, code);
    loop {
        // SAFETY: `hlt` only waits; interrupts are off, so it never returns
        // into anything unexpected.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}
