//! The host side of QEMU's `ivshmem-doorbell`: an ivshmem server that QEMU
//! connects to, with the host process as a peer of its own, so a ring in
//! the shared memory links a host process and a guest with real
//! interrupts both ways.
//!
//! ```text
//!  host process (peer 0)            QEMU (peer 1..)            guest
//!  ┌──────────────────┐  socket    ┌──────────────┐         ┌──────────┐
//!  │ IvshmemServer    │◀──────────▶│ ivshmem-     │  BAR2   │ ring     │
//!  │  memfd (sealed) ─┼── fd ─────▶│ doorbell     │◀═══════▶│ (VFIO)   │
//!  │  our eventfds ───┼── fds ────▶│  doorbell ───┼─ BAR0 ◀─┤ notify   │
//!  │  its eventfds ◀──┼── kick ────┤  MSI-X ──────┼────────▶│ wait     │
//!  └──────────────────┘            └──────────────┘         └──────────┘
//! ```
//!
//! The protocol (QEMU's `docs/specs/ivshmem-spec.rst`): every message is
//! one little-endian `int64`, with at most one fd attached. To a new peer
//! the server sends the protocol version (0), the peer's id, the shared
//! memory (`-1` with the memfd), then for every peer — the others first,
//! the new peer itself last — one message per interrupt vector: the
//! peer's id with that vector's eventfd. QEMU listens on its own
//! eventfds (raising MSI-X vector `v` in the guest) and writes the others'
//! when the guest writes `(peer << 16) | v` to the doorbell. Peers already
//! there learn of a newcomer the same way, and of a departure by its id
//! with no fd.
//!
//! The host process is peer 0: its eventfds are what guests ring, and
//! ringing guest `g` on vector `v` is a write to `g`'s `v`-th eventfd,
//! which the server created and keeps. [`IvshmemServer::signal`] makes an
//! [`EventSignal`] of such a pair, watching the guest's QEMU socket, so the
//! guest's death (QEMU exits) ends a wait with [`Error::PeerGone`].

use crate::eventfd::{EventFd, EventSignal};
use crate::memfd::MemFd;
use crate::rendezvous::send_with_fds;
use crate::Error;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The protocol version this server speaks (the only one QEMU knows).
pub const PROTOCOL_VERSION: i64 = 0;

/// The host process's peer id.
pub const HOST_ID: u16 = 0;

/// Most interrupt vectors per peer we hand out (QEMU allows more; a ring
/// needs one, two at most).
pub const MAX_VECTORS: u16 = 8;

/// One peer as the server knows it: its id, its vectors' eventfds, and
/// (for a guest) the socket to its QEMU.
#[derive(Debug)]
struct Peer {
    id: u16,
    vectors: Vec<EventFd>,
    sock: Option<UnixStream>,
}

/// An ivshmem server with the host process as peer 0.
///
/// One listening socket, one sealed memfd shared with every guest, and
/// `vectors` eventfds per peer. Guests are accepted one at a time with
/// [`accept`](Self::accept); each gets the next id from 1.
#[derive(Debug)]
pub struct IvshmemServer {
    listener: UnixListener,
    path: PathBuf,
    mem: Arc<MemFd>,
    vectors: u16,
    host: Peer,
    guests: Vec<Peer>,
    next_id: u16,
}

/// Sends one protocol message: `value`, with `fd` attached if given.
fn send_msg(sock: &UnixStream, value: i64, fd: Option<BorrowedFd<'_>>) -> Result<(), Error> {
    let fds: &[BorrowedFd<'_>] = match &fd {
        Some(f) => std::slice::from_ref(f),
        None => &[],
    };
    send_with_fds(sock, &value.to_le_bytes(), fds)
}

impl IvshmemServer {
    /// Binds `path` (which must not exist) and creates the shared memory:
    /// a sealed memfd of `size` bytes, rounded up to a power of two (the
    /// size of the guest's BAR2).
    ///
    /// # Errors
    ///
    /// [`Error::Os`] if the socket cannot be bound or the memfd created;
    /// [`Error::BadFd`] for a zero size; a vector count of 0 or above
    /// [`MAX_VECTORS`] is refused as `InvalidInput`.
    ///
    /// # Examples
    ///
    /// Runs without QEMU: the memory is ready as soon as the socket is bound,
    /// sized up to the next power of two.
    ///
    /// ```
    /// use ring_hosted::ivshmem::IvshmemServer;
    ///
    /// let dir = std::env::temp_dir().join(format!("ring-doc-ivshmem-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir)?;
    /// let server = IvshmemServer::bind(&dir.join("ivs.sock"), 5000, 1)?;
    /// assert_eq!(server.memory().len(), 8192);
    /// assert!(server.memory().is_sealed());
    /// assert_eq!(server.vectors(), 1);
    /// assert!(IvshmemServer::bind(&dir.join("other.sock"), 4096, 0).is_err()); // no vectors
    /// # drop(server);
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn bind(path: &Path, size: usize, vectors: u16) -> Result<Self, Error> {
        if vectors == 0 || vectors > MAX_VECTORS {
            return Err(Error::Os {
                op: "ivshmem server",
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{vectors} vectors: 1 to {MAX_VECTORS} are served"),
                ),
            });
        }
        let size = size.max(4096).next_power_of_two();
        let mem = Arc::new(MemFd::create("ivshmem", size)?);
        let listener = crate::unix_socket::listen_at(path, crate::unix_socket::Existing::Keep)
            .map_err(|source| Error::Os {
                op: "bind ivshmem socket",
                source,
            })?;
        let host = Peer {
            id: HOST_ID,
            vectors: (0..vectors)
                .map(|_| EventFd::new())
                .collect::<Result<_, _>>()?,
            sock: None,
        };
        Ok(IvshmemServer {
            listener,
            path: path.to_owned(),
            mem,
            vectors,
            host,
            guests: Vec::new(),
            next_id: 1,
        })
    }

    /// The shared memory, for laying a ring out in it.
    pub fn memory(&self) -> &Arc<MemFd> {
        &self.mem
    }

    /// The socket path QEMU connects to (`-chardev socket,path=…`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Interrupt vectors per peer (QEMU's `vectors=` must say the same).
    pub fn vectors(&self) -> u16 {
        self.vectors
    }

    /// Waits up to `timeout` (`None`: for ever) for a QEMU to connect,
    /// tells it the memory and every peer's eventfds, tells the guests
    /// already there about it, and returns its peer id.
    ///
    /// A client that goes away (or whose socket fails) before it has been
    /// told everything is dropped, and the next one is served within the
    /// same timeout: no client can end the server by leaving early.
    ///
    /// # Errors
    ///
    /// [`Error::TimedOut`]; [`Error::Os`] if the listening socket fails;
    /// ids are refused once 65535 guests have come.
    ///
    /// # Examples
    ///
    /// With no QEMU started, the timeout is reported; a client that leaves
    /// at once is dropped, and a QEMU (here a plain socket standing in for
    /// one) gets the next peer id:
    ///
    /// ```
    /// use ring_hosted::{ivshmem::IvshmemServer, Error};
    /// use std::os::unix::net::UnixStream;
    /// use std::time::Duration;
    ///
    /// let dir = std::env::temp_dir().join(format!("ring-doc-ivs-accept-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir)?;
    /// let mut server = IvshmemServer::bind(&dir.join("ivs.sock"), 1 << 20, 1)?;
    /// let nobody = server.accept(Some(Duration::from_millis(50)));
    /// assert!(matches!(nobody, Err(Error::TimedOut)));
    /// drop(UnixStream::connect(server.path())?); // connects and leaves
    /// let _qemu = UnixStream::connect(server.path())?;
    /// let id = server.accept(Some(Duration::from_secs(10)))?;
    /// assert!(id >= 1);
    /// # drop(server);
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn accept(&mut self, timeout: Option<Duration>) -> Result<u16, Error> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let sock = self.next_connection(deadline)?;
            let id = self.next_id;
            self.next_id = self.next_id.checked_add(1).ok_or(Error::Os {
                op: "ivshmem server",
                source: io::Error::other("no peer ids left"),
            })?;
            let peer = Peer {
                id,
                vectors: (0..self.vectors)
                    .map(|_| EventFd::new())
                    .collect::<Result<_, _>>()?,
                sock: Some(sock),
            };
            // A client that leaves (or breaks) during its welcome is
            // dropped: the next one is served.
            if self.welcome(&peer).is_err() {
                continue;
            }
            // The guests already there may ring the newcomer too. One that
            // has gone is dropped here (its QEMU closed the socket).
            self.guests.retain(|g| {
                g.sock.as_ref().is_some_and(|s| {
                    peer.vectors
                        .iter()
                        .all(|v| send_msg(s, i64::from(id), Some(v.as_fd())).is_ok())
                })
            });
            self.guests.push(peer);
            return Ok(id);
        }
    }

    /// The next connection on the listening socket, by `deadline`.
    fn next_connection(&self, deadline: Option<Instant>) -> Result<UnixStream, Error> {
        let os = |op| move |source| Error::Os { op, source };
        self.listener
            .set_nonblocking(true)
            .map_err(os("ivshmem socket"))?;
        let sock = loop {
            match self.listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let left = match deadline {
                        Some(d) => match d.checked_duration_since(Instant::now()) {
                            Some(left) if !left.is_zero() => left,
                            _ => return Err(Error::TimedOut),
                        },
                        None => Duration::from_secs(1),
                    };
                    let mut fds = [rustix::event::PollFd::new(
                        &self.listener,
                        rustix::event::PollFlags::IN,
                    )];
                    let ts = rustix::event::Timespec::try_from(left.min(Duration::from_secs(1)))
                        .unwrap_or(rustix::event::Timespec {
                            tv_sec: 1,
                            tv_nsec: 0,
                        });
                    let _ = rustix::event::poll(&mut fds, Some(&ts));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Out of descriptors (or a client that reset before we
                // took it): not the server's end; wait and try again.
                Err(e) if is_transient_accept_error(&e) => {
                    std::thread::sleep(Duration::from_millis(50));
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(Error::TimedOut);
                    }
                }
                Err(source) => return Err(os("accept on the ivshmem socket")(source)),
            }
        };
        sock.set_nonblocking(false).map_err(os("ivshmem socket"))?;
        Ok(sock)
    }

    /// Tells a new peer its id, the memory and every peer's eventfds (its
    /// own last), as QEMU expects.
    fn welcome(&self, peer: &Peer) -> Result<(), Error> {
        let Some(sock) = peer.sock.as_ref() else {
            return Err(Error::PeerGone);
        };
        send_msg(sock, PROTOCOL_VERSION, None)?;
        send_msg(sock, i64::from(peer.id), None)?;
        send_msg(sock, -1, Some(self.mem.as_fd()))?;
        for other in std::iter::once(&self.host).chain(&self.guests) {
            for v in &other.vectors {
                send_msg(sock, i64::from(other.id), Some(v.as_fd()))?;
            }
        }
        for v in &peer.vectors {
            send_msg(sock, i64::from(peer.id), Some(v.as_fd()))?;
        }
        Ok(())
    }

    /// Closes, at once, every connection that arrives until the returned
    /// guard is dropped (a server that serves one guest refuses the rest:
    /// their QEMU fails to start rather than waiting for ever), and counts
    /// them.
    ///
    /// # Errors
    ///
    /// [`Error::Os`] if the listening socket cannot be shared with the
    /// thread that refuses.
    pub fn refuse_others(&self) -> Result<Refusing, Error> {
        let listener = self.listener.try_clone().map_err(|source| Error::Os {
            op: "ivshmem socket",
            source,
        })?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (flag, count) = (Arc::clone(&stop), Arc::clone(&refused));
        let thread = std::thread::Builder::new()
            .name("ivshmem-refuse".into())
            .spawn(move || {
                use std::sync::atomic::Ordering::Relaxed;
                let _ = listener.set_nonblocking(true);
                while !flag.load(Relaxed) {
                    match listener.accept() {
                        Ok((s, _)) => {
                            // Counted before it is closed: whoever sees
                            // the close may ask the count at once.
                            count.fetch_add(1, Relaxed);
                            drop(s);
                        }
                        Err(_) => {
                            let mut fds = [rustix::event::PollFd::new(
                                &listener,
                                rustix::event::PollFlags::IN,
                            )];
                            let ts = rustix::event::Timespec {
                                tv_sec: 0,
                                tv_nsec: 100_000_000,
                            };
                            let _ = rustix::event::poll(&mut fds, Some(&ts));
                        }
                    }
                }
            })
            .map_err(|source| Error::Os {
                op: "ivshmem refusing thread",
                source,
            })?;
        Ok(Refusing {
            stop,
            refused,
            thread: Some(thread),
        })
    }

    /// Forgets guest `id` (its QEMU has gone) and tells the others.
    pub fn remove(&mut self, id: u16) {
        self.guests.retain(|g| g.id != id);
        for g in &self.guests {
            if let Some(s) = &g.sock {
                let _ = send_msg(s, i64::from(id), None);
            }
        }
    }

    /// The signal between the host and guest `id` on `vector`: `notify`
    /// rings the guest (its eventfd, which its QEMU turns into MSI-X),
    /// waits wake on our own eventfd (the guest's doorbell), and the
    /// guest's QEMU socket is watched, so its exit ends a wait with
    /// [`Error::PeerGone`].
    ///
    /// # Errors
    ///
    /// [`Error::Os`] for an unknown guest or vector, or if an fd cannot be
    /// duplicated.
    ///
    /// # Examples
    ///
    /// The signal to guest 1 on vector 0; its QEMU (a plain socket here) going
    /// away ends our wait:
    ///
    /// ```
    /// use ring_hosted::{eventfd::WaitError, ivshmem::IvshmemServer};
    /// use std::os::unix::net::UnixStream;
    /// use std::time::Duration;
    ///
    /// let dir = std::env::temp_dir().join(format!("ring-doc-ivs-signal-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir)?;
    /// let mut server = IvshmemServer::bind(&dir.join("ivs.sock"), 1 << 20, 1)?;
    /// let qemu = UnixStream::connect(server.path())?;
    /// let guest = server.accept(Some(Duration::from_secs(10)))?;
    /// let signal = server.signal(guest, 0)?;
    /// assert!(server.signal(guest, 1).is_err()); // only one vector served
    /// drop(qemu);
    /// let waited = signal.wait_timeout(Some(Duration::from_secs(10)));
    /// assert!(matches!(waited, Err(WaitError::PeerGone)));
    /// # drop(server);
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn signal(&self, id: u16, vector: u16) -> Result<EventSignal, Error> {
        let unknown = || Error::Os {
            op: "ivshmem signal",
            source: io::Error::new(
                io::ErrorKind::NotFound,
                format!("no guest {id} with vector {vector}"),
            ),
        };
        let guest = self
            .guests
            .iter()
            .find(|g| g.id == id)
            .ok_or_else(unknown)?;
        let (Some(theirs), Some(ours), Some(sock)) = (
            guest.vectors.get(usize::from(vector)),
            self.host.vectors.get(usize::from(vector)),
            guest.sock.as_ref(),
        ) else {
            return Err(unknown());
        };
        let dup = |fd: BorrowedFd<'_>, what: &'static str| -> Result<OwnedFd, Error> {
            fd.try_clone_to_owned()
                .map_err(|source| Error::Os { op: what, source })
        };
        let kick = EventFd::from_fd(dup(theirs.as_fd(), "dup guest eventfd")?)?;
        let wake = EventFd::from_fd(dup(ours.as_fd(), "dup host eventfd")?)?;
        let mut signal = EventSignal::new(kick, wake);
        signal.set_watch(dup(sock.as_fd(), "dup ivshmem socket")?);
        Ok(signal)
    }
}

/// Whether an `accept` error is the server's passing trouble (out of
/// descriptors or memory, or a client that reset before it was taken)
/// rather than a broken socket.
fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::ECONNABORTED)
    )
}

/// Connections being refused by [`IvshmemServer::refuse_others`]; dropping
/// it stops.
#[derive(Debug)]
pub struct Refusing {
    stop: Arc<std::sync::atomic::AtomicBool>,
    refused: Arc<std::sync::atomic::AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Refusing {
    /// Connections refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for Refusing {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for IvshmemServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
