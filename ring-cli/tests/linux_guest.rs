//! A real Linux guest under QEMU (TCG) and `ring ivshmem` on the host: a
//! vchan or a VMBus channel between a host process and a guest process over QEMU's
//! `ivshmem-doorbell`, the guest side through the guest kernel's own VFIO
//! (vfio-pci behind an emulated intel-iommu, MSI-X routed to an eventfd),
//! woken only by interrupts both ways.
//!
//! What boots: Debian's current kernel (its plain ELF `vmlinux`, unpacked
//! with its VFIO modules by `scripts/install-deps` under
//! `target/linux-guest`) and an initramfs built here of busybox-static, the
//! modules and the static guest program `ring-linux-guest`
//! (tests/linux-guest), built here too. The guest's `/init` loads the
//! modules, binds the device to vfio-pci and runs the program, which ends
//! QEMU through `isa-debug-exit` with its outcome. Every boot is bounded:
//! QEMU is killed after [`BOOT_LIMIT`] and the test fails.
//!
//! `cargo test linux_guest` selects these.

use ring_model_tests::stream_byte;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The longest one boot may take, from QEMU's start to its exit.
const BOOT_LIMIT: Duration = Duration::from_secs(150);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The unpacked kernel and busybox, or a failure that says how to get them.
fn assets() -> PathBuf {
    let dir = workspace().join("target/linux-guest");
    assert!(
        dir.join("ready").exists() && dir.join("vmlinux").exists(),
        "{} holds no guest kernel: run scripts/install-deps (scripts/test does), which \
         unpacks Debian's kernel and busybox-static there",
        dir.display()
    );
    dir
}

/// Builds the static guest program once (its own target directory, so
/// the build does not wait on this test's cargo).
fn guest_program() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let target = workspace().join("target/guest");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
            .args([
                "build",
                "--release",
                "--quiet",
                "-p",
                "ring-linux-guest",
                "--target",
                "x86_64-unknown-linux-gnu",
                "--target-dir",
            ])
            .arg(&target)
            .env(
                "RUSTFLAGS",
                "-C target-feature=+crt-static -C strip=symbols",
            )
            .current_dir(workspace())
            .output()
            .expect("run cargo to build the guest program");
        assert!(
            out.status.success(),
            "building ring-linux-guest failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        target.join("x86_64-unknown-linux-gnu/release/ring-linux-guest")
    })
}

/// One file of the initramfs: path inside, mode, contents.
struct Entry {
    path: String,
    mode: u32,
    data: Vec<u8>,
}

/// Writes a `newc` cpio archive (what the kernel unpacks as initramfs).
fn cpio(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut put = |name: &str, mode: u32, data: &[u8], ino: u32| {
        let name = format!("{name}\0");
        let fields = [
            ino,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            0,
            0,
            name.len() as u32,
            0,
        ];
        out.extend_from_slice(b"070701");
        for f in fields {
            out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.resize(out.len().next_multiple_of(4), 0);
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(4), 0);
    };
    let mut dirs: Vec<String> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        // Parent directories first.
        let mut at = String::new();
        for part in e
            .path
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map_or(&[][..], |(_, d)| d)
        {
            at = if at.is_empty() {
                part.to_string()
            } else {
                format!("{at}/{part}")
            };
            if !dirs.contains(&at) {
                dirs.push(at.clone());
                put(&at, 0o040_755, &[], 1000 + dirs.len() as u32);
            }
        }
        put(&e.path, e.mode, &e.data, 2 + i as u32);
    }
    put("TRAILER!!!", 0, &[], 0);
    out
}

/// The kernel modules VFIO needs, in load order.
const MODULES: [&str; 8] = [
    "uio",
    "uio_pci_generic",
    "irqbypass",
    "vfio",
    "vfio_iommu_type1",
    "vfio_virqfd",
    "vfio-pci-core",
    "vfio-pci",
];

/// Finds `name.ko` (or `.ko.xz` is refused: 6.1 ships them plain) under the
/// unpacked kernel's modules.
fn module(kernel: &Path, name: &str) -> Vec<u8> {
    fn walk(dir: &Path, file: &str) -> Option<PathBuf> {
        for e in std::fs::read_dir(dir).ok()?.flatten() {
            let p = e.path();
            if p.is_dir() {
                if let Some(found) = walk(&p, file) {
                    return Some(found);
                }
            } else if p.file_name().is_some_and(|n| n == file) {
                return Some(p);
            }
        }
        None
    }
    let file = format!("{name}.ko");
    let path = walk(&kernel.join("lib/modules"), &file).unwrap_or_else(|| {
        panic!(
            "{file} not found under {}: a kernel whose modules are compressed needs \
             them unpacked first",
            kernel.display()
        )
    });
    std::fs::read(path).unwrap()
}

const INIT: &str = r#"#!/bin/busybox sh
B=/bin/busybox
$B mkdir -p /proc /sys /dev
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
$B mount -t devtmpfs dev /dev
for m in MODULES; do $B insmod /lib/modules/$m.ko || echo "GUEST insmod $m failed"; done
[ -z "$GUEST_NO_VFIO" ] && echo 1af4 1110 > /sys/bus/pci/drivers/vfio-pci/new_id
# A pci-serial UART goes from the serial driver to uio_pci_generic.
for d in /sys/bus/pci/devices/*; do
  if [ "$($B cat $d/vendor) $($B cat $d/device)" = "0x1b36 0x0002" ] && [ -e $d/driver ]; then
    echo ${d##*/} > $d/driver/unbind
  fi
done
echo 1b36 0002 > /sys/bus/pci/drivers/uio_pci_generic/new_id
echo "GUEST up $($B cut -d' ' -f1 /proc/uptime)"
/bin/guest $($B sed -n 's/.*guest_args=\([^ ]*\).*/\1/p' /proc/cmdline | $B tr , ' ')
echo "GUEST program ended with $?"
$B grep -i vfio /proc/interrupts
$B poweroff -f
"#;

/// The initramfs, built once.
fn initramfs() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let assets = assets();
        let kernel = assets.join("kernel");
        let mut entries = vec![
            Entry {
                path: "init".into(),
                mode: 0o100_755,
                data: INIT.replace("MODULES", &MODULES.join(" ")).into_bytes(),
            },
            Entry {
                path: "bin/busybox".into(),
                mode: 0o100_755,
                data: std::fs::read(assets.join("busybox/bin/busybox")).unwrap(),
            },
            Entry {
                path: "bin/guest".into(),
                mode: 0o100_755,
                data: std::fs::read(guest_program()).unwrap(),
            },
        ];
        for m in MODULES {
            entries.push(Entry {
                path: format!("lib/modules/{m}.ko"),
                mode: 0o100_644,
                data: module(&kernel, m),
            });
        }
        let path = workspace().join("target/guest/initramfs.cpio");
        std::fs::write(&path, cpio(&entries)).unwrap();
        path
    })
}

/// Waits for `child` until `deadline`; kills it after.
fn wait_until(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What one boot gave.
struct Boot {
    /// QEMU's exit status: `(guest code << 1) | 1` through isa-debug-exit.
    qemu: Option<ExitStatus>,
    /// The guest's `GUEST …` lines.
    guest: Vec<String>,
    /// `ring ivshmem`'s exit status, stdout and stderr.
    host: Option<ExitStatus>,
    host_out: Vec<u8>,
    host_err: String,
    /// Seconds from QEMU's start to its exit.
    secs: f64,
    /// UART echo round trips, host to guest and back.
    rtts: Vec<Duration>,
}

impl Boot {
    fn line(&self, prefix: &str) -> Option<&str> {
        self.guest.iter().find_map(|l| l.strip_prefix(prefix))
    }

    /// Requires both ends to have ended cleanly (the guest program's code
    /// 0, `ring ivshmem`'s exit 0) and returns the guest's `…-DIR ok` line.
    fn clean_result(&self, dir: &str) -> &str {
        assert_eq!(
            self.guest_code(),
            Some(0),
            "guest: {:?}; host: {}",
            self.guest,
            self.host_err
        );
        assert!(
            self.host.is_some_and(|s| s.success()),
            "host: {}",
            self.host_err
        );
        self.guest
            .iter()
            .find(|l| l.contains(&format!("-{dir} ok")))
            .expect("the guest's result")
    }

    /// The guest program's outcome code, from QEMU's exit status.
    fn guest_code(&self) -> Option<i32> {
        self.qemu.and_then(|s| s.code()).map(|c| c >> 1)
    }
}

/// A number after `key=` in `text`.
fn field(text: &str, key: &str) -> Option<f64> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// How long after the guest kernel is up the host's stdin starts to flow
/// in [`boot`]: the guest program has joined the ring by then and sleeps
/// on an empty one, so its first read needs an interrupt.
const LATE_INPUT: Duration = Duration::from_millis(1500);

/// Boots the guest with `args` for the guest program (`recv,BYTES,SEED`)
/// and extra kernel command-line words (`KEY=VALUE` reach /init's
/// environment), with `ring ivshmem` on the host fed `stdin`, which starts
/// to flow [`LATE_INPUT`] after the guest kernel is up (empty: ends at
/// once). `kill_after`: kill QEMU this long after the host says the
/// guest joined the ring (a vchan guest).
fn boot(proto: &str, args: &str, extra: &str, stdin: &[u8], kill_after: Option<Duration>) -> Boot {
    boot_with(proto, args, extra, stdin, kill_after, None)
}

/// As [`boot`], with a pci-serial UART on a chardev socket too when
/// `uart_rounds` is given: once the guest says `GUEST uio ready`, that many
/// bytes go to the UART one at a time, each waiting for its echo (the
/// round trips are in [`Boot::rtts`]).
fn boot_with(
    proto: &str,
    args: &str,
    extra: &str,
    stdin: &[u8],
    kill_after: Option<Duration>,
    uart_rounds: Option<u64>,
) -> Boot {
    let dir = tempfile::Builder::new()
        .prefix("ring-linux-guest")
        .tempdir()
        .unwrap();
    let sock = dir.path().join("ivshmem.sock");
    // Built (once, cold: a release build) before our end starts, so that
    // the build's minutes never count against its accept timeout.
    let initramfs = initramfs();
    let mut host = Command::new(env!("CARGO_BIN_EXE_ring"))
        .arg("ivshmem")
        .arg(&sock)
        .args([
            "--proto",
            proto,
            "--accept-timeout",
            "60",
            "--timeout",
            "60",
        ])
        .env("RING_LIVENESS_MS", "0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ring ivshmem");
    let mut input = host.stdin.take().unwrap();
    let (up_tx, up_rx) = std::sync::mpsc::channel::<()>();
    let (out_up_tx, out_up_rx) = std::sync::mpsc::channel::<()>();
    let data = stdin.to_vec();
    // With nothing to feed, the guest is the sender: its bytes must outrun
    // the ring so that it sleeps on MSI-X for space, however fast we drain.
    let hold_output = stdin.is_empty();
    let feeder = std::thread::spawn(move || {
        // Nothing to send: our input ends at once.
        if !data.is_empty() && up_rx.recv_timeout(BOOT_LIMIT).is_ok() {
            std::thread::sleep(LATE_INPUT);
            let _ = input.write_all(&data);
        }
    });
    // Its stdout is read all along (a full pipe would stall it), except
    // that a guest sender's bytes are left in the ring and the pipe until
    // [`LATE_INPUT`] after the guest is up: the pipe and the ring together
    // hold far less than it sends, so it must wait for space.
    let mut out = host.stdout.take().unwrap();
    let collector = std::thread::spawn(move || {
        if hold_output && out_up_rx.recv_timeout(BOOT_LIMIT).is_ok() {
            std::thread::sleep(LATE_INPUT);
        }
        let mut host_out = Vec::new();
        let _ = out.read_to_end(&mut host_out);
        host_out
    });
    let start = Instant::now();
    while !sock.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "ring ivshmem never bound {}",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let vmlinux = assets().join("vmlinux");
    let cmdline = format!(
        "console=ttyS0 quiet cryptomgr.notests panic=-1 intel_iommu=on guest_args={args} {extra}"
    );
    let uart = dir.path().join("uart.sock");
    let uart_args: Vec<String> = match uart_rounds {
        Some(_) => vec![
            "-chardev".into(),
            format!("socket,id=ser,path={},server=on,wait=off", uart.display()),
            "-device".into(),
            "pci-serial,chardev=ser".into(),
        ],
        None => Vec::new(),
    };
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let uart_side = std::thread::spawn(move || -> Vec<Duration> {
        let Some(rounds) = uart_rounds else {
            return Vec::new();
        };
        if ready_rx.recv_timeout(BOOT_LIMIT).is_err() {
            return Vec::new();
        }
        let Ok(mut s) = std::os::unix::net::UnixStream::connect(&uart) else {
            return Vec::new();
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let mut rtts = Vec::new();
        for i in 0..rounds {
            let b = [b'a' + (i % 26) as u8];
            let t = Instant::now();
            let mut back = [0u8; 1];
            if s.write_all(&b).is_err() || s.read_exact(&mut back).is_err() || back != b {
                break;
            }
            rtts.push(t.elapsed());
        }
        rtts
    });
    let mut ready = Some(ready_tx);
    let started = Instant::now();
    let mut qemu = Command::new("qemu-system-x86_64")
        // Two vCPUs and multi-threaded TCG: only then does TCG emit the
        // guest's locked instructions as host atomics and its fences as
        // host fences (with one vCPU it may use plain loads and stores,
        // which race with the host process on the shared ring).
        .args(["-accel", "tcg,thread=multi", "-smp", "2"])
        .args(["-machine", "q35", "-device", "intel-iommu"])
        .args(["-m", "512", "-nographic", "-nodefaults", "-no-reboot"])
        .args(["-serial", "stdio"])
        .arg("-kernel")
        .arg(&vmlinux)
        .arg("-initrd")
        .arg(initramfs)
        .arg("-append")
        .arg(&cmdline)
        .arg("-chardev")
        .arg(format!("socket,path={},id=ivs", sock.display()))
        .args(["-device", "ivshmem-doorbell,chardev=ivs,vectors=1"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .args(uart_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start qemu-system-x86_64 (Debian package qemu-system-x86)");
    let console = qemu.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(console).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // The host's stderr, line by line as it comes: a kill waits for the
    // host to say the guest joined the ring.
    let (err_tx, err_rx) = std::sync::mpsc::channel::<String>();
    let host_stderr = host.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(host_stderr).lines().map_while(Result::ok) {
            all.push_str(&line);
            all.push('\n');
            let _ = err_tx.send(line);
        }
        all
    });
    let deadline = started + BOOT_LIMIT;
    let mut guest = Vec::new();
    let mut killed = false;
    let mut joined_at = None;
    let mut up = Some((up_tx, out_up_tx));
    let qemu_status = loop {
        while let Ok(line) = err_rx.try_recv() {
            if line.contains("joined the ring") && joined_at.is_none() {
                joined_at = Some(Instant::now());
            }
        }
        while let Ok(line) = rx.try_recv() {
            if let Some(at) = line.find("GUEST ") {
                guest.push(line[at..].to_string());
            }
        }
        if guest.iter().any(|l| l.starts_with("GUEST up")) {
            if let Some((tx, out_tx)) = up.take() {
                let _ = tx.send(());
                let _ = out_tx.send(());
            }
        }
        if guest.iter().any(|l| l.starts_with("GUEST uio ready")) {
            if let Some(tx) = ready.take() {
                let _ = tx.send(());
            }
        }
        // Killed `after` once the guest joined the ring (with the stream
        // under way by then), however long its boot took.
        if let (Some(after), Some(at)) = (kill_after, joined_at) {
            if !killed && at.elapsed() >= after {
                let _ = qemu.kill();
                killed = true;
            }
        }
        if let Some(s) = qemu.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() >= deadline {
            let _ = qemu.kill();
            let _ = qemu.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let secs = started.elapsed().as_secs_f64();
    drop((up, ready));
    let _ = feeder.join();
    let rtts = uart_side.join().unwrap_or_default();
    let _ = reader.join();
    while let Ok(line) = rx.try_recv() {
        if let Some(at) = line.find("GUEST ") {
            guest.push(line[at..].to_string());
        }
    }
    let mut qemu_err = String::new();
    if let Some(mut e) = qemu.stderr.take() {
        let _ = e.read_to_string(&mut qemu_err);
    }
    assert!(
        qemu_status.is_some(),
        "QEMU still running after {BOOT_LIMIT:?}; killed. Guest said {guest:?}; QEMU: {qemu_err}"
    );
    let host_status = wait_until(&mut host, Instant::now() + Duration::from_secs(30));
    let host_out = collector.join().unwrap();
    let host_err = err_reader.join().unwrap_or_default();
    Boot {
        qemu: qemu_status,
        guest,
        host: host_status,
        host_out,
        host_err: format!("{host_err}{qemu_err}"),
        secs,
        rtts,
    }
}

/// How many kicks woke `ring ivshmem`, from its closing line.
fn host_kicks(b: &Boot) -> u64 {
    b.host_err
        .split("woken by ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| stream_byte(seed, i)).collect()
}

/// Prints a case's figures (boot time, throughput, interrupts per MiB).
fn report(case: &str, b: &Boot, mib: f64) {
    let up = b
        .line("GUEST up ")
        .and_then(|v| v.trim().parse::<f64>().ok());
    let ok = b
        .guest
        .iter()
        .find(|l| l.contains(" ok "))
        .cloned()
        .unwrap_or_default();
    let secs = field(&ok, "secs").unwrap_or(f64::NAN);
    let waits = field(&ok, "waits").unwrap_or(f64::NAN);
    let kicks = field(&ok, "kicks").unwrap_or(f64::NAN);
    println!(
        "{case}: QEMU ran {:.2} s (guest kernel up at {:?} s); {mib} MiB in {secs:.3} s of guest time \
         ({:.1} MB/s); guest: {} interrupt waits ({:.1} per MiB), {} kicks to the host",
        b.secs,
        up,
        mib * 1.048_576 / secs,
        waits,
        waits / mib,
        kicks
    );
}

/// One transfer case: 4 MiB of a seeded pattern between `ring ivshmem
/// --proto PROTO` and the guest program, `to_guest` or back. Both ends
/// must exit cleanly with every byte as sent; the guest must have slept on
/// MSI-X at least once (bytes to it come only after it joined; bytes from
/// it are left undrained until it has filled the ring) and we must have
/// been woken by its doorbell, never by a liveness
/// lapse.
fn transfer_case(proto: &str, to_guest: bool, seed: u64) {
    let bytes = 4 << 20;
    let (dir, input) = if to_guest {
        ("recv", pattern(seed, bytes))
    } else {
        ("send", Vec::new())
    };
    let b = boot(
        proto,
        &format!("{proto}-{dir},{bytes},{seed}"),
        "",
        &input,
        None,
    );
    let ok = b.clean_result(dir);
    assert_eq!(field(ok, "bytes"), Some(bytes as f64));
    if !to_guest {
        assert_eq!(b.host_out.len(), bytes, "host: {}", b.host_err);
        assert!(
            b.host_out == pattern(seed, bytes),
            "the host received other bytes"
        );
    }
    assert!(field(ok, "waits").is_some_and(|w| w >= 1.0), "{ok}");
    assert!(host_kicks(&b) > 0, "host: {}", b.host_err);
    assert!(b.host_err.contains(" 0 lapses"), "host: {}", b.host_err);
    let way = if to_guest {
        "host → guest"
    } else {
        "guest → host"
    };
    report(&format!("{proto} {way}"), &b, 4.0);
    println!("the guest's {ok}");
}

#[test]
fn linux_guest_vchan_host_to_guest_on_interrupts() {
    transfer_case("vchan", true, 7);
}

#[test]
fn linux_guest_vchan_guest_to_host_on_interrupts() {
    transfer_case("vchan", false, 9);
}

#[test]
fn linux_guest_vmbus_host_to_guest_on_interrupts() {
    transfer_case("vmbus", true, 5);
}

#[test]
fn linux_guest_vmbus_guest_to_host_on_interrupts() {
    transfer_case("vmbus", false, 6);
}

#[test]
fn linux_guest_killed_mid_stream_is_reported_by_the_host() {
    // More than the guest can take before it is killed.
    let b = boot(
        "vchan",
        "vchan-recv,268435456,3",
        "",
        &pattern(3, 64 << 20),
        Some(LATE_INPUT + Duration::from_millis(700)),
    );
    let code = b.host.and_then(|s| s.code());
    assert_eq!(code, Some(5), "host exit {code:?}: {}", b.host_err);
    // Killed with the stream under way, not before it.
    assert!(
        !b.host_err.contains(" 0 written into the ring"),
        "host: {}",
        b.host_err
    );
    assert!(
        b.host_err.contains("peer died or hung up"),
        "host: {}",
        b.host_err
    );
}

/// The negative control for Bus Master: left off (as vfio-pci leaves it),
/// QEMU drops the device's MSI-X writes, and the guest's first wait for an
/// interrupt (for bytes that come after it joined) times out.
#[test]
fn linux_guest_without_bus_master_loses_its_interrupts() {
    let bytes = 4 << 20;
    let b = boot(
        "vchan",
        &format!("vchan-recv,{bytes},7"),
        "GUEST_SKIP_BUS_MASTER=1 GUEST_WAIT_MS=3000",
        &pattern(7, bytes),
        None,
    );
    assert_eq!(b.guest_code(), Some(1), "guest: {:?}", b.guest);
    let failed = b.line("GUEST failed: ").unwrap_or_default();
    assert!(failed.contains("TimedOut"), "guest: {:?}", b.guest);
    let mut stderr = std::io::stderr();
    let _ = writeln!(stderr, "without Bus Master the guest said: {failed}");
}

/// Real INTx through UIO: uio_pci_generic on a pci-serial UART (its
/// interrupt is a legacy line), unmasked through the PCI command register
/// where the driver has no irqcontrol; every byte the host sends is
/// taken on its own interrupt and echoed.
#[test]
fn linux_guest_uio_intx_round_trips() {
    let rounds = 200;
    let b = boot_with(
        "vchan",
        &format!("uio-echo,{rounds},0"),
        "",
        &[],
        None,
        Some(rounds),
    );
    assert_eq!(
        b.guest_code(),
        Some(0),
        "guest: {:?}; {} round trips done",
        b.guest,
        b.rtts.len()
    );
    let ok = b.line("GUEST uio-echo ok ").unwrap_or_default();
    assert_eq!(
        field(ok, "bytes"),
        Some(rounds as f64),
        "guest: {:?}",
        b.guest
    );
    // One interrupt per byte, each unmasked through the command register.
    let interrupts = field(ok, "interrupts").unwrap_or(0.0);
    assert_eq!(interrupts, rounds as f64, "guest: {:?}", b.guest);
    assert_eq!(
        b.rtts.len() as u64,
        rounds,
        "round trips done: {}",
        b.rtts.len()
    );
    let mut rtts = b.rtts.clone();
    rtts.sort();
    println!(
        "UIO INTx: {rounds} round trips host → UART → INTx → guest → UART → host on {interrupts} interrupts: median {:?}, max {:?}",
        rtts[rtts.len() / 2],
        rtts[rtts.len() - 1]
    );
}

/// The negative control for the unmask: left masked after the first
/// interrupt (uio_pci_generic's handler set INTx-disable), the second byte
/// never interrupts.
#[test]
fn linux_guest_uio_without_unmask_gets_one_interrupt() {
    let b = boot_with(
        "vchan",
        "uio-echo,5,0",
        "GUEST_SKIP_UNMASK=1 GUEST_WAIT_MS=2000",
        &[],
        None,
        Some(5),
    );
    assert_eq!(b.guest_code(), Some(1), "guest: {:?}", b.guest);
    let failed = b.line("GUEST failed: ").unwrap_or_default();
    assert!(
        failed.contains("no interrupt for byte 1 "),
        "guest: {:?}",
        b.guest
    );
    assert_eq!(b.rtts.len(), 1, "round trips before the line stayed masked");
}

/// The UIO-style memory path: no driver in the guest at all, BAR2 and the
/// doorbell mapped through sysfs `resource2`/`resource0`
/// (`ring_hosted::uio::IvshmemResources`). ivshmem has no INTx, so the
/// guest polls; it still rings our doorbell, which wakes us.
#[test]
fn linux_guest_vchan_over_sysfs_resources() {
    let bytes = 1 << 20;
    let b = boot(
        "vchan",
        &format!("sysfs-vchan-recv,{bytes},4"),
        "GUEST_NO_VFIO=1",
        &pattern(4, bytes),
        None,
    );
    let ok = b.clean_result("recv");
    assert_eq!(field(ok, "bytes"), Some(bytes as f64));
    assert!(host_kicks(&b) > 0, "host: {}", b.host_err);
    println!("sysfs resources: {ok}");
}
