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
