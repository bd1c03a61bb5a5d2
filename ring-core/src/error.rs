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
