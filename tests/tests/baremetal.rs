//! `ring-core`, unchanged, inside a freestanding x86_64 guest under QEMU.
//!
//! Builds `tests/baremetal-guest` (no_std, no alloc, PVH boot), lays out a
//! vchan (as the server) and two VMBus rings in a `/dev/shm` file, and boots
//! the guest under TCG with that file as an `ivshmem-plain` BAR. Then:
//!
//! - vchan: a byte stream that the guest echoes XOR 0x5a, ending with a count
//!   and a checksum;
//! - VMBus: in-band requests with completion requested, each answered by a
//!   completion echoing the transaction id and an in-band reply carrying the
//!   payload XOR 0x5a, ending with a summary.
//!
//! Both sides poll; nothing signals. See `docs/baremetal.md`.
//!
//! Needs `qemu-system-x86_64` (Debian package `qemu-system-x86`).

use ring_core::mem::RawMem;
use ring_core::vchan::{self, Endpoint, Error, FlatLayout, Live, Orders, ServerOptions};
use ring_core::vmbus;
use ring_tests::stream_byte;
use std::fs::{self, OpenOptions};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The wire contract with the guest (see the guest's `main.rs`).
const HEADER_MAGIC: &[u8; 8] = b"RINGECHO";
const TRANSFORM: u8 = 0x5a;
/// QEMU's status for `isa-debug-exit` value 0x10: `(0x10 << 1) | 1`.
const EXIT_PASS: i32 = 33;

/// Bytes sent each way: wraps each ring 64 times.
const STREAM_LEN: usize = 8 << 20;
/// Guest→host (left) and host→guest (right) ring orders: 128 KiB each.
const LEFT_ORDER: u8 = 17;
const RIGHT_ORDER: u8 = 17;
/// ivshmem needs a power-of-two size; the flat layout needs 260 KiB.
const SHM_SIZE: usize = 1 << 20;
/// Start the indices just below `u32::MAX` so they wrap early in the run.
const INITIAL_INDEX: u32 = u32::MAX - 3 * 4096;

/// How long the host sleeps when neither ring moved.
const IDLE_SLEEP: Duration = Duration::from_micros(50);

/// The VMBus rings: host→guest and guest→host, past the vchan's pages.
const VMBUS_H2G_AT: usize = 0x8_0000;
const VMBUS_G2H_AT: usize = 0xc_0000;
/// Each ring's data area: the requests wrap it more than 130 times.
const VMBUS_DATA_SIZE: usize = 64 * 1024;
/// Requests, of every data length from 0 to `VMBUS_MAX_DATA`.
const VMBUS_REQUESTS: usize = 4097;
const VMBUS_MAX_DATA: usize = 4096;
/// `len` of the host's final packet.
const VMBUS_END: u32 = u32::MAX;

/// Bound on the guest's build (cold, on a shared machine).
const BUILD_DEADLINE: Duration = Duration::from_secs(300);
/// Bound on boot + transfer + exit; a broken guest fails within this.
const RUN_DEADLINE: Duration = Duration::from_secs(45);

/// A `/dev/shm` file mapped shared; unmapped and removed on drop.
struct ShmFile {
    path: PathBuf,
    base: *mut libc::c_void,
    len: usize,
}

impl ShmFile {
    fn create(len: usize) -> ShmFile {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = PathBuf::from(format!(
            "/dev/shm/ring-baremetal-{}-{nanos}",
            std::process::id()
        ));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        file.set_len(len as u64).expect("sizing the shm file");
        // SAFETY: a fresh shared mapping of a file we just sized to `len`;
        // no existing memory is affected. The fd may close afterwards.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED, "mmap of {}", path.display());
        ShmFile { path, base, len }
    }

    fn mem(&self) -> RawMem<'_> {
        // SAFETY: the mapping is page-aligned and stays mapped, readable and
        // writable until `self` drops, which the lifetime enforces; this
        // process touches it only through `RawMem` (QEMU maps it too).
        unsafe { RawMem::from_raw_parts(self.base.cast(), self.len) }.expect("page-aligned")
    }
}

impl Drop for ShmFile {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are exactly what mmap returned, and every
        // `RawMem` borrowing `self` is gone by now.
        unsafe { libc::munmap(self.base, self.len) };
        let _ = fs::remove_file(&self.path);
    }
}

/// Collects a child's pipe on a thread, so output is there even on timeout.
fn collect(mut pipe: impl Read + Send + 'static) -> (Arc<Mutex<Vec<u8>>>, JoinHandle<()>) {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&buf);
    let handle = thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = pipe.read(&mut chunk) {
            sink.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    (buf, handle)
}

/// A child with its output collected; killed and reaped on drop.
struct Watched {
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

impl Watched {
    fn spawn(cmd: &mut Command) -> std::io::Result<Watched> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let (stdout, a) = collect(child.stdout.take().expect("piped"));
        let (stderr, b) = collect(child.stderr.take().expect("piped"));
        Ok(Watched {
            child,
            stdout,
            stderr,
            readers: vec![a, b],
        })
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("waiting for child")
    }

    /// Waits until `deadline`; kills the child if it is still running.
    fn wait_until(&mut self, deadline: Instant) -> Option<ExitStatus> {
        loop {
            if let Some(status) = self.try_wait() {
                // The pipes close with the process: let the readers finish.
                for r in self.readers.drain(..) {
                    let _ = r.join();
                }
                return Some(status);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn output(&self) -> String {
        let out = String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned();
        let err = String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned();
        format!("--- stdout\n{out}\n--- stderr\n{err}")
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Builds the guest with its own target directory and returns the ELF.
fn build_guest() -> PathBuf {
    let tests_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let guest_dir = tests_dir.join("baremetal-guest");
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| tests_dir.join("../target"), PathBuf::from)
        .join("baremetal");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    // The guest's `.cargo/config.toml` is found from the working directory;
    // flags meant for the hosted build must not reach it.
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&guest_dir)
        .args(["build", "--release", "--target-dir"])
        .arg(&target_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_BUILD_RUSTFLAGS");
    let mut build = Watched::spawn(&mut cmd).expect("running cargo");
    let status = build.wait_until(Instant::now() + BUILD_DEADLINE);
    assert!(
        status.is_some_and(|s| s.success()),
        "building the guest failed ({status:?}):\n{}",
        build.output()
    );
    target_dir.join("x86_64-unknown-linux-gnu/release/baremetal-guest")
}

/// Fails with install advice when QEMU is not there.
fn require_qemu() {
    match Command::new("qemu-system-x86_64").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!("qemu-system-x86_64 --version failed: {out:?}"),
        Err(e) => panic!(
            "qemu-system-x86_64 is not runnable ({e}): install the Debian package \
             `qemu-system-x86` (apt-get install --no-install-recommends qemu-system-x86), \
             or run scripts/install-deps"
        ),
    }
}

/// QEMU with what every run here shares: q35 under TCG, qboot, the debug
/// exit device, the serial console on stdout, our kernel.
fn qemu_base(kernel: &Path) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-machine", "q35", "-m", "64M"])
        // qboot (in qemu-system-data) boots about three times faster than
        // SeaBIOS and leaves BAR2 unassigned, for the guest to place.
        .args(["-bios", "qboot.rom"])
        // With one possible CPU, TCG emits the guest's locked RMWs and fences
        // as plain, non-atomic code: fine inside the VM, wrong against this
        // process. A second (absent) CPU makes them real host atomics.
        .args(["-smp", "1,maxcpus=2"])
        .args([
            "-nographic",
            "-nodefaults",
            "-serial",
            "stdio",
            "-no-reboot",
        ])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .arg("-kernel")
        .arg(kernel);
    cmd
}

fn qemu_command(kernel: &Path, shm: &ShmFile) -> Command {
    let mut cmd = qemu_base(kernel);
    cmd.arg("-object")
        .arg(format!(
            "memory-backend-file,id=shm,share=on,mem-path={},size={}",
            shm.path.display(),
            shm.len
        ))
        .args(["-device", "ivshmem-plain,memdev=shm"]);
    cmd
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Stops QEMU and fails with what it printed.
fn fail(qemu: &mut Watched, what: String) -> ! {
    let _ = qemu.wait_until(Instant::now());
    panic!("{what}\n{}", qemu.output())
}

/// Between polls that moved nothing: fail if QEMU is gone or time is up,
/// else sleep. Sleeping leaves the CPU to QEMU's vCPU thread; on a busy
/// two-core machine that was faster and far steadier than spinning (see
/// docs/baremetal.md).
fn idle(qemu: &mut Watched, deadline: Instant, what: &dyn Fn() -> String) {
    if let Some(status) = qemu.try_wait() {
        fail(qemu, format!("QEMU exited with {status}: {}", what()));
    }
    if Instant::now() >= deadline {
        fail(
            qemu,
            format!("timed out after {RUN_DEADLINE:?}: {}", what()),
        );
    }
    thread::sleep(IDLE_SLEEP);
}

/// Pumps the vchan stream through the guest, checking every echoed byte
/// and the guest's trailer, then closes. Returns (boot to connect,
/// transfer) times from `start`.
fn drive_vchan(
    ep: &mut Endpoint<RawMem<'_>>,
    qemu: &mut Watched,
    data: &[u8],
    expect: &[u8],
    start: Instant,
    deadline: Instant,
) -> (Duration, Duration) {
    let mut connected = None;
    let (mut sent, mut got) = (0usize, 0usize);
    let mut buf = vec![0u8; 1 << LEFT_ORDER];
    while got < data.len() {
        let mut progress = false;
        if connected.is_none() && ep.peer_live() == Ok(Live::Connected) {
            connected = Some(start.elapsed());
        }
        if sent < data.len() {
            match ep.write(&data[sent..]) {
                Ok(t) => {
                    sent += t.len;
                    progress |= t.len > 0;
                }
                Err(Error::WouldBlock) => {}
                Err(e) => fail(qemu, format!("vchan write at {sent}: {e}")),
            }
        }
        let want = buf.len().min(data.len() - got);
        match ep.read(&mut buf[..want]) {
            Ok(t) if t.len == 0 => fail(qemu, format!("guest closed after {got} bytes")),
            Ok(t) => {
                if buf[..t.len] != expect[got..got + t.len] {
                    let k = (0..t.len).find(|&k| buf[k] != expect[got + k]).unwrap_or(0);
                    fail(qemu, format!("echoed byte {} is wrong", got + k));
                }
                got += t.len;
                progress = true;
            }
            Err(Error::WouldBlock) => {}
            Err(e) => fail(qemu, format!("vchan read at {got}: {e}")),
        }
        if !progress {
            idle(qemu, deadline, &|| {
                format!("vchan sent {sent}, echoed {got}")
            });
        }
    }
    let transfer_end = start.elapsed();

    let mut trailer = [0u8; 16];
    loop {
        match ep.recv(&mut trailer) {
            Ok(_) => break,
            Err(Error::WouldBlock) => idle(qemu, deadline, &|| "vchan trailer".into()),
            Err(e) => fail(qemu, format!("receiving the trailer: {e}")),
        }
    }
    let count = u64::from_le_bytes(trailer[..8].try_into().unwrap());
    let sum = u64::from_le_bytes(trailer[8..].try_into().unwrap());
    assert_eq!(count, data.len() as u64, "guest's byte count");
    assert_eq!(sum, fnv1a(data), "guest's FNV-1a of the stream");
    let _ = ep.close().expect("closing the host end");
    let connect = connected.unwrap_or(transfer_end);
    (connect, transfer_end.saturating_sub(connect))
}

/// The VMBus requests: payload `len: u32, seq: u32, data`.
struct Requests {
    data: Vec<u8>,
    /// `data` XOR `TRANSFORM`: what the replies carry.
    expect: Vec<u8>,
    /// Each request's (offset, length) in `data`.
    spans: Vec<(usize, usize)>,
}

impl Requests {
    fn new() -> Requests {
        let mut spans = Vec::with_capacity(VMBUS_REQUESTS);
        let mut at = 0;
        for i in 0..VMBUS_REQUESTS {
            // Every length from 0 to the maximum, in a scrambled order.
            let len = (i * 7919) % (VMBUS_MAX_DATA + 1);
            spans.push((at, len));
            at += len;
        }
        let data: Vec<u8> = (0..at as u64).map(|i| stream_byte(0x7b05, i)).collect();
        let expect = data.iter().map(|b| b ^ TRANSFORM).collect();
        Requests {
            data,
            expect,
            spans,
        }
    }

    /// Request `i`'s header, data, and expected reply data.
    fn payload(&self, i: usize) -> ([u8; 8], &[u8], &[u8]) {
        let (at, len) = self.spans[i];
        let mut head = [0u8; 8];
        head[..4].copy_from_slice(&(len as u32).to_le_bytes());
        head[4..].copy_from_slice(&(i as u32).to_le_bytes());
        (head, &self.data[at..at + len], &self.expect[at..at + len])
    }
}

/// Sends every request, checks each completion and reply in order, then
/// the guest's summary. Returns the phase's duration.
fn drive_vmbus(
    tx: &mut vmbus::OutgoingRing<RawMem<'_>>,
    rx: &mut vmbus::IncomingRing<RawMem<'_>>,
    qemu: &mut Watched,
    requests: &Requests,
    deadline: Instant,
) -> Duration {
    let start = Instant::now();
    let count = requests.spans.len();
    // Requests written; replies checked (two packets each); summary seen.
    let (mut sent, mut answered, mut end_sent) = (0usize, 0usize, false);
    let mut completion_seen = false;
    let mut summary = None;
    let mut buf = vec![0u8; 8 + VMBUS_MAX_DATA];
    while summary.is_none() {
        let mut progress = false;
        while sent < count {
            let (head, data, _) = requests.payload(sent);
            let id = sent as u64 + 1;
            let pieces: [&[u8]; 2] = [&head, data];
            let packet = vmbus::OutgoingPacket::in_band(id, &pieces).with_completion_requested();
            match tx.write(&packet) {
                Ok(()) => sent += 1,
                Err(vmbus::Error::Full { .. }) => break,
                Err(e) => fail(qemu, format!("vmbus write of request {sent}: {e}")),
            }
        }
        if sent == count && !end_sent {
            let mut end = [0u8; 8];
            end[..4].copy_from_slice(&VMBUS_END.to_le_bytes());
            end[4..].copy_from_slice(&(count as u32).to_le_bytes());
            match tx.write(&vmbus::OutgoingPacket::in_band(0, &[&end])) {
                Ok(()) => end_sent = true,
                Err(vmbus::Error::Full { .. }) => {}
                Err(e) => fail(qemu, format!("vmbus write of the end packet: {e}")),
            }
        }
        match tx.commit() {
            Ok(t) => progress |= t.ring_bytes > 0,
            Err(e) => fail(qemu, format!("vmbus commit: {e}")),
        }
        loop {
            let packet = match rx.read_packet() {
                Ok(p) => p,
                Err(vmbus::Error::Empty) => break,
                Err(e) => fail(qemu, format!("vmbus read after {answered} answers: {e}")),
            };
            progress = true;
            let id = packet.transaction_id();
            let kind = packet.packet_type();
            if answered == count {
                assert_eq!((kind, id), (vmbus::PacketType::InBand, 0), "summary packet");
                let mut tail = [0u8; 24];
                packet.read_payload(0, &mut tail).expect("summary payload");
                summary = Some(tail);
                break;
            }
            let (head, _, expect) = requests.payload(answered);
            assert_eq!(
                id,
                answered as u64 + 1,
                "transaction id of answer {answered}"
            );
            if !completion_seen {
                assert_eq!(kind, vmbus::PacketType::Completion, "answer {answered}");
                let mut status = [0u8; 8];
                packet
                    .read_payload(0, &mut status)
                    .expect("completion payload");
                assert_eq!(status[..4], [0; 4], "completion status of {answered}");
                assert_eq!(status[4..], head[..4], "completion length of {answered}");
                completion_seen = true;
            } else {
                assert_eq!(kind, vmbus::PacketType::InBand, "reply {answered}");
                assert!(
                    !packet.completion_requested(),
                    "reply {answered} asks for completion"
                );
                let reply = &mut buf[..8 + expect.len()];
                packet.read_payload(0, reply).expect("reply payload");
                assert_eq!(reply[..8], head, "reply header of {answered}");
                assert!(
                    reply[8..] == *expect,
                    "reply data of request {answered} is wrong"
                );
                completion_seen = false;
                answered += 1;
            }
        }
        if let Err(e) = rx.commit() {
            fail(qemu, format!("vmbus read commit: {e}"));
        }
        if !progress {
            idle(qemu, deadline, &|| {
                format!("vmbus sent {sent}, answered {answered}")
            });
        }
    }
    let tail = summary.unwrap_or_default();
    let word = |at: usize| u64::from_le_bytes(tail[at..at + 8].try_into().unwrap());
    assert_eq!(word(0), count as u64, "guest's request count");
    assert_eq!(word(8), requests.data.len() as u64, "guest's byte count");
    assert_eq!(
        word(16),
        fnv1a(&requests.data),
        "guest's FNV-1a of the requests"
    );
    start.elapsed()
}

/// A `RawMem` for `len` bytes at `offset` in the mapping.
fn window(shm: &ShmFile, offset: usize, len: usize) -> RawMem<'_> {
    assert!(offset + len <= shm.len);
    // SAFETY: in bounds (checked above) of a mapping that lives as long as
    // the borrow of `shm`, touched only through `RawMem`; `offset` is a
    // multiple of 8, so the pointer stays 8-aligned.
    unsafe { RawMem::from_raw_parts(shm.base.cast::<u8>().wrapping_add(offset), len) }
        .expect("8-aligned window")
}

#[test]
fn ring_core_vchan_and_vmbus_in_a_qemu_guest() {
    require_qemu();
    let t = Instant::now();
    let kernel = build_guest();
    let build = t.elapsed();

    let shm = ShmFile::create(SHM_SIZE);
    let orders = Orders::new(LEFT_ORDER, RIGHT_ORDER).expect("valid orders");
    assert!(FlatLayout::new(orders).size <= VMBUS_H2G_AT);
    let options = ServerOptions {
        initial_index: INITIAL_INDEX,
    };
    let mut ep = vchan::serve_flat(shm.mem(), orders, options).expect("laying out the vchan");

    let layout = vmbus::RingLayout::new(4096, VMBUS_DATA_SIZE).expect("ring layout");
    let h2g = window(&shm, VMBUS_H2G_AT, layout.total_size());
    let g2h = window(&shm, VMBUS_G2H_AT, layout.total_size());
    vmbus::initialize_ring(&h2g, layout).expect("host-to-guest ring");
    vmbus::initialize_ring(&g2h, layout).expect("guest-to-host ring");
    let mut tx = vmbus::OutgoingRing::new(h2g, layout).expect("writer of host-to-guest");
    let mut rx = vmbus::IncomingRing::new(g2h, layout).expect("reader of guest-to-host");
    // A polling reader: never touch the interrupt mask.
    rx.set_interrupts(false);

    let data: Vec<u8> = (0..STREAM_LEN as u64)
        .map(|i| stream_byte(0xb0a7, i))
        .collect();
    let requests = Requests::new();
    let mut header = [0u8; 16];
    header[..8].copy_from_slice(HEADER_MAGIC);
    header[8..].copy_from_slice(&(data.len() as u64).to_le_bytes());
    // Queued before the guest exists; the guest connects to a ready server.
    let _ = ep.send(&header).expect("queueing the header");

    let expect: Vec<u8> = data.iter().map(|b| b ^ TRANSFORM).collect();

    let start = Instant::now();
    let deadline = start + RUN_DEADLINE;
    let mut qemu = Watched::spawn(&mut qemu_command(&kernel, &shm)).expect("starting QEMU");
    let (connect, vchan_time) = drive_vchan(&mut ep, &mut qemu, &data, &expect, start, deadline);
    let vmbus_time = drive_vmbus(&mut tx, &mut rx, &mut qemu, &requests, deadline);

    let status = qemu.wait_until(deadline);
    let exit = start.elapsed();
    let serial = qemu.output();
    match status {
        None => panic!("QEMU did not exit within {RUN_DEADLINE:?}\n{serial}"),
        // A triple fault with -no-reboot exits 0: only 33 is a pass.
        Some(s) => assert_eq!(s.code(), Some(EXIT_PASS), "QEMU exit status\n{serial}"),
    }
    assert!(serial.contains("guest: done"), "guest output:\n{serial}");
    eprintln!("{serial}");

    let mib = |bytes: usize| bytes as f64 / f64::from(1 << 20);
    eprintln!(
        "baremetal: build {build:.2?}; boot to connect {connect:.2?}; vchan {} MiB each way in \
         {vchan_time:.2?} ({:.1} MiB/s); vmbus {} requests, {:.1} MiB each way in \
         {vmbus_time:.2?} ({:.0} requests/s, {:.1} MiB/s); spawn to exit {exit:.2?}",
        mib(data.len()),
        mib(data.len()) / vchan_time.as_secs_f64(),
        requests.spans.len(),
        mib(requests.data.len()),
        requests.spans.len() as f64 / vmbus_time.as_secs_f64(),
        mib(requests.data.len()) / vmbus_time.as_secs_f64(),
    );
}

/// The bare-metal guest on interrupts: QEMU's ivshmem-doorbell served by
/// ring-hosted's ivshmem server in this process. The guest aims MSI-X
/// vector 0 at its local APIC (IDT, LAPIC, table in BAR1), sleeps in `hlt`
/// whenever ring-core's blocking layer has nothing to do, and rings our
/// doorbell; we sleep on our eventfd. The echo goes in lockstep (16 KiB at
/// a time), so both sides wait on every chunk.
#[test]
fn guest_interrupts_wake_the_bare_metal_guest() {
    use ring_hosted::ivshmem::IvshmemServer;
    use ring_hosted::stream::VchanStream;
    require_qemu();
    let kernel = build_guest();
    let dir = tempfile_dir();
    let sock = dir.join("ivshmem.sock");
    let orders = Orders::new(16, 16).expect("valid orders");
    let mut server =
        IvshmemServer::bind(&sock, FlatLayout::new(orders).size, 1).expect("ivshmem server");
    let ep = vchan::serve_flat(server.memory().clone(), orders, ServerOptions::default())
        .expect("laying out the vchan");

    let mut cmd = qemu_base(&kernel);
    cmd.arg("-chardev")
        .arg(format!("socket,path={},id=ivs", sock.display()))
        .args(["-device", "ivshmem-doorbell,chardev=ivs,vectors=1"]);
    let start = Instant::now();
    let deadline = start + RUN_DEADLINE;
    let mut qemu = Watched::spawn(&mut cmd).expect("starting QEMU");
    let id = server
        .accept(Some(Duration::from_secs(20)))
        .expect("QEMU connects to the ivshmem server");
    let mut signal = server.signal(id, 0).expect("signal to the guest");
    // No liveness re-checks: every wake-up must be the guest's doorbell.
    signal.set_liveness(None);
    signal.set_timeout(Some(Duration::from_secs(20)));
    let mut s = VchanStream::new(ep, signal);

    let len = 2usize << 20;
    let data: Vec<u8> = (0..len as u64).map(|i| stream_byte(0x1e0, i)).collect();
    let mut header = [0u8; 16];
    header[..8].copy_from_slice(HEADER_MAGIC);
    header[8..].copy_from_slice(&(len as u64).to_le_bytes());
    s.send(&header).expect("header");
    let mut back = vec![0u8; 16 << 10];
    for chunk in data.chunks(16 << 10) {
        s.write_all(chunk).expect("stream to the guest");
        let mut got = 0;
        while got < chunk.len() {
            let n = s.read(&mut back[got..chunk.len()]).unwrap_or_else(|e| {
                fail(&mut qemu, format!("reading the echo: {e}"));
            });
            assert!(n > 0, "the guest closed mid-stream");
            got += n;
        }
        for (a, b) in chunk.iter().zip(&back[..chunk.len()]) {
            assert_eq!(a ^ TRANSFORM, *b, "echo differs");
        }
    }
    let mut trailer = [0u8; 16];
    s.recv(&mut trailer).expect("trailer");
    assert_eq!(
        u64::from_le_bytes(trailer[..8].try_into().unwrap()),
        len as u64
    );
    assert_eq!(
        u64::from_le_bytes(trailer[8..].try_into().unwrap()),
        fnv1a(&data)
    );
    let kicks = s.signal().wake_counts();
    s.close().expect("close");

    let status = qemu.wait_until(deadline);
    let serial = qemu.output();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(EXIT_PASS),
        "QEMU exit status\n{serial}"
    );
    let line = serial
        .lines()
        .find(|l| l.contains("interrupts echoed"))
        .unwrap_or_else(|| panic!("no result line\n{serial}"));
    let number = |key: &str| -> u64 {
        line.split(key)
            .nth(1)
            .and_then(|r| {
                r.split(|c: char| !c.is_ascii_digit())
                    .find(|p| !p.is_empty())
            })
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {line}"))
    };
    let (interrupts, other, doorbell, sleeps) = (
        number("; interrupts "),
        number("other vectors "),
        number("doorbell kicks "),
        number("hlt sleeps "),
    );
    // The guest slept and was woken by MSI-X, and no other interrupt came.
    assert!(interrupts >= 1 && sleeps >= 1, "{line}");
    assert_eq!(other, 0, "{line}");
    // We were woken by its doorbell alone.
    assert!(kicks.kicks >= 1 && kicks.lapses == 0, "{kicks:?}");
    eprintln!(
        "guest_interrupts: {} MiB echoed in lockstep in {:.2?} (spawn to exit); guest: {interrupts} \
         MSI-X interrupts, {sleeps} hlt sleeps, {doorbell} doorbell kicks; host woken by {} kicks",
        len >> 20,
        start.elapsed(),
        kicks.kicks
    );
}

/// A fresh temporary directory for the ivshmem socket, named by process
/// and time (the server removes its socket when dropped).
fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "ring-baremetal-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    fs::create_dir_all(&dir).unwrap();
    dir
}
