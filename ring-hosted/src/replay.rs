//! FAKE: a [`Sys`] that replays recorded ioctl replies, for running the
//! VFIO and Xen code on a machine without those devices.
//!
//! A test scripts the exact sequence of requests it expects, each with the
//! reply the kernel would give: bytes copied back into the argument (e.g. a
//! filled-in `vfio_region_info`), a return value, an errno, or a file
//! descriptor (for `VFIO_GROUP_GET_DEVICE_FD`, handed back by
//! [`Sys::ioctl_fd`]; a temporary file or memfd stands in for the device,
//! its regions at the recorded offsets). A request out of order fails with
//! `EINVAL` and is logged, and every argument the code under test passed is
//! kept for assertions.
//!
//! An argument the real seam would refuse ([`IoctlRequest::check`]: a
//! buffer shorter than the request says the kernel may touch) is refused
//! here the same way, before the script or the log sees it.

use crate::devmem::{IoctlRequest, Sys};
use std::collections::VecDeque;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Mutex;

/// What the "kernel" answers to one request.
#[derive(Debug)]
pub enum Reply {
    /// Copy these bytes over the start of the argument, return 0.
    Fill(Vec<u8>),
    /// Return this value, argument untouched.
    Value(i32),
    /// Fail with this errno.
    Errno(i32),
    /// Return this descriptor (ownership passes to the caller), for a
    /// request that returns one.
    Fd(OwnedFd),
}

/// One expected request and its reply.
#[derive(Debug)]
pub struct Step {
    /// The request expected next.
    pub request: IoctlRequest,
    /// The reply.
    pub reply: Reply,
}

/// A scripted ioctl seam (see the [module docs](self)).
#[derive(Debug, Default)]
pub struct Replay {
    script: Mutex<VecDeque<Step>>,
    seen: Mutex<Vec<(IoctlRequest, Vec<u8>)>>,
}

impl Replay {
    /// A replay of `steps`, in order.
    pub fn new(steps: impl IntoIterator<Item = Step>) -> Self {
        Replay {
            script: Mutex::new(steps.into_iter().collect()),
            seen: Mutex::default(),
        }
    }

    /// Every request made so far with the argument bytes as passed (for
    /// integer-argument requests: the value's 8 bytes).
    pub fn seen(&self) -> Vec<(IoctlRequest, Vec<u8>)> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// How many scripted steps were not used.
    pub fn remaining(&self) -> usize {
        self.script.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn next(&self, request: IoctlRequest, arg: Vec<u8>) -> io::Result<Reply> {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((request, arg));
        let mut script = self.script.lock().unwrap_or_else(|p| p.into_inner());
        match script.front() {
            Some(step) if step.request == request => Ok(script
                .pop_front()
                .map(|s| s.reply)
                .unwrap_or(Reply::Errno(libc::EINVAL))),
            Some(step) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "replay expected ioctl {:#x}, got {:#x}",
                    step.request.number(),
                    request.number()
                ),
            )),
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("replay script exhausted at ioctl {:#x}", request.number()),
            )),
        }
    }
}

fn answer(request: IoctlRequest, reply: Reply, arg: Option<&mut [u8]>) -> io::Result<i32> {
    match reply {
        Reply::Fill(bytes) => {
            let arg = arg.ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
            let n = bytes.len().min(arg.len());
            arg[..n].copy_from_slice(&bytes[..n]);
            Ok(0)
        }
        Reply::Value(v) => Ok(v),
        Reply::Errno(e) => Err(io::Error::from_raw_os_error(e)),
        Reply::Fd(_) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "replay scripted a descriptor for ioctl {:#x}, which returns none",
                request.number()
            ),
        )),
    }
}

// The seam's methods are `unsafe` to call; a replay reaches no kernel and
// does nothing unsafe itself.
#[allow(unsafe_code)]
impl Sys for Replay {
    unsafe fn ioctl(
        &self,
        _fd: BorrowedFd<'_>,
        request: IoctlRequest,
        arg: &mut [u8],
    ) -> io::Result<i32> {
        request.check(arg)?;
        let reply = self.next(request, arg.to_vec())?;
        answer(request, reply, Some(arg))
    }

    unsafe fn ioctl_value(
        &self,
        _fd: BorrowedFd<'_>,
        request: IoctlRequest,
        value: u64,
    ) -> io::Result<i32> {
        request.check_value()?;
        let reply = self.next(request, value.to_ne_bytes().to_vec())?;
        answer(request, reply, None)
    }

    unsafe fn ioctl_fd(
        &self,
        _fd: BorrowedFd<'_>,
        request: IoctlRequest,
        arg: &mut [u8],
    ) -> io::Result<OwnedFd> {
        request.check_fd(arg)?;
        match self.next(request, arg.to_vec())? {
            Reply::Fd(fd) => Ok(fd),
            Reply::Errno(e) => Err(io::Error::from_raw_os_error(e)),
            other => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "replay scripted {other:?} for ioctl {:#x}, which returns a descriptor",
                    request.number()
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ioctl through the replay, which reaches no kernel: any file will
    /// do.
    #[allow(unsafe_code)]
    fn replayed(
        replay: &Replay,
        fd: BorrowedFd<'_>,
        request: IoctlRequest,
        arg: &mut [u8],
    ) -> io::Result<i32> {
        // SAFETY: a replay never reaches the kernel.
        unsafe { replay.ioctl(fd, request, arg) }
    }

    /// As [`replayed`], for a descriptor-returning request.
    #[allow(unsafe_code)]
    fn replayed_fd(
        replay: &Replay,
        fd: BorrowedFd<'_>,
        request: IoctlRequest,
        arg: &mut [u8],
    ) -> io::Result<OwnedFd> {
        // SAFETY: a replay never reaches the kernel.
        unsafe { replay.ioctl_fd(fd, request, arg) }
    }
    use crate::vfio::{IrqSet, VFIO_DEVICE_SET_IRQS, VFIO_GROUP_GET_DEVICE_FD};
    use crate::xen::evtchn::IOCTL_EVTCHN_NOTIFY;
    use std::os::fd::AsFd;
    use zerocopy::IntoBytes;

    fn memfd() -> OwnedFd {
        rustix::fs::memfd_create("replay-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap()
    }

    #[test]
    fn a_short_argument_is_refused_before_the_script_sees_it() {
        let fd = memfd();
        let replay = Replay::new([
            Step {
                request: VFIO_DEVICE_SET_IRQS,
                reply: Reply::Value(0),
            },
            Step {
                request: IOCTL_EVTCHN_NOTIFY,
                reply: Reply::Value(0),
            },
        ]);
        // argsz promises two eventfds after the header; the buffer has none.
        let mut header = IrqSet {
            argsz: (size_of::<IrqSet>() + 8) as u32,
            count: 2,
            ..IrqSet::default()
        };
        let e = replayed(
            &replay,
            fd.as_fd(),
            VFIO_DEVICE_SET_IRQS,
            header.as_mut_bytes(),
        )
        .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        assert!(e.to_string().contains("argsz 28"), "{e}");
        // Nothing was logged or consumed: the request never got that far.
        assert!(replay.seen().is_empty());
        assert_eq!(replay.remaining(), 2);
        // The same request with a truthful argsz goes through.
        header.argsz = size_of::<IrqSet>() as u32;
        replayed(
            &replay,
            fd.as_fd(),
            VFIO_DEVICE_SET_IRQS,
            header.as_mut_bytes(),
        )
        .unwrap();
        // A request encoding a 4-byte argument, given 2 bytes.
        let e = replayed(&replay, fd.as_fd(), IOCTL_EVTCHN_NOTIFY, &mut [0u8; 2]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        assert_eq!(replay.seen().len(), 1);
        assert_eq!(replay.remaining(), 1);
    }

    #[test]
    fn descriptors_come_back_owned_and_only_where_the_request_returns_one() {
        let fd = memfd();
        let stand_in = memfd();
        let raw = std::os::fd::AsRawFd::as_raw_fd(&stand_in);
        let replay = Replay::new([Step {
            request: VFIO_GROUP_GET_DEVICE_FD,
            reply: Reply::Fd(stand_in),
        }]);
        // Through the plain entry point it is refused, unlogged.
        let mut name = *b"0000:00:04.0\0";
        assert!(replayed(&replay, fd.as_fd(), VFIO_GROUP_GET_DEVICE_FD, &mut name).is_err());
        // A name without its NUL would let the kernel read past the buffer.
        let mut unterminated = *b"0000:00:04.0";
        let e = replayed_fd(
            &replay,
            fd.as_fd(),
            VFIO_GROUP_GET_DEVICE_FD,
            &mut unterminated,
        )
        .unwrap_err();
        assert!(e.to_string().contains("NUL"), "{e}");
        assert!(replay.seen().is_empty());
        let got = replayed_fd(&replay, fd.as_fd(), VFIO_GROUP_GET_DEVICE_FD, &mut name).unwrap();
        assert_eq!(std::os::fd::AsRawFd::as_raw_fd(&got), raw);
    }
}
