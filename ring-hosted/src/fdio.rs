//! Moving bytes between shared memory and a file descriptor with one
//! system call and no buffer in between: `readv(2)` straight into a ring's
//! free space, `writev(2)`/`sendmsg(2)` straight out of its used space.
//!
//! ring-core offers that space as [`Span`]s of the ring's memory (see
//! [`ring_core::loan`]); an [`FdIo`] memory turns the spans into an
//! `iovec` list over its own mapping and lets the kernel do the one copy.
//! No Rust reference into the shared pages is ever formed: the kernel
//! reads and writes them as the peer does, and the ring publishes the
//! bytes only after the system call has returned.
//!
//! ```
//! use ring_core::loan::Span;
//! use ring_core::mem::SharedMem;
//! use ring_hosted::fdio::{FdIo, Output};
//! use ring_hosted::memfd::MemFd;
//! use std::io::Write;
//! use std::os::fd::AsFd;
//!
//! let mem = MemFd::create("fdio", 4096).unwrap();
//! let (reader, mut writer) = std::io::pipe().unwrap();
//! writer.write_all(b"hello").unwrap();
//! let got = mem.read_from_fd(reader.as_fd(), &[Span { offset: 100, len: 64 }]).unwrap();
//! assert_eq!(got, 5);
//! let mut back = [0u8; 5];
//! mem.read(100, &mut back).unwrap();
//! assert_eq!(&back, b"hello");
//! ```

use crate::window::Window;
use ring_core::loan::{Span, SpanList};
use ring_core::mem::SharedMem;
use std::io;
use std::os::fd::BorrowedFd;
use std::sync::Arc;

/// What kind of fd a [`FdIo::write_to_fd`] writes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// A pipe, file or terminal: `writev(2)`, blocking as the fd does.
    File,
    /// A socket: `sendmsg(2)` with `MSG_DONTWAIT | MSG_NOSIGNAL`, so a full
    /// socket buffer is `WouldBlock` and a closed peer `BrokenPipe`, never
    /// a stalled loop or a `SIGPIPE`.
    Socket,
}

/// A shared memory the kernel can copy to and from directly.
pub trait FdIo: SharedMem {
    /// One `readv(2)` from `fd` into `spans` of this memory, in order.
    /// Returns the bytes read (0: end of file).
    ///
    /// # Errors
    ///
    /// The system call's error (`WouldBlock` for an empty non-blocking
    /// fd); `InvalidInput` if a span lies outside the memory or there are
    /// more than [`ring_core::loan::MAX_SPANS`].
    fn read_from_fd(&self, fd: BorrowedFd<'_>, spans: &[Span]) -> io::Result<usize>;

    /// One `writev(2)` or `sendmsg(2)` (see [`Output`]) of `spans` of this
    /// memory to `fd`, in order. Returns the bytes the fd took.
    ///
    /// # Errors
    ///
    /// As [`read_from_fd`](Self::read_from_fd).
    fn write_to_fd(&self, fd: BorrowedFd<'_>, spans: &[Span], to: Output) -> io::Result<usize>;
}

impl<T: FdIo + ?Sized> FdIo for Arc<T> {
    fn read_from_fd(&self, fd: BorrowedFd<'_>, spans: &[Span]) -> io::Result<usize> {
        (**self).read_from_fd(fd, spans)
    }
    fn write_to_fd(&self, fd: BorrowedFd<'_>, spans: &[Span], to: Output) -> io::Result<usize> {
        (**self).write_to_fd(fd, spans, to)
    }
}

impl<M: FdIo> Window<M> {
    /// The spans shifted into the memory below, each checked against the
    /// window first.
    fn shift(&self, spans: &[Span]) -> io::Result<SpanList> {
        let mut out = SpanList::new();
        for s in spans {
            let offset = self
                .translate(s.offset, s.len)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
            out.push(Span { offset, len: s.len })
                .map_err(|_| too_many_spans())?;
        }
        Ok(out)
    }
}

impl<M: FdIo> FdIo for Window<M> {
    fn read_from_fd(&self, fd: BorrowedFd<'_>, spans: &[Span]) -> io::Result<usize> {
        self.inner().read_from_fd(fd, &self.shift(spans)?)
    }
    fn write_to_fd(&self, fd: BorrowedFd<'_>, spans: &[Span], to: Output) -> io::Result<usize> {
        self.inner().write_to_fd(fd, &self.shift(spans)?, to)
    }
}

/// Writes `bytes` (a buffer of ours) to `fd` the way
/// [`FdIo::write_to_fd`] writes spans: `write(2)`, or `send(2)` with
/// `MSG_DONTWAIT | MSG_NOSIGNAL` to a socket.
///
/// # Errors
///
/// The system call's.
pub fn write_bytes(fd: BorrowedFd<'_>, bytes: &[u8], to: Output) -> io::Result<usize> {
    let n = match to {
        Output::File => rustix::io::write(fd, bytes)?,
        Output::Socket => rustix::net::send(
            fd,
            bytes,
            rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL,
        )?,
    };
    Ok(n)
}

/// The error for a span list longer than any ring offers.
pub(crate) fn too_many_spans() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "more spans than one in-place call offers",
    )
}
