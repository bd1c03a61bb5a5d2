//! FAKE: a [`Sys`] that replays recorded ioctl replies, for running the
//! VFIO and Xen code on a machine without those devices.
//!
//! A test scripts the exact sequence of requests it expects, each with the
//! reply the kernel would give: bytes copied back into the argument (e.g. a
//! filled-in `vfio_region_info`), a return value, an errno, or a file
//! descriptor (for `VFIO_GROUP_GET_DEVICE_FD`; a temporary file or memfd
//! stands in for the device, its regions at the recorded offsets). A
//! request out of order fails with `EINVAL` and is logged, and every
//! argument the code under test passed is kept for assertions.

use crate::devmem::Sys;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{BorrowedFd, IntoRawFd, OwnedFd};
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
    /// Return this descriptor (ownership passes to the caller).
    Fd(OwnedFd),
}

/// One expected request and its reply.
#[derive(Debug)]
pub struct Step {
    /// The request number expected next.
    pub request: u32,
    /// The reply.
    pub reply: Reply,
}

/// A scripted ioctl seam (see the [module docs](self)).
#[derive(Debug, Default)]
pub struct Replay {
    script: Mutex<VecDeque<Step>>,
    seen: Mutex<Vec<(u32, Vec<u8>)>>,
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
    pub fn seen(&self) -> Vec<(u32, Vec<u8>)> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// How many scripted steps were not used.
    pub fn remaining(&self) -> usize {
        self.script.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn next(&self, request: u32, arg: Vec<u8>) -> io::Result<Reply> {
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
                    "replay expected ioctl {:#x}, got {request:#x}",
                    step.request
                ),
            )),
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("replay script exhausted at ioctl {request:#x}"),
            )),
        }
    }
}

fn answer(reply: Reply, arg: Option<&mut [u8]>) -> io::Result<i32> {
    match reply {
        Reply::Fill(bytes) => {
            let arg = arg.ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
            let n = bytes.len().min(arg.len());
            arg[..n].copy_from_slice(&bytes[..n]);
            Ok(0)
        }
        Reply::Value(v) => Ok(v),
        Reply::Errno(e) => Err(io::Error::from_raw_os_error(e)),
        Reply::Fd(fd) => Ok(fd.into_raw_fd()),
    }
}

impl Sys for Replay {
    fn ioctl(&self, _fd: BorrowedFd<'_>, request: u32, arg: &mut [u8]) -> io::Result<i32> {
        let reply = self.next(request, arg.to_vec())?;
        answer(reply, Some(arg))
    }

    fn ioctl_value(&self, _fd: BorrowedFd<'_>, request: u32, value: u64) -> io::Result<i32> {
        let reply = self.next(request, value.to_ne_bytes().to_vec())?;
        answer(reply, None)
    }
}
