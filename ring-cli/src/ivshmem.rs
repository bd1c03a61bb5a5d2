//! `ring ivshmem`: the host end of a ring shared with a QEMU guest through
//! an `ivshmem-doorbell` device. This process is the ivshmem server and
//! peer 0; the guest is the first QEMU that connects. The ring is a vchan
//! laid out flat at the start of the shared memory (control page, then
//! the rings), with the host as its server; interrupts go both ways on
//! vector 0. stdin and stdout are piped through it as `ring attach` does
//! (the guest is a foreign peer: no half-close, so our end lingers once
//! the guest has read all of stdin).

use super::pipe::{pipe_stream, PipeEnd};
use super::*;
use ring_hosted::ivshmem::IvshmemServer;

pub(crate) fn serve(
    socket: &Path,
    ring_size: u64,
    accept_timeout: Option<Duration>,
    timeout: Option<Duration>,
    linger: Duration,
) -> Outcome {
    let size = ring_bytes(ring_size)?;
    let orders =
        ring_core::vchan::Orders::for_sizes(size, size).map_err(|e| format!("ring sizes: {e}"))?;
    let layout = ring_core::vchan::FlatLayout::new(orders);
    let mut server = IvshmemServer::bind(socket, layout.size, 1)?;
    let ep = ring_core::vchan::serve_flat(
        server.memory().clone(),
        orders,
        ring_core::vchan::ServerOptions::default(),
    )
    .map_err(|e| format!("vchan set-up: {e}"))?;
    eprintln!(
        "ring: ivshmem: serving {} ({} bytes of shared memory, vchan rings of {} and {} bytes); \
         start QEMU with -chardev socket,path={},id=ivs -device ivshmem-doorbell,chardev=ivs,vectors=1",
        socket.display(),
        server.memory().len(),
        1usize << orders.left(),
        1usize << orders.right(),
        socket.display(),
    );
    let id = server.accept(accept_timeout)?;
    eprintln!("ring: ivshmem: guest peer {id} connected");
    let signal = server.signal(id, 0)?;
    let mut s = ring_hosted::stream::VchanStream::new(ep, signal);
    let end = PipeEnd {
        linger: Some(linger),
        timeout,
        confirm: false,
    };
    let r = pipe_stream(&mut s, end);
    let w = s.signal().wake_counts();
    eprintln!(
        "ring: ivshmem: {} bytes in, {} out; woken by {} kicks, {} hang-ups, {} lapses",
        s.bytes_read(),
        s.bytes_written(),
        w.kicks,
        w.hangups,
        w.lapses
    );
    r
}
