//! `ivshmem-check errors DEVICE`: the errno contract. Every bad input (ioctl commands and
//! pointers, mmap flags, offsets, lengths and protections, mprotect, mremap) must fail with its
//! own errno, and the good inputs next to them must work: a driver change that lets a bad input
//! through or turns one errno into another shows up as `FAIL NAME: why`. The exit status is the
//! number of failed checks.

use std::ffi::c_void;
use std::os::fd::AsRawFd;

use ivshmem::errno::{EACCES, EFAULT, EINVAL, ENOTTY, ENXIO, EPERM};
use ivshmem::{pattern, uapi, CacheType, Device, ToolError};

use crate::sys;

use crate::common::{errno, expect_errno, open_or_report, Checker, PAGE};

fn raw_ioctl(fd: i32, cmd: u32, arg: usize) -> bool {
    // SAFETY: The kernel validates `arg`; a bad pointer must give EFAULT, not corrupt us.
    unsafe { sys::ioctl(fd, cmd.into(), arg) < 0 }
}

/// mmap that returns whether it failed, unmapping on success.
fn try_mmap(fd: i32, len: usize, flags: i32, offset: i64, prot: i32) -> bool {
    // SAFETY: A fresh mapping chosen by the kernel; unmapped right away.
    let p = unsafe { sys::mmap(std::ptr::null_mut(), len, prot, flags, fd, offset) };
    if p == sys::MAP_FAILED {
        return true;
    }
    // SAFETY: `p`/`len` is the mapping just made.
    unsafe { sys::munmap(p, len) };
    false
}

const RW: i32 = sys::PROT_READ | sys::PROT_WRITE;

pub(crate) fn run(path: &str) -> i32 {
    let mut c = Checker { failed: 0 };
    let Some(dev) = open_or_report(path) else {
        return 1;
    };
    let fd = dev.as_raw_fd();
    let size = dev.size().unwrap_or(0);
    let len = size as usize;
    let info = dev.info();
    c.check(
        "get-size",
        if size >= PAGE as u64 && size.is_power_of_two() {
            Ok(())
        } else {
            Err(ToolError::Check(format!("size {size}")))
        },
    );
    c.check(
        "get-info",
        match info {
            Ok(i)
                if i.size == size
                    && i.cache == uapi::IVSHMEM_CACHE_WB
                    && ivshmem::GrantedCache::from_info(&i).is_some()
                    && i.reserved0 == 0
                    && i.reserved == [0; 2]
                    && i.pci_name.starts_with(b"0000:") =>
            {
                Ok(())
            }
            Ok(i) => Err(ToolError::Check(format!("{i:?}"))),
            Err(e) => Err(e.into()),
        },
    );
    c.check(
        "get-size-efault",
        expect_errno(
            "GET_SIZE(1)",
            raw_ioctl(fd, uapi::IVSHMEM_GET_SIZE, 1),
            EFAULT,
        ),
    );
    c.check(
        "get-info-efault",
        expect_errno(
            "GET_INFO(NULL)",
            raw_ioctl(fd, uapi::IVSHMEM_GET_INFO, 0),
            EFAULT,
        ),
    );
    c.check(
        "set-cache-efault",
        expect_errno(
            "SET_CACHE(NULL)",
            raw_ioctl(fd, uapi::IVSHMEM_SET_CACHE, 0),
            EFAULT,
        ),
    );
    let bad_cache: u32 = 7;
    c.check(
        "set-cache-einval",
        expect_errno(
            "SET_CACHE(7)",
            raw_ioctl(
                fd,
                uapi::IVSHMEM_SET_CACHE,
                &bad_cache as *const u32 as usize,
            ),
            EINVAL,
        ),
    );
    let unknown = uapi::IVSHMEM_GET_SIZE + 0x7f;
    let mut scratch = [0u64; 16];
    c.check(
        "unknown-ioctl-enotty",
        expect_errno(
            "ioctl 0xb97f",
            raw_ioctl(fd, unknown, scratch.as_mut_ptr() as usize),
            ENOTTY,
        ),
    );
    c.check(
        "zero-ioctl-enotty",
        expect_errno("ioctl 0", raw_ioctl(fd, 0, 0), ENOTTY),
    );
    c.check(
        "map-private-einval",
        expect_errno(
            "MAP_PRIVATE",
            try_mmap(fd, PAGE, sys::MAP_PRIVATE, 0, RW),
            EINVAL,
        ),
    );
    c.check(
        "map-offset-at-end-enxio",
        expect_errno(
            "offset=size",
            try_mmap(fd, PAGE, sys::MAP_SHARED, size as i64, RW),
            ENXIO,
        ),
    );
    c.check(
        "map-offset-beyond-enxio",
        expect_errno(
            "offset>size",
            try_mmap(fd, PAGE, sys::MAP_SHARED, 2 * size as i64, RW),
            ENXIO,
        ),
    );
    c.check(
        "map-too-long-einval",
        expect_errno(
            "len>size",
            try_mmap(fd, len + PAGE, sys::MAP_SHARED, 0, RW),
            EINVAL,
        ),
    );
    c.check(
        "map-straddling-end-einval",
        expect_errno(
            "offset+len>size",
            try_mmap(
                fd,
                2 * PAGE,
                sys::MAP_SHARED,
                (size as i64) - PAGE as i64,
                RW,
            ),
            EINVAL,
        ),
    );
    c.check(
        "map-unaligned-offset-einval",
        expect_errno(
            "offset 100",
            try_mmap(fd, PAGE, sys::MAP_SHARED, 100, RW),
            EINVAL,
        ),
    );
    c.check(
        "map-full",
        if try_mmap(fd, len, sys::MAP_SHARED, 0, RW) {
            Err(ToolError::Check(format!("errno {}", errno())))
        } else {
            Ok(())
        },
    );
    c.check(
        "map-last-page",
        if try_mmap(fd, PAGE, sys::MAP_SHARED, size as i64 - PAGE as i64, RW) {
            Err(ToolError::Check(format!("errno {}", errno())))
        } else {
            Ok(())
        },
    );
    c.check(
        "map-exec-eperm",
        expect_errno(
            "PROT_EXEC",
            try_mmap(
                fd,
                PAGE,
                sys::MAP_SHARED,
                0,
                sys::PROT_READ | sys::PROT_EXEC,
            ),
            EPERM,
        ),
    );
    c.check("mprotect-exec-eacces", mprotect_exec(&dev));
    c.check("mremap-grow-fails", mremap_grow(&dev));
    c.check("read-only-open", read_only(path, len));
    c.check("offset-mapping-aliases-full", aliasing(&dev, len));
    c.check("cache-types-map", cache_types(path));
    c.check("bad-pointers-efault", bad_pointers(fd));
    c.check("unknown-commands-enotty", unknown_commands(fd));
    c.failed as i32
}

/// A mapping that was not executable cannot be made so: `mprotect` fails with EACCES and the
/// mapping stays usable.
fn mprotect_exec(dev: &Device) -> Result<(), ToolError> {
    let map = dev.map(0, PAGE)?;
    // SAFETY: Changes the protection of our own mapping; on success the page would merely
    // become executable, and we never execute it.
    let failed =
        unsafe { sys::mprotect(map.as_ptr().cast(), PAGE, sys::PROT_READ | sys::PROT_EXEC) } < 0;
    expect_errno("mprotect(PROT_EXEC)", failed, EACCES)?;
    Ok(map.write(0, b"still writable")?)
}

/// Every ioctl that takes a pointer fails with EFAULT for pointers it must not touch: NULL,
/// unaligned garbage, a kernel address, an unmapped user address.
fn bad_pointers(fd: i32) -> Result<(), ToolError> {
    let cmds = [
        uapi::IVSHMEM_GET_SIZE,
        uapi::IVSHMEM_GET_INFO,
        uapi::IVSHMEM_SET_CACHE,
        uapi::IVSHMEM_RING,
        uapi::IVSHMEM_WAIT,
        uapi::IVSHMEM_SET_EVENTFD,
    ];
    let ptrs = [
        0usize,
        1,
        0xffff_8880_0000_0000,
        0xffff_ffff_8100_0000,
        0x7fff_ffff_0000,
    ];
    for cmd in cmds {
        for ptr in ptrs {
            let failed = raw_ioctl(fd, cmd, ptr);
            let e = errno();
            // RING/WAIT/SET_EVENTFD on a plain device may fail earlier, with EOPNOTSUPP, only
            // after reading their argument: EFAULT comes first.
            if !failed || e != EFAULT {
                return Err(ToolError::Check(format!(
                    "ioctl {cmd:#x} with pointer {ptr:#x}: failed={failed} errno {e}"
                )));
            }
        }
    }
    Ok(())
}

/// Commands this driver does not define, including ours with a wrong size or direction.
fn unknown_commands(fd: i32) -> Result<(), ToolError> {
    let mut scratch = [0u64; 64];
    let arg = scratch.as_mut_ptr() as usize;
    let mut cmds: Vec<u32> = (6..64)
        .map(|nr| (2 << 30) | (8 << 16) | (0xb9 << 8) | nr)
        .collect();
    cmds.extend([
        (2 << 30) | (4 << 16) | (0xb9 << 8), // GET_SIZE with a 4-byte size
        (1 << 30) | (8 << 16) | (0xb9 << 8), // GET_SIZE as a write
        (2 << 30) | (64 << 16) | (0xb8 << 8) | 1, // GET_INFO with another magic
        0x5401,                              // TCGETS
        0xffff_ffff,
    ]);
    for cmd in cmds {
        let failed = raw_ioctl(fd, cmd, arg);
        if !failed || errno() != ENOTTY {
            return Err(ToolError::Check(format!(
                "ioctl {cmd:#x}: failed={failed} errno {}",
                errno()
            )));
        }
    }
    Ok(())
}

/// Growing a mapping must fail (VM_DONTEXPAND): the kernel answers EFAULT.
fn mremap_grow(dev: &Device) -> Result<(), ToolError> {
    let m = dev.map(0, PAGE)?;
    // SAFETY: Remapping our own mapping; on the expected failure nothing changes.
    let p = unsafe {
        sys::mremap(
            m.as_ptr().cast::<c_void>(),
            PAGE,
            2 * PAGE,
            sys::MREMAP_MAYMOVE,
        )
    };
    if p != sys::MAP_FAILED {
        // SAFETY: The mremap moved our mapping to `p`; unmap it and forget the old one.
        unsafe { sys::munmap(p, 2 * PAGE) };
        std::mem::forget(m);
        return Err(ToolError::Check(
            "mremap to twice the size succeeded".into(),
        ));
    }
    expect_errno("mremap grow", true, EFAULT)
}

/// An O_RDONLY file maps read-only, and refuses a writable shared mapping (EACCES).
fn read_only(path: &str, len: usize) -> Result<(), ToolError> {
    let f = std::fs::File::open(path)?;
    let fd = f.as_raw_fd();
    if try_mmap(fd, len.min(1 << 20), sys::MAP_SHARED, 0, sys::PROT_READ) {
        return Err(ToolError::Check(format!(
            "read-only mapping failed: errno {}",
            errno()
        )));
    }
    expect_errno(
        "PROT_WRITE on O_RDONLY",
        try_mmap(fd, PAGE, sys::MAP_SHARED, 0, RW),
        EACCES,
    )
}

/// Bytes written through a mapping at offset 2 pages appear in a full mapping at that offset.
fn aliasing(dev: &Device, len: usize) -> Result<(), ToolError> {
    let full = dev.map(0, len)?;
    let part = dev.map(2 * PAGE as u64, PAGE)?;
    let mut buf = vec![0u8; PAGE];
    pattern::fill(4242, 2 * PAGE as u64, &mut buf);
    part.write(0, &buf)?;
    let mut back = vec![0u8; PAGE];
    full.read(2 * PAGE, &mut back)?;
    match pattern::first_mismatch(4242, 2 * PAGE as u64, &back) {
        None => Ok(()),
        Some(k) => Err(ToolError::Check(format!("byte {k} differs"))),
    }
}

/// Every cache type maps and reads back what it wrote; GET_INFO reports the type.
fn cache_types(path: &str) -> Result<(), ToolError> {
    for c in [
        CacheType::WriteCombining,
        CacheType::Uncached,
        CacheType::WriteBack,
    ] {
        let dev = Device::open(path)?;
        dev.set_cache(c)?;
        let info = dev.info()?;
        if info.cache != c.raw() {
            return Err(ToolError::Check(format!(
                "{}: GET_INFO says cache {}",
                c.name(),
                info.cache
            )));
        }
        let m = dev.map(0, PAGE)?;
        m.store_u32(8, 0x1234_5678 ^ c.raw())?;
        if m.load_u32(8)? != 0x1234_5678 ^ c.raw() {
            return Err(ToolError::Check(format!("{}: read back differs", c.name())));
        }
    }
    Ok(())
}
