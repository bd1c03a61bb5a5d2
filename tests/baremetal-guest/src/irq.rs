//! Interrupts for the ivshmem-doorbell run: an IDT whose every vector
//! points at a handler that counts and acknowledges, the local APIC turned
//! on, the legacy PICs masked, and ivshmem's MSI-X vector 0 aimed at us.
//! Waiting is `sti; hlt` with the count re-checked under `cli`, so an
//! interrupt between the check and the `hlt` still ends the `hlt` (`sti`
//! holds interrupts off for one more instruction). Interrupts are enabled
//! only for the `hlt` itself: the prebuilt `core` uses the red zone, which
//! a handler running on the same stack would overwrite.

use crate::pci::Function;
use crate::x86::outb;
use core::arch::{asm, global_asm};
use core::cell::Cell;
use core::sync::atomic::{AtomicU64, Ordering};
use ring_core::signal::Signal;

/// The vector MSI-X vector 0 is delivered on.
pub const VECTOR: u8 = 0x40;
/// The local APIC's registers (xAPIC, identity-mapped by `boot.s`).
const LAPIC: usize = 0xfee0_0000;
const LAPIC_SVR: usize = LAPIC + 0xf0;
const LAPIC_EOI: usize = LAPIC + 0xb0;

/// Interrupts taken on [`VECTOR`] (the handler's count).
#[no_mangle]
static RING_IRQ_COUNT: AtomicU64 = AtomicU64::new(0);
/// Interrupts taken on any other vector.
#[no_mangle]
static RING_IRQ_OTHER: AtomicU64 = AtomicU64::new(0);

global_asm!(
    ".global ring_irq_vector",
    "ring_irq_vector:",
    "push rax",
    "lock inc qword ptr [rip + {count}]",
    "mov rax, {eoi}",
    "mov dword ptr [rax], 0",
    "pop rax",
    "iretq",
    ".global ring_irq_other",
    "ring_irq_other:",
    "push rax",
    "lock inc qword ptr [rip + {other}]",
    "mov rax, {eoi}",
    "mov dword ptr [rax], 0",
    "pop rax",
    "iretq",
    count = sym RING_IRQ_COUNT,
    other = sym RING_IRQ_OTHER,
    eoi = const LAPIC_EOI,
);

extern "C" {
    fn ring_irq_vector();
    fn ring_irq_other();
}

/// The interrupt descriptor table: 256 gates of 16 bytes.
#[repr(C, align(16))]
struct Idt([u64; 512]);

static mut IDT: Idt = Idt([0; 512]);

/// One 64-bit interrupt gate to `handler` in code segment `cs`.
fn gate(handler: usize, cs: u16) -> [u64; 2] {
    let h = handler as u64;
    let low = (h & 0xffff)
        | (u64::from(cs) << 16)
        | (0x8e << 40) // present, DPL 0, interrupt gate
        | ((h >> 16) & 0xffff) << 48;
    [low, h >> 32]
}

/// Installs the IDT, masks the 8259 PICs, enables the local APIC. Leaves
/// interrupts off (they are on only inside [`DoorbellSignal`]'s wait).
pub fn init() {
    let cs: u16;
    // SAFETY: reads the code segment register; no memory is touched.
    unsafe { asm!("mov {0:x}, cs", out(reg) cs, options(nomem, nostack, preserves_flags)) };
    let ours = gate(ring_irq_vector as *const () as usize, cs);
    let other = gate(ring_irq_other as *const () as usize, cs);
    let idt = core::ptr::addr_of_mut!(IDT).cast::<[u64; 2]>();
    for v in 0..256 {
        let g = if v == usize::from(VECTOR) {
            ours
        } else {
            other
        };
        // SAFETY: gate `v` of the static IDT (256 of them), written only
        // here, before interrupts are ever enabled, by the one CPU there
        // is; a raw pointer write, no reference.
        unsafe { idt.wrapping_add(v).write(g) };
    }
    #[repr(C, packed)]
    struct Pointer {
        limit: u16,
        base: u64,
    }
    let pointer = Pointer {
        limit: (512 * 8 - 1) as u16,
        base: core::ptr::addr_of!(IDT) as u64,
    };
    // SAFETY: `pointer` names the static IDT filled above, valid for ever.
    unsafe { asm!("lidt [{0}]", in(reg) &pointer, options(readonly, nostack, preserves_flags)) };
    // Both 8259s masked: nothing arrives but what the APIC delivers.
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
    // SAFETY: the local APIC's spurious-vector register, identity-mapped;
    // bit 8 enables the APIC, vector 0xff takes spurious interrupts.
    unsafe { ((LAPIC_SVR) as *mut u32).write_volatile(0x1ff) };
}

/// Aims MSI-X vector 0 of `dev` (table in the BAR at `table_bar_base`) at
/// this CPU's [`VECTOR`], unmasked, and enables MSI-X. Returns the table
/// size, or `None` if the device has no MSI-X.
pub fn enable_msix(dev: Function, bar_base: impl Fn(u8) -> Option<u64>) -> Option<u16> {
    let cap = dev.capability(0x11)?;
    let control = dev.read16(cap + 2);
    let table = dev.read(cap + 4);
    let base = bar_base((table & 7) as u8)? + u64::from(table & !7);
    let entry = base as usize as *mut u32;
    // Entry 0 of the MSI-X table, inside the BAR the device decodes
    // (identity-mapped below 4 GiB): message address (APIC 0), data (our
    // vector, fixed delivery, edge), vector control (unmasked).
    for (i, word) in [0xfee0_0000, 0, u32::from(VECTOR), 0]
        .into_iter()
        .enumerate()
    {
        // SAFETY: word `i` (< 4) of the 16-byte entry described above.
        unsafe { entry.wrapping_add(i).write_volatile(word) };
    }
    dev.enable_bus_master();
    // Message control: enable (bit 15), function mask (bit 14) off. The
    // dword write keeps the capability id and next pointer as they were.
    let head = dev.read(cap);
    let ctl = (control | 0x8000) & !0x4000;
    dev.write(cap, (head & 0xffff) | (u32::from(ctl) << 16));
    Some((control & 0x7ff) + 1)
}

/// Whether [`VECTOR`] is pending in the local APIC (requested, not yet
/// taken: interrupts are off).
pub fn pending() -> bool {
    let word = LAPIC + 0x200 + 0x10 * usize::from(VECTOR / 32);
    // SAFETY: the local APIC's interrupt request register for our vector,
    // identity-mapped; a 32-bit read with no side effect.
    let irr = unsafe { (word as *const u32).read_volatile() };
    irr & (1 << (VECTOR % 32)) != 0
}

/// Interrupts taken on [`VECTOR`] so far, and on other vectors.
pub fn counts() -> (u64, u64) {
    (
        RING_IRQ_COUNT.load(Ordering::Relaxed),
        RING_IRQ_OTHER.load(Ordering::Relaxed),
    )
}

/// ivshmem-doorbell as a [`Signal`]: `notify` rings peer 0 (the host) on
/// vector 0; `wait` sleeps in `hlt` until our vector has fired since the
/// last wait.
pub struct DoorbellSignal {
    /// BAR0's doorbell register.
    pub doorbell: *mut u32,
    /// The count the last wait returned at.
    pub seen: Cell<u64>,
    /// Doorbell writes.
    pub kicks: Cell<u64>,
    /// Waits that had to `hlt`.
    pub sleeps: Cell<u64>,
}

impl Signal for DoorbellSignal {
    type Error = core::convert::Infallible;

    fn notify(&self) -> Result<(), Self::Error> {
        self.kicks.set(self.kicks.get() + 1);
        // SAFETY: BAR0's doorbell (offset 12), identity-mapped MMIO; the
        // value is (peer 0 << 16) | vector 0.
        unsafe { self.doorbell.write_volatile(0) };
        Ok(())
    }

    fn wait(&self) -> Result<(), Self::Error> {
        loop {
            // SAFETY: `cli` only masks interrupts on this CPU.
            unsafe { asm!("cli", options(nomem, nostack)) };
            let now = RING_IRQ_COUNT.load(Ordering::Acquire);
            if now != self.seen.get() {
                // Back with interrupts off: they are on only inside `hlt`
                // (the prebuilt `core` uses the red zone, which an
                // interrupt on the same stack would overwrite). One that
                // comes meanwhile waits in the APIC and ends the next
                // `hlt` at once.
                self.seen.set(now);
                return Ok(());
            }
            self.sleeps.set(self.sleeps.get() + 1);
            // The one instruction of shadow after `sti` means a pending
            // interrupt ends the `hlt` rather than being taken before it.
            // SAFETY: `sti; hlt` sleeps until the next interrupt, whose
            // handler only counts and acknowledges.
            unsafe { asm!("sti", "hlt", options(nomem, nostack)) };
        }
    }
}
