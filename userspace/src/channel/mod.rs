//! Channels: byte streams and messages between two ends (processes, VMs) over one shared
//! region, such as an ivshmem BAR.
//!
//! A region holds a versioned header, a page map and blocks (layout version 3,
//! `conn_layout.rs`), so independent applications share one device: named channels
//! ([`Channel::open`], either end first, `named.rs`) and connections to services
//! ([`Listener::bind`], [`Listener::accept`], [`Channel::connect`]) side by side. Every channel
//! is two blocks, one per end, each holding the ring its end writes (one single-producer,
//! single-consumer ring per direction); each end writes only its own block (the single-writer
//! layout, `control.rs`). Blocks are freed when both ends are gone or dead (`reclaim.rs`), so a
//! region serves channels and connections without end. The peer is not trusted: every index,
//! length and offset read from the region is read once, checked, and then used from a local; a
//! violation is a [`ChannelError::Corrupt`], never a panic, an access outside the region or a
//! hang.
//!
//! On a pair ([`Region::map_pair`], [`open_region_pair`]: the isolated topology) an end's own
//! memory and its peer's are two devices, the peer's mapped read-only here and by the
//! hypervisor in the peer's guest: each end allocates and writes in its own arena only and
//! finds the other side's blocks in the peer's (`conn_layout::Arenas`), so the protocol is the
//! same and a peer cannot touch this end's memory at all.
//!
//! ```
//! use ivshmem::channel::{Channel, Kind, Options, Region};
//!
//! let region = Region::anonymous(1 << 20)?; // or Region::map_file / Region::from_mapping
//! let opts = Options::new().kind(Kind::Messages).capacity(4096);
//! let mut a = Channel::open(&region, "rpc", &opts)?;
//! let mut b = Channel::open(&region, "rpc", &opts)?;
//! a.send(b"ping")?;
//! let mut msg = Vec::new();
//! assert_eq!(b.recv(&mut msg)?, Some(4));
//! assert_eq!(msg, b"ping");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Layout
//!
//! All words are little-endian (both ends run on the same architecture). The header, the page
//! map and the blocks are described in `conn_layout.rs`, the state words in `control.rs`. Each
//! end's block holds, in its first page, its state word, its side line (epoch: the session it
//! belongs to, heartbeat, doorbell address, whether it notifies, liveness timeout), the
//! producer line of its ring (index, wake-at; its closed flag lies on the state word's quiet
//! line), and its consumer line for its peer's ring (index, wake-at); its ring's payload
//! follows from the second page. Each line is a 64-byte cache line with one writer.
//!
//! Indices are free-running byte counts (`u64`, wrapping); `prod - cons` is the fill level,
//! at most the capacity. A message is an 8-byte header (length, and its complement as a check;
//! never 0) and the payload padded to 8 bytes, committed in band: the producer writes the
//! payload, clears the header word after the record (its free space: a record needs 8 bytes
//! more than it takes), then stores the header, then its index; the consumer polls the header
//! word at its position (0: nothing yet) and never reads the producer index, one cache miss
//! per message instead of two in a row. So a message is never split, and the word at the
//! consumer's position is never an older lap's bytes. A header never straddles the wrap
//! because records are 8-aligned in a ring of 2^n ≥ 64 bytes.
//!
//! # Sessions and liveness
//!
//! A session is one pairing of two ends: a connector and its acceptor, or a named channel's
//! opener and its joiner; its number is the first end's block generation. An end that leaves
//! cleanly sets the closed flag of its ring and its state to "closed": the peer reads what is
//! left, then end-of-file. Each end advances its heartbeat (one thread per process beats them
//! all) ten times per liveness timeout (default 10 s, at least 100 ms), also while it blocks,
//! publishes the timeout, and looks at its peer at least as often. The bound applied to a peer
//! is the longer of both ends' timeouts; an attached peer whose heartbeat stands still for
//! seven tenths of it, over at least three looks (a gap between two looks counts for at most
//! two beat periods, so an observer's own pause is not the peer's silence), is declared
//! "dead" (a verdict in the observer's own state word), so the survivor gets `BrokenPipe`
//! (after reading what was published) within the bound. A name whose pair has a live end is
//! held: a third end waits, and once both ends are gone the next two pair afresh.
//!
//! An end belongs to its session and touches no other: it checks its own and its peer's state
//! words after every load of its peer's index and before every store into the rings, and an
//! acquire fence makes the check after a copy out of the ring a validation of that copy (as in
//! a seqlock), so an end that was stopped past the bound and resumed after its blocks were
//! taken back gets `BrokenPipe` ("detached") and delivers none of a newer session's bytes. The
//! one window no check closes is an end stopped between its check and the store right after
//! it for longer than the bound, whose block was freed and reused meanwhile: resumed, it can
//! store one index or one copy of payload into its former block, never into its peer's.
//!
//! # Ordering
//!
//! Every word both ends race on is an atomic in shared memory (`AtomicU32::from_ptr`,
//! `AtomicU64::from_ptr`); payload is copied with raw pointers only in ring space the protocol
//! gives to the copying side. The pairs:
//!
//! | store (release) | load (acquire) | what it orders |
//! |---|---|---|
//! | header magic `"IVC2"` after the header | magic, before reading the header | header fields |
//! | page map head entry, after zeroing the block | head entry in a scan | a zeroed block |
//! | state word `ATTACHED`, after the block's header | state word, before reading the header | block header |
//! | state word `CLOSED`/`DEAD`, then a SeqCst fence, then the peer's state word | the same on the other side | who frees the blocks (`control::leave`) |
//! | producer index, after the payload | producer index, before reading payload | payload (byte streams) |
//! | message header, after the payload and the next header word's clearing | message header at the consumer's position, before reading payload | payload, and the next header word's 0 (messages) |
//! | consumer index, after reading payload | consumer index, before overwriting | ring space reuse |
//! | closed flag, after the last producer index or header | closed flag, then the index or header again | end of stream |
//! | side address, then a SeqCst fence, before any wake-at announcement | wake-at word, then an acquire fence, then the address | whom to ring |
//!
//! Waking ([`Waker`]) uses event suppression with event indices, as virtio's `EVENT_IDX`: a
//! side about to sleep stores the index it waits for in its wake-at word, then re-checks the
//! ring; a side that moved its index from `old` to `new` (or set the closed flag) then loads the
//! peer's wake-at word and rings only if it lies in `(old, new]`. So one announcement costs at
//! most one ring, a stale one costs nothing, and no word has two writers. Each side stores one
//! word and then loads another, which x86 may reorder through its store buffer: both sides
//! put a SeqCst fence between the store and the load (`protocol::crossed`, `announce`), so at
//! least one of them sees the other's store and no wake-up is lost. The loom model in
//! `tests/channel_loom.rs` checks exactly this code, and finds the lost wake-up when the fences
//! are weakened to AcqRel.
//!
//! On ivshmem-doorbell ([`Channel::open_path`] on a device with interrupts) the waker is a
//! [`DoorbellWaker`]: a side sleeps in `IVSHMEM_WAIT` and its peer rings the address it
//! published. A side sleeps only while its peer notifies (or has not attached yet, then in
//! short slices): against a spinning peer it backs off instead.
//!
//! # A hostile peer
//!
//! It can make this end read garbage payload and fail with [`ChannelError::Corrupt`]; it
//! cannot make it read or write outside the region, panic, or wait forever unless it keeps a
//! live heartbeat and simply sends nothing (as any idle peer may). This end never reads back
//! its own indices, so scribbling over them has no effect here. [`ReadSlice`] and
//! [`WriteSlice`] hand out raw views with copying methods; Rust slices over ring memory only
//! through `unsafe` methods whose contract is a trusted peer.

mod arena;
mod chan;
mod conn_layout;
mod connect;
pub mod control;
mod doorbell;
mod error;
mod gate;
mod heartbeat;
mod layout;
mod listener;
mod liveness;
mod named;
mod open_path;
mod options;
pub mod pagemap;
pub mod protocol;
mod reclaim;
mod region;
mod split;
mod wait;

pub use chan::{Channel, MessageSlot, MessageView, ReadSlice, WriteSlice};
pub use conn_layout::{is_connections, usage, Usage, VERSION as CONNECTIONS_VERSION};
pub use doorbell::DoorbellWaker;
pub use error::ChannelError;
pub use layout::{ChannelInfo, Kind, MAX_NAME, MIN_REGION, VERSION};
pub use listener::Listener;
pub use named::list;
pub use open_path::{open_region, open_region_pair, open_topology};
pub use options::{Options, Wait};
pub use region::Region;
pub use split::{ReadHalf, WriteHalf};
pub use wait::{FdWaker, SpinWaker, Waker};
