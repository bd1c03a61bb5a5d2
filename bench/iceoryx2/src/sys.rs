//! The few system facts and calls the benchmark needs: CPU pinning, the
//! CPU model and load average, and a deadline for busy loops.

use std::time::{Duration, Instant};

/// How long any single wait may take before the run fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Pins the calling process (all of it: it has one thread) to `cpu`.
///
/// # Errors
///
/// If the kernel refuses (the CPU is offline or not ours).
pub fn pin_to(cpu: usize) -> Result<(), String> {
    // SAFETY: an all-zero cpu_set_t is a valid, empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(format!("CPU {cpu} is beyond the CPU set"));
    }
    // SAFETY: `cpu` is below CPU_SETSIZE (checked above), so the bit lies
    // inside `set`.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is us.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r != 0 {
        return Err(format!(
            "sched_setaffinity(CPU {cpu}): {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// CPUs online (not just those our affinity mask allows).
pub fn online_cpus() -> libc::c_long {
    // SAFETY: sysconf reads a system constant and touches no memory of ours.
    unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }
}

/// The CPU the caller runs on now.
pub fn current_cpu() -> i32 {
    // SAFETY: sched_getcpu takes no arguments and touches no memory of ours.
    unsafe { libc::sched_getcpu() }
}

/// The "model name" line of /proc/cpuinfo.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned())
}

/// The three load averages of /proc/loadavg.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Whether process `pid` (our child) has exited, without reaping it.
pub fn child_exited(pid: u32) -> bool {
    // SAFETY: an all-zero siginfo_t is a valid out-parameter.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid writes only `info`; WNOWAIT leaves the child to
    // `std::process::Child::wait`.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: waitid filled `info` (or left it zeroed: si_pid 0).
    r != 0 || unsafe { info.si_pid() } != 0
}

/// A deadline for a busy loop, and the child whose death also ends it:
/// [`tick`](Self::tick) is cheap, and looks at the clock and the child only
/// every few thousand calls.
pub struct Watch {
    what: &'static str,
    deadline: Instant,
    child: Option<u32>,
    n: u32,
}

impl Watch {
    /// A deadline [`DEADLINE`] from now for `what`; `child`: fail early
    /// if that process exits.
    pub fn new(what: &'static str, child: Option<u32>) -> Self {
        Watch {
            what,
            deadline: Instant::now() + DEADLINE,
            child,
            n: 0,
        }
    }

    /// One turn of a busy loop.
    ///
    /// # Errors
    ///
    /// Past the deadline, or once the child has exited.
    #[inline]
    pub fn tick(&mut self) -> Result<(), String> {
        self.n = self.n.wrapping_add(1);
        if !self.n.is_multiple_of(1 << 14) {
            return Ok(());
        }
        self.check()
    }

    #[cold]
    fn check(&self) -> Result<(), String> {
        if Instant::now() > self.deadline {
            return Err(format!(
                "{}: still waiting after {} s",
                self.what,
                DEADLINE.as_secs()
            ));
        }
        if let Some(pid) = self.child {
            if child_exited(pid) {
                return Err(format!("{}: the peer process exited", self.what));
            }
        }
        Ok(())
    }
}
