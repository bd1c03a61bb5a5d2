//! Loom models of the async wait: [`ring_core::signal::poll_attempt`] (the
//! loop every tokio read, write, readiness wait and message call of
//! ring-hosted runs) over both protocols' attempts, against a peer on the
//! blocking layer.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p ring-core --release --test loom_async`
//! (scripts/loom does). Our side is a future driven by a loom-aware
//! `block_on`; its event source is a model of one reactor registration of
//! the eventfd as tokio keeps it: a readiness flag the peer's kick sets
//! and the poll takes, and one waker slot, registered under a lock and
//! re-checked. A lost wake-up leaves the future pending with nobody to
//! wake it, which loom reports as a deadlock.
#![cfg(loom)]

mod loom_support;

use loom::sync::{Arc, Mutex};
use loom::thread;
use loom_support::{model, Event, Mem, Shape};
use ring_core::mem::SharedMem;
use ring_core::signal::{poll_attempt, Signal};
use ring_core::vchan::{self, Orders, ServerOptions};
use ring_core::vmbus::pipe::{PipeReader, PipeWriter};
use ring_core::vmbus::{BlockingPipe, IncomingRing, OutgoingRing, RingLayout};
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::task::{Context, Poll, Wake, Waker};

/// One reactor registration, reduced to what a wait depends on: the
/// readiness the peer's kick sets and a poll takes, and one waker slot
/// (tokio keeps one per registration and direction). Both under one lock,
/// as tokio registers a waker and looks at the readiness again under its
/// waiters' lock.
#[derive(Default)]
struct Registration(Mutex<Slot>);

#[derive(Default)]
struct Slot {
    ready: bool,
    waker: Option<Waker>,
}

impl Registration {
    /// The event source of [`poll_attempt`]: `Ready` takes the event,
    /// `Pending` leaves the waker for the next kick.
    fn poll_event(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut slot = self.0.lock().unwrap();
        if std::mem::take(&mut slot.ready) {
            return Poll::Ready(());
        }
        slot.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// The event source as ring-hosted polls its eventfd registration: a
    /// kick is taken only on the way to sleep, never by the look before
    /// the first attempt.
    fn poll<E>(&self, cx: &mut Context<'_>, sleep: bool) -> Poll<Result<(), E>> {
        match sleep {
            true => self.poll_event(cx).map(Ok),
            false => Poll::Pending,
        }
    }

    /// The peer's kick, as the reactor delivers it.
    fn fire(&self) {
        let waker = {
            let mut slot = self.0.lock().unwrap();
            slot.ready = true;
            slot.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// Our side's signal: kicks the blocking peer; never waits (the future
/// waits on the registration instead).
struct Ours {
    peer: Arc<Event>,
}

impl Signal for Ours {
    type Error = ();
    fn notify(&self) -> Result<(), ()> {
        *self.peer.pending.lock().unwrap() = true;
        self.peer.ready.notify_one();
        Ok(())
    }
    fn wait(&self) -> Result<(), ()> {
        Err(()) // an async side never blocks
    }
}

/// The blocking peer's signal: its kick fires our registrations (every
/// registration of the eventfd sees each kick), and it waits on its own
/// flag.
struct Theirs {
    own: Arc<Event>,
    ours: Vec<Arc<Registration>>,
}

impl Signal for Theirs {
    type Error = ();
    fn notify(&self) -> Result<(), ()> {
        for reg in &self.ours {
            reg.fire();
        }
        Ok(())
    }
    fn wait(&self) -> Result<(), ()> {
        let mut pending = self.own.pending.lock().unwrap();
        while !*pending {
            pending = self.own.ready.wait(pending).unwrap();
        }
        *pending = false;
        Ok(())
    }
}

/// Our signal, the peer's, and our registration; `stale`: it starts with
/// a stale event, as a wait often does (every kick is an edge on both
/// directions' registrations). A stale event buys the wait one more try
/// before it sleeps, which hides a missing re-check: the models of the
/// re-checks start without one.
fn signals(stale: bool) -> (Ours, Theirs, Arc<Registration>) {
    let event = Arc::new(Event::default());
    let reg = Arc::new(Registration::default());
    if stale {
        reg.fire();
    }
    (
        Ours {
            peer: event.clone(),
        },
        Theirs {
            own: event,
            ours: vec![reg.clone()],
        },
        reg,
    )
}

/// A waker over a flag and a condvar (loom's `thread::park` cannot be
/// mixed with its locks: an unpark would end a wait for a lock).
#[derive(Default)]
struct Woken(Event);

impl Wake for Woken {
    fn wake(self: std::sync::Arc<Self>) {
        *self.0.pending.lock().unwrap() = true;
        self.0.ready.notify_one();
    }
}

/// Drives `f` on this loom thread: poll, and sleep until woken.
fn block_on<F: Future>(f: F) -> F::Output {
    let woken = std::sync::Arc::new(Woken::default());
    let waker = Waker::from(woken.clone());
    let mut cx = Context::from_waker(&waker);
    let mut f = pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        let mut pending = woken.0.pending.lock().unwrap();
        while !*pending {
            pending = woken.0.ready.wait(pending).unwrap();
        }
        *pending = false;
    }
}

/// The vchan control page as the vchan models lay it out, the set-up's
/// standing requests cleared.
fn vchan_setup() -> (vchan::Endpoint<Mem>, vchan::Endpoint<Mem>) {
    let mem = Mem::new(Shape {
        atomic: 1024,
        data: 1024,
        data_len: 3072,
        chunk: 1,
    });
    let orders = Orders::new(10, 11).unwrap();
    let server = vchan::serve_flat(mem.clone(), orders, ServerOptions::default()).unwrap();
    let client = vchan::connect_flat(mem.clone()).unwrap();
    mem.store_u8(22, 0).unwrap();
    mem.store_u8(23, 0).unwrap();
    (server, client)
}

/// An async read on an empty ring, `stale` as for [`signals`], is woken
/// by the peer's one write.
fn async_read_is_woken_by_one_write(stale: bool) {
    let (server, client) = vchan_setup();
    let (ours, theirs, reg) = signals(stale);
    let writer = thread::spawn(move || {
        let mut c = vchan::Blocking::new(client, theirs);
        c.write_all(&[1]).unwrap();
        c
    });
    let mut s = vchan::Blocking::new(server, ours);
    let mut buf = [0u8; 4];
    let n = block_on(poll_fn(|cx| {
        poll_attempt(
            cx,
            &mut s,
            |s| s.try_read(&mut buf),
            |_, cx, sleep| reg.poll(cx, sleep),
        )
    }))
    .unwrap();
    assert_eq!((n, buf[0]), (1, 1));
    drop(writer.join().unwrap());
}

#[test]
fn vchan_async_read_is_woken_by_one_write() {
    model("async vchan_async_read_is_woken_by_one_write", || {
        async_read_is_woken_by_one_write(false)
    });
}

/// As above, the wait starting with a stale event: it takes it on its
/// way to sleep, and must try again.
#[test]
fn vchan_async_read_after_a_stale_event_is_woken_by_one_write() {
    model(
        "async vchan_async_read_after_a_stale_event_is_woken_by_one_write",
        || async_read_is_woken_by_one_write(true),
    );
}

/// An async write on a full ring is woken by the peer's one read.
#[test]
fn vchan_async_write_is_woken_by_one_read() {
    model("async vchan_async_write_is_woken_by_one_read", || {
        let (server, mut client) = vchan_setup();
        assert_eq!(client.write(&[7u8; 1024]).unwrap().len, 1024);
        let (ours, theirs, reg) = signals(true);
        let reader = thread::spawn(move || {
            let mut s = vchan::Blocking::new(server, theirs);
            let mut buf = [0u8; 1024];
            s.recv(&mut buf).unwrap();
            s.recv(&mut buf[..1]).unwrap();
            assert_eq!(buf[0], 9);
            s
        });
        let mut c = vchan::Blocking::new(client, ours);
        let n = block_on(poll_fn(|cx| {
            poll_attempt(
                cx,
                &mut c,
                |c| c.try_write(&[9]),
                |_, cx, sleep| reg.poll(cx, sleep),
            )
        }))
        .unwrap();
        assert_eq!(n, 1);
        drop(reader.join().unwrap());
    });
}

/// A readiness wait (`try_readable`, which reads nothing) on an empty
/// ring is woken by the peer's one write, and the read after it finds
/// the byte.
#[test]
fn vchan_readable_is_woken_by_one_write() {
    model("async vchan_readable_is_woken_by_one_write", || {
        let (server, client) = vchan_setup();
        let (ours, theirs, reg) = signals(false);
        let writer = thread::spawn(move || {
            let mut c = vchan::Blocking::new(client, theirs);
            c.write_all(&[1]).unwrap();
            c
        });
        let mut s = vchan::Blocking::new(server, ours);
        block_on(poll_fn(|cx| {
            poll_attempt(
                cx,
                &mut s,
                |s| s.try_readable(),
                |_, cx, sleep| reg.poll(cx, sleep),
            )
        }))
        .unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(s.try_read(&mut buf).unwrap(), Some(1));
        drop(writer.join().unwrap());
    });
}

/// A stream split into a read half and a write half, each in a task of
/// its own (here: a loom thread each), the endpoint shared behind a lock
/// as ring-hosted's halves share it. The read half waits for the peer's
/// byte while the write half waits for room in the full ring; the peer
/// writes its byte, then reads. Each half has its own registration, so
/// each keeps its own waker. With one registration for both
/// (`SharedRegistration`: one waker slot, which the half polled last
/// holds) a half's wake-up is lost, as it was before issue 28's fix.
#[test]
fn split_halves_are_each_woken() {
    // Three threads: two preemptions keep the run to seconds.
    loom_support::model_bounded("async split_halves_are_each_woken", 2, || {
        let (server, mut client) = vchan_setup();
        // The client's ring (the one it writes) is full.
        assert_eq!(client.write(&[7u8; 1024]).unwrap().len, 1024);
        let event = Arc::new(Event::default());
        let reading = Arc::new(Registration::default());
        let writing = if loom_support::model_mutation("SharedRegistration") {
            reading.clone()
        } else {
            Arc::new(Registration::default())
        };
        let theirs = Theirs {
            own: event.clone(),
            ours: if Arc::ptr_eq(&reading, &writing) {
                vec![reading.clone()]
            } else {
                vec![reading.clone(), writing.clone()]
            },
        };
        let peer = thread::spawn(move || {
            let mut s = vchan::Blocking::new(server, theirs);
            s.write_all(&[1]).unwrap();
            let mut buf = [0u8; 1024];
            s.recv(&mut buf).unwrap();
            s.recv(&mut buf[..1]).unwrap();
            assert_eq!(buf[0], 9);
            s
        });
        let ours = Arc::new(Mutex::new(vchan::Blocking::new(
            client,
            Ours { peer: event },
        )));
        let shared = ours.clone();
        let writer = thread::spawn(move || {
            let n = block_on(poll_fn(|cx| {
                let mut c = shared.lock().unwrap();
                poll_attempt(
                    cx,
                    &mut *c,
                    |c| c.try_write(&[9]),
                    |_, cx, sleep| writing.poll(cx, sleep),
                )
            }))
            .unwrap();
            assert_eq!(n, 1);
        });
        let mut buf = [0u8; 1];
        let n = block_on(poll_fn(|cx| {
            let mut c = ours.lock().unwrap();
            poll_attempt(
                cx,
                &mut *c,
                |c| c.try_read(&mut buf),
                |_, cx, sleep| reading.poll(cx, sleep),
            )
        }))
        .unwrap();
        assert_eq!((n, buf[0]), (1, 1));
        writer.join().unwrap();
        drop(peer.join().unwrap());
    });
}

const CONTROL: usize = 4096;
const DATA: usize = 4096;

/// A VMBus pipe channel over loom memory: (ours, the peer's), each
/// reading the ring the other writes.
fn vmbus_setup(ours: Ours, theirs: Theirs) -> (BlockingPipe<Mem, Ours>, BlockingPipe<Mem, Theirs>) {
    let layout = RingLayout::new(CONTROL, DATA).unwrap();
    let shape = Shape {
        atomic: 0x44,
        data: CONTROL,
        data_len: DATA,
        chunk: 1024,
    };
    let (to_us, to_them) = (Mem::new(shape), Mem::new(shape));
    for m in [&to_us, &to_them] {
        ring_core::vmbus::initialize_ring(m, layout).unwrap();
    }
    let reader = |m: &Mem| PipeReader::new(IncomingRing::new(m.clone(), layout).unwrap());
    let writer = |m: &Mem| PipeWriter::new(OutgoingRing::new(m.clone(), layout).unwrap());
    (
        BlockingPipe::new(reader(&to_us), writer(&to_them), ours),
        BlockingPipe::new(reader(&to_them), writer(&to_us), theirs),
    )
}

/// A VMBus readiness wait on an empty ring is woken by the peer's one
/// message, which is then there to receive. The mask starts set (as a
/// draining reader, or uio_hv_generic's interrupt handler, leaves it), so
/// the writer signals only if the wait cleared it before the publish, and
/// a wait that clears it after must find the packet by its re-check.
#[test]
fn vmbus_readable_is_woken_by_one_message() {
    model("async vmbus_readable_is_woken_by_one_message", || {
        let (ours, theirs, reg) = signals(true);
        let (mut us, mut them) = vmbus_setup(ours, theirs);
        us.reader().ring().mask_interrupts().unwrap();
        let writer = thread::spawn(move || {
            them.send_msg(b"hello").unwrap();
            them
        });
        block_on(poll_fn(|cx| {
            poll_attempt(
                cx,
                &mut us,
                |s| s.try_readable(),
                |_, cx, sleep| reg.poll(cx, sleep),
            )
        }))
        .unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(us.try_recv_msg(&mut buf).unwrap(), Some(5));
        drop(writer.join().unwrap());
    });
}

/// A VMBus writability wait on a full ring (`pending_send_size` armed,
/// the read index re-read) is woken by the peer's one read that frees it.
#[test]
fn vmbus_writable_is_woken_by_one_read() {
    model("async vmbus_writable_is_woken_by_one_read", || {
        let (ours, theirs, reg) = signals(true);
        let (mut us, mut them) = vmbus_setup(ours, theirs);
        let mut sent = 0;
        while let Some(n) = us.try_write(&[3u8; 1000]).unwrap() {
            sent += n;
        }
        let reader = thread::spawn(move || {
            let mut buf = vec![0u8; sent];
            let mut got = 0;
            while got < sent {
                got += them.read(&mut buf[got..]).unwrap();
            }
            them
        });
        block_on(poll_fn(|cx| {
            poll_attempt(
                cx,
                &mut us,
                |s| s.try_writable(),
                |_, cx, sleep| reg.poll(cx, sleep),
            )
        }))
        .unwrap();
        assert_eq!(us.try_write(b"x").unwrap(), Some(1));
        drop(reader.join().unwrap());
    });
}

// Negative controls: each deliberate bug (ring-core's `mutation` module,
// compiled in only under loom) must make a model above fail.

#[test]
fn an_async_wait_that_sleeps_after_taking_an_event_is_caught() {
    loom_support::must_fail(
        ring_core::mutation::Mutation::NoRetryAfterEvent,
        "vchan_async_read_after_a_stale_event_is_woken_by_one_write",
    );
}

#[test]
fn an_async_read_without_the_recheck_is_caught() {
    loom_support::must_fail(
        ring_core::mutation::Mutation::NoRecheck,
        "vchan_async_read_is_woken_by_one_write",
    );
}

#[test]
fn a_vchan_readable_without_the_recheck_is_caught() {
    loom_support::must_fail(
        ring_core::mutation::Mutation::NoArmRecheck,
        "vchan_readable_is_woken_by_one_write",
    );
}

#[test]
fn a_vmbus_readable_without_the_recheck_is_caught() {
    loom_support::must_fail(
        ring_core::mutation::Mutation::NoRecheck,
        "vmbus_readable_is_woken_by_one_message",
    );
}

#[test]
fn a_vmbus_readable_that_sleeps_after_taking_an_event_is_caught() {
    loom_support::must_fail(
        ring_core::mutation::Mutation::NoRetryAfterEvent,
        "vmbus_readable_is_woken_by_one_message",
    );
}

#[test]
fn halves_sharing_one_registration_are_caught() {
    loom_support::must_fail_named("SharedRegistration", "split_halves_are_each_woken");
}
