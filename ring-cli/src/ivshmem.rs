//! `ring ivshmem`: the host end of a ring shared with a QEMU guest through
//! an `ivshmem-doorbell` device. This process is the ivshmem server and
//! peer 0; the guest is the first QEMU that connects. The ring is a vchan
//! laid out flat at the start of the shared memory (control page, then
//! the rings), or a VMBus channel (guest→host ring at 0, host→guest ring
//! after it), with the host as its server; interrupts go both ways on
//! vector 0. stdin and stdout are piped through it as `ring attach` does
//! (over vchan the guest is a foreign peer without half-close, so our end
//! lingers once the guest has read all of stdin; the VMBus pipe has its
//! own end-of-stream packet).

use super::pipe::{pipe_stream, PipeEnd};
use super::*;
use ring_hosted::ivshmem::IvshmemServer;
use ring_hosted::vmbus::ChannelLayout;
use std::time::Instant;

/// The VMBus channel's layout in the shared memory: the guest→host ring at
/// offset 0, the host→guest ring after it, each with `ring` data bytes and
/// a 4 KiB control page (ring-hosted's `ChannelLayout`, host as server).
pub(crate) fn vmbus_layout(ring: usize) -> Result<ChannelLayout, Failure> {
    ChannelLayout::rounded(ring, ring).map_err(|e| format!("ring sizes: {e}").into())
}

pub(crate) fn serve(
    socket: &Path,
    proto: CliProto,
    ring_size: u64,
    accept_timeout: Option<Duration>,
    timeout: Option<Duration>,
    linger: Duration,
) -> Outcome {
    let size = ring_bytes(ring_size)?;
    let end = PipeEnd {
        linger: Some(linger),
        timeout,
        accept: None,
        confirm: false,
    };
    match proto {
        CliProto::Vchan => {
            let orders = ring_core::vchan::Orders::for_sizes(size, size)
                .map_err(|e| format!("ring sizes: {e}"))?;
            let layout = ring_core::vchan::FlatLayout::new(orders);
            let mut server = IvshmemServer::bind(socket, layout.size, 1)?;
            let ep = ring_core::vchan::serve_flat(
                server.memory().clone(),
                orders,
                ring_core::vchan::ServerOptions::default(),
            )
            .map_err(|e| format!("vchan set-up: {e}"))?;
            announce(&server, "vchan", 1usize << orders.left());
            let deadline = accept_timeout.map(|t| Instant::now() + t);
            let signal = loop {
                let (id, signal) = guest_signal(&mut server, deadline)?;
                if guest_joined(&server, &signal, deadline)? {
                    eprintln!("ring: ivshmem: guest peer {id} joined the ring");
                    break signal;
                }
                eprintln!("ring: ivshmem: guest peer {id} left before joining the ring; waiting for the next");
                server.remove(id);
            };
            let refusing = server.refuse_others()?;
            let mut s = ring_hosted::stream::VchanStream::new(ep, signal);
            let r = pipe_stream(&mut s, end);
            summary(&s, &refusing);
            r
        }
        CliProto::Vmbus => {
            let layout = vmbus_layout(size)?;
            let mut server = IvshmemServer::bind(socket, layout.total_size(), 1)?;
            // The rings are initialised before any guest can see them.
            let (to_host, to_guest) = layout.windows(server.memory())?;
            ring_core::vmbus::initialize_ring(&to_host, layout.to_server)
                .map_err(|e| format!("VMBus set-up: {e}"))?;
            ring_core::vmbus::initialize_ring(&to_guest, layout.to_client)
                .map_err(|e| format!("VMBus set-up: {e}"))?;
            announce(&server, "VMBus", layout.to_client.data_size() as usize);
            // A VMBus ring has no join marker: the guest whose QEMU is
            // welcomed is the one served.
            let deadline = accept_timeout.map(|t| Instant::now() + t);
            let (_, signal) = guest_signal(&mut server, deadline)?;
            let refusing = server.refuse_others()?;
            let mut s = VmbusPipe::attach(
                server.memory().clone(),
                (to_host, layout.to_server),
                (to_guest, layout.to_client),
                signal,
            )?;
            let r = pipe_stream(&mut s, end);
            summary(&s, &refusing);
            r
        }
    }
}

fn announce(server: &IvshmemServer, what: &str, ring: usize) {
    eprintln!(
        "ring: ivshmem: serving {} ({} bytes of shared memory, {what} rings of {ring} bytes); \
         start QEMU with -chardev socket,path={},id=ivs -device ivshmem-doorbell,chardev=ivs,vectors=1",
        server.path().display(),
        server.memory().len(),
        server.path().display(),
    );
}

/// Waits (until `deadline`) for a guest's QEMU and returns its peer id
/// and the signal to it (vector 0). A client that leaves during the
/// welcome is dropped by the server, which waits for the next.
fn guest_signal(
    server: &mut IvshmemServer,
    deadline: Option<Instant>,
) -> Result<(u16, ring_hosted::eventfd::EventSignal), Failure> {
    let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
    let id = server.accept(left)?;
    eprintln!("ring: ivshmem: guest peer {id} connected");
    Ok((id, server.signal(id, 0)?))
}

/// Waits (until `deadline`) for the guest to join the vchan (its live
/// byte leaves "waiting") or its QEMU to go; true if it joined. A guest
/// whose QEMU leaves before joining was never a peer of the ring.
fn guest_joined(
    server: &IvshmemServer,
    signal: &ring_hosted::eventfd::EventSignal,
    deadline: Option<Instant>,
) -> Result<bool, Failure> {
    use ring_core::mem::SharedMem;
    use ring_core::vchan::{layout::CLI_LIVE, Live};
    loop {
        let live = server
            .memory()
            .load_u8(CLI_LIVE)
            .map_err(|e| format!("vchan set-up: {e}"))?;
        if live != Live::Waiting as u8 {
            return Ok(true);
        }
        let left = match deadline {
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => left,
                _ => {
                    return Err(Failure {
                        code: exit::TIMED_OUT,
                        reason: "no guest joined the ring before the accept timeout".into(),
                    })
                }
            },
            None => Duration::from_secs(1),
        };
        // The guest's doorbell, its QEMU going, or a short look again (a
        // guest need not ring when it joins).
        match signal.wait_timeout(Some(left.min(Duration::from_millis(20)))) {
            Ok(_) => {}
            Err(ring_hosted::eventfd::WaitError::PeerGone) => return Ok(false),
            Err(ring_hosted::eventfd::WaitError::TimedOut) => {}
            Err(e) => return Err(format!("ivshmem: {e}").into()),
        }
    }
}

/// The closing line: bytes each way, what woke us, and how many other
/// guests were refused.
fn summary(s: &impl PollStream, refusing: &ring_hosted::ivshmem::Refusing) {
    let w = s.signal().wake_counts();
    eprintln!(
        "ring: ivshmem: {} bytes in, {} out; woken by {} kicks, {} hang-ups, {} lapses; {} other guests refused",
        s.bytes_read(),
        s.bytes_written(),
        w.kicks,
        w.hangups,
        w.lapses,
        refusing.refused()
    );
}
