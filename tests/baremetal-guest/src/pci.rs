//! Just enough PCI: a scan of bus 0 through the legacy configuration ports,
//! and finding (or assigning) a device's 64-bit memory BAR2.

use crate::x86::{inl, outl};

const CONFIG_ADDRESS: u16 = 0xcf8;
const CONFIG_DATA: u16 = 0xcfc;

const COMMAND: u8 = 0x04;
const COMMAND_MEMORY: u32 = 0x2;
const HEADER_TYPE: u8 = 0x0e;
const BAR2: u8 = 0x18;
const BAR3: u8 = 0x1c;
const BAR_TYPE_MASK: u32 = 0x6;
const BAR_TYPE_64: u32 = 0x4;

/// Where we put BAR2 if the firmware left it unassigned or above the 4 GiB
/// we identity-map: free on both QEMU `pc` and `q35`.
const FALLBACK_BASE: u64 = 0xc000_0000;
const MAPPED_LIMIT: u64 = 1 << 32;

/// A PCI function on bus 0.
#[derive(Clone, Copy, Debug)]
pub struct Function {
    /// Device number.
    pub device: u8,
    /// Function number.
    pub function: u8,
}

/// A memory BAR: physical base and size in bytes.
#[derive(Clone, Copy, Debug)]
pub struct Bar {
    /// Physical (and, identity-mapped, virtual) address.
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
    /// True if we had to assign the address ourselves.
    pub assigned_here: bool,
}

/// Why BAR2 is not usable.
#[derive(Clone, Copy, Debug)]
pub enum BarError {
    /// BAR2 is not a 64-bit memory BAR.
    NotMemory64(u32),
    /// BAR2 sizes to zero or to more than we can map below 4 GiB.
    BadSize(u64),
}

impl core::fmt::Display for BarError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            BarError::NotMemory64(raw) => write!(f, "BAR2 is not 64-bit memory (raw {raw:#x})"),
            BarError::BadSize(size) => write!(f, "BAR2 size {size:#x} is not usable"),
        }
    }
}

impl Function {
    fn address(self, offset: u8) -> u32 {
        0x8000_0000
            | (u32::from(self.device) << 11)
            | (u32::from(self.function) << 8)
            | u32::from(offset & 0xfc)
    }

    /// Reads the configuration dword at `offset`.
    pub fn read(self, offset: u8) -> u32 {
        outl(CONFIG_ADDRESS, self.address(offset));
        inl(CONFIG_DATA)
    }

    /// Writes the configuration dword at `offset`.
    pub fn write(self, offset: u8, value: u32) {
        outl(CONFIG_ADDRESS, self.address(offset));
        outl(CONFIG_DATA, value);
    }

    /// Vendor and device id.
    pub fn ids(self) -> (u16, u16) {
        let id = self.read(0);
        (id as u16, (id >> 16) as u16)
    }

    /// Finds BAR2 (64-bit memory), sizes it, places it below 4 GiB if the
    /// firmware did not, and turns on memory decoding.
    pub fn bar2(self) -> Result<Bar, BarError> {
        let command = self.read(COMMAND);
        // Decoding off while the BAR holds all-ones, or the VMM maps it there.
        self.write(COMMAND, command & !0x7 & 0xffff);
        let low = self.read(BAR2);
        if low & 1 != 0 || low & BAR_TYPE_MASK != BAR_TYPE_64 {
            self.write(COMMAND, command & 0xffff);
            return Err(BarError::NotMemory64(low));
        }
        let high = self.read(BAR3);
        self.write(BAR2, 0xffff_ffff);
        self.write(BAR3, 0xffff_ffff);
        let mask = (u64::from(self.read(BAR3)) << 32) | u64::from(self.read(BAR2) & !0xf);
        let size = (!mask).wrapping_add(1);
        let mut base = (u64::from(high) << 32) | u64::from(low & !0xf);
        let assigned_here = base == 0 || base.saturating_add(size) > MAPPED_LIMIT;
        if size == 0 || !size.is_power_of_two() || size > FALLBACK_BASE / 4 {
            self.write(BAR2, low);
            self.write(BAR3, high);
            self.write(COMMAND, command & 0xffff);
            return Err(BarError::BadSize(size));
        }
        if assigned_here {
            base = FALLBACK_BASE;
        }
        self.write(BAR2, (base as u32) | (low & 0xf));
        self.write(BAR3, (base >> 32) as u32);
        self.write(COMMAND, (command | COMMAND_MEMORY) & 0xffff);
        Ok(Bar {
            base,
            size,
            assigned_here,
        })
    }
}

impl Function {
    /// The byte of configuration space at `offset`.
    pub fn read8(self, offset: u8) -> u8 {
        (self.read(offset) >> (8 * u32::from(offset & 3))) as u8
    }

    /// The 16-bit word of configuration space at `offset` (even).
    pub fn read16(self, offset: u8) -> u16 {
        (self.read(offset) >> (8 * u32::from(offset & 2))) as u16
    }

    /// Finds capability `id` in the capability list (bounded: at most 48
    /// entries fit in the 192 bytes after the header).
    pub fn capability(self, id: u8) -> Option<u8> {
        if self.read16(0x06) & 0x10 == 0 {
            return None;
        }
        let mut at = self.read8(0x34) & 0xfc;
        for _ in 0..48 {
            if at < 0x40 {
                return None;
            }
            if self.read8(at) == id {
                return Some(at);
            }
            at = self.read8(at + 1) & 0xfc;
        }
        None
    }

    /// A 32-bit memory BAR (`index` 0..=5): its base, placed at `fallback`
    /// if the firmware left it unassigned, and its size; `None` if it is
    /// not 32-bit memory or sizes to zero. Memory decoding is left on.
    pub fn bar32(self, index: u8, fallback: u32) -> Option<Bar> {
        let at = 0x10 + 4 * index;
        let command = self.read(COMMAND);
        self.write(COMMAND, command & !0x7 & 0xffff);
        let raw = self.read(at);
        self.write(at, 0xffff_ffff);
        let mask = self.read(at) & !0xf;
        let size = u64::from((!mask).wrapping_add(1));
        let ok = raw & 1 == 0 && raw & BAR_TYPE_MASK == 0 && mask != 0;
        let mut base = raw & !0xf;
        let assigned_here = ok && base == 0;
        if assigned_here {
            base = fallback;
        }
        self.write(at, if ok { base | (raw & 0xf) } else { raw });
        self.write(COMMAND, (command | COMMAND_MEMORY) & 0xffff);
        ok.then_some(Bar {
            base: u64::from(base),
            size,
            assigned_here,
        })
    }

    /// Sets Bus Master (MSI-X messages are memory writes by the device).
    pub fn enable_bus_master(self) {
        let command = self.read(COMMAND);
        self.write(COMMAND, (command | 0x4) & 0xffff);
    }
}

/// The first function on bus 0 with this vendor and device id.
pub fn find(vendor: u16, device: u16) -> Option<Function> {
    for dev in 0..32 {
        let first = Function {
            device: dev,
            function: 0,
        };
        if first.ids().0 == 0xffff {
            continue;
        }
        let multi = (first.read(HEADER_TYPE) >> 16) & 0x80 != 0;
        let functions = if multi { 8 } else { 1 };
        for function in 0..functions {
            let f = Function {
                device: dev,
                function,
            };
            if f.ids() == (vendor, device) {
                return Some(f);
            }
        }
    }
    None
}
