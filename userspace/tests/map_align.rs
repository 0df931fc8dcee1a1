//! `Device::map` hands out addresses congruent to the offset modulo the huge-page size the
//! mapping spans, and leaves no reservation behind. A memfd stands in for the device.
//!
//! One test in its own binary: the check of /proc/self/maps compares the whole list of
//! `PROT_NONE` areas before and after, which other test threads (their stacks' guard pages)
//! would change.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::FileExt;

use ivshmem::Device;
use ivshmem::{errno, os};

const K4: usize = 4 << 10;
const M2: usize = 2 << 20;
const G1: usize = 1 << 30;

fn memfd(len: u64) -> File {
    let f = File::from(os::memfd_create(c"map-align").unwrap());
    f.set_len(len).unwrap(); // sparse: only the pages written below take memory
    f
}

/// The `PROT_NONE` private areas of this process (a leftover reservation would be one, or
/// would have grown one it merged with).
fn prot_none() -> Vec<String> {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some("---p"))
        .map(str::to_string)
        .collect()
}

/// The line of /proc/self/maps that starts at `addr`.
fn area_at(addr: usize) -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines()
        .find(|l| usize::from_str_radix(l.split('-').next().unwrap(), 16) == Ok(addr))
        .map(str::to_string)
}

#[test]
fn aligned_addresses_exact_bytes_no_leftover_reservation() {
    let file = memfd((G1 + 4 * M2) as u64);
    let dev = Device::open(&format!("/proc/self/fd/{}", file.as_raw_fd())).unwrap();
    let before = prot_none();
    for len in [K4, M2, M2 + K4, G1] {
        for offset in [0, K4, M2] {
            let what = format!("len {len:#x} offset {offset:#x}");
            let m = dev.map(offset as u64, len).unwrap();
            let addr = m.as_ptr() as usize;
            let align = if len >= G1 {
                G1
            } else if len >= M2 {
                M2
            } else {
                K4
            };
            assert_eq!(addr % align, offset % align, "{what}: address {addr:#x}");
            // The file's mapping is where the pointer says, of the length asked, shared.
            let area = area_at(addr).unwrap_or_else(|| panic!("{what}: nothing at {addr:#x}"));
            let end = format!("{:x}", addr + len.next_multiple_of(K4));
            let mut f = area.split_whitespace();
            assert_eq!(
                f.next().and_then(|r| r.split('-').nth(1)),
                Some(&*end),
                "{area}"
            );
            assert_eq!(f.next(), Some("rw-s"), "{area}");
            assert!(area.contains("memfd:map-align"), "{area}");
            assert_eq!(
                prot_none(),
                before,
                "{what}: a reservation is left while mapped"
            );

            // Both ends, and across each 2 MiB and 1 GiB boundary of the file inside the
            // mapping: bytes written through the mapping are the file's, and back.
            let mut at = vec![0, len - 8];
            at.extend(
                [M2, G1]
                    .iter()
                    .flat_map(|&b| (b..G1 + 4 * M2).step_by(b).take(2))
                    .filter(|&b| b >= offset + 4 && b + 4 <= offset + len)
                    .map(|b| b - offset - 4),
            );
            for (i, &p) in at.iter().enumerate() {
                let data = [i as u8 + 1, 0xa5, 0x5a, len as u8, offset as u8, 7, 8, 9];
                m.write(p, &data).unwrap();
                let mut back = [0u8; 8];
                file.read_at(&mut back, (offset + p) as u64).unwrap();
                assert_eq!(back, data, "{what}: at {p:#x} through the file");
                let data = data.map(|b| !b);
                file.write_at(&data, (offset + p) as u64).unwrap();
                m.read(p, &mut back).unwrap();
                assert_eq!(back, data, "{what}: at {p:#x} through the mapping");
            }
            drop(m);
            assert!(area_at(addr).is_none(), "{what}: still mapped after drop");
            assert_eq!(
                prot_none(),
                before,
                "{what}: a reservation is left after drop"
            );
        }
    }

    // A failing mmap (a read-only descriptor cannot be mapped shared and writable) leaves
    // nothing behind either, and says why.
    let ro = File::open(format!("/proc/self/fd/{}", file.as_raw_fd())).unwrap();
    for len in [K4, M2, G1] {
        let e = os::map_shared(ro.as_fd(), len, 0).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(errno::EACCES), "len {len:#x}: {e}");
        assert_eq!(
            prot_none(),
            before,
            "len {len:#x}: a reservation is left after EACCES"
        );
    }
    let e = dev.map(0, usize::MAX - K4).unwrap_err();
    assert_eq!(e.errno(), Some(errno::ENOMEM), "{e}");
    assert!(e.to_string().starts_with("/proc/self/fd/"), "{e}");
    assert!(e.to_string().contains(": mmap: "), "{e}");
    assert_eq!(prot_none(), before, "a reservation is left after ENOMEM");
}
