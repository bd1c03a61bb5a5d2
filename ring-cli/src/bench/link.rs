//! Running side B in another thread or in another process.

use super::sys;
use super::work::{self, Job, Link, SideStats, Wire};
use std::io::{Read, Write};
use std::mem::MaybeUninit;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Barrier};
use std::thread::{Scope, ScopedJoinHandle};

/// The core side A runs on, and side B's.
pub const CORES: (usize, usize) = (0, 1);

/// Side B on a scoped thread pinned to [`CORES`]`.1`.
pub struct ThreadLink<'scope, 'env> {
    scope: &'scope Scope<'scope, 'env>,
    wire: &'env Wire,
    handle: Option<ScopedJoinHandle<'scope, Result<SideStats, String>>>,
}

impl<'scope, 'env> ThreadLink<'scope, 'env> {
    /// A link that spawns side B in `scope`.
    pub fn new(scope: &'scope Scope<'scope, 'env>, wire: &'env Wire) -> Self {
        ThreadLink {
            scope,
            wire,
            handle: None,
        }
    }
}

impl Link for ThreadLink<'_, '_> {
    fn start(&mut self, job: &Job) -> Result<(), String> {
        let barrier = Arc::new(Barrier::new(2));
        let b2 = barrier.clone();
        let (job, wire) = (*job, self.wire);
        self.handle = Some(self.scope.spawn(move || {
            sys::pin_to(CORES.1);
            let mut waited = false;
            let r = work::serve(&job, wire, &mut || {
                waited = true;
                b2.wait();
                Ok(())
            });
            if !waited {
                b2.wait();
            }
            r
        }));
        barrier.wait();
        Ok(())
    }

    fn finish(&mut self) -> Result<SideStats, String> {
        match self.handle.take() {
            Some(h) => h.join().map_err(|_| "peer thread panicked".to_string())?,
            None => Err("peer not started".into()),
        }
    }
}

/// Side B in a child process (the same program, started with
/// `--bench-peer SOCKET`), pinned to [`CORES`]`.1`, that received the
/// wire's fds once.
pub struct ProcessLink {
    child: Child,
    sock: UnixStream,
    dir: PathBuf,
}

impl ProcessLink {
    /// Starts `program args... SOCKET` and hands it `wire`'s fds.
    ///
    /// # Errors
    ///
    /// If the child cannot be started or does not connect.
    pub fn spawn(program: &Path, args: &[&str], wire: &Wire) -> Result<ProcessLink, String> {
        let dir = std::env::temp_dir().join(format!("ring-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let path = dir.join("peer.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).map_err(|e| e.to_string())?;
        let child = Command::new(program)
            .args(args)
            .env(crate::parent::PARENT_ENV, crate::parent::own_pid())
            .arg(&path)
            .spawn()
            .map_err(|e| format!("starting the peer process: {e}"))?;
        let (sock, _) = listener.accept().map_err(|e| e.to_string())?;
        ring_hosted::rendezvous::send_with_fds(&sock, b"W", &wire.fds())
            .map_err(|e| e.to_string())?;
        Ok(ProcessLink { child, sock, dir })
    }
}

impl Link for ProcessLink {
    fn start(&mut self, job: &Job) -> Result<(), String> {
        self.sock
            .write_all(&job.encode())
            .map_err(|e| e.to_string())?;
        let mut ok = [0u8; 1];
        self.sock.read_exact(&mut ok).map_err(|e| e.to_string())?;
        if ok[0] != b'R' {
            return Err(self.failure());
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<SideStats, String> {
        let mut b = [0u8; 33];
        self.sock.read_exact(&mut b).map_err(|e| e.to_string())?;
        if b[0] != b'D' {
            return Err(self.failure());
        }
        let mut s = [0u8; 32];
        s.copy_from_slice(b.get(1..).unwrap_or(&[0; 32]));
        Ok(SideStats::decode(&s))
    }
}

impl ProcessLink {
    fn failure(&mut self) -> String {
        let mut why = String::new();
        let _ = self.sock.read_to_string(&mut why);
        format!("peer process failed: {why}")
    }
}

impl Drop for ProcessLink {
    fn drop(&mut self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn recv_fds(sock: &UnixStream) -> Result<Vec<std::os::fd::OwnedFd>, String> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let mut byte = [0u8; 1];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(12))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    rustix::net::recvmsg(sock, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)
        .map_err(|e| e.to_string())?;
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = m {
            fds.extend(rights);
        }
    }
    Ok(fds)
}

/// Side B of a [`Kind::Custom`](super::work::Kind::Custom) job: given the
/// job, the wire and the "ready" callback, run and report.
pub type PeerHook<'a> = dyn FnMut(&Job, &Wire, &mut dyn FnMut() -> Result<(), String>) -> Result<SideStats, String>
    + 'a;

/// The child's main loop: connect to `socket`, take the wire, then run side
/// B of each job the parent sends until it hangs up.
///
/// # Errors
///
/// Set-up failures; job failures are reported to the parent.
pub fn peer_main(socket: &Path) -> Result<(), String> {
    peer_main_with(socket, &mut |_, _, _| {
        Err("no custom jobs in this program".into())
    })
}

/// [`peer_main`] with a hook for the binary's own
/// [`Kind::Custom`](super::work::Kind::Custom) jobs.
///
/// # Errors
///
/// As [`peer_main`].
pub fn peer_main_with(socket: &Path, custom: &mut PeerHook<'_>) -> Result<(), String> {
    sys::pin_to(CORES.1);
    let mut sock = UnixStream::connect(socket).map_err(|e| e.to_string())?;
    let wire = Wire::from_fds(recv_fds(&sock)?)?;
    loop {
        let mut raw = [0u8; 32];
        if sock.read_exact(&mut raw).is_err() {
            return Ok(());
        }
        let job = Job::decode(&raw).ok_or("bad job")?;
        let mut tx = sock.try_clone().map_err(|e| e.to_string())?;
        let mut ready = || tx.write_all(b"R").map_err(|e| e.to_string());
        let r = if job.kind == work::Kind::Custom {
            custom(&job, &wire, &mut ready)
        } else {
            work::serve(&job, &wire, &mut ready)
        };
        match r {
            Ok(stats) => {
                let mut b = [b'D'; 33];
                if let Some(dst) = b.get_mut(1..) {
                    dst.copy_from_slice(&stats.encode());
                }
                sock.write_all(&b).map_err(|e| e.to_string())?;
            }
            Err(e) => {
                let _ = sock.write_all(format!("E{e}").as_bytes());
                return Err(e);
            }
        }
    }
}
