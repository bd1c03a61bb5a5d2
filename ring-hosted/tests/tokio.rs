//! The tokio face of the vchan stream against a blocking peer.

#![cfg(feature = "tokio")]

mod common;

use ring_hosted::session;
use ring_hosted::stream;
use ring_hosted::tokio_io::{AsyncVchan, AsyncVmbus};
use std::io::Read;
use std::thread;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn pattern(seed: u8, n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761) >> 7) as u8 ^ seed)
        .collect()
}

#[tokio::test(flavor = "current_thread")]
async fn async_side_and_blocking_side_move_data_both_ways() {
    // Small rings (1K and 2K), so both sides fill them and must wait.
    let (server, client) = stream::pair(1024, 2048).unwrap();
    let (up, down) = (pattern(1, 300_000), pattern(2, 200_000));
    let (up2, down2) = (up.clone(), down.clone());
    // Blocking side: receive all of `up`, then echo chunks (xored), then
    // send `down`.
    let peer = thread::spawn(move || {
        let mut s = server;
        let mut got = vec![0u8; up2.len()];
        s.read_exact(&mut got).unwrap();
        assert!(got == up2, "blocking side got different bytes");
        let mut chunk = [0u8; 3000];
        for _ in 0..50 {
            s.read_exact(&mut chunk).unwrap();
            chunk.iter_mut().for_each(|b| *b ^= 0x5a);
            s.write_all(&chunk).unwrap();
        }
        s.write_all(&down2).unwrap();
        s.close().unwrap();
    });
    let mut a = AsyncVchan::new(client).unwrap();
    a.write_all(&up).await.unwrap();
    for round in 0..50u8 {
        let chunk = pattern(round, 3000);
        a.write_all(&chunk).await.unwrap();
        let mut back = vec![0u8; 3000];
        a.read_exact(&mut back).await.unwrap();
        assert!(back.iter().zip(&chunk).all(|(b, c)| *b == c ^ 0x5a));
    }
    let mut rest = Vec::new();
    a.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest.len(), down.len());
    assert!(rest == down, "async side got different bytes");
    a.shutdown().await.unwrap();
    peer.join().unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn gathered_async_writes_arrive_in_order() {
    let (server, client) = stream::pair(1024, 1024).unwrap();
    let data = pattern(7, 100_000);
    let expect = data.clone();
    let peer = thread::spawn(move || {
        let mut s = server;
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    });
    let mut a = AsyncVchan::new(client).unwrap();
    assert!(tokio::io::AsyncWrite::is_write_vectored(&a));
    for piece in data.chunks(500) {
        let (x, y) = piece.split_at(piece.len() / 2);
        let mut bufs = [
            std::io::IoSlice::new(x),
            std::io::IoSlice::new(&[]),
            std::io::IoSlice::new(y),
        ];
        let mut bufs = &mut bufs[..];
        while !bufs.is_empty() {
            let n = a.write_vectored(bufs).await.unwrap();
            std::io::IoSlice::advance_slices(&mut bufs, n);
        }
    }
    a.shutdown().await.unwrap();
    let got = peer.join().unwrap();
    assert!(
        got == expect,
        "gathered bytes arrived out of order or damaged"
    );
}

/// Every async test below ends within this, or fails: a lost wake-up
/// must not hang the suite.
const DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// What "at once" means for an event the peer sent (the issue asks for
/// 100 ms; this leaves room for a loaded machine).
const PROMPT: std::time::Duration = std::time::Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_halves_in_two_tasks_both_make_progress() {
    // A blocking echo peer over 1 KiB rings: the writer task can only go
    // on once the reader task has drained the echo, so both halves wait
    // on the one eventfd, in different tasks, many times.
    let (server, client) = stream::pair(1024, 1024).unwrap();
    let data = pattern(9, 400_000);
    let expect = data.clone();
    let total = data.len();
    let peer = thread::spawn(move || {
        let mut s = server;
        let mut buf = [0u8; 700];
        let mut echoed = 0;
        while echoed < total {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "the async side ended early");
            s.write_all(&buf[..n]).unwrap();
            echoed += n;
        }
        s
    });
    let (mut rd, mut wr) = AsyncVchan::new(client).unwrap().into_split();
    let writer = tokio::spawn(async move {
        for piece in data.chunks(1500) {
            wr.write_all(piece).await.unwrap();
        }
        // No shutdown: a vchan close ends both directions.
        wr
    });
    let reader = tokio::spawn(async move {
        let mut got = vec![0u8; total];
        rd.read_exact(&mut got).await.unwrap();
        got
    });
    let got = tokio::time::timeout(DEADLINE, reader)
        .await
        .expect("the read half was never woken")
        .unwrap();
    let _wr = tokio::time::timeout(DEADLINE, writer)
        .await
        .expect("the write half was never woken")
        .unwrap();
    assert!(got == expect, "echoed bytes differ");
    let mut peer = peer.join().unwrap();
    peer.close().unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn a_peer_that_dies_without_closing_is_noticed_while_we_wait() {
    // Through the real rendezvous, so each side's hang-up fd is its end of
    // the rendezvous socket. The peer "dies" by losing that end while its
    // ring stays open: no close, no kick.
    let sock = common::TempSock::new("tokio-death");
    let listener = session::Listener::<session::Vchan>::bind(&sock.path).unwrap();
    let path = sock.path.clone();
    let t = thread::spawn(move || session::connect::<session::Vchan>(&path).unwrap());
    let ours = listener.accept().unwrap();
    let mut theirs = t.join().unwrap();
    theirs.write_all(b"last words").unwrap();
    let mut s = AsyncVchan::new(ours).unwrap();
    let killer = die_later(move || {
        theirs.signal_mut().set_hangup(dummy_fd());
        std::mem::forget(theirs);
    });
    let (got, err) = read_until_error(&mut s).await;
    killer.join().unwrap();
    assert_eq!(got, b"last words", "what the peer wrote first is delivered");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");

    let (ours, mut theirs, _sock) = common::vmbus_pair(16 * 4096);
    theirs.write_all(b"last words").unwrap();
    let mut s = AsyncVmbus::new(ours).unwrap();
    let killer = die_later(move || {
        theirs.signal_mut().set_hangup(dummy_fd());
        std::mem::forget(theirs);
    });
    let (got, err) = read_until_error(&mut s).await;
    killer.join().unwrap();
    assert_eq!(got, b"last words");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
}

/// Runs `die` on another thread after 100 ms.
fn die_later(die: impl FnOnce() + Send + 'static) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        thread::sleep(std::time::Duration::from_millis(100));
        die();
    })
}

/// An fd standing in for a dead peer's hang-up end.
fn dummy_fd() -> std::os::fd::OwnedFd {
    std::fs::File::open("/dev/null").unwrap().into()
}

/// Reads until the stream fails; returns what came and the error.
async fn read_until_error<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> (Vec<u8>, std::io::Error) {
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(DEADLINE, r.read(&mut buf)).await {
            Err(_) => panic!("the peer's death was not noticed"),
            Ok(Ok(0)) => panic!("a clean end of stream from a peer that died"),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => return (got, e),
        }
    }
}

#[test]
fn wrapping_outside_a_runtime_is_an_error_not_a_panic() {
    let (_server, client) = stream::pair(1024, 1024).unwrap();
    match AsyncVchan::new(client) {
        Err(ring_hosted::Error::Os { source, .. }) => {
            assert!(source.to_string().contains("tokio runtime"), "{source}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

/// A vchan pair through the real rendezvous (so each side has its hang-up
/// socket, as between two processes), rings of 1 KiB each way.
fn vchan_session() -> (
    ring_hosted::stream::VchanStream,
    ring_hosted::stream::VchanStream,
    common::TempSock,
) {
    use ring_hosted::rendezvous::ServerConfig;
    let sock = common::TempSock::new("tokio-vchan");
    let config = ServerConfig::new(ring_hosted::rendezvous::Proto::Vchan).ring_sizes(1024, 1024);
    let listener = session::Listener::<session::Vchan>::bind_with(&sock.path, config).unwrap();
    let path = sock.path.clone();
    let t = thread::spawn(move || session::connect::<session::Vchan>(&path).unwrap());
    let ours = listener.accept().unwrap();
    (ours, t.join().unwrap(), sock)
}

/// The liveness re-check off and a deadline on every blocking wait: a lost
/// wake-up hangs (and so fails) instead of being rescued.
fn strict(signal: &mut ring_hosted::eventfd::EventSignal) {
    signal.set_liveness(None);
    signal.set_timeout(Some(DEADLINE));
}

/// The `select!` of issue 28: the write half waits on a full ring in its
/// own task; the read half's `read` is polled once (so it registers) and
/// then loses a `select!`, its task going on to other work with the half
/// kept. The peer then drains the ring: the writer must be woken.
async fn writer_woken_after_reader_lost_a_select<S, P>(ours: S, mut theirs: P, ring: usize)
where
    S: ring_hosted::tokio_io::AsyncRing + Send + Unpin + 'static,
    P: std::io::Read + Send + 'static,
{
    let total = 4 * ring;
    let data = pattern(3, total);
    let expect = data.clone();
    let (go, start) = std::sync::mpsc::channel::<()>();
    let peer = thread::spawn(move || {
        start.recv().unwrap();
        let mut got = vec![0u8; total];
        theirs.read_exact(&mut got).unwrap();
        assert!(got == expect, "the peer got different bytes");
        theirs
    });
    let (mut rd, mut wr) = ring_hosted::tokio_io::AsyncStream::new(ours)
        .unwrap()
        .into_split();
    let writer = tokio::spawn(async move {
        wr.write_all(&data).await.unwrap();
        wr
    });
    // Let the writer fill the ring and wait (it cannot go on: the peer
    // reads nothing yet).
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let mut buf = [0u8; 16];
    tokio::select! {
        biased;
        _ = rd.read(&mut buf) => panic!("nothing was sent to read"),
        () = std::future::ready(()) => {}
    }
    go.send(()).unwrap();
    // Other work, the read half kept and never polled again.
    let wr = tokio::time::timeout(DEADLINE, writer)
        .await
        .expect("the write half was never woken after the peer drained the ring")
        .unwrap();
    let _theirs = peer.join().unwrap();
    let whole = rd.reunite(wr).expect("the halves of one stream");
    let counts = whole.get_ref().signal().wake_counts();
    assert!(
        counts.kicks >= 1,
        "the writer was woken by a kick: {counts:?}"
    );
    assert_eq!((counts.lapses, counts.timeouts), (0, 0), "{counts:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_read_half_that_lost_a_select_does_not_keep_the_writers_wake_up() {
    let (mut ours, mut theirs, _sock) = vchan_session();
    strict(ours.signal_mut());
    strict(theirs.signal_mut());
    writer_woken_after_reader_lost_a_select(ours, theirs, 1024).await;

    let (mut ours, mut theirs, _sock) = common::vmbus_pair(4096);
    strict(ours.signal_mut());
    strict(theirs.signal_mut());
    writer_woken_after_reader_lost_a_select(ours, theirs, 4096).await;
}

/// A blocking peer of our own sends `hello`, waits until it is read, then
/// half-closes (what `printf hello | ring connect SOCK` does) and stays
/// open: the async `read_to_end`, waiting by then, must see the end.
async fn read_to_end_sees_the_half_close<S, P>(ours: S, mut theirs: P, half_close: fn(&mut P))
where
    S: ring_hosted::tokio_io::AsyncRing + Send + Unpin + 'static,
    P: std::io::Write + Send + 'static,
{
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let peer = thread::spawn(move || {
        theirs.write_all(b"hello").unwrap();
        half_close(&mut theirs);
        // Open until the reader is through: only the half-close ends it.
        let _ = finished.recv();
        theirs
    });
    let mut s = ring_hosted::tokio_io::AsyncStream::new(ours).unwrap();
    let mut got = Vec::new();
    let start = std::time::Instant::now();
    let read = tokio::time::timeout(PROMPT, s.read_to_end(&mut got)).await;
    let took = start.elapsed();
    done.send(()).unwrap();
    let _theirs = peer.join().unwrap();
    // `timeout` polls the read once more at its deadline, which would
    // find the end: only a read that ended by itself, before that, counts.
    assert!(
        read.is_ok() && took < PROMPT,
        "the peer's half-close was not seen by a waiting read ({took:?})"
    );
    read.unwrap().unwrap();
    assert_eq!(got, b"hello");
    let counts = s.get_ref().signal().wake_counts();
    assert_eq!((counts.lapses, counts.timeouts), (0, 0), "{counts:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_waiting_read_sees_the_peers_half_close() {
    let (mut ours, mut theirs, _sock) = vchan_session();
    strict(ours.signal_mut());
    strict(theirs.signal_mut());
    read_to_end_sees_the_half_close(ours, theirs, |p| {
        // As `ring connect`: the end goes out once our bytes are read.
        p.wait_delivered().unwrap();
        assert!(
            p.shutdown_write().unwrap(),
            "a rendezvous peer can half-close"
        );
    })
    .await;

    let (mut ours, mut theirs, _sock) = common::vmbus_pair(4096);
    strict(ours.signal_mut());
    strict(theirs.signal_mut());
    read_to_end_sees_the_half_close(ours, theirs, |p| {
        p.wait_delivered().unwrap();
        p.close().unwrap();
    })
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_shutdown_that_waits_on_a_full_ring_does_not_block_the_runtime() {
    use ring_hosted::stream::PollStream;
    let (mut ours, mut theirs, _sock) = common::vmbus_pair(4096);
    strict(ours.signal_mut());
    strict(theirs.signal_mut());
    // Fill our ring: the end mark has no room until the peer reads.
    let mut sent = 0usize;
    while let Some(n) = ours.try_write(&[7u8; 1024]).unwrap() {
        sent += n;
    }
    assert!(sent > 0);
    let (go, start) = std::sync::mpsc::channel::<()>();
    let peer = thread::spawn(move || {
        start.recv().unwrap();
        let mut got = Vec::new();
        theirs.read_to_end(&mut got).unwrap();
        (got, theirs)
    });
    let mut s = AsyncVmbus::new(ours).unwrap();
    // A ticker on the same (only) thread, counting into a watch channel.
    let (tick_tx, mut tick_rx) = tokio::sync::watch::channel(0u32);
    let ticker = tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_millis(10));
        loop {
            every.tick().await;
            tick_tx.send_modify(|n| *n += 1);
        }
    });
    // The shutdown waits; the ticker must go on ticking meanwhile.
    tokio::time::timeout(DEADLINE, async {
        tokio::select! {
            r = s.shutdown() => panic!("a shutdown into a full ring ended: {r:?}"),
            r = tick_rx.wait_for(|n| *n >= 20) => { r.unwrap(); }
        }
    })
    .await
    .expect("the runtime's thread was blocked: the ticker stopped");
    ticker.abort();
    // Now the peer reads: the shutdown finishes, and the peer sees the end
    // after every byte.
    go.send(()).unwrap();
    tokio::time::timeout(DEADLINE, s.shutdown())
        .await
        .expect("the shutdown was not woken when the ring drained")
        .unwrap();
    let (got, _theirs) = peer.join().unwrap();
    assert_eq!(got, vec![7u8; sent]);
    let err = s.write_all(b"late").await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::BrokenPipe, "{err}");
}

/// The tokio side sends a request and ends its direction (a `shutdown()`,
/// or dropping the write half); the blocking peer reads to the end, then
/// answers with 1 MiB and half-closes in turn; the tokio side reads all of
/// it.
async fn request_then_half_close<S, P>(ours: S, mut theirs: P, split: bool, end: fn(&mut P))
where
    S: ring_hosted::tokio_io::AsyncRing + Send + Unpin + 'static,
    P: std::io::Read + std::io::Write + Send + 'static,
{
    let reply = pattern(5, 1 << 20);
    let expect = reply.clone();
    let peer = thread::spawn(move || {
        let mut got = Vec::new();
        theirs.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"request", "the request, then the end");
        theirs.write_all(&reply).unwrap();
        end(&mut theirs);
        theirs
    });
    let s = ring_hosted::tokio_io::AsyncStream::new(ours).unwrap();
    let mut got = Vec::new();
    let read = if split {
        let (mut rd, mut wr) = s.into_split();
        wr.write_all(b"request").await.unwrap();
        drop(wr);
        tokio::time::timeout(DEADLINE, rd.read_to_end(&mut got)).await
    } else {
        let mut s = s;
        s.write_all(b"request").await.unwrap();
        s.shutdown().await.unwrap();
        tokio::time::timeout(DEADLINE, s.read_to_end(&mut got)).await
    };
    // The peer fails (and so ends) on its idle timeout if our end never
    // came.
    let peer = peer.join();
    read.expect("the peer's answer never ended").unwrap();
    assert!(
        got == expect,
        "the answer after our half-close was cut or damaged"
    );
    drop(peer.expect("the peer did not see our end"));
}

fn vchan_end(p: &mut ring_hosted::stream::VchanStream) {
    p.wait_delivered().unwrap();
    assert!(p.shutdown_write().unwrap());
}

fn vmbus_end(p: &mut ring_hosted::vmbus::VmbusPipe) {
    p.close().unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn shutdown_ends_our_direction_only() {
    let (mut ours, mut theirs, _sock) = vchan_session();
    strict(ours.signal_mut());
    strict(theirs.signal_mut());
    request_then_half_close(ours, theirs, false, vchan_end).await;

    let (mut ours, mut theirs, _sock) = common::vmbus_pair(4096);
    strict(ours.signal_mut());
    strict(theirs.signal_mut());
    request_then_half_close(ours, theirs, false, vmbus_end).await;
}

#[tokio::test(flavor = "current_thread")]
async fn dropping_the_write_half_ends_our_direction_only() {
    let (mut ours, mut theirs, _sock) = vchan_session();
    strict(ours.signal_mut());
    strict(theirs.signal_mut());
    request_then_half_close(ours, theirs, true, vchan_end).await;

    let (mut ours, mut theirs, _sock) = common::vmbus_pair(4096);
    strict(ours.signal_mut());
    strict(theirs.signal_mut());
    request_then_half_close(ours, theirs, true, vmbus_end).await;
}

#[tokio::test(flavor = "current_thread")]
async fn try_read_try_write_and_peer_cred() {
    let (ours, theirs, _sock) = vchan_session();
    let mut a = AsyncVchan::new(ours).unwrap();
    let mut b = AsyncVchan::new(theirs).unwrap();
    let me = rustix::process::geteuid().as_raw();
    let cred = a.peer_cred().unwrap();
    assert_eq!(cred.uid, me);
    assert_eq!(cred.pid, Some(std::process::id() as i32));
    let mut buf = [0u8; 2048];
    let e = a.try_read(&mut buf).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
    // 1 KiB ring: the rest waits.
    assert_eq!(b.try_write(&[1u8; 1500]).unwrap(), 1024);
    let e = b.try_write(b"x").unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
    assert_eq!(a.try_read(&mut buf).unwrap(), 1024);
    // The armed writer was kicked: an awaited write goes through at once.
    tokio::time::timeout(DEADLINE, b.write_all(b"more"))
        .await
        .unwrap()
        .unwrap();
    b.shutdown().await.unwrap();
    let e = b.try_write(b"late").unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe);
    let mut rest = Vec::new();
    tokio::time::timeout(DEADLINE, a.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rest, b"more");
    assert_eq!(a.try_read(&mut buf).unwrap(), 0, "end of stream");

    let (server, _client) = stream::pair(1024, 1024).unwrap();
    let s = AsyncVchan::new(server).unwrap();
    let e = s.peer_cred().unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::Unsupported);
}

#[tokio::test(flavor = "current_thread")]
async fn vmbus_messages_keep_their_boundaries_through_a_full_ring() {
    let (mut ours, mut theirs, _sock) = common::vmbus_pair(4096);
    strict(ours.signal_mut());
    strict(theirs.signal_mut());
    // 200 messages of 1 to 1000 bytes each way through 4 KiB rings: both
    // sides wait for room and for messages many times.
    let msg = |i: usize| pattern(i as u8, 1 + (i * 37) % 1000);
    let peer = thread::spawn(move || {
        let mut buf = vec![0u8; 2000];
        for i in 0..200 {
            let n = theirs.recv_msg(&mut buf).unwrap();
            assert_eq!(&buf[..n], &msg(i)[..], "message {i}");
        }
        for i in 0..200 {
            theirs.send_msg(&msg(1000 + i)).unwrap();
        }
        theirs.close().unwrap();
        theirs
    });
    let mut s = AsyncVmbus::new(ours).unwrap();
    tokio::time::timeout(DEADLINE, async {
        for i in 0..200 {
            s.send_msg(&msg(i)).await.unwrap();
        }
        let mut small = [0u8; 1];
        let mut buf = vec![0u8; 2000];
        for i in 0..200 {
            let want = msg(1000 + i);
            if want.len() > 1 {
                // Too small: refused, nothing consumed.
                let e = s.recv_msg(&mut small).await.unwrap_err();
                assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");
            }
            let n = s.recv_msg(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], &want[..], "message {i} back");
        }
        assert_eq!(s.recv_msg(&mut buf).await.unwrap(), 0, "end of stream");
    })
    .await
    .expect("a message wait was never woken");
    let _theirs = peer.join().unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn async_connect_runs_the_handshake_on_the_runtime() {
    use ring_hosted::rendezvous::ClientConfig;
    use ring_hosted::tokio_io;
    // A server that accepts but never answers: the handshake's wait is
    // on the runtime (a ticker keeps ticking) and ends at its deadline.
    let sock = common::TempSock::new("tokio-connect-silent");
    let silent = std::os::unix::net::UnixListener::bind(&sock.path).unwrap();
    let (tick_tx, mut tick_rx) = tokio::sync::watch::channel(0u32);
    let ticker = tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_millis(10));
        loop {
            every.tick().await;
            tick_tx.send_modify(|n| *n += 1);
        }
    });
    let mut config = ClientConfig::new(ring_hosted::rendezvous::Proto::Vchan);
    config.handshake_timeout = std::time::Duration::from_millis(500);
    let start = std::time::Instant::now();
    let connecting = tokio_io::connect_with::<session::Vchan>(&sock.path, config);
    let r = tokio::time::timeout(DEADLINE, connecting)
        .await
        .expect("the handshake's deadline did not end it");
    assert!(
        matches!(
            r,
            Err(ring_hosted::Error::Handshake(
                ring_hosted::HandshakeProblem::TimedOut { .. }
            ))
        ),
        "{r:?}"
    );
    assert!(start.elapsed() >= std::time::Duration::from_millis(500));
    assert!(
        *tick_rx.borrow_and_update() >= 10,
        "the runtime was blocked"
    );
    ticker.abort();
    drop(silent);

    // A real server on a thread, for both protocols.
    let (ours, theirs, _sock) = {
        let sock = common::TempSock::new("tokio-connect");
        let listener = session::Listener::<session::Vchan>::bind(&sock.path).unwrap();
        let server = thread::spawn(move || listener.accept_timeout(DEADLINE).unwrap());
        let client = tokio_io::connect::<session::Vchan>(&sock.path)
            .await
            .unwrap();
        let mut server = server.join().unwrap();
        strict(server.signal_mut());
        (client, server, sock)
    };
    exchange(ours, theirs).await;
    let (ours, theirs, _sock) = {
        let sock = common::TempSock::new("tokio-connect-vmbus");
        let listener = session::Listener::<session::Vmbus>::bind(&sock.path).unwrap();
        let server = thread::spawn(move || listener.accept_timeout(DEADLINE).unwrap());
        let client = tokio_io::connect::<session::Vmbus>(&sock.path)
            .await
            .unwrap();
        let mut server = server.join().unwrap();
        strict(server.signal_mut());
        (client, server, sock)
    };
    exchange(ours, theirs).await;

    // No server at all: the socket's own error.
    let gone = common::TempSock::new("tokio-connect-none");
    let r = tokio_io::connect::<session::Vchan>(&gone.path).await;
    assert!(matches!(r, Err(ring_hosted::Error::Os { .. })), "{r:?}");
}

/// A request from the async side, its echo back from the blocking side.
async fn exchange<S, P>(mut ours: ring_hosted::tokio_io::AsyncStream<S>, mut theirs: P)
where
    S: ring_hosted::tokio_io::AsyncRing + Send + Unpin + 'static,
    P: std::io::Read + std::io::Write + Send + 'static,
{
    let peer = thread::spawn(move || {
        let mut buf = [0u8; 4];
        theirs.read_exact(&mut buf).unwrap();
        theirs.write_all(&buf).unwrap();
        theirs
    });
    ours.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    tokio::time::timeout(DEADLINE, ours.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"ping");
    let _theirs = peer.join().unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn async_accept_serves_every_queued_client() {
    use ring_hosted::tokio_io::AsyncListener;
    let sock = common::TempSock::new("tokio-accept");
    let mut listener = AsyncListener::<session::Vchan>::bind(&sock.path).unwrap();
    // Three clients connect at once, before anybody accepts: one edge on
    // the socket for three clients in its queue.
    let clients: Vec<_> = (0..3u8)
        .map(|i| {
            let path = sock.path.clone();
            thread::spawn(move || {
                let mut c = session::connect::<session::Vchan>(&path).unwrap();
                strict(c.signal_mut());
                c.write_all(&[i; 3]).unwrap();
                c.wait_delivered().unwrap();
                c
            })
        })
        .collect();
    let mut seen = Vec::new();
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut s = tokio::time::timeout(DEADLINE, listener.accept())
            .await
            .expect("a queued client was never accepted")
            .unwrap();
        let mut got = [0u8; 3];
        tokio::time::timeout(DEADLINE, s.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        seen.push(got[0]);
        streams.push(s);
    }
    seen.sort_unstable();
    assert_eq!(seen, [0, 1, 2]);
    for c in clients {
        drop(c.join().unwrap());
    }

    // VMBus, a client that comes while accept already waits.
    let sock = common::TempSock::new("tokio-accept-vmbus");
    let mut listener = AsyncListener::<session::Vmbus>::bind(&sock.path).unwrap();
    let path = sock.path.clone();
    let accepting = tokio::spawn(async move { listener.accept().await });
    tokio::task::yield_now().await;
    let client = thread::spawn(move || {
        let mut c = session::connect::<session::Vmbus>(&path).unwrap();
        strict(c.signal_mut());
        c
    });
    let ours = tokio::time::timeout(DEADLINE, accepting)
        .await
        .expect("the waiting accept was never woken")
        .unwrap()
        .unwrap();
    let theirs = client.join().unwrap();
    exchange(ours, theirs).await;
}

/// The write half waits on a full ring while the read half idles; the
/// peer dies (its socket end closes, its ring stays open, no kick): the
/// write must fail with `ConnectionReset` by itself.
async fn a_waiting_writer_notices_the_peers_death<S, P>(ours: S, theirs: P, ring: usize, die: fn(P))
where
    S: ring_hosted::tokio_io::AsyncRing + Send + Unpin + 'static,
    P: Send + 'static,
{
    let (rd, mut wr) = ring_hosted::tokio_io::AsyncStream::new(ours)
        .unwrap()
        .into_split();
    let (filled_tx, filled) = tokio::sync::oneshot::channel();
    let writer = tokio::spawn(async move {
        let data = pattern(4, 4 * ring);
        // The first write fills the ring; the next waits.
        let mut at = wr.write(&data).await.unwrap();
        filled_tx.send(()).unwrap();
        loop {
            match wr.write(&data[at..]).await {
                Ok(n) => at += n,
                Err(e) => return e,
            }
        }
    });
    filled.await.unwrap();
    tokio::task::yield_now().await;
    die(theirs);
    let err = tokio::time::timeout(DEADLINE, writer)
        .await
        .expect("the waiting write never noticed the peer's death")
        .unwrap();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    drop(rd);
}

#[tokio::test(flavor = "current_thread")]
async fn a_waiting_write_half_notices_the_peers_death() {
    let (mut ours, theirs, _sock) = vchan_session();
    strict(ours.signal_mut());
    a_waiting_writer_notices_the_peers_death(ours, theirs, 1024, |mut p| {
        p.signal_mut().set_hangup(dummy_fd());
        std::mem::forget(p);
    })
    .await;

    let (mut ours, theirs, _sock) = common::vmbus_pair(4096);
    strict(ours.signal_mut());
    a_waiting_writer_notices_the_peers_death(ours, theirs, 4096, |mut p| {
        p.signal_mut().set_hangup(dummy_fd());
        std::mem::forget(p);
    })
    .await;
}

/// Runs `f` in a task of its own; the receiver hears when its first poll
/// has returned `Pending` (it has armed and registered: it is waiting).
fn spawn_waiting<F>(
    f: F,
) -> (
    tokio::task::JoinHandle<F::Output>,
    tokio::sync::oneshot::Receiver<()>,
)
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut f = std::pin::pin!(f);
        let mut tx = Some(tx);
        std::future::poll_fn(|cx| {
            let r = f.as_mut().poll(cx);
            if r.is_pending() {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(());
                }
            }
            r
        })
        .await
    });
    (task, rx)
}

/// Waits (under the deadline) until the task of [`spawn_waiting`] waits.
async fn until_waiting(rx: tokio::sync::oneshot::Receiver<()>, what: &str) {
    tokio::time::timeout(DEADLINE, rx)
        .await
        .unwrap_or_else(|_| panic!("{what}: never polled"))
        .unwrap_or_else(|_| panic!("{what}: finished without waiting"));
}

/// What the peer of [`readiness_waits`] is told to do next.
enum Step {
    Write,
    Drain(usize),
}

/// `readable()` and `writable()` on the two halves, each waiting on the
/// reactor while the peer has not yet acted: the read half's wait ends
/// with the peer's write and consumes nothing; the write half's, on a
/// full ring, ends when the peer drains it.
async fn readiness_waits<S, P>(ours: S, mut theirs: P)
where
    S: ring_hosted::tokio_io::AsyncRing + Send + Unpin + 'static,
    P: std::io::Read + std::io::Write + Send + 'static,
{
    let (go, steps) = std::sync::mpsc::channel::<Step>();
    let peer = thread::spawn(move || {
        for step in steps {
            match step {
                Step::Write => theirs.write_all(b"ping").unwrap(),
                Step::Drain(n) => {
                    let mut got = vec![0u8; n];
                    theirs.read_exact(&mut got).unwrap();
                    assert!(got.iter().all(|&b| b == 7), "the peer got other bytes");
                }
            }
        }
        theirs
    });
    let (mut rd, mut wr) = ring_hosted::tokio_io::AsyncStream::new(ours)
        .unwrap()
        .into_split();
    let (reading, waits) = spawn_waiting(async move {
        rd.readable().await.unwrap();
        rd
    });
    until_waiting(waits, "readable() with nothing to read").await;
    go.send(Step::Write).unwrap();
    let mut rd = tokio::time::timeout(DEADLINE, reading)
        .await
        .expect("readable() was never woken by the peer's write")
        .unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(
        rd.try_read(&mut buf).unwrap(),
        4,
        "readable() consumed bytes"
    );
    assert_eq!(&buf[..4], b"ping");

    let mut filled = 0;
    loop {
        match wr.try_write(&[7u8; 512]) {
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
    }
    let (writing, waits) = spawn_waiting(async move {
        wr.writable().await.unwrap();
        wr
    });
    until_waiting(waits, "writable() on a full ring").await;
    go.send(Step::Drain(filled)).unwrap();
    let mut wr = tokio::time::timeout(DEADLINE, writing)
        .await
        .expect("writable() was never woken by the peer's read")
        .unwrap();
    assert_eq!(wr.try_write(&[7u8]).unwrap(), 1, "writable() but no room");
    go.send(Step::Drain(1)).unwrap();
    drop(go);
    let _theirs = peer.join().unwrap();
    let whole = rd.reunite(wr).expect("the halves of one stream");
    let counts = whole.get_ref().signal().wake_counts();
    assert!(counts.kicks >= 2, "both waits ended by kicks: {counts:?}");
    assert_eq!((counts.lapses, counts.timeouts), (0, 0), "{counts:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn readable_and_writable_wait_on_the_reactor() {
    let (mut ours, mut theirs, _sock) = vchan_session();
    strict(ours.signal_mut());
    strict(theirs.signal_mut());
    readiness_waits(ours, theirs).await;

    let (mut ours, mut theirs, _sock) = common::vmbus_pair(4096);
    strict(ours.signal_mut());
    strict(theirs.signal_mut());
    readiness_waits(ours, theirs).await;
}

/// A readiness wait already pending when the peer corrupts the ring and
/// kicks: it ends with `InvalidData`, and so does every wait after.
///
/// `whole`: the corruption poisons the whole endpoint (vchan: one control
/// page), so `writable()` fails too; a VMBus ring we write stays usable.
///
/// `corrupt` hands the peer back: it stays open (a close would write its
/// own index over the corruption) until the end.
async fn corrupt_while_waiting<S, P>(ours: S, whole: bool, corrupt: impl FnOnce() -> P)
where
    S: ring_hosted::tokio_io::AsyncRing + Send + Unpin + 'static,
{
    let mut s = ring_hosted::tokio_io::AsyncStream::new(ours).unwrap();
    let (waiting, waits) = spawn_waiting(async move {
        let r = s.readable().await;
        (s, r)
    });
    until_waiting(waits, "readable() with nothing to read").await;
    let theirs = corrupt();
    let (mut s, r) = tokio::time::timeout(DEADLINE, waiting)
        .await
        .expect("a wait on a corrupt ring hung")
        .unwrap();
    let e = r.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
    let e = tokio::time::timeout(DEADLINE, s.readable())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
    let w = tokio::time::timeout(DEADLINE, s.writable()).await.unwrap();
    match (whole, w) {
        (true, Err(e)) => assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}"),
        (false, Ok(())) => {}
        (_, w) => panic!("writable() after the corruption: {w:?}"),
    }
    let mut buf = [0u8; 8];
    let e = s.read(&mut buf).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
    drop(theirs);
}

#[tokio::test(flavor = "current_thread")]
async fn a_readiness_wait_on_a_corrupt_ring_is_an_error_not_a_hang() {
    use ring_core::mem::SharedMem;
    // vchan: the producer index of the ring we read jumps more than a
    // ring ahead.
    let (mut ours, mut theirs, _sock) = vchan_session();
    strict(ours.signal_mut());
    strict(theirs.signal_mut());
    let control = ours.memory().clone();
    corrupt_while_waiting(ours, true, move || {
        let at = ring_core::vchan::layout::LEFT_PROD;
        let prod = control.load_u32(at).unwrap();
        control.store_u32(at, prod.wrapping_add(5000)).unwrap();
        theirs.kick().unwrap();
        theirs
    })
    .await;

    // VMBus: the write index of the ring we read, misaligned.
    let (mut ours, mut theirs, _sock) = common::vmbus_pair(4096);
    strict(ours.signal_mut());
    strict(theirs.signal_mut());
    let rx = ours.blocking().reader().ring().memory().clone();
    corrupt_while_waiting(ours, false, move || {
        rx.store_u32(ring_core::vmbus::layout::WRITE_INDEX, 3)
            .unwrap();
        theirs.kick().unwrap();
        theirs
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vmbus_messages_on_split_halves_in_two_tasks() {
    let (mut ours, mut theirs, _sock) = common::vmbus_pair(4096);
    strict(ours.signal_mut());
    strict(theirs.signal_mut());
    // An echo over 4 KiB rings: the sender half waits for the peer, the
    // peer for the receiver half, which waits for the echo.
    let msg = |i: usize| pattern(i as u8, 1 + (i * 37) % 1000);
    let peer = thread::spawn(move || {
        let mut buf = vec![0u8; 2000];
        for _ in 0..300 {
            let n = theirs.recv_msg(&mut buf).unwrap();
            theirs.send_msg(&buf[..n]).unwrap();
        }
        theirs
    });
    let (mut rd, mut wr) = AsyncVmbus::new(ours).unwrap().into_split();
    let sender = tokio::spawn(async move {
        for i in 0..300 {
            wr.send_msg(&msg(i)).await.unwrap();
        }
        wr
    });
    let receiver = tokio::spawn(async move {
        let mut buf = vec![0u8; 2000];
        for i in 0..300 {
            let n = rd.recv_msg(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], &msg(i)[..], "message {i} back");
        }
        rd
    });
    let rd = tokio::time::timeout(DEADLINE, receiver)
        .await
        .expect("the read half's recv_msg was never woken")
        .unwrap();
    let wr = tokio::time::timeout(DEADLINE, sender)
        .await
        .expect("the write half's send_msg was never woken")
        .unwrap();
    let _theirs = peer.join().unwrap();
    let whole = rd.reunite(wr).expect("the halves of one stream");
    let counts = whole.get_ref().signal().wake_counts();
    assert_eq!((counts.lapses, counts.timeouts), (0, 0), "{counts:?}");
}

/// A vchan peer with no socket to us (a foreign one: here an in-process
/// pair) clears its live byte and does not kick. Without the liveness
/// re-check a waiting read never learns it; with it, the read ends at the
/// next lapse with end of stream.
#[tokio::test(flavor = "current_thread")]
async fn a_silent_close_of_a_foreign_peer_is_seen_by_the_liveness_recheck() {
    use std::time::Duration;
    for every in [None, Some(Duration::from_millis(20))] {
        let (mut ours, mut theirs) = stream::pair(1024, 1024).unwrap();
        ours.signal_mut().set_liveness(every);
        let mut s = AsyncVchan::new(ours).unwrap();
        let mut buf = [0u8; 8];
        let (reading, waits) = spawn_waiting(async move {
            let r = s.read(&mut buf).await;
            (s, r)
        });
        until_waiting(waits, "a read with nothing to read").await;
        // The close without the kick that should follow it.
        let _ = theirs.blocking().endpoint().hang_up().unwrap();
        match every {
            None => {
                let r = tokio::time::timeout(Duration::from_millis(300), reading).await;
                assert!(r.is_err(), "the close was seen with no re-check: {r:?}");
            }
            Some(_) => {
                let (s, r) = tokio::time::timeout(DEADLINE, reading)
                    .await
                    .expect("the liveness re-check never looked at the ring")
                    .unwrap();
                assert_eq!(r.unwrap(), 0, "end of stream");
                let counts = s.get_ref().signal().wake_counts();
                assert!(counts.lapses >= 1, "{counts:?}");
                assert_eq!(counts.kicks, 0, "nobody kicked: {counts:?}");
            }
        }
        drop(theirs);
    }
}
