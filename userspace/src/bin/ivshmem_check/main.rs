//! `ivshmem-check`: the driver's contract, checked from user space inside a guest.
//!
//! `ivshmem-check errors DEVICE` runs every bad-input case and prints `ok NAME` or
//! `FAIL NAME: why` per check (exit 1 if any failed). `ivshmem-check revoke DEVICE FILE` maps
//! the device, says `mapped`, waits for FILE to exist (the test removes the device meanwhile),
//! then checks that ioctl and mmap fail with ENODEV and touches the old mapping, which must
//! kill it with SIGBUS. `ivshmem-check hold DEVICE CACHE FILE` only maps and waits.
//! `ivshmem-check revoke-huge` does what `revoke` does on a mapping placed for huge entries.

use std::ffi::c_void;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use ivshmem::sys::errno::{
    EACCES, EAGAIN, EBADF, EBUSY, EFAULT, EINVAL, ENODEV, ENOTTY, ENXIO, EPERM,
};
use ivshmem::{pattern, sys, uapi, CacheType, Device, ToolError};

#[path = "../common/aligned.rs"]
#[allow(dead_code)]
mod aligned;
use aligned::Aligned;

mod echo;
mod poll;
mod scribble;

const PAGE: usize = 4096;

const USAGE: &str = "\
usage: ivshmem-check errors DEVICE            every bad input gets its errno
       ivshmem-check revoke DEVICE GO-FILE    map, wait for GO-FILE, expect ENODEV and SIGBUS
       ivshmem-check revoke-huge DEVICE GO-FILE OFFSET LEN touched|untouched
                                       as revoke, on [OFFSET, OFFSET+LEN) mapped at an address
                                       congruent to OFFSET modulo 1 GiB (LEN >= 1 GiB) or
                                       2 MiB; touched: its first page is written before the
                                       removal and read after, untouched: nothing is accessed
                                       before, the middle page after
       ivshmem-check split DEVICE OFFSET LEN   map [OFFSET, OFFSET+LEN) placed for huge entries,
                                       fill probe pages with pattern 241, fault the entries in,
                                       then munmap, mprotect and madvise (EINVAL: VM_PFNMAP)
                                       pages inside them: the
                                       probe pages keep their bytes, take pattern 242 (the
                                       read-only one excepted), the hole and the read-only page
                                       fault (SIGSEGV)
       ivshmem-check hold DEVICE wb|wc|uc GO-FILE   map with a cache type until GO-FILE exists
       ivshmem-check eventfd DEVICE VECTOR MS   register an eventfd, poll it up to MS ms
       ivshmem-check counted DEVICE VECTOR GO-FILE   open, wait for GO-FILE, count interrupts
       ivshmem-check race DEVICE GO-FILE   mmap in a loop while the device is removed;
                                           after GO-FILE every mapping must raise SIGBUS
       ivshmem-check churn DEVICE N   hold DEVICE open while N children map it and exit;
                                      print the drop of MemAvailable
       ivshmem-check poll DEVICE N MESSAGES send|recv   N message channels on one doorbell
                                      device; recv polls them all on their shared eventfd
       ivshmem-check echo PORT        a TCP echo server on 127.0.0.1:PORT (until killed)
       ivshmem-check scribble DEVICE GO-FILE   store random words all over DEVICE until
                                      GO-FILE exists; print how many stuck (read back)";

/// Opens `path`, or prints `FAIL open: ...` and returns `None`.
fn open_or_report(path: &str) -> Option<Device> {
    Device::open(path)
        .inspect_err(|e| println!("FAIL open: {e}"))
        .ok()
}

/// Waits up to 120 s for the test to create `go`; whether it did.
fn wait_for_file(go: &str) -> bool {
    let start = Instant::now();
    while !Path::new(go).exists() {
        if start.elapsed() > Duration::from_secs(120) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

struct Checker {
    failed: usize,
}

impl Checker {
    fn check(&mut self, name: &str, result: Result<(), impl Into<ToolError>>) {
        match result.map_err(Into::into) {
            Ok(()) => println!("ok {name}"),
            Err(why) => {
                println!("FAIL {name}: {why}");
                self.failed += 1;
            }
        }
    }
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn expect_errno(what: &str, rc_failed: bool, want: i32) -> Result<(), ToolError> {
    let got = errno();
    if !rc_failed {
        return Err(ToolError::Check(format!(
            "{what} succeeded, wanted errno {want}"
        )));
    }
    if got != want {
        return Err(ToolError::Check(format!(
            "{what} failed with errno {got}, wanted {want}"
        )));
    }
    Ok(())
}

fn raw_ioctl(fd: i32, cmd: u32, arg: usize) -> bool {
    // SAFETY: the kernel validates `arg`; a bad pointer must give EFAULT, not corrupt us.
    unsafe { sys::ioctl(fd, cmd.into(), arg) < 0 }
}

/// mmap that returns whether it failed, unmapping on success.
fn try_mmap(fd: i32, len: usize, flags: i32, offset: i64, prot: i32) -> bool {
    // SAFETY: a fresh mapping chosen by the kernel; unmapped right away.
    let p = unsafe { sys::mmap(std::ptr::null_mut(), len, prot, flags, fd, offset) };
    if p == sys::MAP_FAILED {
        return true;
    }
    // SAFETY: `p`/`len` is the mapping just made.
    unsafe { sys::munmap(p, len) };
    false
}

const RW: i32 = sys::PROT_READ | sys::PROT_WRITE;

fn errors(path: &str) -> i32 {
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
                    && i.reserved == [0; 3]
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
    // SAFETY: changes the protection of our own mapping; on success the page would merely
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
    // SAFETY: remapping our own mapping; on the expected failure nothing changes.
    let p = unsafe {
        sys::mremap(
            m.as_ptr().cast::<c_void>(),
            PAGE,
            2 * PAGE,
            sys::MREMAP_MAYMOVE,
        )
    };
    if p != sys::MAP_FAILED {
        // SAFETY: the mremap moved our mapping to `p`; unmap it and forget the old one.
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

/// Opens and maps all of `path` with `cache`, touches the first page, says `mapped`, and
/// waits for `go` to exist (at most 120 s).
fn hold(path: &str, cache: CacheType, go: &str) -> Result<(Device, ivshmem::Mapping), ToolError> {
    let dev = Device::open(path)?;
    dev.set_cache(cache)?;
    let m = dev.map_all()?;
    let v = m.load_u32(0)?;
    m.store_u32(0, v)?;
    println!("mapped");
    if !wait_for_file(go) {
        return Err(ToolError::Check(format!("timeout waiting for {go}")));
    }
    Ok((dev, m))
}

fn revoke(path: &str, go: &str) -> i32 {
    let (dev, m) = match hold(path, CacheType::WriteBack, go) {
        Ok(x) => x,
        Err(e) => {
            println!("FAIL hold: {e}");
            return 1;
        }
    };
    if removed_enodev(&dev) > 0 {
        return 1;
    }
    println!("touching");
    // Must raise SIGBUS: the mapping was revoked.
    let v = m.load_u32(0).unwrap_or(0);
    println!("FAIL revoked-mapping-sigbus: read {v:#x} after removal");
    1
}

/// After the removal: ioctl and mmap on the open file fail with ENODEV. Returns the failures.
fn removed_enodev(dev: &Device) -> usize {
    let mut c = Checker { failed: 0 };
    let got = dev.size();
    c.check(
        "ioctl-after-removal-enodev",
        match got {
            Err(e) if e.errno() == Some(ENODEV) => Ok(()),
            other => Err(ToolError::Check(format!("{other:?}"))),
        },
    );
    c.check(
        "mmap-after-removal-enodev",
        match dev.map(0, PAGE) {
            Err(e) if e.errno() == Some(ENODEV) => Ok(()),
            Err(e) => Err(e.into()),
            Ok(_) => Err(ToolError::Check("mmap succeeded".into())),
        },
    );
    c.failed
}

/// `revoke` on a mapping the driver can fill with huge entries: `[offset, offset + len)` at an
/// address congruent to `offset` modulo 1 GiB or 2 MiB. A page never touched before the
/// removal must fault into SIGBUS as much as one whose huge entry was in place.
fn revoke_huge(path: &str, go: &str, offset: u64, len: usize, touched: bool) -> i32 {
    let run = || -> Result<i32, ToolError> {
        let dev = Device::open(path)?;
        let align = aligned::natural_align(len);
        let m = Aligned::map(dev.as_raw_fd(), offset, len, RW, align, 0)
            .map_err(|e| ToolError::sys(format!("{path}: mmap"), e))?;
        let at = if touched {
            let v = m.load_u32(0)?;
            m.store_u32(0, v)?;
            0
        } else {
            len / 2
        };
        println!(
            "mapped {len} bytes at {:#x} (offset {offset:#x}, aligned to {align:#x})",
            m.as_ptr() as usize
        );
        if !wait_for_file(go) {
            return Err(ToolError::Check(format!("timeout waiting for {go}")));
        }
        if removed_enodev(&dev) > 0 {
            return Ok(1);
        }
        println!("touching offset {:#x}", offset + at as u64);
        // SAFETY: the default action for SIGBUS (std's handler would call the fault a stack
        // overflow); this process is single-threaded.
        unsafe { sys::signal(sys::SIGBUS, sys::SIG_DFL) };
        // Must raise SIGBUS: the mapping was revoked.
        let v = m.load_u32(at)?;
        println!("FAIL revoked-mapping-sigbus: read {v:#x} after removal");
        Ok(1)
    };
    run().unwrap_or_else(|e| {
        println!("FAIL revoke-huge: {e}");
        1
    })
}

/// Offsets (in the mapping) of `split`'s probe pages, of the page it unmaps, and of the page
/// it makes read-only.
fn split_pages(len: usize) -> (Vec<usize>, usize, usize) {
    let ro = len / 4 + 2 * PAGE;
    let probes = vec![
        0,
        len / 8 + (1 << 20),
        ro,
        len / 2,
        len / 2 + 2 * PAGE,
        len - PAGE,
    ];
    (probes, len / 2 + PAGE, ro)
}

/// Whether a child that reads (or, with `write`, writes) the word at `addr` dies of SIGSEGV.
fn child_segfaults(addr: *mut u8, write: bool) -> bool {
    // SAFETY: this process is single-threaded; the child does one access and `_exit`s.
    let pid = unsafe { sys::fork() };
    if pid == 0 {
        // SAFETY: the default action for SIGSEGV (std's handler would report a stack
        // overflow), in the single-threaded child.
        unsafe { sys::signal(sys::SIGSEGV, sys::SIG_DFL) };
        if write {
            // SAFETY: a page of the parent's mapping that must fault: that is the test. Had
            // it been writable, the word written is the child's to change.
            unsafe { std::ptr::write_volatile(addr.cast::<u32>(), 1) };
        } else {
            // SAFETY: as above, a read.
            unsafe { std::ptr::read_volatile(addr.cast::<u32>()) };
        }
        // SAFETY: leave the child without running the parent's destructors.
        unsafe { sys::_exit(0) }
    }
    let mut status = 0;
    // SAFETY: waits for the child just forked.
    pid > 0 && unsafe { sys::waitpid(pid, &mut status, 0) } == pid && status & 0x7f == sys::SIGSEGV
}

/// Cuts into huge entries: munmap, mprotect and madvise of single pages inside a mapping the
/// driver fills with 1 GiB or 2 MiB entries (the kernel must split or zap them), then checks
/// that everything else still shows the right bytes. The host checks the pattern-242 pages.
fn split(path: &str, offset: u64, len: usize) -> i32 {
    let mut c = Checker { failed: 0 };
    let dev = match Device::open(path) {
        Ok(d) => d,
        Err(e) => {
            println!("FAIL open: {e}");
            return 1;
        }
    };
    let align = aligned::natural_align(len);
    let m = match Aligned::map(dev.as_raw_fd(), offset, len, RW, align, 0) {
        Ok(m) => m,
        Err(e) => {
            println!("FAIL mmap: {}: {e}", aligned::errno_name(&e));
            return 1;
        }
    };
    let (probes, hole, ro) = split_pages(len);
    let mut buf = vec![0u8; PAGE];
    for &p in &probes {
        pattern::fill(241, offset + p as u64, &mut buf);
        c.check("fill", m.write(p, &buf));
    }
    let base = m.as_ptr() as usize;
    let at = |k: usize| (base + k) as *mut std::ffi::c_void;
    // SAFETY: a page inside our own mapping, which holds no Rust object; `Aligned` unmaps its
    // whole range on drop, the hole included, and no access of ours goes there.
    let unmapped = unsafe { sys::munmap(at(hole), PAGE) } == 0;
    c.check("munmap-one-page", ok_or_errno("munmap", unmapped));
    // SAFETY: as above; the page is only read afterwards (and written by a child, which dies).
    let protected = unsafe { sys::mprotect(at(ro), PAGE, sys::PROT_READ) } == 0;
    c.check("mprotect-one-page", ok_or_errno("mprotect", protected));
    // SAFETY: as above; had it succeeded, device memory keeps its bytes and the entries are
    // faulted in again.
    let dropped = unsafe { sys::madvise(at(len / 8), 3 << 20, sys::MADV_DONTNEED) } == 0;
    // The kernel refuses to drop entries of a VM_PFNMAP mapping (madvise.c), huge or not.
    c.check(
        "madvise-dontneed-einval",
        expect_errno("MADV_DONTNEED", !dropped, EINVAL),
    );
    for &p in &probes {
        let mut back = vec![0u8; PAGE];
        c.check(
            &format!("page-{p:#x}-kept"),
            m.read(p, &mut back)
                .map_err(ToolError::from)
                .and_then(
                    |()| match pattern::first_mismatch(241, offset + p as u64, &back) {
                        None => Ok(()),
                        Some(k) => Err(ToolError::Check(format!("byte {k} differs"))),
                    },
                ),
        );
        if p != ro {
            pattern::fill(242, offset + p as u64, &mut buf);
            c.check(&format!("page-{p:#x}-written"), m.write(p, &buf));
        }
    }
    c.check(
        "hole-segfaults",
        ok_or_check(
            child_segfaults(at(hole).cast(), false),
            "reading the unmapped page",
        ),
    );
    c.check(
        "read-only-write-segfaults",
        ok_or_check(
            child_segfaults(at(ro).cast(), true),
            "writing the read-only page",
        ),
    );
    c.failed as i32
}

fn ok_or_errno(what: &str, ok: bool) -> Result<(), ToolError> {
    if ok {
        Ok(())
    } else {
        Err(ToolError::Check(format!("{what}: errno {}", errno())))
    }
}

fn ok_or_check(ok: bool, what: &str) -> Result<(), ToolError> {
    if ok {
        Ok(())
    } else {
        Err(ToolError::Check(format!("{what} did not raise SIGSEGV")))
    }
}

/// Registers an eventfd for `vector`, checks a second file gets EBUSY for the same vector,
/// then polls the eventfd like an epoll user would and prints what it read.
fn eventfd_poll(path: &str, vector: u32, ms: i32) -> i32 {
    use std::io::Read;
    use std::os::fd::FromRawFd;
    let mut c = Checker { failed: 0 };
    let Some(dev) = open_or_report(path) else {
        return 1;
    };
    // SAFETY: plain syscall; the fd is owned by `efd` below.
    let raw = unsafe { sys::eventfd(0, 0) };
    // SAFETY: `raw` is a fresh eventfd nobody else owns.
    let mut efd = unsafe { std::fs::File::from_raw_fd(raw) };
    c.check("set-eventfd", dev.set_eventfd(vector, Some(raw)));
    let other = Device::open(path).expect("second open");
    c.check(
        "second-file-ebusy",
        match other.set_eventfd(vector, Some(raw)) {
            Err(e) if e.errno() == Some(EBUSY) => Ok(()),
            other => Err(ToolError::Check(format!("{other:?}"))),
        },
    );
    c.check(
        "bad-fd-ebadf",
        match dev.set_eventfd(vector, Some(9999)) {
            Err(e) if e.errno() == Some(EBADF) => Ok(()),
            other => Err(ToolError::Check(format!("{other:?}"))),
        },
    );
    println!("polling");
    let mut pfd = sys::PollFd {
        fd: raw,
        events: sys::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { sys::poll(&mut pfd, 1, ms) };
    if n == 1 {
        let mut buf = [0u8; 8];
        let _ = efd.read_exact(&mut buf);
        println!("eventfd signalled {}", u64::from_ne_bytes(buf));
    } else {
        println!("eventfd not signalled (poll returned {n})");
        c.failed += 1;
    }
    c.check("remove-eventfd", dev.set_eventfd(vector, None));
    c.failed as i32
}

/// Interrupts that arrive while a file is open are all reported by its next wait, once.
fn counted(path: &str, vector: u32, go: &str) -> i32 {
    let Some(dev) = open_or_report(path) else {
        return 1;
    };
    println!("opened");
    wait_for_file(go);
    match dev.wait(vector, Some(Duration::ZERO)) {
        Ok(n) => println!("counted {n}"),
        Err(e) => {
            println!("FAIL first wait: {e}");
            return 1;
        }
    }
    match dev.wait(vector, Some(Duration::ZERO)) {
        Err(e) if e.errno() == Some(EAGAIN) => {
            println!("then EAGAIN");
            0
        }
        other => {
            println!("FAIL second wait: {other:?}");
            1
        }
    }
}

/// mmaps one page after another, from two threads, until the device is removed (ENODEV) or
/// GO-FILE appears; then, once GO-FILE exists (the remover is done), touches each mapping in a
/// child process: every one must die of SIGBUS. A mapping that still reads is a stale mapping
/// that escaped revocation, e.g. one whose mmap raced with the removal.
fn race(path: &str, go: &str) -> i32 {
    let Some(dev) = open_or_report(path) else {
        return 1;
    };
    println!("mapping");
    // Each thread keeps its latest 64 mappings: the ones made around the removal matter,
    // older ones were certainly in place before it.
    const KEEP: usize = 64;
    let maps = std::sync::Mutex::new(Vec::new());
    let other_errors = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                let mut mine = std::collections::VecDeque::new();
                loop {
                    if Path::new(go).exists() {
                        break;
                    }
                    match dev.map(0, PAGE) {
                        Ok(m) => {
                            mine.push_back(m);
                            if mine.len() > KEEP {
                                mine.pop_front();
                            }
                        }
                        Err(e) if e.errno() == Some(ENODEV) => break,
                        Err(e) => {
                            other_errors.lock().unwrap().push(e.to_string());
                            break;
                        }
                    }
                }
                maps.lock().unwrap().extend(mine);
            });
        }
    });
    wait_for_file(go);
    let maps = maps.into_inner().unwrap();
    let (mut revoked, mut stale) = (0, 0);
    for m in &maps {
        // SAFETY: the process is single-threaded again (the scope joined its threads); the
        // child only reads one word and exits.
        let pid = unsafe { sys::fork() };
        if pid == 0 {
            // Default SIGBUS action: std's handler would report the fault as a stack overflow.
            // SAFETY: the default action for SIGBUS, in the single-threaded child.
            unsafe { sys::signal(sys::SIGBUS, sys::SIG_DFL) };
            let _ = m.load_u32(0);
            // SAFETY: leave the child without running the parent's destructors.
            unsafe { sys::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: waits for the child just forked.
        unsafe { sys::waitpid(pid, &mut status, 0) };
        // WIFSIGNALED && WTERMSIG == SIGBUS.
        if status & 0x7f == sys::SIGBUS {
            revoked += 1;
        } else {
            stale += 1;
        }
    }
    let errors = other_errors.into_inner().unwrap();
    println!(
        "mappings {}, revoked {revoked}, stale {stale}, other errors {errors:?}",
        maps.len()
    );
    i32::from(stale > 0 || maps.is_empty() || !errors.is_empty())
}

/// `MemAvailable` from /proc/meminfo, in kB.
fn mem_available_kb() -> Option<i64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Forks `n` short-lived children that each map one page and exit, while this process keeps
/// the device open: half map through the inherited file, half open their own. Returns how many
/// did not exit 0.
fn churn_children(dev: &Device, path: &str, n: usize) -> usize {
    let mut bad = 0;
    for i in 0..n {
        // SAFETY: this process is single-threaded; the child maps, touches and `_exit`s.
        let pid = unsafe { sys::fork() };
        if pid == 0 {
            let own = if i % 2 == 0 {
                None
            } else {
                Device::open(path).ok()
            };
            let ok = own
                .as_ref()
                .unwrap_or(dev)
                .map(0, PAGE)
                .and_then(|m| m.store_u32(0, i as u32))
                .is_ok();
            // SAFETY: leave the child without running the parent's destructors.
            unsafe { sys::_exit(i32::from(!ok)) };
        }
        let mut status = 0;
        // SAFETY: waits for the child just forked.
        if pid < 0 || unsafe { sys::waitpid(pid, &mut status, 0) } != pid || status != 0 {
            bad += 1;
        }
    }
    bad
}

/// Kernel memory kept per departed child while a file stays open: `n` children map the device
/// and exit, and the drop of `MemAvailable` over them is printed (after a warm-up round, so
/// that caches the first children fill do not count).
fn churn(path: &str, n: usize) -> i32 {
    let Some(dev) = open_or_report(path) else {
        return 1;
    };
    let warm_bad = churn_children(&dev, path, n / 10 + 1);
    let before = mem_available_kb();
    let bad = churn_children(&dev, path, n);
    let after = mem_available_kb();
    let (Some(before), Some(after)) = (before, after) else {
        println!("FAIL churn: no MemAvailable in /proc/meminfo");
        return 1;
    };
    let drop_kb = before - after;
    println!(
        "churn: {n} children mapped and exited, MemAvailable dropped {drop_kb} kB ({} bytes per child)",
        drop_kb * 1024 / n.max(1) as i64
    );
    if warm_bad + bad > 0 {
        println!("FAIL churn: {} children failed to map", warm_bad + bad);
        return 1;
    }
    0
}

fn main() {
    ivshmem::args::die_on_closed_output();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["errors", dev] => errors(dev),
        ["revoke", dev, go] => revoke(dev, go),
        ["race", dev, go] => race(dev, go),
        ["split", dev, offset, len] => {
            let size = |v: &str| ivshmem::args::parse_size(v).ok();
            match (
                size(offset),
                size(len).and_then(|l| usize::try_from(l).ok()),
            ) {
                (Some(o), Some(l)) if l >= 1 << 21 && l.is_multiple_of(PAGE) => split(dev, o, l),
                _ => {
                    eprintln!("{USAGE}");
                    2
                }
            }
        }
        ["revoke-huge", dev, go, offset, len, how] => {
            let size = |v: &str| ivshmem::args::parse_size(v).ok();
            match (
                size(offset),
                size(len).and_then(|l| usize::try_from(l).ok()),
                how,
            ) {
                (Some(o), Some(l), "touched" | "untouched") => {
                    revoke_huge(dev, go, o, l, how == "touched")
                }
                _ => {
                    eprintln!("{USAGE}");
                    2
                }
            }
        }
        ["scribble", dev, go] => scribble::run(dev, go),
        ["echo", port] => match port.parse() {
            Ok(p) => echo::run(p),
            Err(_) => 2,
        },
        ["poll", dev, n, m, side] => match (n.parse(), m.parse()) {
            (Ok(n @ 1..), Ok(m)) => poll::run(dev, n, m, side),
            _ => 2,
        },
        ["churn", dev, n] => match n.parse() {
            Ok(n) => churn(dev, n),
            Err(_) => 2,
        },
        ["counted", dev, vector, go] => match vector.parse() {
            Ok(v) => counted(dev, v, go),
            Err(_) => 2,
        },
        ["eventfd", dev, vector, ms] => match (vector.parse(), ms.parse()) {
            (Ok(v), Ok(ms)) => eventfd_poll(dev, v, ms),
            _ => 2,
        },
        ["hold", dev, cache, go] => match cache
            .parse()
            .map_err(ToolError::Usage)
            .and_then(|c| hold(dev, c, go))
        {
            Ok(_) => 0,
            Err(e) => {
                println!("FAIL hold: {e}");
                1
            }
        },
        ["-h"] | ["--help"] => {
            println!("{USAGE}");
            0
        }
        _ => {
            eprintln!("{USAGE}");
            2
        }
    };
    std::process::exit(code);
}
