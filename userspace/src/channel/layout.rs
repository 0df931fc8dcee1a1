//! The header and the table of named channels; see the module documentation of
//! [`crate::channel`] for the offsets. Everything here is cold code: it runs when a channel
//! is opened.

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::time::{Duration, Instant};

use super::region::Mem;
use super::ChannelError;

/// `"IVCH"` as a little-endian word: a ready layout.
pub(crate) const MAGIC: u32 = u32::from_le_bytes(*b"IVCH");
/// `"ivch"`: the header is being initialised by one side.
pub(crate) const MAGIC_INIT: u32 = u32::from_le_bytes(*b"ivch");
/// The layout version this library writes and reads.
pub const VERSION: u32 = 1;

pub(crate) const H_MAGIC: u64 = 0x00;
pub(crate) const H_VERSION: u64 = 0x04;
pub(crate) const H_DATA_START: u64 = 0x08;
pub(crate) const H_SLOTS: u64 = 0x0c;
pub(crate) const H_SLOT_SIZE: u64 = 0x10;
pub(crate) const H_REGION_SIZE: u64 = 0x18;
pub(crate) const H_ALLOC: u64 = 0x20;
pub(crate) const TABLE: u64 = 0x40;

/// Number of channel slots.
pub const SLOTS: u32 = 64;
pub(crate) const SLOT_SIZE: u64 = 128;
/// Where ring space starts: after the table, page-aligned.
pub(crate) const DATA_START: u64 = (TABLE + SLOTS as u64 * SLOT_SIZE).next_multiple_of(4096);
/// The smallest region that holds a layout and one channel with the smallest rings.
pub const MIN_REGION: u64 = DATA_START + CHAN_CTL + 2 * MIN_CAPACITY;

pub(crate) const S_STATE: u64 = 0x00;
pub(crate) const S_NAME_LEN: u64 = 0x08;
pub(crate) const S_KIND: u64 = 0x0c;
pub(crate) const S_NAME: u64 = 0x10;
pub(crate) const S_CAP: [u64; 2] = [0x30, 0x34];
pub(crate) const S_OFFSET: u64 = 0x38;
pub(crate) const S_SIZE: u64 = 0x40;

pub(crate) const SLOT_FREE: u32 = 0;
pub(crate) const SLOT_CLAIMED: u32 = 1;
pub(crate) const SLOT_READY: u32 = 2;
/// Claimed, but the region had no room for the rings: the name stays unusable.
pub(crate) const SLOT_FAILED: u32 = 3;

/// Longest channel name in bytes.
pub const MAX_NAME: usize = 32;
/// Smallest ring capacity.
pub const MIN_CAPACITY: u64 = 64;
/// Largest ring capacity.
pub const MAX_CAPACITY: u64 = 1 << 30;

/// Size of a channel's control block (before its two rings' payload).
pub(crate) const CHAN_CTL: u64 = 0x200;

/// What the message kind of a channel is, stored in its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A byte stream (`Read`/`Write`, zero-copy slices).
    Stream,
    /// Framed messages (`send`/`recv`).
    Messages,
}

impl Kind {
    fn code(self) -> u32 {
        match self {
            Kind::Stream => 1,
            Kind::Messages => 2,
        }
    }

    fn from_code(c: u32) -> Option<Self> {
        match c {
            1 => Some(Kind::Stream),
            2 => Some(Kind::Messages),
            _ => None,
        }
    }
}

/// A validated header: the usable end of the region.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Header {
    pub size: u64,
}

/// A validated channel slot.
#[derive(Debug, Clone)]
pub(crate) struct SlotInfo {
    pub kind: Kind,
    pub caps: [u64; 2],
    pub offset: u64,
}

/// FNV-1a, 32 bits: which probe sequence a name takes, and a quick filter while probing.
fn name_hash(name: &[u8]) -> u32 {
    name.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Waits a little between two looks at a word another side is about to change.
fn pause(round: &mut u32) {
    *round += 1;
    if *round < 64 {
        std::hint::spin_loop();
    } else if *round < 128 {
        std::thread::yield_now();
    } else {
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// Initialises the header of a zeroed region, or checks the one there. Two sides starting at
/// once on a zeroed region: one wins the compare-and-swap of the magic from 0 to
/// [`MAGIC_INIT`], writes the header and the empty table, and publishes [`MAGIC`] with release;
/// the other waits (acquire) at most `timeout` for that.
pub(crate) fn attach(mem: &Mem, timeout: Duration) -> Result<Header, ChannelError> {
    let have = mem.len() as u64;
    if have < MIN_REGION {
        return Err(ChannelError::TooSmall {
            need: MIN_REGION,
            have,
        });
    }
    let magic = mem.u32_at(H_MAGIC)?;
    let start = Instant::now();
    let mut round = 0;
    loop {
        keeps_changing(start, timeout, "the layout header's magic word")?;
        match magic.load(Acquire) {
            MAGIC => return check_header(mem),
            0 => {
                if magic
                    .compare_exchange(0, MAGIC_INIT, Acquire, Relaxed)
                    .is_ok()
                {
                    init_header(mem)?;
                    magic.store(MAGIC, Release);
                    return check_header(mem);
                }
            }
            MAGIC_INIT => {
                if start.elapsed() > timeout {
                    return Err(ChannelError::Busy(format!(
                        "the layout header has been initialising for {timeout:?}: the side \
                         that started it probably died; zero the region to reset it"
                    )));
                }
                pause(&mut round);
            }
            m if m == u32::from_le_bytes(*b"IVC2") => {
                return Err(ChannelError::BadLayout(
                    "the region holds connections (layout version 2, Listener/connect): named \
                     channels need a region of their own (layout version 1); zero it to reuse it"
                        .into(),
                ))
            }
            m => {
                return Err(ChannelError::BadLayout(format!(
                    "magic {m:#010x} at offset 0 is not a channel layout (want {MAGIC:#010x}, \
                     or 0 for a fresh region)"
                )))
            }
        }
    }
}

fn init_header(mem: &Mem) -> Result<(), ChannelError> {
    mem.zero(H_VERSION, DATA_START - H_VERSION)?;
    mem.u32_at(H_VERSION)?.store(VERSION, Relaxed);
    mem.u32_at(H_DATA_START)?.store(DATA_START as u32, Relaxed);
    mem.u32_at(H_SLOTS)?.store(SLOTS, Relaxed);
    mem.u32_at(H_SLOT_SIZE)?.store(SLOT_SIZE as u32, Relaxed);
    mem.u64_at(H_REGION_SIZE)?.store(mem.len() as u64, Relaxed);
    mem.u64_at(H_ALLOC)?.store(DATA_START, Relaxed);
    Ok(())
}

/// Reads each header word once and checks it.
fn check_header(mem: &Mem) -> Result<Header, ChannelError> {
    let version = mem.u32_at(H_VERSION)?.load(Relaxed);
    if version != VERSION {
        return Err(ChannelError::Version {
            found: version,
            supported: VERSION,
        });
    }
    let fixed = [
        ("data start", H_DATA_START, DATA_START),
        ("slot count", H_SLOTS, u64::from(SLOTS)),
        ("slot size", H_SLOT_SIZE, SLOT_SIZE),
    ];
    for (what, off, want) in fixed {
        let v = u64::from(mem.u32_at(off)?.load(Relaxed));
        if v != want {
            return Err(ChannelError::BadLayout(format!(
                "header {what} is {v}, version {VERSION} has {want}"
            )));
        }
    }
    let size = mem.u64_at(H_REGION_SIZE)?.load(Relaxed);
    let have = mem.len() as u64;
    if size > have || size < MIN_REGION {
        return Err(ChannelError::BadLayout(format!(
            "header says the region has {size} bytes; it has {have} here and needs at least \
             {MIN_REGION}"
        )));
    }
    Ok(Header { size })
}

/// Finds the channel `name`, creating it (if `create`) with `kind` and two rings of `cap`
/// bytes when it does not exist.
///
/// Slots are probed in an order fixed by the name's hash, and a slot is never freed, so two
/// sides creating the same name at once probe the same sequence and meet at the same first free
/// slot, where one compare-and-swap wins. The state word holds the name's hash next to the
/// state, so a prober skips slots of other names without waiting for their creators.
pub(crate) fn find_or_create(
    mem: &Mem,
    hdr: Header,
    name: &str,
    create: Option<(Kind, u64)>,
    timeout: Duration,
) -> Result<SlotInfo, ChannelError> {
    let name = name.as_bytes();
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(ChannelError::Invalid(format!(
            "channel name must have 1 to {MAX_NAME} bytes, not {}",
            name.len()
        )));
    }
    if let Some((_, cap)) = create {
        if !cap.is_power_of_two() || !(MIN_CAPACITY..=MAX_CAPACITY).contains(&cap) {
            return Err(ChannelError::Invalid(format!(
                "ring capacity {cap} is not a power of two in {MIN_CAPACITY}..={MAX_CAPACITY}"
            )));
        }
    }
    let hash = name_hash(name);
    let start = Instant::now();
    for k in 0..SLOTS {
        let index = (hash.wrapping_add(k)) % SLOTS;
        let base = TABLE + u64::from(index) * SLOT_SIZE;
        let state = mem.u64_at(base + S_STATE)?;
        let mut round = 0;
        loop {
            keeps_changing(start, timeout, "a channel slot's state word")?;
            let w = state.load(Acquire);
            let (st, h) = (w as u32, (w >> 32) as u32);
            match st {
                SLOT_FREE if h == 0 => {
                    let Some((kind, cap)) = create else {
                        return Err(ChannelError::Invalid(format!(
                            "no channel named '{}'",
                            String::from_utf8_lossy(name)
                        )));
                    };
                    let claimed = u64::from(SLOT_CLAIMED) | u64::from(hash) << 32;
                    if state.compare_exchange(0, claimed, Acquire, Relaxed).is_ok() {
                        return create_in(mem, hdr, index, name, hash, (kind, cap), start, timeout);
                    }
                    // Lost the race: look at what the winner put there.
                }
                SLOT_CLAIMED | SLOT_READY | SLOT_FAILED if h != hash => break,
                SLOT_CLAIMED => {
                    if start.elapsed() > timeout {
                        return Err(ChannelError::Busy(format!(
                            "channel slot {index} has been in creation for {timeout:?}: its \
                             creator probably died; zero the region to reset it"
                        )));
                    }
                    pause(&mut round);
                }
                SLOT_READY | SLOT_FAILED => {
                    if slot_name(mem, base)? != name {
                        break;
                    }
                    if st == SLOT_FAILED {
                        return Err(ChannelError::BadLayout(format!(
                            "channel '{}' got no ring space when it was created; zero the \
                             region to reset the table",
                            String::from_utf8_lossy(name)
                        )));
                    }
                    return read_slot(mem, hdr, index);
                }
                _ => {
                    return Err(ChannelError::Corrupt(format!(
                        "channel slot {index} has state word {w:#018x}"
                    )))
                }
            }
        }
    }
    Err(ChannelError::TableFull)
}

/// Bounds a compare-and-swap retry loop: a word that another side keeps changing (a
/// hostile or broken peer) fails the open after `timeout` instead of spinning for ever.
fn keeps_changing(start: Instant, timeout: Duration, what: &str) -> Result<(), ChannelError> {
    if start.elapsed() > timeout {
        return Err(ChannelError::Busy(format!(
            "{what} kept changing for {timeout:?}: another side is busy with it or broken"
        )));
    }
    Ok(())
}

fn slot_name(mem: &Mem, base: u64) -> Result<Vec<u8>, ChannelError> {
    let len = mem.u32_at(base + S_NAME_LEN)?.load(Relaxed) as usize;
    if len == 0 || len > MAX_NAME {
        return Err(ChannelError::Corrupt(format!(
            "channel slot at {base:#x} has a name of {len} bytes"
        )));
    }
    let mut buf = vec![0u8; len];
    mem.copy_out(base + S_NAME, &mut buf)?;
    Ok(buf)
}

/// Fills a slot we claimed: ring space first (a compare-and-swap on the bump pointer), then the
/// fields, then READY with release.
#[allow(clippy::too_many_arguments)]
fn create_in(
    mem: &Mem,
    hdr: Header,
    index: u32,
    name: &[u8],
    hash: u32,
    (kind, cap): (Kind, u64),
    start: Instant,
    timeout: Duration,
) -> Result<SlotInfo, ChannelError> {
    let base = TABLE + u64::from(index) * SLOT_SIZE;
    let state = mem.u64_at(base + S_STATE)?;
    mem.u32_at(base + S_NAME_LEN)?
        .store(name.len() as u32, Relaxed);
    mem.copy_in(base + S_NAME, name)?;
    let need = CHAN_CTL + 2 * cap;
    let alloc = mem.u64_at(H_ALLOC)?;
    let offset = loop {
        if let Err(e) = keeps_changing(start, timeout, "the allocation pointer") {
            state.store(u64::from(SLOT_FAILED) | u64::from(hash) << 32, Release);
            return Err(e);
        }
        let next = alloc.load(Relaxed);
        if next < DATA_START || next > hdr.size || !next.is_multiple_of(64) {
            return Err(ChannelError::Corrupt(format!(
                "allocation pointer {next:#x} outside [{DATA_START:#x}, {:#x}]",
                hdr.size
            )));
        }
        if hdr.size - next < need {
            state.store(u64::from(SLOT_FAILED) | u64::from(hash) << 32, Release);
            return Err(ChannelError::NoSpace {
                name: format!("channel '{}'", String::from_utf8_lossy(name)),
                need,
                free: hdr.size - next,
            });
        }
        if alloc
            .compare_exchange(next, next + need, Relaxed, Relaxed)
            .is_ok()
        {
            break next;
        }
    };
    mem.zero(offset, CHAN_CTL)?;
    mem.u32_at(base + S_KIND)?.store(kind.code(), Relaxed);
    for c in S_CAP {
        mem.u32_at(base + c)?.store(cap as u32, Relaxed);
    }
    mem.u64_at(base + S_OFFSET)?.store(offset, Relaxed);
    mem.u64_at(base + S_SIZE)?.store(need, Relaxed);
    state.store(u64::from(SLOT_READY) | u64::from(hash) << 32, Release);
    read_slot(mem, hdr, index)
}

/// Reads each field of a READY slot once and checks it: the rings must lie inside the region
/// after the table.
fn read_slot(mem: &Mem, hdr: Header, index: u32) -> Result<SlotInfo, ChannelError> {
    let base = TABLE + u64::from(index) * SLOT_SIZE;
    let bad = |what: String| ChannelError::Corrupt(format!("channel slot {index}: {what}"));
    let code = mem.u32_at(base + S_KIND)?.load(Relaxed);
    let kind = Kind::from_code(code).ok_or_else(|| bad(format!("kind {code}")))?;
    let mut caps = [0u64; 2];
    for (c, off) in caps.iter_mut().zip(S_CAP) {
        *c = u64::from(mem.u32_at(base + off)?.load(Relaxed));
        if !c.is_power_of_two() || !(MIN_CAPACITY..=MAX_CAPACITY).contains(c) {
            return Err(bad(format!("ring capacity {c}")));
        }
    }
    let offset = mem.u64_at(base + S_OFFSET)?.load(Relaxed);
    let size = mem.u64_at(base + S_SIZE)?.load(Relaxed);
    let need = CHAN_CTL + caps[0] + caps[1];
    let end = offset.checked_add(need);
    if size != need
        || offset < DATA_START
        || !offset.is_multiple_of(64)
        || end.is_none_or(|e| e > hdr.size)
    {
        return Err(bad(format!(
            "rings of {size} bytes at {offset:#x} do not fit [{DATA_START:#x}, {:#x}) \
             (capacities {caps:?})",
            hdr.size
        )));
    }
    Ok(SlotInfo { kind, caps, offset })
}

/// A channel in the table, as [`list`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelInfo {
    /// Its name.
    pub name: String,
    /// Stream or messages.
    pub kind: Kind,
    /// Ring capacities: side A to B, and B to A.
    pub capacities: [u64; 2],
    /// Offset of its control block in the region.
    pub offset: u64,
}

/// The channels in the table of `region` (for tools and diagnostics). Fails on a region that
/// does not hold a valid layout; does not initialise a zeroed one.
pub fn list(region: &super::Region) -> Result<Vec<ChannelInfo>, ChannelError> {
    let mem = &*region.mem;
    if (mem.len() as u64) < MIN_REGION {
        return Err(ChannelError::TooSmall {
            need: MIN_REGION,
            have: mem.len() as u64,
        });
    }
    match mem.u32_at(H_MAGIC)?.load(Acquire) {
        MAGIC => {}
        0 | MAGIC_INIT => return Ok(Vec::new()),
        m => {
            return Err(ChannelError::BadLayout(format!(
                "magic {m:#010x} at offset 0 is not a channel layout"
            )))
        }
    }
    let hdr = check_header(mem)?;
    let mut out = Vec::new();
    for index in 0..SLOTS {
        let base = TABLE + u64::from(index) * SLOT_SIZE;
        if mem.u64_at(base + S_STATE)?.load(Acquire) as u32 != SLOT_READY {
            continue;
        }
        let name = String::from_utf8_lossy(&slot_name(mem, base)?).into_owned();
        let s = read_slot(mem, hdr, index)?;
        out.push(ChannelInfo {
            name,
            kind: s.kind,
            capacities: s.caps,
            offset: s.offset,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::Region;

    const T: Duration = Duration::from_secs(1);

    #[test]
    fn fresh_region_gets_a_header_and_keeps_it() {
        let r = Region::anonymous(1 << 20).unwrap();
        let h = attach(&r.mem, T).unwrap();
        assert_eq!(h.size, 1 << 20);
        assert_eq!(r.mem.u32_at(H_MAGIC).unwrap().load(Relaxed), MAGIC);
        let a = find_or_create(&r.mem, h, "x", Some((Kind::Stream, 4096)), T).unwrap();
        // A second attach leaves the table alone.
        let h = attach(&r.mem, T).unwrap();
        let b = find_or_create(&r.mem, h, "x", None, T).unwrap();
        assert_eq!((a.offset, a.caps), (b.offset, b.caps));
        assert_eq!(a.offset, DATA_START);
        let c = find_or_create(&r.mem, h, "y", Some((Kind::Messages, 64)), T).unwrap();
        assert_eq!(c.offset, DATA_START + CHAN_CTL + 2 * 4096);
        let names: Vec<_> = list(&r).unwrap().into_iter().map(|c| c.name).collect();
        assert_eq!(names.len(), 2);
        assert!(names.contains(&"x".to_string()) && names.contains(&"y".to_string()));
    }

    #[test]
    fn garbage_headers_are_clear_errors() {
        let r = Region::anonymous(1 << 16).unwrap();
        r.mem.copy_in(0, b"GARBAGE!").unwrap();
        let e = attach(&r.mem, T).unwrap_err();
        assert!(e.to_string().contains("is not a channel layout"), "{e}");
        attach(&Region::anonymous(1 << 16).unwrap().mem, T).unwrap();
        r.mem.u32_at(H_MAGIC).unwrap().store(MAGIC, Relaxed);
        r.mem.u32_at(H_VERSION).unwrap().store(9, Relaxed);
        assert!(matches!(
            attach(&r.mem, T),
            Err(ChannelError::Version { found: 9, .. })
        ));
        init_header(&r.mem).unwrap();
        r.mem.u64_at(H_REGION_SIZE).unwrap().store(1 << 40, Relaxed);
        let e = attach(&r.mem, T).unwrap_err();
        assert!(e.to_string().contains("header says the region has"), "{e}");
        let small = Region::anonymous(4096).unwrap();
        assert!(matches!(
            attach(&small.mem, T),
            Err(ChannelError::TooSmall { .. })
        ));
    }

    #[test]
    fn stuck_initialisation_times_out() {
        let r = Region::anonymous(1 << 16).unwrap();
        r.mem.u32_at(H_MAGIC).unwrap().store(MAGIC_INIT, Relaxed);
        let t = Instant::now();
        let e = attach(&r.mem, Duration::from_millis(50)).unwrap_err();
        assert!(matches!(e, ChannelError::Busy(_)), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn corrupt_slots_are_clear_errors() {
        let r = Region::anonymous(1 << 16).unwrap();
        let h = attach(&r.mem, T).unwrap();
        let s = find_or_create(&r.mem, h, "x", Some((Kind::Stream, 64)), T).unwrap();
        let base = TABLE + u64::from(name_hash(b"x") % SLOTS) * SLOT_SIZE;
        assert!(s.offset >= DATA_START);
        r.mem
            .u64_at(base + S_OFFSET)
            .unwrap()
            .store(1 << 20, Relaxed);
        let e = find_or_create(&r.mem, h, "x", None, T).unwrap_err();
        assert!(e.to_string().contains("do not fit"), "{e}");
        r.mem
            .u32_at(base + S_NAME_LEN)
            .unwrap()
            .store(1000, Relaxed);
        let e = find_or_create(&r.mem, h, "x", None, T).unwrap_err();
        assert!(e.to_string().contains("name of 1000 bytes"), "{e}");
        r.mem.u64_at(base + S_STATE).unwrap().store(77, Relaxed);
        let e = find_or_create(&r.mem, h, "x", None, T).unwrap_err();
        assert!(e.to_string().contains("state word"), "{e}");
        r.mem.u64_at(H_ALLOC).unwrap().store(3, Relaxed);
        let e = find_or_create(&r.mem, h, "z", Some((Kind::Stream, 64)), T).unwrap_err();
        assert!(e.to_string().contains("allocation pointer"), "{e}");
    }

    #[test]
    fn bad_arguments_and_full_regions() {
        let r = Region::anonymous(MIN_REGION as usize).unwrap();
        let h = attach(&r.mem, T).unwrap();
        let e = find_or_create(&r.mem, h, "", Some((Kind::Stream, 64)), T).unwrap_err();
        assert!(matches!(e, ChannelError::Invalid(_)));
        let long = "x".repeat(MAX_NAME + 1);
        assert!(find_or_create(&r.mem, h, &long, None, T).is_err());
        let e = find_or_create(&r.mem, h, "a", Some((Kind::Stream, 100)), T).unwrap_err();
        assert!(e.to_string().contains("power of two"), "{e}");
        let e = find_or_create(&r.mem, h, "nope", None, T).unwrap_err();
        assert!(e.to_string().contains("no channel named 'nope'"), "{e}");
        find_or_create(&r.mem, h, "a", Some((Kind::Stream, 64)), T).unwrap();
        let e = find_or_create(&r.mem, h, "b", Some((Kind::Stream, 64)), T).unwrap_err();
        assert!(matches!(e, ChannelError::NoSpace { .. }), "{e}");
        // The name stays taken, with a clear error.
        let e = find_or_create(&r.mem, h, "b", Some((Kind::Stream, 64)), T).unwrap_err();
        assert!(e.to_string().contains("got no ring space"), "{e}");
    }

    #[test]
    fn table_fills_up() {
        let r = Region::anonymous(DATA_START as usize + 64 * (CHAN_CTL as usize + 128)).unwrap();
        let h = attach(&r.mem, T).unwrap();
        for i in 0..SLOTS {
            find_or_create(&r.mem, h, &format!("c{i}"), Some((Kind::Stream, 64)), T).unwrap();
        }
        assert!(matches!(
            find_or_create(&r.mem, h, "one more", Some((Kind::Stream, 64)), T),
            Err(ChannelError::TableFull)
        ));
        // Every name is still found.
        for i in 0..SLOTS {
            find_or_create(&r.mem, h, &format!("c{i}"), None, T).unwrap();
        }
    }
}
