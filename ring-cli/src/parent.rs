//! Children that do not outlive their parent.
//!
//! A process the `ring` command starts (the demo's peer, the benchmark's
//! peer) asks the kernel to kill it when its parent dies
//! (`PR_SET_PDEATHSIG`), then checks that the parent it was started by is
//! still its parent: a parent that died before the request was made would
//! otherwise leave it running for ever.

use std::io;

/// The environment variable through which a parent passes its pid to a
/// child that calls [`die_with_parent`].
pub const PARENT_ENV: &str = "RING_PARENT_PID";

/// Our pid, as a parent puts it into [`PARENT_ENV`] for its child.
pub fn own_pid() -> String {
    std::process::id().to_string()
}

/// Makes this process die with its parent (SIGKILL on the parent's exit).
/// If [`PARENT_ENV`] names the parent we were started by and it is gone
/// already, fails so the caller can exit at once.
///
/// # Errors
///
/// The kernel's refusal of the request, or `ESRCH` if the parent named in
/// [`PARENT_ENV`] is no longer our parent; each says which.
pub fn die_with_parent() -> io::Result<()> {
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
        .map_err(|e| io::Error::other(format!("prctl(PR_SET_PDEATHSIG): {e}")))?;
    let Some(expected) = std::env::var(PARENT_ENV)
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    else {
        return Ok(());
    };
    let now = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get());
    if now != expected {
        let gone = io::Error::from_raw_os_error(rustix::io::Errno::SRCH.raw_os_error());
        return Err(io::Error::new(
            gone.kind(),
            format!("checking the parent process: {gone}"),
        ));
    }
    Ok(())
}
