//! `map`: the cost of mapping the shared memory (mmap, first touch of every page, munmap, page
//! table growth) through the library, beside one bare mmap call of the same path and one of
//! anonymous memory.

use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use ivshmem::args::parse_size;
use ivshmem::os::{self, MapFlags, ProtFlags};
use ivshmem::{Device, ToolError};

/// Sizes mapped by default: the 64 MiB, 1 GiB and 4 GiB.
const MAP_SIZES: [u64; 3] = [64 << 20, 1 << 30, 4 << 30];
/// The step of the first touch: one word per 4 KiB page.
const PAGE: usize = 4096;

pub(crate) fn map_sizes(v: String) -> Result<Vec<u64>, ToolError> {
    v.split(',')
        .map(|s| match parse_size(s) {
            Ok(n) if (PAGE as u64..=1 << 46).contains(&n) => Ok(n),
            Ok(_) => Err(ToolError::Usage(format!(
                "size '{s}' out of range (4K to 64T)"
            ))),
            Err(e) => Err(ToolError::Usage(format!("bad size '{s}' in --sizes: {e}"))),
        })
        .collect()
}

/// The size of the memory behind `dev`: the driver's answer, or, for a sysfs `resource2` or a
/// regular file (no ivshmem ioctls: ENOTTY), the file's size.
fn mem_size(dev: &Device) -> Result<u64, ToolError> {
    match dev.size() {
        Err(e) if e.errno() == Some(ivshmem::errno::ENOTTY) => std::fs::metadata(dev.path())
            .map(|m| m.len())
            .map_err(|e| ToolError::sys(dev.path(), e)),
        r => Ok(r?),
    }
}

/// The sizes to map: each of `want` capped at `total`, without repeats, in order.
fn capped(want: &[u64], total: u64) -> Vec<u64> {
    let mut out = Vec::new();
    for s in want.iter().map(|&s| s.min(total)) {
        if s > 0 && !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

/// This process's page tables (`VmPTE` of /proc/self/status), in kB.
fn vm_pte_kb() -> Result<u64, ToolError> {
    ivshmem::os::vm_pte_kb().map_err(|e| ToolError::sys("/proc/self/status", e))
}

/// The largest power of two (up to 1 GiB) that divides `addr`.
fn addr_align(addr: usize) -> usize {
    1 << addr.trailing_zeros().min(30)
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// The time of one mmap call of `len` bytes at the kernel's address, `prot` and `flags` of
/// `fd` (none: anonymous), and of its munmap, with nothing touched in between. Anonymous
/// `PROT_NONE` memory is the floor of what an mmap costs here, whatever the size (under TCG,
/// and on a busy host, far more than on hardware).
fn call_cost(
    len: usize,
    prot: ProtFlags,
    flags: MapFlags,
    fd: Option<BorrowedFd<'_>>,
    what: &str,
) -> Result<(Duration, Duration), ToolError> {
    let t = Instant::now();
    // SAFETY: A fresh mapping chosen by the kernel (no address, no MAP_FIXED): nothing
    // existing is touched, and nothing reads or writes it before the munmap below.
    let p = unsafe { os::mmap(std::ptr::null_mut(), len, prot, flags, fd, 0) };
    let mapped = t.elapsed();
    let p = p.map_err(|e| ToolError::sys(what, e))?;
    let t = Instant::now();
    // SAFETY: `p`/`len` is the mapping just made, used by nothing.
    unsafe { os::munmap(p, len) }.map_err(|e| ToolError::sys(what, e))?;
    Ok((mapped, t.elapsed()))
}

/// Per size and round, a line of mmap, first read of every page, munmap, VmPTE growth; and
/// one of the references ([`call_cost`]).
pub(crate) fn map_cost(path: &str, sizes: Option<&[u64]>, rounds: u32) -> Result<(), ToolError> {
    let dev = Device::open(path)?;
    let total = mem_size(&dev)?;
    for size in capped(sizes.unwrap_or(&MAP_SIZES), total) {
        let len = usize::try_from(size)
            .map_err(|_| ToolError::Failed(format!("{size} bytes do not fit in memory")))?;
        for round in 1..=rounds {
            let pte = vm_pte_kb()?;
            let t = Instant::now();
            let m = dev.map(0, len)?;
            let mapped = t.elapsed();
            let t = Instant::now();
            let mut sum = 0u32;
            for page in (0..len).step_by(PAGE) {
                sum = sum.wrapping_add(m.load_u32(page.min(len - 4) & !3)?);
            }
            let touched = t.elapsed();
            std::hint::black_box(sum);
            let grown = vm_pte_kb()?.saturating_sub(pte);
            let align = addr_align(m.as_ptr() as usize);
            let t = Instant::now();
            drop(m);
            let unmapped = t.elapsed();
            println!(
                "map path={path} size={size} round={round} addr_align={align} mmap_us={:.1} touch_us={:.1} munmap_us={:.1} vmpte_kb={grown}",
                us(mapped),
                us(touched),
                us(unmapped)
            );
            let rw = ProtFlags::READ | ProtFlags::WRITE;
            let (cm, cu) = call_cost(len, rw, MapFlags::SHARED, Some(dev.as_fd()), path)?;
            let anon = MapFlags::PRIVATE | MapFlags::NORESERVE;
            let (am, au) = call_cost(len, ProtFlags::NONE, anon, None, "anonymous mmap")?;
            println!(
                "mapref size={size} round={round} call_mmap_us={:.1} call_munmap_us={:.1} anon_mmap_us={:.1} anon_munmap_us={:.1}",
                us(cm),
                us(cu),
                us(am),
                us(au)
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

    #[test]
    fn capped_sizes_and_alignment() {
        // Capped at the memory's size, each once.
        assert_eq!(capped(&MAP_SIZES, 64 << 20), [64 << 20]);
        assert_eq!(capped(&MAP_SIZES, 2 << 30), [64 << 20, 1 << 30, 2 << 30]);
        assert_eq!(capped(&MAP_SIZES, 16 << 30), MAP_SIZES);
        assert_eq!(addr_align(0x7f00_4020_0000), 2 << 20);
        assert_eq!(addr_align(0x7f00_0000_0000), 1 << 30);
        assert_eq!(addr_align(0x7f00_0000_3000), 4096);
    }

    /// `map` on a regular file: its size caps the list; VmPTE is there to read.
    #[test]
    fn map_cost_on_a_file() {
        let path = std::env::temp_dir().join(format!("ivshmem-bench-map-{}", std::process::id()));
        File::create(&path).unwrap().set_len(3 << 20).unwrap();
        assert!(vm_pte_kb().unwrap() > 0);
        map_cost(path.to_str().unwrap(), Some(&[4096, 2 << 20, 1 << 30]), 2).unwrap();
        let e = map_cost("/nonexistent/ivshmem", None, 1).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ivshmem: open"), "{e}");
        std::fs::remove_file(&path).unwrap();
    }
}
