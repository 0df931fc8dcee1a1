//! Channels: byte streams and messages between two ends (processes, VMs) over one shared
//! region, such as an ivshmem BAR.
//!
//! A region holds a versioned header and a table of named channels, so independent
//! applications share one device. Either end may come first: [`Channel::open`] creates the
//! layout and the channel when they are missing. Each channel has one single-producer,
//! single-consumer ring per direction. The peer is not trusted: every index, length and offset
//! read from the region is read once, checked, and then used from a local; a violation is a
//! [`ChannelError::Corrupt`], never a panic, an access outside the region or a hang.
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
//! Connections ([`Listener::bind`], [`Listener::accept`], [`Channel::connect`]) live in a
//! region of their own, layout version 2 (`conn_layout.rs`): each has two blocks, one per end,
//! and each end writes only its own (its state word, side line, ring and consumer line: the
//! single-writer layout, `control.rs`); their memory is freed when both ends are gone or dead
//! (`reclaim.rs`), so a region serves connections without end. Each connection is a
//! [`Channel`] as below, with the lines of version 1 spread over its two blocks and the control
//! word replaced by the two state words.
//!
//! # Layout (version 1)
//!
//! All words are little-endian (both ends run on the same architecture); offsets are from the
//! start of the region.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0x0000 | 4 | magic: 0 fresh, `"ivch"` being initialised, `"IVCH"` ready |
//! | 0x0004 | 4 | version (1) |
//! | 0x0008 | 4 | start of ring space (0x3000) |
//! | 0x000c | 4 | number of slots (64) |
//! | 0x0010 | 4 | slot size (128) |
//! | 0x0018 | 8 | region size the initialiser saw |
//! | 0x0020 | 8 | allocation pointer: next free byte of ring space (compare-and-swap) |
//! | 0x0040 | 64 × 128 | channel table |
//! | 0x3000 | | channel blocks, allocated upwards, 64-byte aligned |
//!
//! A slot of the table (128 bytes):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0x00 | 8 | state (low 32 bits: 0 free, 1 claimed, 2 ready, 3 failed: no space) and the FNV-1a hash of the name (high 32 bits) |
//! | 0x08 | 4 | name length (1 to 32) |
//! | 0x0c | 4 | kind: 1 byte stream, 2 messages |
//! | 0x10 | 32 | name |
//! | 0x30 | 4 | capacity of ring 0 (side A to B), a power of two |
//! | 0x34 | 4 | capacity of ring 1 (side B to A) |
//! | 0x38 | 8 | offset of the channel block |
//! | 0x40 | 8 | size of the channel block (0x200 + both capacities) |
//!
//! A channel block; each line is one 64-byte cache line with one writer (the control word is
//! changed by compare-and-swap from both ends):
//!
//! | offset | field | written by |
//! |---|---|---|
//! | 0x000 | control: side A state (bits 0-7), side B state (8-15), session (32-63); states 0 free, 1 resetting, 2 attached, 3 closed, 4 dead | both, compare-and-swap |
//! | 0x040 | side A: epoch (the session it attached to, stored last: the other words are this holder's once it names the session) u64, heartbeat u64 at 0x048, address u32 at 0x050 (0, or 1 + the doorbell peer id to ring), notifies u32 at 0x054 (1: it rings its peer, so the peer may sleep), liveness timeout u32 at 0x058 (milliseconds; 0 from older ends) | side A |
//! | 0x080 | side B: the same | side B |
//! | 0x0c0 | ring 0 producer line: index u64; wake-at u64 at 0x0c8 (the consumer index the sleeping producer waits for); closed u32 at 0x0d0 | side A |
//! | 0x100 | ring 0 consumer line: index u64; wake-at u64 at 0x108 (the producer index the sleeping consumer waits for) | side B |
//! | 0x140 | ring 1 producer line (as at 0x0c0) | side B |
//! | 0x180 | ring 1 consumer line (as at 0x100) | side A |
//! | 0x200 | ring 0 payload | side A |
//! | 0x200 + capacity 0 | ring 1 payload | side B |
//!
//! Indices are free-running byte counts (`u64`, wrapping); `prod - cons` is the fill level,
//! at most the capacity. A message is an 8-byte header (length, and its complement as a check)
//! and the payload padded to 8 bytes, published with one index store, so it is never split; a
//! header never straddles the wrap because records are 8-aligned in a ring of 2^n ≥ 64 bytes.
//!
//! # Sessions and liveness
//!
//! Sides A and B belong to a session, not to a process: the first end to attach when nobody
//! holds the channel starts a new session (session + 1, itself side A, rings emptied while it
//! holds the state "resetting"); the next end joins as side B. An end that leaves cleanly
//! sets the closed flag of its ring and its state to "closed": the peer reads what is left,
//! then end-of-file. Each end advances its heartbeat (one thread per process beats them all) ten times per liveness
//! timeout (default 10 s, at least 100 ms), also while it blocks, publishes the timeout, and
//! looks at its peer at least as often. The bound applied to a peer is the longer of both
//! ends' timeouts; an attached peer whose heartbeat stands still for seven tenths of it, over
//! at least three looks (a gap between two looks counts for at most two beat periods, so an
//! observer's own pause is not the peer's silence), is declared "dead", so the survivor gets
//! `BrokenPipe` (after reading what was published) within the bound. A session with a closed
//! or dead side is over: once the survivor leaves (drops its end), the next end starts a
//! fresh session with empty rings and the survivor, if it reopens, joins it.
//!
//! An end belongs to its session and touches no other: it checks the control word after
//! every load of its peer's index and before every store into the rings, and an acquire
//! fence makes the check after a copy out of the ring a validation of that copy (as in a
//! seqlock), so an end that was stopped past the bound and resumed in a newer session gets
//! `BrokenPipe` ("detached") and delivers none of that session's bytes. Its heartbeat stops
//! once it is detached. The one window no check closes is an end stopped between its check and
//! the store right after it for longer than the bound: resumed in a newer session, it can
//! store one index there (which that session reports as corruption) or one copy of payload
//! (which it cannot see); per-connection rings (layout version 2) are to remove it.
//!
//! # Ordering
//!
//! Every word both ends race on is an atomic in shared memory (`AtomicU32::from_ptr`,
//! `AtomicU64::from_ptr`); payload is copied with raw pointers only in ring space the protocol
//! gives to the copying side. The pairs:
//!
//! | store (release) | load (acquire) | what it orders |
//! |---|---|---|
//! | header magic `"IVCH"` after the header | magic, before reading the header | header fields |
//! | slot state "ready" after its fields | slot state, before reading the fields | slot fields |
//! | control word: resetting to attached, after emptying the rings | control word, joining | empty rings |
//! | producer index, after the payload | producer index, before reading payload | payload |
//! | consumer index, after reading payload | consumer index, before overwriting | ring space reuse |
//! | closed flag, after the last producer index | closed flag, then the index again | end of stream |
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
pub mod pagemap;
pub mod protocol;
mod reclaim;
mod region;
mod split;
mod wait;

pub use chan::{Channel, MessageSlot, MessageView, Options, ReadSlice, Wait, WriteSlice};
pub use conn_layout::{is_connections, usage, Usage, VERSION as CONNECTIONS_VERSION};
pub use doorbell::DoorbellWaker;
pub use error::ChannelError;
pub use layout::{ChannelInfo, Kind, MAX_NAME, MIN_REGION, VERSION};
pub use listener::Listener;
pub use named::list;
pub use open_path::open_region;
pub use region::Region;
pub use split::{ReadHalf, WriteHalf};
pub use wait::{FdWaker, SpinWaker, Waker};
