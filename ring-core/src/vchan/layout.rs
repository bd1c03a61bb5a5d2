//! The vchan control page and ring placement, as types and checked facts.

use core::mem::{offset_of, size_of};
use zerocopy::byteorder::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::SetupError;

/// Size of the control page, and of every external ring page.
pub const PAGE_SIZE: usize = 4096;
/// Smallest ring order (1 KiB).
pub const MIN_ORDER: u8 = 10;
/// Largest ring order (1 MiB): 2 × 256 grant refs still fit the page.
pub const MAX_ORDER: u8 = 20;
/// Orders from this one up live in external pages.
pub const FIRST_EXTERNAL_ORDER: u8 = 12;
/// Largest ring size a server may be asked for.
pub const MAX_RING_SIZE: usize = 1 << MAX_ORDER;

/// One ring's pair of free-running byte counters.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct RingIndices {
    /// Bytes consumed so far, written by the ring's reader.
    pub cons: U32,
    /// Bytes produced so far, written by the ring's writer.
    pub prod: U32,
}

/// The 24-byte header at the start of the control page.
///
/// *left* carries client→server bytes, *right* server→client bytes.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct ControlHeader {
    /// Indices of the left (client-writes, server-reads) ring.
    pub left: RingIndices,
    /// Indices of the right (server-writes, client-reads) ring.
    pub right: RingIndices,
    /// log2 of the left ring's size.
    pub left_order: U16,
    /// log2 of the right ring's size.
    pub right_order: U16,
    /// Client liveness ([`Live`](super::Live) values).
    pub cli_live: u8,
    /// Server liveness.
    pub srv_live: u8,
    /// Wake-up requests aimed at the client ([`NotifyBits`](super::NotifyBits)).
    pub cli_notify: u8,
    /// Wake-up requests aimed at the server.
    pub srv_notify: u8,
}

/// Byte offset of the left ring's consumer index.
pub const LEFT_CONS: usize = offset_of!(ControlHeader, left) + offset_of!(RingIndices, cons);
/// Byte offset of the left ring's producer index.
pub const LEFT_PROD: usize = offset_of!(ControlHeader, left) + offset_of!(RingIndices, prod);
/// Byte offset of the right ring's consumer index.
pub const RIGHT_CONS: usize = offset_of!(ControlHeader, right) + offset_of!(RingIndices, cons);
/// Byte offset of the right ring's producer index.
pub const RIGHT_PROD: usize = offset_of!(ControlHeader, right) + offset_of!(RingIndices, prod);
/// Byte offset of the left order.
pub const LEFT_ORDER: usize = offset_of!(ControlHeader, left_order);
/// Byte offset of the right order.
pub const RIGHT_ORDER: usize = offset_of!(ControlHeader, right_order);
/// Byte offset of the client's live byte.
pub const CLI_LIVE: usize = offset_of!(ControlHeader, cli_live);
/// Byte offset of the server's live byte.
pub const SRV_LIVE: usize = offset_of!(ControlHeader, srv_live);
/// Byte offset of the requests aimed at the client.
pub const CLI_NOTIFY: usize = offset_of!(ControlHeader, cli_notify);
/// Byte offset of the requests aimed at the server.
pub const SRV_NOTIFY: usize = offset_of!(ControlHeader, srv_notify);
/// Byte offset of the grant list (left's refs, then right's).
pub const GRANTS: usize = size_of::<ControlHeader>();

const _: () = {
    assert!(size_of::<RingIndices>() == 8);
    assert!(size_of::<ControlHeader>() == 24);
    assert!(LEFT_CONS == 0 && LEFT_PROD == 4 && RIGHT_CONS == 8 && RIGHT_PROD == 12);
    assert!(LEFT_ORDER == 16 && RIGHT_ORDER == 18);
    assert!(CLI_LIVE == 20 && SRV_LIVE == 21 && CLI_NOTIFY == 22 && SRV_NOTIFY == 23);
    assert!(GRANTS == 24);
    // Two maximal external rings' grant refs fit in the page.
    assert!(GRANTS + 4 * 2 * (MAX_RING_SIZE / PAGE_SIZE) <= PAGE_SIZE);
};

/// Where a ring of a given order lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Inside the control page, at this byte offset (1024 or 2048).
    InPage {
        /// Byte offset within the control page.
        offset: usize,
    },
    /// In this many separately granted pages.
    External {
        /// Number of 4 KiB pages.
        pages: usize,
    },
}

impl Placement {
    /// Number of grant refs this ring contributes to the grant list.
    pub const fn grant_count(self) -> usize {
        match self {
            Placement::InPage { .. } => 0,
            Placement::External { pages } => pages,
        }
    }
}

/// The pair of ring orders a vchan uses, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Orders {
    left: u8,
    right: u8,
}

impl Orders {
    /// Checks a pair of orders the way a strict client must.
    ///
    /// Rejects orders outside 10..=20, two in-page rings of the same order
    /// (they would share one slot), and a grant list long enough to run into
    /// an in-page ring (libxenvchan's client accepts that last case).
    ///
    /// # Examples
    ///
    /// ```
    /// use ring_core::vchan::{Orders, SetupError};
    ///
    /// let small = Orders::new(10, 11)?; // 1 KiB and 2 KiB, both in the control page
    /// assert_eq!(small.grant_count(), 0);
    /// assert_eq!(Orders::new(12, 14)?.grant_count(), 1 + 4); // 4 KiB pages
    /// // Two in-page rings of one order would share its slot.
    /// assert_eq!(Orders::new(10, 10), Err(SetupError::OrderClash { order: 10 }));
    /// assert_eq!(Orders::new(9, 12), Err(SetupError::BadOrder { order: 9 }));
    /// # Ok::<(), SetupError>(())
    /// ```
    pub fn new(left: u8, right: u8) -> Result<Self, SetupError> {
        for order in [left, right] {
            if !(MIN_ORDER..=MAX_ORDER).contains(&order) {
                return Err(SetupError::BadOrder {
                    order: u16::from(order),
                });
            }
        }
        if left == right && left < FIRST_EXTERNAL_ORDER {
            return Err(SetupError::OrderClash { order: left });
        }
        let orders = Orders { left, right };
        let grants_end = orders.grants_end();
        for order in [left, right] {
            if let Placement::InPage { offset } = placement(order) {
                if grants_end > offset {
                    return Err(SetupError::GrantsOverlapRing { order });
                }
            }
        }
        Ok(orders)
    }

    /// Validates orders as read from a control page (16-bit fields).
    pub fn from_wire(left: u16, right: u16) -> Result<Self, SetupError> {
        let narrow = |o: u16| u8::try_from(o).map_err(|_| SetupError::BadOrder { order: o });
        Orders::new(narrow(left)?, narrow(right)?)
    }

    /// The orders libxenvchan's server picks for the requested minimum
    /// sizes: `read_min` sizes *left* (what the server reads), `write_min`
    /// sizes *right*.
    ///
    /// Requests up to 1 KiB / 2 KiB fit both rings in the control page.
    ///
    /// # Examples
    ///
    /// ```
    /// use ring_core::vchan::{Orders, SetupError};
    ///
    /// let small = Orders::for_sizes(0, 0)?;
    /// assert_eq!((small.left(), small.right()), (10, 11));
    /// // The server reads at least 64 KiB at a time and writes 4 KiB.
    /// let big = Orders::for_sizes(65536, 4096)?;
    /// assert_eq!((big.left(), big.right()), (16, 12));
    /// assert!(matches!(Orders::for_sizes(2 << 20, 0), Err(SetupError::TooBig { .. })));
    /// # Ok::<(), SetupError>(())
    /// ```
    pub fn for_sizes(read_min: usize, write_min: usize) -> Result<Self, SetupError> {
        const SMALL: usize = 1 << MIN_ORDER;
        const LARGE: usize = 1 << (MIN_ORDER + 1);
        if read_min > MAX_RING_SIZE || write_min > MAX_RING_SIZE {
            return Err(SetupError::TooBig {
                requested: read_min.max(write_min),
            });
        }
        let external = |min: usize| {
            let mut order = FIRST_EXTERNAL_ORDER;
            while (1usize << order) < min {
                order += 1;
            }
            order
        };
        let (mut left, mut right) = (external(read_min), external(write_min));
        if read_min <= SMALL && write_min <= LARGE {
            (left, right) = (MIN_ORDER, MIN_ORDER + 1);
        } else if read_min <= LARGE && write_min <= SMALL {
            (left, right) = (MIN_ORDER + 1, MIN_ORDER);
        } else if read_min <= LARGE {
            left = MIN_ORDER + 1;
        } else if write_min <= LARGE {
            right = MIN_ORDER + 1;
        }
        Orders::new(left, right)
    }

    /// Order of the left (client→server) ring.
    pub const fn left(self) -> u8 {
        self.left
    }

    /// Order of the right (server→client) ring.
    pub const fn right(self) -> u8 {
        self.right
    }

    /// End of the grant list in the control page.
    pub const fn grants_end(self) -> usize {
        GRANTS + 4 * (placement(self.left).grant_count() + placement(self.right).grant_count())
    }

    /// Number of grant refs (external pages) in all.
    pub const fn grant_count(self) -> usize {
        placement(self.left).grant_count() + placement(self.right).grant_count()
    }
}

/// Where a ring of `order` lives (order must already be validated).
pub const fn placement(order: u8) -> Placement {
    match order {
        10 => Placement::InPage { offset: 1024 },
        11 => Placement::InPage { offset: 2048 },
        _ => Placement::External {
            pages: (1usize << order) / PAGE_SIZE,
        },
    }
}

/// The layout this library uses when one memory holds everything (memfd,
/// heap pages, an ivshmem BAR): the control page first, then left's
/// external pages, then right's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlatLayout {
    /// The ring orders.
    pub orders: Orders,
    /// Byte offset of the left ring's data.
    pub left: usize,
    /// Byte offset of the right ring's data.
    pub right: usize,
    /// Total bytes the memory must have.
    pub size: usize,
}

impl FlatLayout {
    /// The flat layout for `orders`.
    ///
    /// # Examples
    ///
    /// ```
    /// use ring_core::vchan::{FlatLayout, Orders};
    ///
    /// let layout = FlatLayout::new(Orders::new(13, 11)?);
    /// // The 2 KiB ring stays in the control page; the 8 KiB one follows it.
    /// assert_eq!((layout.left, layout.right, layout.size), (4096, 2048, 4096 + 8192));
    /// assert_eq!(layout.page_numbers().collect::<Vec<_>>(), [1, 2]);
    /// # Ok::<(), ring_core::vchan::SetupError>(())
    /// ```
    pub const fn new(orders: Orders) -> Self {
        let mut next = PAGE_SIZE;
        let left = match placement(orders.left) {
            Placement::InPage { offset } => offset,
            Placement::External { pages } => {
                let at = next;
                next += pages * PAGE_SIZE;
                at
            }
        };
        let right = match placement(orders.right) {
            Placement::InPage { offset } => offset,
            Placement::External { pages } => {
                let at = next;
                next += pages * PAGE_SIZE;
                at
            }
        };
        FlatLayout {
            orders,
            left,
            right,
            size: next,
        }
    }

    /// The page numbers (within the flat memory) of the external pages, in
    /// grant-list order; this library writes them as the "grant refs".
    pub fn page_numbers(&self) -> impl Iterator<Item = u32> {
        // Page 0 is the control page; the external pages follow it.
        let count = u32::try_from(self.orders.grant_count()).unwrap_or(0);
        1..1 + count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_table_matches_libxenvchan_server() {
        let o = |r, w| Orders::for_sizes(r, w).map(|o| (o.left(), o.right()));
        assert_eq!(o(0, 0), Ok((10, 11)));
        assert_eq!(o(1024, 2048), Ok((10, 11)));
        assert_eq!(o(2048, 1024), Ok((11, 10)));
        assert_eq!(o(2048, 2048), Ok((11, 12)));
        assert_eq!(o(1025, 4096), Ok((11, 12)));
        assert_eq!(o(4096, 2048), Ok((12, 11)));
        assert_eq!(o(4097, 4097), Ok((13, 13)));
        assert_eq!(o(65536, 1 << 20), Ok((16, 20)));
        assert_eq!(o(1 << 20, 1 << 20), Ok((20, 20)));
        assert!(matches!(
            o((1 << 20) + 1, 0),
            Err(SetupError::TooBig { .. })
        ));
        assert!(matches!(o(0, usize::MAX), Err(SetupError::TooBig { .. })));
    }

    #[test]
    fn unsafe_order_pairs_are_rejected() {
        assert!(matches!(
            Orders::new(9, 12),
            Err(SetupError::BadOrder { order: 9 })
        ));
        assert!(matches!(
            Orders::new(12, 21),
            Err(SetupError::BadOrder { order: 21 })
        ));
        assert!(matches!(
            Orders::new(10, 10),
            Err(SetupError::OrderClash { order: 10 })
        ));
        assert!(matches!(
            Orders::new(11, 11),
            Err(SetupError::OrderClash { order: 11 })
        ));
        assert!(Orders::new(12, 12).is_ok());
        // (10, 20): 256 grant refs end at 24 + 1024 > 1024, into the 1 KiB ring.
        assert!(matches!(
            Orders::new(10, 20),
            Err(SetupError::GrantsOverlapRing { order: 10 })
        ));
        assert!(matches!(
            Orders::new(20, 10),
            Err(SetupError::GrantsOverlapRing { order: 10 })
        ));
        assert!(Orders::new(19, 10).is_ok());
        // (10, 19): 128 refs end at 536, clear of byte 1024.
        assert!(Orders::new(10, 19).is_ok());
        assert!(Orders::new(11, 20).is_ok());
        assert!(Orders::new(20, 20).is_ok());
        assert!(Orders::from_wire(0x10a, 11).is_err());
    }

    #[test]
    fn placements_and_flat_layout() {
        assert_eq!(placement(10), Placement::InPage { offset: 1024 });
        assert_eq!(placement(11), Placement::InPage { offset: 2048 });
        assert_eq!(placement(12), Placement::External { pages: 1 });
        assert_eq!(placement(20), Placement::External { pages: 256 });
        let f = FlatLayout::new(Orders::new(10, 11).unwrap());
        assert_eq!((f.left, f.right, f.size), (1024, 2048, 4096));
        let f = FlatLayout::new(Orders::new(13, 11).unwrap());
        assert_eq!((f.left, f.right, f.size), (4096, 2048, 4096 + 8192));
        let f = FlatLayout::new(Orders::new(12, 14).unwrap());
        assert_eq!((f.left, f.right, f.size), (4096, 8192, 8192 + 16384));
        assert_eq!(
            f.page_numbers().collect::<heapless::Vec<u32, 8>>(),
            [1, 2, 3, 4, 5]
        );
        assert_eq!(f.orders.grants_end(), 24 + 5 * 4);
    }
}
