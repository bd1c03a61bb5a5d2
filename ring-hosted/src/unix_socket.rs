//! A Unix socket path that exists only once it accepts.
//!
//! `bind(2)` creates the path before `listen(2)` marks the socket as
//! accepting, so a client that waits for the path and connects in between
//! is refused (`ECONNREFUSED`). A script that polls for the path, or a test
//! that does, meets that window under load. [`listen_at`] closes it: the
//! socket is bound and listening under a temporary name in the same
//! directory, then renamed onto the path, so the path appears already
//! accepting.
//!
//! ```text
//!   bind(DIR/.r1a2b3) ── listen ── rename(DIR/.r1a2b3 → DIR/NAME)
//!                                   └ NAME appears, accepting
//! ```

use std::io;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// What [`listen_at`] does about a file already at the path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Existing {
    /// Fail with [`io::ErrorKind::AlreadyExists`] and leave it alone.
    Keep,
    /// Replace it in the same step that publishes ours, so the path never
    /// goes missing. Only for a caller that knows the old socket is stale
    /// (a lock says nobody serves it).
    Replace,
}

/// Binds a listening Unix socket at `path` such that the path only ever
/// names a socket that accepts connections.
///
/// # Errors
///
/// The `bind`, `listen` or `rename` error; [`io::ErrorKind::AlreadyExists`]
/// when something is at `path` and `existing` is [`Existing::Keep`];
/// [`io::ErrorKind::InvalidInput`] when `path` has no file name.
///
/// # Examples
///
/// ```
/// use ring_hosted::unix_socket::{listen_at, Existing};
///
/// let dir = std::env::temp_dir().join(format!("ring-doc-unix-socket-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let path = dir.join("s.sock");
/// let listener = listen_at(&path, Existing::Keep)?;
/// // The path is there, and a connect succeeds at once.
/// let _client = std::os::unix::net::UnixStream::connect(&path)?;
/// assert!(listener.accept().is_ok());
/// // A second server does not take the path over.
/// assert!(listen_at(&path, Existing::Keep).is_err());
/// # drop(listener);
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn listen_at(path: &Path, existing: Existing) -> io::Result<UnixListener> {
    let temp = temp_name(path)?;
    // A temporary name left by a process that died between bind and
    // rename is ours to reuse only if nothing is serving it; the pid and
    // counter make a clash with a live process impossible.
    let _ = std::fs::remove_file(&temp);
    let listener = UnixListener::bind(&temp)?;
    let published = match existing {
        Existing::Replace => std::fs::rename(&temp, path),
        Existing::Keep => rustix::fs::renameat_with(
            rustix::fs::CWD,
            &temp,
            rustix::fs::CWD,
            path,
            rustix::fs::RenameFlags::NOREPLACE,
        )
        .map_err(|e| match e {
            rustix::io::Errno::EXIST => io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} already exists", path.display()),
            ),
            e => io::Error::from(e),
        }),
    };
    if let Err(e) = published {
        let _ = std::fs::remove_file(&temp);
        return Err(e);
    }
    Ok(listener)
}

/// A short name beside `path`, unique to this process and call: short so
/// that a path that fits `sun_path` gives a temporary one that fits too.
fn temp_name(path: &Path) -> io::Result<PathBuf> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    if path.file_name().is_none() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: a socket path needs a file name", path.display()),
        ));
    }
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = format!(".r{:x}.{n:x}", std::process::id());
    Ok(path.with_file_name(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ring-unix-socket-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn names(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn the_path_accepts_as_soon_as_it_exists_and_no_temporary_name_is_left() {
        let d = dir("accepts");
        let path = d.join("s");
        let l = listen_at(&path, Existing::Keep).unwrap();
        UnixStream::connect(&path).unwrap();
        l.accept().unwrap();
        assert_eq!(names(&d), ["s"]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn keep_leaves_an_existing_file_alone_and_replace_takes_a_stale_socket() {
        let d = dir("existing");
        let path = d.join("s");
        std::fs::write(&path, b"not a socket").unwrap();
        let e = listen_at(&path, Existing::Keep).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
        assert_eq!(names(&d), ["s"]);
        std::fs::remove_file(&path).unwrap();
        // A socket nobody serves any more, replaced without a gap.
        drop(listen_at(&path, Existing::Keep).unwrap());
        assert!(UnixStream::connect(&path).is_err());
        let l = listen_at(&path, Existing::Replace).unwrap();
        UnixStream::connect(&path).unwrap();
        l.accept().unwrap();
        assert_eq!(names(&d), ["s"]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_path_without_a_file_name_is_refused() {
        let e = listen_at(Path::new("/"), Existing::Keep).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}
