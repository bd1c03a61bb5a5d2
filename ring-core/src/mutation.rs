//! Deliberate bugs for the loom models' negative controls.
//!
//! Compiled into the data path only with `--cfg loom`, and off unless a
//! test turns one on: `ring-core/tests/loom_*.rs` apply each mutation in
//! turn and require a model to fail, so the suite shows that the models
//! still catch the bugs they exist for. In every other build
//! [`on`] is a constant `false` and the checks fold away.

/// A bug a model must catch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Mutation {
    /// No full fence between publishing an index and reading the peer's
    /// wake-up request (vchan's request check, VMBus's commit): the
    /// Dekker pair with the sleeper's arm-then-re-check is broken.
    NoPublishFence = 1,
    /// No re-check of the ring after arming a wake-up request (vchan
    /// reads and writes; VMBus's unmask-and-re-check).
    NoRecheck = 2,
    /// The producer index published before the bytes are copied in (vchan
    /// writes).
    IndexBeforeCopy = 3,
    /// No re-check of the ring after `arm_readable`/`arm_writable` set
    /// their request (vchan's in-place, delivery and host-driven waits).
    NoArmRecheck = 4,
    /// An async wait that takes an event from its source and then goes to
    /// sleep instead of trying the ring again ([`poll_attempt`]): the
    /// event that would have woken it is gone.
    ///
    /// [`poll_attempt`]: crate::signal::poll_attempt
    NoRetryAfterEvent = 5,
}

impl Mutation {
    /// The mutation named as its `Debug` form prints it (`"NoRecheck"`).
    pub fn from_name(name: &str) -> Option<Mutation> {
        match name {
            "NoPublishFence" => Some(Mutation::NoPublishFence),
            "NoRecheck" => Some(Mutation::NoRecheck),
            "IndexBeforeCopy" => Some(Mutation::IndexBeforeCopy),
            "NoArmRecheck" => Some(Mutation::NoArmRecheck),
            "NoRetryAfterEvent" => Some(Mutation::NoRetryAfterEvent),
            _ => None,
        }
    }
}

#[cfg(loom)]
static ACTIVE: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(0);

/// Turns `m` on (`None`: all off). For tests run one at a time: the switch
/// is global.
#[cfg(loom)]
pub fn apply(m: Option<Mutation>) {
    ACTIVE.store(
        m.map_or(0, |m| m as u8),
        core::sync::atomic::Ordering::SeqCst,
    );
}

/// Whether `m` is on.
#[cfg(loom)]
pub(crate) fn on(m: Mutation) -> bool {
    ACTIVE.load(core::sync::atomic::Ordering::SeqCst) == m as u8
}

/// Whether `m` is on: never, outside loom builds.
#[cfg(not(loom))]
#[inline(always)]
pub(crate) const fn on(_: Mutation) -> bool {
    false
}
