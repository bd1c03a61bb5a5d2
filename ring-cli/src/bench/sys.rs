//! The operating-system pieces the benchmarks need: pinning a thread to a
//! core, blocking eventfds, pipes and socket pairs, per-thread syscall
//! counts, and the hook through which a benchmark binary reports allocations.

use std::os::fd::{AsFd, OwnedFd};

/// The CPUs the kernel has online (`/sys/devices/system/cpu/online`,
/// e.g. `0-1`), not this thread's mask: a pinned parent's children inherit
/// its one-CPU mask, and must still find the other core.
pub fn online_cpus() -> Vec<usize> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap_or_default();
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let mut ends = part.split('-').map(|n| n.trim().parse::<usize>());
        match (ends.next(), ends.next()) {
            (Some(Ok(a)), Some(Ok(b))) => cpus.extend(a..=b),
            (Some(Ok(a)), None) => cpus.push(a),
            _ => {}
        }
    }
    if cpus.is_empty() {
        cpus.push(0);
    }
    cpus
}

/// Pins the calling thread to the `core`-th online CPU (modulo their
/// number). False if the kernel refused (e.g. a cpuset forbids it); on a
/// one-CPU machine both sides share it.
pub fn pin_to(core: usize) -> bool {
    let cpus = online_cpus();
    let Some(&cpu) = cpus.get(core % cpus.len()) else {
        return false;
    };
    if cpu >= rustix::thread::CpuSet::MAX_CPU {
        return false;
    }
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set).is_ok()
}

/// Online CPUs (what `nproc` would say before any pinning).
pub fn usable_cores() -> usize {
    online_cpus().len()
}

/// A blocking eventfd (reads sleep until the counter is non-zero).
pub fn eventfd() -> std::io::Result<OwnedFd> {
    Ok(rustix::event::eventfd(
        0,
        rustix::event::EventfdFlags::CLOEXEC,
    )?)
}

/// Adds one to an eventfd's counter: one `write`.
pub fn kick(fd: impl AsFd) -> std::io::Result<()> {
    rustix::io::write(fd, &1u64.to_ne_bytes())?;
    Ok(())
}

/// Sleeps until the eventfd's counter is non-zero and takes it: one `read`.
pub fn wait(fd: impl AsFd) -> std::io::Result<u64> {
    let mut buf = [0u8; 8];
    loop {
        match rustix::io::read(&fd, &mut buf) {
            Ok(_) => return Ok(u64::from_ne_bytes(buf)),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Empties an eventfd without blocking (poll with a zero timeout first).
pub fn drain(fd: impl AsFd) -> std::io::Result<()> {
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    loop {
        let mut fds = [rustix::event::PollFd::new(
            &fd,
            rustix::event::PollFlags::IN,
        )];
        if rustix::event::poll(&mut fds, Some(&zero))? == 0 {
            return Ok(());
        }
        wait(&fd)?;
    }
}

/// Writes all of `buf`.
pub fn write_all(fd: impl AsFd, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        match rustix::io::write(&fd, buf) {
            Ok(n) => buf = buf.get(n..).unwrap_or_default(),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Reads exactly `buf.len()` bytes.
pub fn read_exact(fd: impl AsFd, mut buf: &mut [u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        match rustix::io::read(&fd, &mut *buf) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => buf = buf.get_mut(n..).unwrap_or_default(),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Read- and write-class system calls this thread has made so far
/// (`syscr + syscw` from `/proc/thread-self/io`), or `None` where the
/// kernel does not account them.
pub fn rw_syscalls() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/io").ok()?;
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
    };
    Some(field("syscr:")? + field("syscw:")?)
}

/// Read/write syscalls that one [`rw_syscalls`] call itself adds to the
/// count (measured by two back-to-back readings).
pub fn meter_cost() -> u64 {
    static COST: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *COST.get_or_init(|| match (rw_syscalls(), rw_syscalls()) {
        (Some(a), Some(b)) => b.saturating_sub(a),
        _ => 0,
    })
}

static ALLOC_COUNTER: std::sync::OnceLock<fn() -> u64> = std::sync::OnceLock::new();

/// Lets a benchmark binary that installs a counting global allocator say
/// how to read its count (the harness has no allocator of its own).
pub fn set_allocation_counter(count: fn() -> u64) {
    let _ = ALLOC_COUNTER.set(count);
}

/// Allocations counted so far (per thread, if the binary counts per
/// thread), or `None` if no counter was set with
/// [`set_allocation_counter`].
pub fn allocations() -> Option<u64> {
    ALLOC_COUNTER.get().map(|f| f())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eventfd_kick_and_wait() {
        let fd = eventfd().unwrap();
        kick(&fd).unwrap();
        kick(&fd).unwrap();
        assert_eq!(wait(&fd).unwrap(), 2);
        drain(&fd).unwrap();
    }

    #[test]
    fn syscall_counter_moves() {
        let Some(before) = rw_syscalls() else { return };
        let fd = eventfd().unwrap();
        kick(&fd).unwrap();
        assert!(rw_syscalls().unwrap() > before);
    }
}
