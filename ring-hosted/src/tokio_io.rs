//! Tokio [`AsyncRead`]/[`AsyncWrite`] over a [`VchanStream`] (feature
//! `tokio`).
//!
//! The ring calls never block: one that cannot make progress has already
//! armed its wake-up request and re-checked the ring when it returns
//! "would block". Only then does [`AsyncVchan`] wait, for the eventfd the
//! peer kicks to become readable (through [`AsyncFd`]); it consumes the
//! event and retries. Writes kick the peer when the ring asks for it, as
//! the blocking stream does.
//!
//! Drive both directions from one task (e.g. with `tokio::select!`), not
//! through `tokio::io::split`: both directions share one eventfd, and
//! [`AsyncFd`] keeps only the most recent reader's waker.
//!
//! The peer's death is noticed when it closes the ring (which kicks us);
//! a peer that dies without closing is not noticed while we wait.

#![allow(unsafe_code)]

use crate::stream::VchanStream;
use crate::Error;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A [`VchanStream`] for tokio: [`AsyncRead`] and [`AsyncWrite`].
///
/// Must be created inside a tokio runtime with I/O enabled.
#[derive(Debug)]
pub struct AsyncVchan {
    stream: VchanStream,
    wake: AsyncFd<OwnedFd>,
}

impl AsyncVchan {
    /// Wraps `stream`, registering (a duplicate of) the eventfd it is
    /// woken by with the runtime's reactor.
    ///
    /// # Errors
    ///
    /// [`Error::Os`] if the fd cannot be duplicated or registered (e.g.
    /// outside a runtime).
    pub fn new(stream: VchanStream) -> Result<Self, Error> {
        let fd = stream
            .signal()
            .wake_fd()
            .try_clone_to_owned()
            .map_err(|source| Error::Os {
                op: "dup eventfd",
                source,
            })?;
        // SAFETY: `fd` is an open fd that the `AsyncFd` owns (an `OwnedFd`
        // closes only on drop and always reports the same number), so it
        // stays open and the same file for the `AsyncFd`'s whole life.
        let wake = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(|e| Error::Os {
                op: "register eventfd with tokio",
                source: e.into_parts().1,
            })?;
        Ok(AsyncVchan { stream, wake })
    }

    /// The blocking stream inside.
    pub fn get_mut(&mut self) -> &mut VchanStream {
        &mut self.stream
    }

    /// Unwraps the blocking stream.
    pub fn into_inner(self) -> VchanStream {
        self.stream
    }

    /// Waits until the eventfd is readable and consumes the event;
    /// `Ready` means "retry the ring operation".
    fn poll_kicked(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut guard = ready!(self.wake.poll_read_ready(cx))?;
        let mut counter = [0u8; 8];
        match rustix::io::read(guard.get_inner().as_fd(), &mut counter) {
            Ok(_) | Err(rustix::io::Errno::AGAIN) => {
                // The counter is zero now: the fd stays quiet until the
                // next kick.
                guard.clear_ready();
                Poll::Ready(Ok(()))
            }
            Err(rustix::io::Errno::INTR) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(e.into())),
        }
    }
}

impl AsyncRead for AsyncVchan {
    /// Reads what the ring holds; end of stream once the peer closed (or
    /// died) and the ring is drained.
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match this.stream.try_read(buf.initialize_unfilled()) {
                Ok(Some(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(None) => ready!(this.poll_kicked(cx))?,
                Err(Error::Closed) => return Poll::Ready(Ok(())),
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
    }
}

impl AsyncWrite for AsyncVchan {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if bufs.iter().all(|b| b.is_empty()) {
            return Poll::Ready(Ok(0));
        }
        loop {
            // One publish (and at most one kick) for all of them.
            match this.stream.try_write_vectored(bufs) {
                Ok(Some(n)) => return Poll::Ready(Ok(n)),
                Ok(None) => ready!(this.poll_kicked(cx))?,
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Bytes are visible to the peer as soon as the write returns.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.get_mut().stream.close().map_err(io::Error::from))
    }
}
