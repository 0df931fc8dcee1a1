//! An open `/dev/ivshmemN`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use crate::mapping::Mapping;
use crate::{sys, uapi, Error, Result};

/// How the CPU caches a mapping of the shared memory (see `IVSHMEM_SET_CACHE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheType {
    /// Write-back, the default: BAR2 is host RAM.
    WriteBack,
    /// Write-combining.
    WriteCombining,
    /// Uncached, as the seeds' sysfs `resource2` path.
    Uncached,
}

impl CacheType {
    /// The ABI value.
    pub fn raw(self) -> u32 {
        match self {
            CacheType::WriteBack => uapi::IVSHMEM_CACHE_WB,
            CacheType::WriteCombining => uapi::IVSHMEM_CACHE_WC,
            CacheType::Uncached => uapi::IVSHMEM_CACHE_UC,
        }
    }

    /// From the ABI value.
    pub fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            uapi::IVSHMEM_CACHE_WB => Some(CacheType::WriteBack),
            uapi::IVSHMEM_CACHE_WC => Some(CacheType::WriteCombining),
            uapi::IVSHMEM_CACHE_UC => Some(CacheType::Uncached),
            _ => None,
        }
    }

    /// `wb`, `wc` or `uc`.
    pub fn name(self) -> &'static str {
        match self {
            CacheType::WriteBack => "wb",
            CacheType::WriteCombining => "wc",
            CacheType::Uncached => "uc",
        }
    }
}

/// The cache type a mapping really gets ([`Device::granted_cache`]): on x86 what PAT granted
/// the requested [`CacheType`], elsewhere the requested one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantedCache {
    /// Write-back.
    WriteBack,
    /// Write-combining.
    WriteCombining,
    /// Uncached-minus: what [`CacheType::Uncached`] asks for, and what PAT grants a
    /// write-back request where the MTRRs make BAR2's range uncachable.
    UncachedMinus,
    /// Uncached (strong), left by another record of the range.
    Uncached,
    /// Write-through, left by another record of the range.
    WriteThrough,
    /// Write-protect, left by another record of the range.
    WriteProtect,
}

impl GrantedCache {
    /// What `info` says mappings get: `None` when the driver does not say
    /// (`IVSHMEM_FLAG_GRANTED` clear) or names a type this library does not know.
    pub fn from_info(info: &uapi::IvshmemInfo) -> Option<Self> {
        if info.flags & uapi::IVSHMEM_FLAG_GRANTED == 0 {
            return None;
        }
        Self::from_raw(info.granted)
    }

    /// From the ABI value (`IvshmemInfo::granted`).
    pub fn from_raw(raw: u32) -> Option<Self> {
        Some(match raw {
            uapi::IVSHMEM_CACHE_WB => Self::WriteBack,
            uapi::IVSHMEM_CACHE_WC => Self::WriteCombining,
            uapi::IVSHMEM_CACHE_UC => Self::UncachedMinus,
            uapi::IVSHMEM_CACHE_UC_STRONG => Self::Uncached,
            uapi::IVSHMEM_CACHE_WT => Self::WriteThrough,
            uapi::IVSHMEM_CACHE_WP => Self::WriteProtect,
            _ => return None,
        })
    }

    /// `wb`, `wc`, `uc-`, `uc`, `wt` or `wp`.
    pub fn name(self) -> &'static str {
        match self {
            Self::WriteBack => "wb",
            Self::WriteCombining => "wc",
            Self::UncachedMinus => "uc-",
            Self::Uncached => "uc",
            Self::WriteThrough => "wt",
            Self::WriteProtect => "wp",
        }
    }

    /// Whether this is the type `requested` asks for (not a downgrade).
    pub fn is(self, requested: CacheType) -> bool {
        self == match requested {
            CacheType::WriteBack => Self::WriteBack,
            CacheType::WriteCombining => Self::WriteCombining,
            CacheType::Uncached => Self::UncachedMinus,
        }
    }
}

impl std::str::FromStr for CacheType {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "wb" => Ok(CacheType::WriteBack),
            "wc" => Ok(CacheType::WriteCombining),
            "uc" => Ok(CacheType::Uncached),
            _ => Err(format!("unknown cache type '{s}' (wb, wc or uc)")),
        }
    }
}

/// An open ivshmem device node.
#[derive(Debug)]
pub struct Device {
    file: File,
    path: String,
}

/// The file descriptor, for experts: ioctls of later ABI versions, poll, ...
impl AsFd for Device {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl AsRawFd for Device {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// The size of the shared memory of the ivshmem device open as `fd` (`IVSHMEM_GET_SIZE`):
/// [`Device::size`], and the channels' mappings of device files they did not open as a
/// `Device` (`Region::map_pair`).
pub(crate) fn shared_size(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut size = 0u64;
    // SAFETY: IVSHMEM_GET_SIZE writes one u64 through its argument, which points at `size`; on
    // another file the ioctl fails (ENOTTY) without writing through it.
    let rc = unsafe { sys::ioctl(fd.as_raw_fd(), uapi::IVSHMEM_GET_SIZE.into(), &mut size) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

impl Device {
    /// Opens `path` (e.g. `/dev/ivshmem0`) for reading and writing.
    pub fn open(path: &str) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Error::new(path, "open", e))?;
        Ok(Self {
            file,
            path: path.to_string(),
        })
    }

    /// Opens `/dev/ivshmem<index>`.
    pub fn open_index(index: usize) -> Result<Self> {
        Self::open(&format!("/dev/ivshmem{index}"))
    }

    /// The path this device was opened with.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Issues ioctl `cmd` with `arg` pointing at a `T`.
    fn ioctl<T>(&self, cmd: u32, arg: *mut T) -> Result<()> {
        // SAFETY: `arg` points at a live `T`, the argument type `cmd` is defined with.
        let rc = unsafe { sys::ioctl(self.file.as_raw_fd(), cmd.into(), arg) };
        if rc < 0 {
            return Err(Error::new(&self.path, "ioctl", io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Size of the shared memory in bytes.
    pub fn size(&self) -> Result<u64> {
        shared_size(self.file.as_fd()).map_err(|e| Error::new(&self.path, "ioctl", e))
    }

    /// Everything the driver knows about the device.
    pub fn info(&self) -> Result<uapi::IvshmemInfo> {
        let mut info = uapi::IvshmemInfo::default();
        self.ioctl(uapi::IVSHMEM_GET_INFO, &mut info)?;
        Ok(info)
    }

    /// The cache type this open file's next [`Device::map`] really gets (x86: what PAT
    /// granted its [`CacheType`]); `None` from a driver that does not say.
    pub fn granted_cache(&self) -> Result<Option<GrantedCache>> {
        Ok(GrantedCache::from_info(&self.info()?))
    }

    /// Selects the cache type of later [`Device::map`] calls on this open file.
    pub fn set_cache(&self, cache: CacheType) -> Result<()> {
        let mut raw = cache.raw();
        self.ioctl(uapi::IVSHMEM_SET_CACHE, &mut raw)
    }

    /// This guest's peer id on a doorbell device, `None` on `ivshmem-plain`.
    pub fn peer_id(&self) -> Result<Option<u32>> {
        let info = self.info()?;
        Ok((info.peer_id != uapi::IVSHMEM_NO_PEER).then_some(info.peer_id))
    }

    /// Interrupts `vector` of peer `peer` (doorbell devices; QEMU drops rings to unknown peers).
    pub fn ring(&self, peer: u32, vector: u32) -> Result<()> {
        let mut ring = uapi::IvshmemRing { peer, vector };
        self.ioctl(uapi::IVSHMEM_RING, &mut ring)
    }

    /// Waits for an interrupt on `vector` and returns how many arrived since this open file
    /// last saw one. `None` waits forever, `Some(Duration::ZERO)` does not block (`EAGAIN`).
    /// Expiry gives `ETIMEDOUT`, a signal `EINTR`, device removal `ENODEV`.
    pub fn wait(&self, vector: u32, timeout: Option<std::time::Duration>) -> Result<u64> {
        let timeout_ms = match timeout {
            None => -1,
            Some(t) => i32::try_from(t.as_millis()).unwrap_or(i32::MAX),
        };
        let mut wait = uapi::IvshmemWait {
            vector,
            timeout_ms,
            count: 0,
        };
        self.ioctl(uapi::IVSHMEM_WAIT, &mut wait)?;
        Ok(wait.count)
    }

    /// Makes every interrupt on `vector` signal the eventfd `fd` (for poll/epoll users), or
    /// removes this file's eventfd with `None`.
    pub fn set_eventfd(&self, vector: u32, fd: Option<i32>) -> Result<()> {
        let mut arg = uapi::IvshmemEventfd {
            vector,
            fd: fd.unwrap_or(-1),
        };
        self.ioctl(uapi::IVSHMEM_SET_EVENTFD, &mut arg)
    }

    /// Maps `len` bytes of shared memory starting at `offset` (a multiple of the page size).
    ///
    /// The address is congruent to `offset` modulo 1 GiB when `len` >= 1 GiB, modulo 2 MiB
    /// when `len` >= 2 MiB, so that the driver can map the memory with 1 GiB and 2 MiB page
    /// table entries (few page tables, few TLB misses); it cannot choose the address itself. C
    /// users who call mmap themselves do the same (`sys::map_shared`):
    ///
    /// ```c
    /// size_t align = len >= 1UL << 30 ? 1UL << 30 : 2UL << 20, span = len + align; // page-rounded len
    /// char *res = mmap(NULL, span, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    /// char *addr = res + ((offset % align) - ((uintptr_t)res % align) + align) % align;
    /// void *p = mmap(addr, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, offset);
    /// if (p == MAP_FAILED) munmap(res, span);   // keep errno first
    /// else { munmap(res, addr - res); munmap(addr + len, res + span - (addr + len)); }
    /// ```
    pub fn map(&self, offset: u64, len: usize) -> Result<Mapping> {
        Mapping::new(self, offset, len)
    }

    /// Maps the whole shared memory.
    pub fn map_all(&self) -> Result<Mapping> {
        let size = self.size()?;
        let len = usize::try_from(size).map_err(|_| {
            Error::invalid(
                &self.path,
                "mmap",
                format!("{size} bytes do not fit in memory"),
            )
        })?;
        self.map(0, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::errno::ENOTTY;

    #[test]
    fn fd_traits_expose_the_open_file() {
        let dev = Device::open("/dev/null").unwrap();
        assert!(dev.as_raw_fd() >= 0);
        assert_eq!(dev.as_fd().as_raw_fd(), dev.as_raw_fd());
        // The descriptor is the real one: an ivshmem ioctl on /dev/null gets ENOTTY.
        let e = dev.size().unwrap_err();
        assert_eq!(e.errno(), Some(ENOTTY));
        assert!(e.to_string().contains("not an ivshmem device"), "{e}");
    }
}
