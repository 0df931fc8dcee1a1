//! A worker's record of its device mappings ([`Seg`]): what each shows of the region, how
//! [`forget`] cuts ranges out of the record after munmap, mremap and slot clearing, and whether
//! a mapping is placed so that the driver can use huge entries ([`huge_capable`]).

/// A device mapping of a worker: `len` bytes at `addr` show the region from offset `off`
/// (unless a page was repaired by the fault handler: it then reads zeros).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Seg {
    pub(super) addr: usize,
    pub(super) len: usize,
    pub(super) off: u64,
}

/// Whether a mapping of `len` bytes at `addr` from offset `off` can hold an entry of `size`:
/// address and offset congruent modulo `size`, and a whole aligned `size` inside.
pub(super) fn huge_capable(addr: usize, off: u64, len: usize, size: usize) -> bool {
    let first = addr.next_multiple_of(size);
    (addr as u64).wrapping_sub(off).is_multiple_of(size as u64) && first - addr + size <= len
}

/// Removes `[addr, addr + len)` from `segs`, splitting the mappings it cuts.
pub(super) fn forget(segs: &mut Vec<Seg>, addr: usize, len: usize) {
    let end = addr.saturating_add(len);
    let mut out = Vec::with_capacity(segs.len() + 1);
    for s in segs.drain(..) {
        let s_end = s.addr + s.len;
        if s_end <= addr || s.addr >= end {
            out.push(s);
            continue;
        }
        if s.addr < addr {
            out.push(Seg {
                len: addr - s.addr,
                ..s
            });
        }
        if s_end > end {
            out.push(Seg {
                addr: end,
                len: s_end - end,
                off: s.off + (end - s.addr) as u64,
            });
        }
    }
    *segs = out;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{HUGE, HUGE_2M, PAGE};

    #[test]
    fn huge_capable_needs_congruence_and_a_whole_entry() {
        let (m2, g) = (HUGE_2M, HUGE);
        assert!(huge_capable(64 * g, 0, g, g));
        assert!(huge_capable(64 * g + 4096, 4096, g, m2));
        assert!(
            !huge_capable(64 * g + 4096, 4096, g, g),
            "no whole 1 GiB inside"
        );
        assert!(!huge_capable(64 * g + 8192, 4096, g, m2), "not congruent");
        assert!(huge_capable(
            64 * g + m2 - 4096,
            (3 * m2 - 4096) as u64,
            m2 + 4096,
            m2
        ));
        assert!(!huge_capable(
            64 * g + m2 - 4096,
            (3 * m2 - 4096) as u64,
            m2,
            m2
        ));
    }

    #[test]
    fn forget_splits_mappings_and_keeps_offsets() {
        let p = PAGE;
        let mut segs = vec![
            Seg {
                addr: 10 * p,
                len: 8 * p,
                off: 100 * p as u64,
            },
            Seg {
                addr: 40 * p,
                len: 2 * p,
                off: 0,
            },
        ];
        // A hole in the middle of the first, nothing of the second.
        forget(&mut segs, 12 * p, 3 * p);
        assert_eq!(
            segs,
            vec![
                Seg {
                    addr: 10 * p,
                    len: 2 * p,
                    off: 100 * p as u64
                },
                Seg {
                    addr: 15 * p,
                    len: 3 * p,
                    off: 105 * p as u64
                },
                Seg {
                    addr: 40 * p,
                    len: 2 * p,
                    off: 0
                },
            ]
        );
        // A range covering the tail of one and all of another.
        forget(&mut segs, 16 * p, 30 * p);
        assert_eq!(
            segs,
            vec![
                Seg {
                    addr: 10 * p,
                    len: 2 * p,
                    off: 100 * p as u64
                },
                Seg {
                    addr: 15 * p,
                    len: p,
                    off: 105 * p as u64
                },
            ]
        );
    }
}
