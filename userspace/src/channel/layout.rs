//! What every channel shares, whoever made it: its kind, the limits of names and rings, and
//! what [`super::list`] reports. The layout itself (layout version 3: a header, a page map and
//! the blocks of ends and listeners) is `conn_layout.rs`'s.

/// The layout version this library writes and reads.
pub const VERSION: u32 = super::conn_layout::VERSION;

/// The smallest region that holds a layout and one channel with the smallest rings: the
/// header page, one page of map, and two blocks of two pages.
pub const MIN_REGION: u64 = 6 * 4096;

/// Longest channel or service name in bytes.
pub const MAX_NAME: usize = 32;
/// Smallest ring capacity.
pub const MIN_CAPACITY: u64 = 64;
/// Largest ring capacity.
pub const MAX_CAPACITY: u64 = 1 << 30;

/// What a channel carries, fixed by the end that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A byte stream (`Read`/`Write`, zero-copy slices).
    Stream,
    /// Framed messages (`send`/`recv`).
    Messages,
}

/// A named channel, as [`super::list`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelInfo {
    /// Its name.
    pub name: String,
    /// Stream or messages.
    pub kind: Kind,
    /// Ring capacities: the opener's to the joiner, and the joiner's to the opener (the same).
    pub capacities: [u64; 2],
    /// Offset of the opener's block in the region (its state word, side line and ring lines
    /// in the first 0x100 bytes, its ring's payload from 0x1000: `conn_layout.rs`).
    pub offset: u64,
    /// Offset of the joiner's block, once an end joined (the same lines, for the other way).
    pub joiner: Option<u64>,
}
