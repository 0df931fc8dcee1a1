//! An arena in a shared region (the channel layout since version 2,
//! `userspace/docs/channels-v2.md`): a page map and the 4 KiB pages it describes. Reserving,
//! publishing, freeing and scanning are [`super::pagemap`]'s; this file puts them on a region's
//! memory, zeroes a block before it is published, and takes back reservations that stand still
//! (their allocator died half-way).
//!
//! Connections (`conn_layout.rs`) allocate their listener and connection blocks here.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use super::pagemap::{self, Block, Entry, Words, RESERVED};
use super::protocol::Std;
use super::region::{Mem, Region};
use super::ChannelError;

/// The page size of an arena.
pub const PAGE: u64 = 4096;

/// One arena: `pages` map words at `map`, then the pages at `data`.
///
/// What this process saw of the arena over time (reservations that stand still) is kept with
/// the region's memory ([`Mem::sightings`]), so every `Arena` on one mapping shares it.
///
/// # Invariants
///
/// `map + 8 * pages` and `data + PAGE * pages` are inside `mem`; `map` is 8-byte aligned and
/// `data` a multiple of `PAGE` from the region's start. A read-only arena (the peer's part of
/// a pair, mapped without write permission) is never written: allocating fails, freeing frees
/// nothing.
#[derive(Clone)]
pub struct Arena {
    mem: Arc<Mem>,
    map: usize,
    data: usize,
    pages: u32,
    writable: bool,
}

impl Words<Std> for Arena {
    fn pages(&self) -> u32 {
        self.pages
    }

    fn word(&self, i: u32) -> &AtomicU64 {
        assert!(i < self.pages, "page {i} of {}", self.pages);
        // SAFETY: Inside the map by the type invariant (`i < pages`), 8-byte aligned; every
        // access to map words is atomic; `self.mem` keeps the region mapped.
        unsafe { AtomicU64::from_ptr(self.mem.base().add(self.map + 8 * i as usize).cast()) }
    }
}

impl Arena {
    /// The arena over bytes `off..off + len` of `region` (`off` a multiple of [`PAGE`]): as
    /// many pages as fit after a map of one word each. A zeroed range is an empty arena.
    pub fn new(region: &Region, off: u64, len: u64) -> Result<Self, ChannelError> {
        let mem = region.mem.clone();
        if !off.is_multiple_of(PAGE) || off.checked_add(len).is_none_or(|e| e > mem.len() as u64) {
            return Err(ChannelError::Invalid(format!(
                "arena {off:#x}+{len:#x} is not page-aligned inside a region of {:#x}",
                mem.len()
            )));
        }
        // n pages need n words of map, rounded up to whole pages, then n pages.
        let mut pages = len / (PAGE + 8);
        while pages > 0 && (8 * pages).next_multiple_of(PAGE) + pages * PAGE > len {
            pages -= 1;
        }
        let pages = u32::try_from(pages)
            .map_err(|_| ChannelError::Invalid(format!("arena of {len} bytes: too many pages")))?;
        if pages == 0 {
            return Err(ChannelError::TooSmall {
                need: 2 * PAGE,
                have: len,
            });
        }
        let map_len = (8 * u64::from(pages)).next_multiple_of(PAGE);
        Ok(Self {
            mem,
            map: off as usize,
            data: (off + map_len) as usize,
            pages,
            writable: true,
        })
    }

    /// The same arena, never written by this end (its memory is the peer's, mapped read-only).
    pub(super) fn read_only(mut self) -> Self {
        self.writable = false;
        self
    }

    /// Offset in the region of the arena's page map: its identity on a mapping.
    pub(super) fn start(&self) -> usize {
        self.map
    }

    /// Pages in the arena.
    pub fn pages(&self) -> u32 {
        self.pages
    }

    /// Allocates a zeroed block of `pages` pages of `kind` and publishes it. Reservations that
    /// stood unchanged for `stale` are taken back when there is no room otherwise.
    pub fn alloc(&self, kind: u8, pages: u32, stale: Duration) -> Result<Block, ChannelError> {
        if !self.writable {
            return Err(ChannelError::Invalid(
                "the peer's memory is read-only: blocks are allocated in this end's own".into(),
            ));
        }
        for attempt in 0..3 {
            if let Some(r) = pagemap::reserve::<Std, _>(self, kind, pages, token()) {
                for i in r.head..r.head + r.pages {
                    // Before each page: a reservation revoked meanwhile is no longer ours.
                    if !pagemap::holds::<Std, _>(self, &r, i) {
                        break;
                    }
                    self.mem
                        .zero(self.data as u64 + u64::from(i) * PAGE, PAGE)?;
                }
                if let Some(b) = pagemap::publish::<Std, _>(self, r) {
                    return Ok(b);
                }
                continue;
            }
            if attempt < 2 && self.revoke_stale(stale) == 0 {
                break;
            }
        }
        Err(ChannelError::NoSpace {
            name: format!("a block of {pages} pages"),
            need: u64::from(pages) * PAGE,
            free: self.free_pages() * PAGE,
        })
    }

    /// Frees block `b`; false if it was freed already (by its owner or a reclaimer).
    pub fn free(&self, b: &Block) -> bool {
        self.writable && pagemap::free::<Std, _>(self, b)
    }

    /// Whether `b` is still published as it was.
    pub fn current(&self, b: &Block) -> bool {
        pagemap::current::<Std, _>(self, b)
    }

    /// The published blocks, in page order.
    pub fn blocks(&self) -> Vec<Block> {
        pagemap::blocks::<Std, _>(self)
    }

    /// The memory the arena lies in.
    pub(super) fn mem(&self) -> &Arc<Mem> {
        &self.mem
    }

    /// Offset in the region of block `b`'s first byte.
    pub fn offset(&self, b: &Block) -> u64 {
        self.data as u64 + u64::from(b.head) * PAGE
    }

    fn free_pages(&self) -> u64 {
        let mut n = 0;
        pagemap::scan::<Std, _>(self, |_, e| n += u64::from(e.state() == pagemap::FREE));
        n
    }

    /// Takes back the reserved pages seen unchanged for at least `stale`; how many.
    fn revoke_stale(&self, stale: Duration) -> u32 {
        let now = Instant::now();
        let mut sightings = self
            .mem
            .sightings
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Only the writable arena of a mapping reserves (`alloc`): one map of sightings.
        let seen = &mut sightings.reserved;
        let mut now_reserved = HashMap::new();
        pagemap::scan::<Std, _>(self, |i, e| {
            if e.state() == RESERVED {
                now_reserved.insert(i, e.0);
            }
        });
        seen.retain(|i, (v, _)| now_reserved.get(i) == Some(v));
        let mut revoked = 0;
        for (i, v) in now_reserved {
            let (_, since) = *seen.entry(i).or_insert((v, now));
            if now.duration_since(since) >= stale && pagemap::revoke::<Std, _>(self, i, Entry(v)) {
                seen.remove(&i);
                revoked += 1;
            }
        }
        // Bodies left by an allocator that died half-way through freeing or publishing.
        revoked + pagemap::free_orphans::<Std, _>(self)
    }
}

/// A token for one reservation: unique among the allocations in flight (process id, a
/// counter, the clock), so that no allocator can publish another's pages.
fn token() -> u32 {
    use std::sync::atomic::AtomicU32;
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut z = (u64::from(n) << 32 | u64::from(std::process::id())) ^ t.rotate_left(17);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_zeroing_and_reuse() {
        let r = Region::anonymous(4 << 20).unwrap();
        let a = Arena::new(&r, 0, 4 << 20).unwrap();
        assert_eq!(a.pages(), 1022, "two pages of map for 1022 pages");
        let b = a.alloc(1, 3, Duration::from_secs(1)).unwrap();
        assert_eq!(a.offset(&b), 2 * PAGE);
        // SAFETY: Inside the block just allocated, which nobody else uses.
        unsafe { r.as_ptr().add(a.offset(&b) as usize + 5).write(0xee) };
        assert!(a.free(&b));
        let c = a.alloc(1, 1, Duration::from_secs(1)).unwrap();
        assert_eq!(c.head, b.head);
        // SAFETY: As above.
        let byte = unsafe { r.as_ptr().add(a.offset(&c) as usize + 5).read() };
        assert_eq!(byte, 0, "zeroed");
        assert!(Arena::new(&r, 100, 4096).is_err());
        assert!(
            Arena::new(&r, 0, 4096).is_err(),
            "no room for a page after its map"
        );
    }

    /// The child side of `two_processes_and_a_killed_one`: `ARENA_CHILD=path,cycles` (0: for
    /// ever) allocates, stamps, checks and frees blocks of 1 to 8 pages.
    #[test]
    fn arena_child() {
        let Ok(arg) = std::env::var("ARENA_CHILD") else {
            return;
        };
        let (path, cycles) = arg.split_once(',').unwrap();
        let cycles: u64 = cycles.parse().unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let r = Region::map_file(&file).unwrap();
        let a = Arena::new(&r, 0, r.len() as u64).unwrap();
        let me = u64::from(std::process::id());
        let mut x = me;
        let mut i = 0u64;
        while cycles == 0 || i < cycles {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let pages = 1 + (x >> 40) as u32 % 8;
            let Ok(b) = a.alloc(1, pages, Duration::from_secs(5)) else {
                std::thread::yield_now();
                continue;
            };
            let stamp = me << 32 | i;
            let word = |p: u32| {
                let off = a.offset(&b) as usize + (p - b.head) as usize * PAGE as usize;
                // SAFETY: The first word of a page of a block this process holds, 8-aligned.
                unsafe { AtomicU64::from_ptr(r.as_ptr().add(off).cast()) }
            };
            for p in b.head..b.head + b.pages {
                assert_eq!(word(p).load(Relaxed), 0, "page {p} not zeroed");
                word(p).store(stamp, Relaxed);
            }
            for p in b.head..b.head + b.pages {
                assert_eq!(word(p).load(Relaxed), stamp, "page {p} has another owner");
            }
            assert!(a.free(&b));
            i += 1;
        }
    }

    /// Two processes allocate and free 5,000 blocks each from one 4 MiB arena while a third
    /// does the same until it is killed; every block was its owner's alone (stamped and
    /// checked, zeroed when handed out), and what the killed one held is found by a scan and
    /// can be freed, after which the whole arena is free again.
    #[test]
    fn two_processes_and_a_killed_one() {
        let path = std::env::temp_dir().join(format!("arena-test-{}", std::process::id()));
        std::fs::File::create(&path)
            .unwrap()
            .set_len(4 << 20)
            .unwrap();
        let spawn = |cycles: u64| {
            std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "channel::arena::tests::arena_child",
                    "--exact",
                    "--test-threads=1",
                ])
                .env("ARENA_CHILD", format!("{},{cycles}", path.display()))
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        };
        let mut doomed = spawn(0);
        let workers = [spawn(5_000), spawn(5_000)];
        std::thread::sleep(Duration::from_millis(300));
        doomed.kill().unwrap();
        doomed.wait().unwrap();
        for mut w in workers {
            assert!(w.wait().unwrap().success());
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let r = Region::map_file(&file).unwrap();
        let a = Arena::new(&r, 0, r.len() as u64).unwrap();
        let left = a.blocks();
        assert!(
            left.len() <= 1,
            "the killed process held one block at most: {left:?}"
        );
        for b in &left {
            assert!(a.free(b));
        }
        // A reservation it left stands still: after the bound it is taken back; pages it
        // left half-freed or half-published are freed with it.
        let all = a.pages();
        let first = a.alloc(1, all, Duration::from_millis(100));
        if first.is_err() {
            std::thread::sleep(Duration::from_millis(150));
        }
        let b = first
            .or_else(|_| a.alloc(1, all, Duration::from_millis(100)))
            .unwrap_or_else(|e| {
                let mut states = std::collections::BTreeMap::new();
                pagemap::scan::<Std, _>(&a, |_, e| *states.entry(e.state()).or_insert(0) += 1);
                panic!("{e}: page states {states:?}")
            });
        assert_eq!((b.head, b.pages), (0, all));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_dead_allocators_reservation_is_taken_back() {
        let r = Region::anonymous(64 * PAGE as usize).unwrap();
        let a = Arena::new(&r, 0, 64 * PAGE).unwrap();
        let n = a.pages();
        // An allocator that reserved everything and died.
        let dead = pagemap::reserve::<Std, _>(&a, 1, n, 42).unwrap();
        let e = a.alloc(1, 1, Duration::from_millis(50)).unwrap_err();
        assert!(matches!(e, ChannelError::NoSpace { .. }), "{e}");
        std::thread::sleep(Duration::from_millis(60));
        let b = a.alloc(1, 1, Duration::from_millis(50)).unwrap();
        assert_eq!(b.head, 0);
        assert!(pagemap::publish::<Std, _>(&a, dead).is_none(), "revoked");
    }
}
