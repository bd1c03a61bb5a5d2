//! Error pieces shared by both protocols.

use core::fmt;

/// The peer broke the protocol. `what` names the rule it broke.
///
/// Once an endpoint has seen corruption it is *poisoned*: every later call
/// returns the same error, so a hostile peer cannot make us spin on a state
/// that will never make sense.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Corrupt {
    /// The rule the peer broke, in a few words.
    pub what: &'static str,
}

impl fmt::Display for Corrupt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "peer broke the ring protocol: {}", self.what)
    }
}

impl core::error::Error for Corrupt {}

/// The poisoned state of one endpoint or ring: clear until the peer first
/// breaks the protocol, then that corruption for good. Both protocols keep
/// one and check it first in every call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Poison(Option<Corrupt>);

impl Poison {
    /// The corruption latched, if any.
    pub(crate) fn get(&self) -> Option<Corrupt> {
        self.0
    }

    /// `Err` with the latched corruption once poisoned.
    pub(crate) fn check(&self) -> Result<(), Corrupt> {
        self.0.map_or(Ok(()), Err)
    }

    /// Latches `what` (the first corruption stays) and returns what is
    /// latched, for the caller to return as its error.
    pub(crate) fn latch(&mut self, what: &'static str) -> Corrupt {
        *self.0.get_or_insert(Corrupt { what })
    }
}
