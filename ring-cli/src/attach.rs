//! `ring attach`: join rings a foreign program laid out, with every
//! offset, size and fd given on the command line and checked before use.

use super::pipe::{pipe_stream, PipeEnd};
use super::*;
use ring_hosted::attach::{self, MemSource, VchanLayout, VmbusRing, Wakeup};

fn offset(v: u64, flag: &str) -> Result<usize, String> {
    usize::try_from(v).map_err(|_| format!("{flag} {v} is too large"))
}

#[allow(unsafe_code)]
pub(crate) fn attach_cmd(a: AttachArgs) -> Outcome {
    let given = |flags: &[(&str, bool)]| -> Vec<String> {
        flags
            .iter()
            .filter(|(_, set)| *set)
            .map(|(name, _)| format!("--{name}"))
            .collect()
    };
    let vchan_only = given(&[
        ("role", a.role.is_some()),
        ("ctrl-offset", a.ctrl_offset.is_some()),
        ("left-offset", a.left_offset.is_some()),
        ("right-offset", a.right_offset.is_some()),
        ("read-min", a.read_min.is_some()),
        ("write-min", a.write_min.is_some()),
    ]);
    let vmbus_only = given(&[
        ("tx-offset", a.tx_offset.is_some()),
        ("tx-size", a.tx_size.is_some()),
        ("rx-offset", a.rx_offset.is_some()),
        ("rx-size", a.rx_size.is_some()),
        ("data-offset", a.data_offset.is_some()),
        ("framing", a.framing.is_some()),
    ]);
    match a.proto {
        CliProto::Vchan if !vmbus_only.is_empty() => usage(format!(
            "{} only apply to --proto vmbus",
            vmbus_only.join(", ")
        )),
        CliProto::Vmbus if !vchan_only.is_empty() => usage(format!(
            "{} only apply to --proto vchan",
            vchan_only.join(", ")
        )),
        _ => {}
    }
    let wakeup = match (a.notify_fd, a.wait_fd, a.poll) {
        (Some(notify), Some(wait), false) if notify == wait => usage(format!(
            "--notify-fd and --wait-fd are both {notify}: with one eventfd each side can \
             swallow its own kick; give the peer's and ours, or use --poll"
        )),
        (Some(notify), Some(wait), false) => Wakeup::Fds { notify, wait },
        (None, None, true) => Wakeup::Poll,
        _ => usage("give --notify-fd and --wait-fd, or --poll".into()),
    };
    if let (Some(m), Wakeup::Fds { notify, wait }) = (a.fd, wakeup) {
        if m == notify || m == wait {
            usage(format!("--fd {m} is also an eventfd number"));
        }
    }
    let source = match (&a.file, a.fd) {
        (Some(path), _) => MemSource::Path(path.clone()),
        (None, Some(n)) => MemSource::Fd(n),
        (None, None) => usage("give --file or --fd".into()),
    };
    let role = match (a.proto, a.role) {
        (CliProto::Vchan, None) => usage("--proto vchan needs --role server|client".into()),
        (_, r) => r,
    };
    if role == Some(CliRole::Client) && (a.read_min.is_some() || a.write_min.is_some()) {
        usage("--read-min and --write-min are for a server; a client reads the sizes from the control page".into());
    }
    let vmbus_rings = match (a.proto, a.tx_offset, a.tx_size, a.rx_offset, a.rx_size) {
        (CliProto::Vmbus, Some(to), Some(ts), Some(ro), Some(rs)) => Some([to, ts, ro, rs]),
        (CliProto::Vmbus, ..) => {
            usage("--proto vmbus needs --tx-offset, --tx-size, --rx-offset and --rx-size".into())
        }
        _ => None,
    };
    let end = PipeEnd {
        linger: Some(Duration::from_millis(a.linger_ms)),
        timeout: a.timeout,
        accept: a.accept_timeout,
        confirm: false,
    };
    // The user vouches that the peer does not shrink the memory (see `ring
    // attach --help` and docs/hosted.md).
    // SAFETY: the inherited fd numbers are owned by nothing else in this
    // program and each is taken once (memory fd != eventfds, checked above).
    let mem = unsafe { attach::open_memory(&source) }?;
    let sealed = mem.is_sealed();
    // Said once the rings are set up, so a set-up error stays one line.
    let warn = || {
        if !sealed {
            eprintln!(
                "ring: warning: the memory is not sealed against shrinking; if its maker \
                 truncates it, ring dies with SIGBUS"
            );
        }
    };
    // SAFETY: as above; `open_signal` takes each eventfd number once.
    let mut signal = unsafe { attach::open_signal(wakeup) }?;
    if let Some(pid) = a.peer_pid {
        attach::watch_peer(&mut signal, pid)?;
    }
    if let Some([to, ts, ro, rs]) = vmbus_rings {
        let data_offset = offset(a.data_offset.unwrap_or(4096), "--data-offset")?;
        let tx = VmbusRing {
            offset: offset(to, "--tx-offset")?,
            size: offset(ts, "--tx-size")?,
            data_offset,
        };
        let rx = VmbusRing {
            offset: offset(ro, "--rx-offset")?,
            size: offset(rs, "--rx-size")?,
            data_offset,
        };
        if a.framing == Some(Framing::Raw) {
            let mut s = attach::vmbus_raw(mem, tx, rx, signal)?;
            warn();
            return pipe_stream(&mut s, end);
        }
        let mut s = attach::vmbus(mem, tx, rx, signal)?;
        warn();
        return pipe_stream(&mut s, end);
    }
    let orders = match role {
        Some(CliRole::Server) => {
            let read = offset(a.read_min.unwrap_or(64 << 10), "--read-min")?;
            let write = offset(a.write_min.unwrap_or(64 << 10), "--write-min")?;
            Some(
                ring_core::vchan::Orders::for_sizes(read, write)
                    .map_err(|err| format!("ring sizes: {err}"))?,
            )
        }
        _ => None,
    };
    let layout = VchanLayout {
        role: match role {
            Some(CliRole::Server) => ring_core::vchan::Role::Server,
            _ => ring_core::vchan::Role::Client,
        },
        ctrl: offset(a.ctrl_offset.unwrap_or(0), "--ctrl-offset")?,
        left: a
            .left_offset
            .map(|v| offset(v, "--left-offset"))
            .transpose()?,
        right: a
            .right_offset
            .map(|v| offset(v, "--right-offset"))
            .transpose()?,
        orders,
    };
    let mut s = attach::vchan(mem, layout, signal)?;
    warn();
    pipe_stream(&mut s, end)
}
