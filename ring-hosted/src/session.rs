//! Typed sessions: the protocol as a type parameter, so a listener's
//! `accept` and a client's [`connect`] hand back the stream itself — a
//! [`VchanStream`] for [`Vchan`], a [`VmbusPipe`] for [`Vmbus`], a
//! [`VmbusChannel`] of raw packets for [`VmbusPackets`] — with nothing to
//! unwrap. The rendezvous underneath is the same as
//! [`rendezvous`]'s, whose [`Session`] enum stays for
//! callers that pick the protocol at run time (the `ring` command).
//!
//! ```
//! use ring_hosted::session::{self, Listener, Vchan};
//! use std::io::{Read, Write};
//!
//! let dir = std::env::temp_dir().join(format!("ring-typed-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! let path = dir.join("sock");
//! let listener = Listener::<Vchan>::bind(&path)?;
//! let client = std::thread::spawn({
//!     let path = path.clone();
//!     move || -> Result<(), ring_hosted::Error> {
//!         let mut c = session::connect::<Vchan>(&path)?; // a VchanStream
//!         c.write_all(b"ping")?;
//!         c.close()
//!     }
//! });
//! let mut server = listener.accept()?; // a VchanStream too
//! let mut got = Vec::new();
//! server.read_to_end(&mut got)?;
//! assert_eq!(got, b"ping");
//! client.join().unwrap()?;
//! # drop(listener);
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The type is the protocol; a stream of the other one cannot come out:
//!
//! ```compile_fail
//! use ring_hosted::session::{self, Vmbus};
//! use ring_hosted::stream::VchanStream;
//! let s: VchanStream = session::connect::<Vmbus>(std::path::Path::new("/tmp/x")).unwrap();
//! ```
//!
//! Only the three protocols are protocols (the trait is sealed):
//!
//! ```compile_fail
//! use ring_hosted::session::Listener;
//! let l = Listener::<u8>::bind(std::path::Path::new("/tmp/x"));
//! ```
//!
//! A raw packet channel is not a byte stream: it has no `std::io::Read`
//! (and no `Write`), so pipe framing cannot be assumed by mistake:
//!
//! ```compile_fail
//! use ring_hosted::session::{self, VmbusPackets};
//! use std::io::Read;
//! let mut c = session::connect::<VmbusPackets>(std::path::Path::new("/tmp/x")).unwrap();
//! let mut buf = [0u8; 8];
//! c.read(&mut buf).unwrap();
//! ```

use crate::rendezvous::{self, ClientConfig, HandshakeProblem, Proto, ServerConfig, Session};
use crate::stream::VchanStream;
use crate::vmbus::{VmbusChannel, VmbusPipe};
use crate::Error;
use std::marker::PhantomData;
use std::path::Path;
use std::time::Duration;

/// A protocol the rendezvous serves, as a type: its wire code and the
/// stream a session of it becomes. Sealed: [`Vchan`], [`Vmbus`] and
/// [`VmbusPackets`] are all there is.
pub trait Protocol: sealed::Sealed {
    /// The protocol's run-time name.
    const PROTO: Proto;
    /// What a connected session of this protocol is.
    type Stream;
    /// The stream inside `session`, if it is of this protocol.
    fn stream(session: Session) -> Option<Self::Stream>;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Vchan {}
    impl Sealed for super::Vmbus {}
    impl Sealed for super::VmbusPackets {}
}

/// Xen vchan: a byte stream each way, [`VchanStream`].
#[derive(Clone, Copy, Debug)]
pub enum Vchan {}

/// Hyper-V VMBus: a byte and message pipe each way, [`VmbusPipe`].
#[derive(Clone, Copy, Debug)]
pub enum Vmbus {}

/// Hyper-V VMBus without pipe framing: raw packets each way,
/// [`VmbusChannel`]. A [`Vmbus`] peer is refused in the handshake: the
/// two read the same rings differently.
#[derive(Clone, Copy, Debug)]
pub enum VmbusPackets {}

impl Protocol for Vchan {
    const PROTO: Proto = Proto::Vchan;
    type Stream = VchanStream;
    fn stream(session: Session) -> Option<VchanStream> {
        session.into_vchan()
    }
}

impl Protocol for Vmbus {
    const PROTO: Proto = Proto::Vmbus;
    type Stream = VmbusPipe;
    fn stream(session: Session) -> Option<VmbusPipe> {
        session.into_vmbus()
    }
}

impl Protocol for VmbusPackets {
    const PROTO: Proto = Proto::VmbusPackets;
    type Stream = VmbusChannel;
    fn stream(session: Session) -> Option<VmbusChannel> {
        session.into_vmbus_packets()
    }
}

/// The session as `P`'s stream. The server's configuration fixes the
/// protocol and the client asks for it in the handshake, so a mismatch
/// here means a peer that answered for another protocol.
pub(crate) fn typed<P: Protocol>(session: Session) -> Result<P::Stream, Error> {
    let got = session.proto();
    P::stream(session).ok_or(Error::Handshake(HandshakeProblem::Proto {
        got: got.code(),
        want: P::PROTO.code(),
    }))
}

/// A rendezvous listener for one protocol: [`accept`](Self::accept) gives
/// `P`'s stream. Everything else is [`rendezvous::Listener`]'s: one
/// listener per path, uid checks, a client cannot stop it.
#[derive(Debug)]
pub struct Listener<P> {
    inner: rendezvous::Listener,
    _proto: PhantomData<fn() -> P>,
}

impl<P: Protocol> Listener<P> {
    /// Listens at `path` with the default settings (64 KiB rings, same
    /// uid only).
    ///
    /// # Errors
    ///
    /// As [`rendezvous::Listener::bind`].
    pub fn bind(path: &Path) -> Result<Self, Error> {
        Self::bind_with(path, ServerConfig::new(P::PROTO))
    }

    /// Listens with explicit settings; their `proto` is set to `P`'s.
    ///
    /// # Errors
    ///
    /// As [`rendezvous::Listener::bind`].
    pub fn bind_with(path: &Path, mut config: ServerConfig) -> Result<Self, Error> {
        config.proto = P::PROTO;
        Ok(Listener {
            inner: rendezvous::Listener::bind(path, config)?,
            _proto: PhantomData,
        })
    }

    /// Waits for the next client that completes the handshake (clients
    /// that fail it are refused and skipped).
    ///
    /// # Errors
    ///
    /// As [`rendezvous::Listener::accept`].
    pub fn accept(&self) -> Result<P::Stream, Error> {
        typed::<P>(self.inner.accept()?)
    }

    /// As [`accept`](Self::accept), giving up after `timeout` with
    /// [`Error::TimedOut`].
    ///
    /// # Errors
    ///
    /// As [`rendezvous::Listener::accept_timeout`].
    pub fn accept_timeout(&self, timeout: Duration) -> Result<P::Stream, Error> {
        typed::<P>(self.inner.accept_timeout(timeout)?)
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        self.inner.path()
    }

    /// The untyped listener underneath.
    pub fn untyped(&self) -> &rendezvous::Listener {
        &self.inner
    }
}

/// Connects to the `P` server at `path`.
///
/// # Errors
///
/// As [`rendezvous::connect_with`].
pub fn connect<P: Protocol>(path: &Path) -> Result<P::Stream, Error> {
    connect_with::<P>(path, ClientConfig::new(P::PROTO))
}

/// Connects with explicit settings; their `proto` is set to `P`'s.
///
/// # Errors
///
/// As [`rendezvous::connect_with`].
pub fn connect_with<P: Protocol>(
    path: &Path,
    mut config: ClientConfig,
) -> Result<P::Stream, Error> {
    config.proto = P::PROTO;
    typed::<P>(rendezvous::connect_with(path, config)?)
}
