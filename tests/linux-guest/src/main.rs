//! The guest program of the `linux_guest` tests (ring-cli/tests/linux_guest.rs):
//! the initramfs's `/init` loads the VFIO modules, binds the
//! ivshmem-doorbell device to vfio-pci and runs this.
//!
//! It opens the device through the guest kernel's VFIO (container, group,
//! type1 IOMMU behind QEMU's intel-iommu), turns on Bus Master, routes
//! MSI-X vector 0 to an eventfd, joins the host's ring in BAR2 as its
//! client (a vchan in the flat layout, or the VMBus channel of
//! `ring ivshmem --proto vmbus`) and moves a seeded pattern one way —
//! `PROTO-recv BYTES SEED` checks what the host sends, `PROTO-send BYTES
//! SEED` sends it — sleeping only on the MSI-X eventfd, every wait bounded. It prints
//! one `GUEST …` line with byte, wait and kick counts, and ends QEMU
//! through `isa-debug-exit` with the outcome (0: every byte arrived).

use ring_core::signal::Signal;
use ring_core::vchan::{self, Blocking};
use ring_core::vmbus::pipe::{PipeReader, PipeWriter};
use ring_core::vmbus::{self, BlockingPipe, IncomingRing, OutgoingRing};
use ring_hosted::devmem::DevError;
use ring_hosted::vfio::ivshmem::Ivshmem;
use ring_hosted::vfio::{open_device, IommuMode};
use ring_hosted::vmbus::ChannelLayout;
use ring_model_tests::stream_byte;
use std::cell::Cell;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long one wait for an interrupt may take before it counts as lost
/// (`GUEST_WAIT_MS` on the kernel command line changes it).
const WAIT: Duration = Duration::from_secs(20);

/// A signal that counts what goes through it.
struct Counting<S> {
    inner: S,
    kicks: Cell<u64>,
    waits: Cell<u64>,
}

impl<S: Signal> Signal for Counting<S> {
    type Error = S::Error;
    fn notify(&self) -> Result<(), S::Error> {
        self.kicks.set(self.kicks.get() + 1);
        self.inner.notify()
    }
    fn wait(&self) -> Result<(), S::Error> {
        self.waits.set(self.waits.get() + 1);
        self.inner.wait()
    }
}

/// The ivshmem device's PCI address and IOMMU group, from sysfs.
fn find_device() -> Result<(String, u32), String> {
    let dir = Path::new("/sys/bus/pci/devices");
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for e in entries.flatten() {
        let read = |f: &str| std::fs::read_to_string(e.path().join(f)).unwrap_or_default();
        if read("vendor").trim() == "0x1af4" && read("device").trim() == "0x1110" {
            let link = std::fs::read_link(e.path().join("iommu_group"))
                .map_err(|err| format!("{}: no IOMMU group: {err}", e.path().display()))?;
            let group = link
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("IOMMU group link {}", link.display()))?;
            return Ok((e.file_name().to_string_lossy().into_owned(), group));
        }
    }
    Err("no ivshmem device (1af4:1110) on the PCI bus".into())
}

/// [`WAIT`], or `GUEST_WAIT_MS` from the kernel command line.
fn wait_limit() -> Duration {
    std::env::var("GUEST_WAIT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(WAIT, Duration::from_millis)
}

/// `uio-echo,N,_`: INTx through uio_pci_generic on a pci-serial UART
/// (1b36:0002, whose interrupt is a real INTx): for each of `n` bytes the
/// host writes to the UART's chardev, wait for the interrupt on
/// `/dev/uioN`, read the byte through the I/O BAR (`resource0`), unmask
/// INTx in the command register (uio_pci_generic has no irqcontrol) and
/// write the byte back.
fn uio_echo(n: u64) -> Result<String, String> {
    use std::os::unix::fs::FileExt;
    let dir = Path::new("/sys/bus/pci/devices");
    let name = std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .flatten()
        .find(|e| {
            let read = |f: &str| std::fs::read_to_string(e.path().join(f)).unwrap_or_default();
            read("vendor").trim() == "0x1b36" && read("device").trim() == "0x0002"
        })
        .map(|e| e.path())
        .ok_or("no pci-serial (1b36:0002) on the PCI bus")?;
    let start = Instant::now();
    let node = loop {
        let found = std::fs::read_dir(name.join("uio"))
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned());
        match found {
            Some(n) if Path::new("/dev").join(&n).exists() => break n,
            _ if start.elapsed() > Duration::from_secs(10) => {
                return Err(format!(
                    "{} has no UIO node (uio_pci_generic bound?)",
                    name.display()
                ))
            }
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    let rw = |p: &Path| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(p)
            .map_err(|e| format!("{}: {e}", p.display()))
    };
    let dev = Path::new("/dev").join(&node);
    let uio = rw(&dev)?;
    let config = rw(&name.join("config"))?;
    let config_dbg = config.try_clone().map_err(|e| e.to_string())?;
    let bar = rw(&name.join("resource0"))?;
    let mut irq = ring_hosted::uio::UioIrq::new(uio.into(), dev).with_pci_config(config);
    let wait = wait_limit();
    irq.set_timeout(Some(wait));
    // The negative control: leave INTx masked after the first interrupt.
    let unmask = std::env::var_os("GUEST_SKIP_UNMASK").is_none();
    let reg = |at: u64| -> Result<u8, String> {
        let mut b = [0u8; 1];
        bar.read_exact_at(&mut b, at)
            .map_err(|e| format!("UART read: {e}"))?;
        Ok(b[0])
    };
    let set = |at: u64, v: u8| {
        bar.write_all_at(&[v], at)
            .map_err(|e| format!("UART write: {e}"))
    };
    // 8N1, no FIFO (an interrupt per byte), DTR|RTS|OUT2, interrupt on
    // received data.
    set(3, 0x03)?;
    set(2, 0x00)?;
    set(4, 0x0b)?;
    set(1, 0x01)?;
    while reg(5)? & 1 != 0 {
        reg(0)?;
    }
    irq.unmask().map_err(|e| e.to_string())?;
    println!("GUEST uio ready");
    let (mut interrupts, mut total) = (0u64, 0u64);
    // One byte per interrupt: a byte that came while the last was being
    // echoed keeps the line up, so it fires again as soon as it is
    // unmasked (which is what the unmask path must get right).
    while total < n {
        let i = total;
        if !irq.poll(Some(wait)).map_err(|e| e.to_string())? {
            let mut cs = [0u8; 8];
            let _ = config_dbg.read_exact_at(&mut cs, 4);
            return Err(format!(
                "no interrupt for byte {i} within {wait:?} (LSR {:#x} IIR {:#x} IER {:#x} command/status {:02x?})",
                reg(5)?, reg(2)?, reg(1)?, &cs[..4]
            ));
        }
        interrupts += u64::from(irq.consume().map_err(|e| e.to_string())?.min(1));
        // Service the UART (its line drops), then let INTx through again.
        let mut echoed = 0;
        if reg(5)? & 1 != 0 {
            let b = reg(0)?;
            // Transmitter empty: QEMU's UART sends at once, so this is a
            // bounded wait.
            for _ in 0..1_000_000 {
                if reg(5)? & 0x20 != 0 {
                    break;
                }
            }
            set(0, b)?;
            echoed += 1;
        }
        if echoed == 0 {
            return Err(format!("interrupt after byte {i} with no byte received"));
        }
        total += echoed;
        if unmask {
            irq.unmask().map_err(|e| e.to_string())?;
        }
    }
    Ok(format!("uio-echo ok bytes={total} interrupts={interrupts}"))
}

/// `sysfs-vchan-recv|send`: the UIO-style memory path with no kernel
/// driver at all: BAR2 and BAR0 mapped through the device's sysfs
/// `resource2` and `resource0` files, the doorbell rung for every kick we
/// owe, and waits by polling (ivshmem has no INTx for uio_pci_generic).
fn run_sysfs(mode: &str, bytes: u64, seed: u64) -> Result<String, String> {
    let (name, _) = find_device()?;
    let dir = Path::new("/sys/bus/pci/devices").join(&name);
    // Memory decoding on (no driver has enabled the device).
    std::fs::write(dir.join("enable"), "1").map_err(|e| format!("enable: {e}"))?;
    let ivs = ring_hosted::uio::IvshmemResources::open(&dir).map_err(|e| e.to_string())?;
    let position = ivs.position().map_err(|e| e.to_string())?;
    let signal = Counting {
        inner: ivs.polled(0, 0, Duration::from_micros(50)),
        kicks: Cell::new(0),
        waits: Cell::new(0),
    };
    let ep = vchan::connect_flat(ivs.memory().clone()).map_err(|e| format!("connect: {e}"))?;
    let mut s = Blocking::new(ep, signal);
    s.kick().map_err(|e| format!("kick: {e:?}"))?;
    let dir_word = mode.rsplit('-').next().unwrap_or_default();
    let secs = transfer(&mut s, dir_word, bytes, seed)?;
    let _ = s.close();
    let sig = s.into_parts().1;
    Ok(format!(
        "{mode} ok peer={position} bytes={bytes} secs={secs:.3} polls={} kicks={}",
        sig.waits.get(),
        sig.kicks.get()
    ))
}

fn run(mode: &str, bytes: u64, seed: u64) -> Result<String, String> {
    if mode == "uio-echo" {
        return uio_echo(bytes);
    }
    if mode.starts_with("sysfs-") {
        return run_sysfs(mode, bytes, seed);
    }
    let (name, group) = find_device()?;
    let node = format!("/dev/vfio/{group}");
    let start = Instant::now();
    while !Path::new(&node).exists() {
        if start.elapsed() > Duration::from_secs(10) {
            return Err(format!(
                "{node} never appeared (is {name} bound to vfio-pci?)"
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let dev = |e: DevError| e.to_string();
    let (_container, _group, device) =
        open_device(Path::new("/dev/vfio"), group, &name, IommuMode::Type1v2).map_err(dev)?;
    let ivs = Ivshmem::open(device).map_err(dev)?;
    // Off after binding; without it QEMU drops every MSI-X write.
    let mut command = [0u8; 2];
    ivs.device()
        .config_read(ring_hosted::vfio::PCI_COMMAND, &mut command)
        .map_err(dev)?;
    let command = u16::from_le_bytes(command);
    if std::env::var_os("GUEST_SKIP_BUS_MASTER").is_none() {
        ivs.device().enable_bus_master().map_err(dev)?;
    }
    let position = ivs.position().map_err(dev)?;
    // MSI-X on before the ring is joined: from then on no kick is lost.
    let mut signals = ivs.signals(0, 1).map_err(dev)?;
    let mut signal = signals.pop().ok_or("no MSI-X vector")?;
    signal.event_mut().set_timeout(Some(wait_limit()));
    let counting = Counting {
        inner: signal,
        kicks: Cell::new(0),
        waits: Cell::new(0),
    };
    let (proto, dir) = mode
        .split_once('-')
        .ok_or("mode is PROTO-recv or PROTO-send")?;
    let (secs, sig) = match proto {
        "vchan" => {
            let mem = ivs.memory().clone();
            let ep = vchan::connect_flat(mem.clone()).map_err(|e| format!("connect: {e}"))?;
            let mut s = Blocking::new(ep, counting);
            // As libxenvchan's client: one event once connected.
            s.kick().map_err(|e| format!("kick: {e:?}"))?;
            let secs = transfer(&mut s, dir, bytes, seed)
                .map_err(|e| format!("{e} {}", vchan_page(&mem)))?;
            let _ = s.close();
            (secs, s.into_parts().1)
        }
        "vmbus" => {
            // The host's ChannelLayout: guest→host ring at 0, host→guest after.
            let layout =
                ChannelLayout::rounded(VMBUS_RING, VMBUS_RING).map_err(|e| e.to_string())?;
            let mem = ivs.memory();
            let sub = |at, len| mem.sub(at, len).map_err(|e| format!("BAR2: {e}"));
            let to_host = sub(0, layout.to_server.total_size())?;
            let to_guest = sub(layout.to_client_offset(), layout.to_client.total_size())?;
            let ring = |e: vmbus::Error| e.to_string();
            let reader =
                PipeReader::new(IncomingRing::new(to_guest, layout.to_client).map_err(ring)?);
            let writer =
                PipeWriter::new(OutgoingRing::new(to_host, layout.to_server).map_err(ring)?);
            let mut s = BlockingPipe::new(reader, writer, counting);
            let secs = transfer(&mut s, dir, bytes, seed)?;
            let _ = s.close();
            (secs, s.into_parts().2)
        }
        other => return Err(format!("unknown protocol {other}")),
    };
    Ok(format!(
        "{mode} ok peer={position} bytes={bytes} secs={secs:.3} waits={} kicks={} command_before={command:#06x}",
        sig.waits.get(),
        sig.kicks.get()
    ))
}

/// Data bytes of each VMBus ring (the host's `ring ivshmem --ring-size`
/// default).
const VMBUS_RING: usize = 64 << 10;

/// The vchan control page as it stands, for a failure's message.
fn vchan_page(mem: &ring_hosted::devmem::MappedRegion) -> String {
    use ring_core::mem::SharedMem;
    use ring_core::vchan::layout::*;
    let w = |at| mem.load_u32(at).unwrap_or(u32::MAX);
    let b = |at| mem.load_u8(at).unwrap_or(u8::MAX);
    format!(
        "[left {}/{} right {}/{} live cli {} srv {} notify cli {:#x} srv {:#x}]",
        w(LEFT_PROD),
        w(LEFT_CONS),
        w(RIGHT_PROD),
        w(RIGHT_CONS),
        b(CLI_LIVE),
        b(SRV_LIVE),
        b(CLI_NOTIFY),
        b(SRV_NOTIFY)
    )
}

/// What the transfer needs of either protocol's blocking stream.
trait Stream {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, String>;
    fn write_all(&mut self, buf: &[u8]) -> Result<(), String>;
    fn wait_delivered(&mut self) -> Result<(), String>;
}

impl<M: ring_core::mem::SharedMem, S: Signal> Stream for Blocking<M, S>
where
    S::Error: std::fmt::Debug,
{
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, String> {
        Blocking::read(self, buf).map_err(|e| format!("{e:?}"))
    }
    fn write_all(&mut self, buf: &[u8]) -> Result<(), String> {
        Blocking::write_all(self, buf).map_err(|e| format!("{e:?}"))
    }
    fn wait_delivered(&mut self) -> Result<(), String> {
        Blocking::wait_delivered(self).map_err(|e| format!("{e:?}"))
    }
}

impl<M: ring_core::mem::SharedMem, S: Signal> Stream for BlockingPipe<M, S>
where
    S::Error: std::fmt::Debug,
{
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, String> {
        BlockingPipe::read(self, buf).map_err(|e| format!("{e:?}"))
    }
    fn write_all(&mut self, buf: &[u8]) -> Result<(), String> {
        BlockingPipe::write_all(self, buf).map_err(|e| format!("{e:?}"))
    }
    fn wait_delivered(&mut self) -> Result<(), String> {
        BlockingPipe::wait_delivered(self).map_err(|e| format!("{e:?}"))
    }
}

/// Moves the pattern one way (`recv`: checks what comes; `send`: sends it,
/// then waits until the host has read it all). Returns the seconds from
/// the first byte.
fn transfer(s: &mut impl Stream, dir: &str, bytes: u64, seed: u64) -> Result<f64, String> {
    let mut buf = vec![0u8; 64 << 10];
    // Timed from the first byte (a host may start sending late).
    let mut t = Instant::now();
    match dir {
        "recv" => {
            let mut got = 0u64;
            while got < bytes {
                let want = buf.len().min((bytes - got) as usize);
                let n = s
                    .read(&mut buf[..want])
                    .map_err(|e| format!("read after {got} bytes: {e}"))?;
                if n == 0 {
                    return Err(format!("end of stream after {got} of {bytes} bytes"));
                }
                if got == 0 {
                    t = Instant::now();
                }
                for (i, &b) in buf[..n].iter().enumerate() {
                    if b != stream_byte(seed, got + i as u64) {
                        return Err(format!("byte {} differs", got + i as u64));
                    }
                }
                got += n as u64;
            }
        }
        "send" => {
            let mut sent = 0u64;
            while sent < bytes {
                let n = buf.len().min((bytes - sent) as usize);
                for (i, b) in buf[..n].iter_mut().enumerate() {
                    *b = stream_byte(seed, sent + i as u64);
                }
                s.write_all(&buf[..n])
                    .map_err(|e| format!("write after {sent} bytes: {e}"))?;
                sent += n as u64;
            }
            s.wait_delivered()
                .map_err(|e| format!("waiting for the host to read: {e}"))?;
        }
        other => return Err(format!("unknown direction {other}")),
    }
    Ok(t.elapsed().as_secs_f64())
}

/// Ends QEMU through its isa-debug-exit device (port 0xf4): QEMU exits
/// with `(code << 1) | 1`. Falls back to a power-off.
fn exit_qemu(code: u8) -> ! {
    // Let the console's UART drain the last line first.
    use std::io::Write;
    let _ = std::io::stdout().flush();
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: ioperm only changes this process's I/O permission bitmap.
    let allowed = unsafe { libc::ioperm(0xf4, 4, 1) } == 0;
    if allowed {
        // SAFETY: port 0xf4 is QEMU's debug-exit device, which ends the
        // VM; we may use it (ioperm above).
        unsafe { core::arch::asm!("out dx, al", in("dx") 0xf4u16, in("al") code) };
    }
    // SAFETY: reboot with RB_POWER_OFF takes no pointers; as root in the
    // guest it powers off (the fallback when the port write did not end us).
    unsafe { libc::reboot(libc::RB_POWER_OFF) };
    std::process::exit(i32::from(code))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let parsed = match args.as_slice() {
        [_, mode, bytes, seed] => bytes
            .parse::<u64>()
            .ok()
            .zip(seed.parse::<u64>().ok())
            .map(|(b, s)| (mode.clone(), b, s)),
        _ => None,
    };
    let Some((mode, bytes, seed)) = parsed else {
        println!(
            "GUEST usage: ring-linux-guest vchan-recv|vchan-send|vmbus-recv|vmbus-send BYTES SEED"
        );
        exit_qemu(2);
    };
    match run(&mode, bytes, seed) {
        Ok(line) => {
            println!("GUEST {line}");
            exit_qemu(0);
        }
        Err(why) => {
            println!("GUEST failed: {why}");
            exit_qemu(1);
        }
    }
}
