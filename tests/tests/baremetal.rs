//! `ring-core`, unchanged, inside a freestanding x86_64 guest under QEMU.
//!
//! Builds `tests/baremetal-guest` (no_std, no alloc, PVH boot), lays out a
//! vchan as the server in a `/dev/shm` file, boots the guest under TCG with
//! that file as an `ivshmem-plain` BAR, and streams bytes through it: the
//! guest echoes each byte XOR 0x5a and ends with a count and a checksum.
//! Both sides poll; nothing signals. See `docs/baremetal.md`.
//!
//! Needs `qemu-system-x86_64` (Debian package `qemu-system-x86`).

use ring_core::mem::RawMem;
use ring_core::vchan::{self, Endpoint, Error, FlatLayout, Live, Orders, ServerOptions};
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

fn qemu_command(kernel: &Path, shm: &ShmFile) -> Command {
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
        .arg("-object")
        .arg(format!(
            "memory-backend-file,id=shm,share=on,mem-path={},size={}",
            shm.path.display(),
            shm.len
        ))
        .args(["-device", "ivshmem-plain,memdev=shm"])
        .arg("-kernel")
        .arg(kernel);
    cmd
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// How long each phase took, for the report.
struct Timings {
    connect: Duration,
    transfer: Duration,
    exit: Duration,
}

/// Stops QEMU and fails with what it printed.
fn fail(qemu: &mut Watched, what: String) -> ! {
    let _ = qemu.wait_until(Instant::now());
    panic!("{what}\n{}", qemu.output())
}

/// Pumps the stream through the guest, checking every echoed byte.
fn drive(
    ep: &mut Endpoint<RawMem<'_>>,
    qemu: &mut Watched,
    data: &[u8],
    expect: &[u8],
    deadline: Instant,
) -> Timings {
    let start = Instant::now();
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
                Err(e) => fail(qemu, format!("host write at {sent}: {e}")),
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
            Err(e) => fail(qemu, format!("host read at {got}: {e}")),
        }
        if progress {
            continue;
        }
        if let Some(status) = qemu.try_wait() {
            fail(qemu, format!("QEMU exited with {status} after {got} bytes"));
        }
        if Instant::now() >= deadline {
            fail(
                qemu,
                format!("timed out after {RUN_DEADLINE:?} (sent {sent}, echoed {got})"),
            );
        }
        // Both sides poll. Sleeping when idle leaves the CPU to QEMU's vCPU
        // thread; on a busy two-core machine that was faster and far steadier
        // than spinning (see docs/baremetal.md).
        thread::sleep(IDLE_SLEEP);
    }
    let transfer_end = start.elapsed();

    let mut trailer = [0u8; 16];
    loop {
        match ep.recv(&mut trailer) {
            Ok(_) => break,
            Err(Error::WouldBlock) => {}
            Err(e) => fail(qemu, format!("receiving the trailer: {e}")),
        }
        if let Some(status) = qemu.try_wait() {
            fail(
                qemu,
                format!("QEMU exited with {status} before the trailer"),
            );
        }
        if Instant::now() >= deadline {
            fail(qemu, format!("no trailer within {RUN_DEADLINE:?}"));
        }
        thread::sleep(IDLE_SLEEP);
    }
    let count = u64::from_le_bytes(trailer[..8].try_into().unwrap());
    let sum = u64::from_le_bytes(trailer[8..].try_into().unwrap());
    assert_eq!(count, data.len() as u64, "guest's byte count");
    assert_eq!(sum, fnv1a(data), "guest's FNV-1a of the stream");
    let _ = ep.close().expect("closing the host end");

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
    let connect = connected.unwrap_or(transfer_end);
    Timings {
        connect,
        transfer: transfer_end.saturating_sub(connect),
        exit,
    }
}

#[test]
fn ring_core_vchan_in_a_qemu_guest() {
    require_qemu();
    let t = Instant::now();
    let kernel = build_guest();
    let build = t.elapsed();

    let shm = ShmFile::create(SHM_SIZE);
    let mem = shm.mem();
    let orders = Orders::new(LEFT_ORDER, RIGHT_ORDER).expect("valid orders");
    assert!(FlatLayout::new(orders).size <= SHM_SIZE);
    let options = ServerOptions {
        initial_index: INITIAL_INDEX,
    };
    let mut ep = vchan::serve_flat(mem, orders, options).expect("laying out the vchan");

    let data: Vec<u8> = (0..STREAM_LEN as u64)
        .map(|i| stream_byte(0xb0a7, i))
        .collect();
    let mut header = [0u8; 16];
    header[..8].copy_from_slice(HEADER_MAGIC);
    header[8..].copy_from_slice(&(data.len() as u64).to_le_bytes());
    // Queued before the guest exists; the guest connects to a ready server.
    let _ = ep.send(&header).expect("queueing the header");

    let expect: Vec<u8> = data.iter().map(|b| b ^ TRANSFORM).collect();

    let mut qemu = Watched::spawn(&mut qemu_command(&kernel, &shm)).expect("starting QEMU");
    let run = drive(
        &mut ep,
        &mut qemu,
        &data,
        &expect,
        Instant::now() + RUN_DEADLINE,
    );

    let mib = STREAM_LEN as f64 / f64::from(1 << 20);
    eprintln!(
        "baremetal: build {build:.2?}; boot to connect {:.2?}; {mib} MiB each way in {:.2?} \
         ({:.1} MiB/s); spawn to exit {:.2?}",
        run.connect,
        run.transfer,
        mib / run.transfer.as_secs_f64(),
        run.exit
    );
}
