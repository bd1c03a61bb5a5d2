//! The iceoryx2 contender: publish-subscribe over `ipc::Service` between
//! the two processes.
//!
//! Services (names carry the parent's pid, so runs never meet):
//!
//! - `.../ping` and `.../pong`, `[u8]` slices of 64 bytes: the round trip,
//!   as iceoryx2's own publish-subscribe benchmark sets it up (two
//!   services, history 0, a subscriber buffer of 1, each side busy-polling
//!   `receive()`, the next sample loaned right after a send);
//! - `.../bulk`, `[u64]` slices of 512 (4 KiB): the throughput groups, with
//!   a subscriber buffer of [`BULK_DEPTH`] samples (as many 4 KiB chunks as
//!   our 256 KiB rings hold).
//!
//! No sample may be lost: every service is created with
//! `enable_safe_overflow(false)` and every publisher with
//! `BackpressureStrategy::RetryUntilDelivered`, so a publisher facing a
//! full subscriber buffer waits (iceoryx2's adaptive wait: `sched_yield`,
//! then sleeps) instead of overwriting. Its backpressure handler gives up
//! (`DiscardDataAndFail`, so `send` fails) after [`DEADLINE`] or once the
//! peer process has exited. The readers count and check every sample.

use crate::pattern::{
    check_bytes, check_words, fill_bytes, fill_words, word, CHUNK, CHUNK_WORDS, PING,
};
use crate::sys::{child_exited, Watch, DEADLINE};
use crate::Timing;
use iceoryx2::port::publisher::Publisher;
use iceoryx2::port::subscriber::Subscriber;
use iceoryx2::port::update_connections::UpdateConnections;
use iceoryx2::port::{BackpressureAction, BackpressureInfo};
use iceoryx2::prelude::*;
use iceoryx2::service::port_factory::publish_subscribe::PortFactory;
use std::time::Instant;

/// Samples a bulk subscriber buffers: 64 × 4 KiB = 256 KiB in flight, the
/// size of our rings.
pub const BULK_DEPTH: usize = 64;

type Ipc = ipc::Service;

/// The ping, pong and bulk services, kept open as long as the ports.
type Services = (
    PortFactory<Ipc, [u8], ()>,
    PortFactory<Ipc, [u8], ()>,
    PortFactory<Ipc, [u64], ()>,
);

/// `$r` with its error turned into a message naming `$what`.
macro_rules! ice {
    ($what:expr, $r:expr) => {
        $r.map_err(|err| format!("iceoryx2: {}: {err:?}", $what))
    };
}

/// A send's recipient count, which must be 1: iceoryx2 returns `Ok(0)`
/// when it dropped the sample (with `enable_safe_overflow(false)` and
/// `RetryUntilDelivered` it still does so, silently, when the
/// subscriber's buffer is full and the subscriber has not attached to
/// the connection yet).
fn delivered(what: &str, r: Result<usize, impl std::fmt::Debug>) -> Result<(), String> {
    match ice!(what, r)? {
        1 => Ok(()),
        n => Err(format!(
            "iceoryx2: {what}: delivered to {n} subscribers, not 1 (sample dropped)"
        )),
    }
}

fn service_name(base: &str, which: &str) -> Result<ServiceName, String> {
    ice!("service name", ServiceName::new(&format!("{base}/{which}")))
}

/// Opens (`create`: creates) the 64-byte round-trip service `which`.
fn ping_service(
    node: &Node<Ipc>,
    base: &str,
    which: &str,
    create: bool,
) -> Result<PortFactory<Ipc, [u8], ()>, String> {
    let b = node
        .service_builder(&service_name(base, which)?)
        .publish_subscribe::<[u8]>()
        .max_publishers(1)
        .max_subscribers(1)
        .history_size(0)
        .subscriber_max_buffer_size(1)
        .enable_safe_overflow(false);
    if create {
        ice!("create ping service", b.create())
    } else {
        ice!("open ping service", b.open())
    }
}

/// Opens (`create`: creates) the 4 KiB throughput service.
fn bulk_service(
    node: &Node<Ipc>,
    base: &str,
    create: bool,
) -> Result<PortFactory<Ipc, [u64], ()>, String> {
    let b = node
        .service_builder(&service_name(base, "bulk")?)
        .publish_subscribe::<[u64]>()
        .max_publishers(1)
        .max_subscribers(1)
        .history_size(0)
        .subscriber_max_buffer_size(BULK_DEPTH)
        .enable_safe_overflow(false);
    if create {
        ice!("create bulk service", b.create())
    } else {
        ice!("open bulk service", b.open())
    }
}

/// What a publisher does on a full subscriber buffer: retry (iceoryx2's
/// adaptive wait) until [`DEADLINE`], or until `child` has exited.
fn backpressure(child: Option<u32>) -> impl Fn(&BackpressureInfo) -> BackpressureAction + Send {
    move |info: &BackpressureInfo| {
        let dead = info.retries % 1024 == 1023 && child.is_some_and(child_exited);
        if dead || info.elapsed_time > DEADLINE {
            BackpressureAction::DiscardDataAndFail
        } else {
            BackpressureAction::Retry
        }
    }
}

fn node() -> Result<Node<Ipc>, String> {
    ice!(
        "create node",
        NodeBuilder::new()
            // Ctrl-C must end the benchmark: no handler of iceoryx2's.
            .signal_handling_mode(SignalHandlingMode::Disabled)
            .create::<Ipc>()
    )
}

/// The parent's ports: it pings and publishes the bulk stream.
pub struct IceParent {
    ping: Publisher<Ipc, [u8], ()>,
    pong: Subscriber<Ipc, [u8], ()>,
    bulk: Publisher<Ipc, [u64], ()>,
    child: u32,
    // Dropped last: the services and node outlive the ports.
    _services: Services,
    _node: Node<Ipc>,
}

/// The services the parent creates before it starts the child.
pub struct IceServices {
    node: Node<Ipc>,
    ping: PortFactory<Ipc, [u8], ()>,
    pong: PortFactory<Ipc, [u8], ()>,
    bulk: PortFactory<Ipc, [u64], ()>,
}

impl IceServices {
    /// Creates the three services under `base`.
    pub fn create(base: &str) -> Result<Self, String> {
        let node = node()?;
        // Remove what nodes of killed earlier runs left behind.
        let _ = node.try_cleanup_dead_nodes();
        let ping = ping_service(&node, base, "ping", true)?;
        let pong = ping_service(&node, base, "pong", true)?;
        let bulk = bulk_service(&node, base, true)?;
        Ok(IceServices {
            node,
            ping,
            pong,
            bulk,
        })
    }

    /// The parent's ports, once `child` runs.
    pub fn parent_ports(self, child: u32) -> Result<IceParent, String> {
        let ping = ice!(
            "ping publisher",
            self.ping
                .publisher_builder()
                .initial_max_slice_len(PING)
                .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
                .set_backpressure_handler(backpressure(Some(child)))
                .create()
        )?;
        let pong = ice!(
            "pong subscriber",
            self.pong.subscriber_builder().buffer_size(1).create()
        )?;
        let bulk = ice!(
            "bulk publisher",
            self.bulk
                .publisher_builder()
                .initial_max_slice_len(CHUNK_WORDS)
                .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
                .set_backpressure_handler(backpressure(Some(child)))
                .create()
        )?;
        Ok(IceParent {
            ping,
            pong,
            bulk,
            child,
            _services: (self.ping, self.pong, self.bulk),
            _node: self.node,
        })
    }
}

impl IceParent {
    /// Updates every port's connections (see [`IceChild::connect`]).
    pub fn connect(&self) -> Result<(), String> {
        ice!("ping publisher connections", self.ping.update_connections())?;
        ice!(
            "pong subscriber connections",
            self.pong.update_connections()
        )?;
        ice!("bulk publisher connections", self.bulk.update_connections())
    }

    /// `count` round trips of job `job`; each one's time goes to `rtts`.
    /// The pong must equal the ping, byte for byte.
    pub fn ping(&mut self, job: u64, count: u64, rtts: &mut Vec<u64>) -> Result<(), String> {
        let mut watch = Watch::new("iceoryx2 ping: waiting for the pong", Some(self.child));
        let mut buf = [0u8; PING];
        let mut next = ice!("loan ping", self.ping.loan_slice_uninit(PING))?;
        for i in 0..count {
            fill_bytes(&mut buf, job, i * PING as u64);
            let t0 = Instant::now();
            delivered("send ping", next.write_from_slice(&buf).send())?;
            // The next loan off the round trip's critical path, as
            // iceoryx2's own benchmark does it.
            next = ice!("loan ping", self.ping.loan_slice_uninit(PING))?;
            let pong = loop {
                if let Some(s) = ice!("receive pong", self.pong.receive())? {
                    break s;
                }
                watch.tick()?;
            };
            let same = pong.payload() == buf;
            let dt = t0.elapsed();
            if !same {
                return Err(format!(
                    "iceoryx2 pong {i} differs from its ping: {}",
                    check_bytes(pong.payload(), job, i * PING as u64)
                        .err()
                        .unwrap_or_else(|| format!("{} bytes", pong.payload().len()))
                ));
            }
            rtts.push(dt.as_nanos() as u64);
        }
        Ok(())
    }

    /// Publishes `count` 4 KiB samples, each written from a private buffer
    /// filled fresh (`loan_slice_uninit` + `write_from_slice`).
    pub fn send_copy(&mut self, job: u64, count: u64) -> Result<(), String> {
        let mut buf = [0u64; CHUNK_WORDS];
        for s in 0..count {
            fill_words(&mut buf, job, s * CHUNK_WORDS as u64);
            let sample = ice!("loan bulk", self.bulk.loan_slice_uninit(CHUNK_WORDS))?;
            delivered("send bulk", sample.write_from_slice(&buf).send())?;
        }
        Ok(())
    }

    /// Publishes `count` 4 KiB samples built in the loaned memory itself
    /// (`write_from_fn`: one `u64` store per word, no private buffer).
    pub fn send_in_place(&mut self, job: u64, count: u64) -> Result<(), String> {
        for s in 0..count {
            let w0 = s * CHUNK_WORDS as u64;
            let sample = ice!("loan bulk", self.bulk.loan_slice_uninit(CHUNK_WORDS))?;
            let sample = sample.write_from_fn(|i| word(job, w0 + i as u64));
            delivered("send bulk", sample.send())?;
        }
        Ok(())
    }
}

/// The child's ports: it answers pings and subscribes to the bulk stream.
pub struct IceChild {
    ping: Subscriber<Ipc, [u8], ()>,
    pong: Publisher<Ipc, [u8], ()>,
    bulk: Subscriber<Ipc, [u64], ()>,
    _services: Services,
    _node: Node<Ipc>,
}

impl IceChild {
    /// Opens the parent's services under `base` and makes the child's ports.
    pub fn open(base: &str) -> Result<Self, String> {
        let node = node()?;
        let ping_s = ping_service(&node, base, "ping", false)?;
        let pong_s = ping_service(&node, base, "pong", false)?;
        let bulk_s = bulk_service(&node, base, false)?;
        let ping = ice!(
            "ping subscriber",
            ping_s.subscriber_builder().buffer_size(1).create()
        )?;
        let pong = ice!(
            "pong publisher",
            pong_s
                .publisher_builder()
                .initial_max_slice_len(PING)
                .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
                .set_backpressure_handler(backpressure(None))
                .create()
        )?;
        let bulk = ice!(
            "bulk subscriber",
            bulk_s.subscriber_builder().buffer_size(BULK_DEPTH).create()
        )?;
        Ok(IceChild {
            ping,
            pong,
            bulk,
            _services: (ping_s, pong_s, bulk_s),
            _node: node,
        })
    }

    /// Updates every port's connections. The parent and the peer take
    /// turns (parent, peer, parent) before the first job, so that every
    /// subscriber has attached to its publisher's connection before any
    /// sample is sent: a publisher that finds a full buffer and no
    /// attached subscriber drops the sample.
    pub fn connect(&self) -> Result<(), String> {
        ice!(
            "ping subscriber connections",
            self.ping.update_connections()
        )?;
        ice!("pong publisher connections", self.pong.update_connections())?;
        ice!(
            "bulk subscriber connections",
            self.bulk.update_connections()
        )
    }

    /// Answers `count` pings of job `job`, checking each against the
    /// pattern and sending its bytes back.
    pub fn pong(&mut self, job: u64, count: u64) -> Result<(), String> {
        let mut watch = Watch::new("iceoryx2 pong: waiting for the ping", None);
        let mut next = ice!("loan pong", self.pong.loan_slice_uninit(PING))?;
        for i in 0..count {
            let ping = loop {
                if let Some(s) = ice!("receive ping", self.ping.receive())? {
                    break s;
                }
                watch.tick()?;
            };
            if ping.payload().len() != PING {
                return Err(format!(
                    "iceoryx2 ping {i}: {} bytes, not {PING}",
                    ping.payload().len()
                ));
            }
            check_bytes(ping.payload(), job, i * PING as u64)?;
            let reply = next.write_from_slice(ping.payload());
            drop(ping);
            delivered("send pong", reply.send())?;
            next = ice!("loan pong", self.pong.loan_slice_uninit(PING))?;
        }
        Ok(())
    }

    /// Receives `count` samples, copies each out into a private buffer and
    /// checks the copy (`in_place`: checks the sample's memory itself).
    pub fn receive(&mut self, job: u64, count: u64, in_place: bool) -> Result<Timing, String> {
        let mut watch = Watch::new("iceoryx2 subscriber: waiting for a sample", None);
        let mut buf = [0u64; CHUNK_WORDS];
        let mut first = None;
        for s in 0..count {
            let sample = loop {
                if let Some(x) = ice!("receive bulk", self.bulk.receive())? {
                    break x;
                }
                watch.tick()?;
            };
            let w0 = s * CHUNK_WORDS as u64;
            let payload = sample.payload();
            if payload.len() != CHUNK_WORDS {
                return Err(format!(
                    "iceoryx2 sample {s}: {} words, not {CHUNK_WORDS}",
                    payload.len()
                ));
            }
            if in_place {
                check_words(payload, job, w0)?;
                drop(sample);
            } else {
                buf.copy_from_slice(payload);
                drop(sample);
                check_words(&buf, job, w0)?;
            }
            if s == 0 {
                first = Some(Instant::now());
            }
        }
        Ok(Timing::since(
            first,
            (count.saturating_sub(1)) * CHUNK as u64,
        ))
    }
}
