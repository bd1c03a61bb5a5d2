//! Error pieces shared by both protocols.

use core::fmt;

/// What an error means for the caller, the same for both protocols: try
/// again later, or stop. Every protocol error has exactly one class
/// (`vchan::Error::class`, `vmbus::Error::class`), and the `std::io`
/// mapping (with the `std` feature) follows from it alone, so it is
/// written once.
///
/// ```
/// use ring_core::error::ErrorClass;
/// use ring_core::vmbus;
/// let full = vmbus::Error::Full { needed: 4096, available: 100 };
/// assert_eq!(full.class(), ErrorClass::Retry);
/// assert!(full.class().is_retry());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorClass {
    /// Nothing can move now; the wake-up request is armed. Wait for the
    /// peer's event and try again. (vchan `WouldBlock`, VMBus `Empty` and
    /// `Full`, whose fields say how much room was needed and free.)
    Retry,
    /// The stream is over in this direction: the peer closed, or we did.
    Closed,
    /// The peer broke the protocol; the endpoint or ring is poisoned and
    /// every later call fails the same way.
    Corrupt,
    /// The caller asked for something the ring can never do (a packet
    /// larger than the ring, a malformed packet, a read past a payload, a
    /// wait while holding read bytes). Nothing changed.
    Usage,
    /// Setting the ring up failed (layout, sizes, memory too small).
    Setup,
}

impl ErrorClass {
    /// Whether trying again after the peer's next event can succeed.
    pub fn is_retry(self) -> bool {
        self == ErrorClass::Retry
    }

    /// The `std::io` error kind of this class (`WouldBlock`, `BrokenPipe`,
    /// `InvalidData`, `InvalidInput`).
    #[cfg(feature = "std")]
    pub fn io_kind(self) -> std::io::ErrorKind {
        use std::io::ErrorKind;
        match self {
            ErrorClass::Retry => ErrorKind::WouldBlock,
            ErrorClass::Closed => ErrorKind::BrokenPipe,
            ErrorClass::Corrupt => ErrorKind::InvalidData,
            ErrorClass::Usage | ErrorClass::Setup => ErrorKind::InvalidInput,
        }
    }
}

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

/// The traits every protocol error implements the same way, from its
/// `class()` and its `Corrupt`, `Setup` and `Memory` variants: `source()`,
/// the `embedded-io` kind and (with `std`) the `std::io::Error`.
macro_rules! protocol_error_traits {
    ($error:ty) => {
        impl core::error::Error for $error {
            fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
                match self {
                    Self::Corrupt(e) => Some(e),
                    Self::Setup(e) => Some(e),
                    Self::Memory(e) => Some(e),
                    _ => None,
                }
            }
        }

        impl embedded_io::Error for $error {
            fn kind(&self) -> embedded_io::ErrorKind {
                $crate::error::embedded_kind(self.class())
            }
        }

        #[cfg(feature = "std")]
        impl From<$error> for std::io::Error {
            fn from(e: $error) -> Self {
                std::io::Error::new(e.class().io_kind(), e)
            }
        }
    };
}
pub(crate) use protocol_error_traits;

/// The `embedded-io` kind of a class (its `Other` stands for "retry":
/// embedded-io has no would-block kind).
pub(crate) fn embedded_kind(class: ErrorClass) -> embedded_io::ErrorKind {
    use embedded_io::ErrorKind;
    match class {
        ErrorClass::Retry => ErrorKind::Other,
        ErrorClass::Closed => ErrorKind::BrokenPipe,
        ErrorClass::Corrupt => ErrorKind::InvalidData,
        ErrorClass::Usage | ErrorClass::Setup => ErrorKind::InvalidInput,
    }
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
