//! Opening a channel by path: on an ivshmem device node, or on a regular file (the host's side
//! of the shared memory, tests).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::sync::Arc;

use super::{Channel, ChannelError, DoorbellWaker, Listener, Options, Region, SpinWaker, Wait};
use crate::Device;

/// The vector channels sleep on and ring: one is enough, a spurious wake-up only costs a look
/// at the ring.
const VECTOR: u32 = 0;

impl Channel {
    /// Opens (creating if needed) the channel `name` on `path`: a device node such as
    /// `/dev/ivshmem0` (the whole shared memory is mapped) or a regular file of at least
    /// [`super::MIN_REGION`] bytes, such as the host's backing file in `/dev/shm`.
    ///
    /// The waker follows [`Options::wait`]: on a device with a doorbell, [`Wait::Auto`] and
    /// [`Wait::Doorbell`] sleep in `IVSHMEM_WAIT` ([`DoorbellWaker`]); elsewhere `Auto` keeps
    /// [`Options::waker`] and `Doorbell` is an error.
    pub fn open_path(
        path: impl AsRef<Path>,
        name: &str,
        opts: &Options,
    ) -> Result<Channel, ChannelError> {
        let (region, opts) = region_at(path.as_ref(), opts)?;
        Channel::open(&region, name, &opts)
    }

    /// [`Channel::connect`] on a device node or regular file, with the waker chosen as in
    /// [`Channel::open_path`]. Each call maps the device: [`open_region`] maps it once for
    /// many connections.
    pub fn connect_path(
        path: impl AsRef<Path>,
        service: &str,
        opts: &Options,
    ) -> Result<Channel, ChannelError> {
        let (region, opts) = region_at(path.as_ref(), opts)?;
        Channel::connect(&region, service, &opts)
    }
}

impl Listener {
    /// [`Listener::bind`] on a device node or regular file, with the waker chosen as in
    /// [`Channel::open_path`] (each accepted connection gets a doorbell waker of its own).
    pub fn bind_path(
        path: impl AsRef<Path>,
        service: &str,
        opts: &Options,
    ) -> Result<Listener, ChannelError> {
        let (region, opts) = region_at(path.as_ref(), opts)?;
        Listener::bind(&region, service, &opts)
    }
}

/// The region at `path` and the options with the waker [`Options::wait`] chooses there: for a
/// process that makes many connections on one device ([`Channel::connect`] gives each end a
/// doorbell waker of its own), mapping the device once.
pub fn open_region(
    path: impl AsRef<Path>,
    opts: &Options,
) -> Result<(Region, Options), ChannelError> {
    region_at(path.as_ref(), opts)
}

fn region_at(path: &Path, opts: &Options) -> Result<(Region, Options), ChannelError> {
    {
        let shown = path.display();
        let kind = std::fs::metadata(path)
            .map_err(|e| open_error(format!("{shown}: {e}"), e))?
            .file_type();
        let mut opts = opts.clone();
        if opts.wait == Wait::Spin {
            opts = opts.waker(Arc::new(SpinWaker::default()));
        }
        let region = if kind.is_char_device() {
            let text = path
                .to_str()
                .ok_or_else(|| ChannelError::Invalid(format!("{shown}: path is not UTF-8")))?;
            let dev = Device::open(text).map_err(device_error)?;
            let map = dev.map_all().map_err(device_error)?;
            if opts.wait != Wait::Spin {
                // The mapping stays without the file, which the waker keeps as its own: the
                // driver counts interrupts per open file.
                match DoorbellWaker::new(dev, VECTOR) {
                    Ok(waker) => opts = opts.waker(Arc::new(waker)),
                    Err(e) if e.kind() != io::ErrorKind::Unsupported => {
                        return Err(open_error(format!("{shown}: doorbell: {e}"), e));
                    }
                    Err(_) if opts.wait == Wait::Doorbell => {
                        return Err(no_doorbell(&shown.to_string()));
                    }
                    Err(_) => {}
                }
            }
            Region::from_mapping(map)
        } else if kind.is_file() {
            if opts.wait == Wait::Doorbell {
                return Err(no_doorbell(&shown.to_string()));
            }
            let file = File::options()
                .read(true)
                .write(true)
                .open(path)
                .map_err(|e| open_error(format!("{shown}: open: {e}"), e))?;
            Region::map_file(&file).map_err(|e| open_error(format!("{shown}: mmap: {e}"), e))?
        } else {
            return Err(ChannelError::Invalid(format!(
                "{shown}: neither an ivshmem device nor a regular file"
            )));
        };
        Ok((region, opts))
    }
}

fn no_doorbell(path: &str) -> ChannelError {
    ChannelError::Invalid(format!(
        "{path}: no doorbell to wait on (ivshmem-plain or a file): use spin waiting"
    ))
}

fn open_error(what: String, source: io::Error) -> ChannelError {
    ChannelError::Open { what, source }
}

/// A device error keeps its message (with the driver hint) and its errno.
fn device_error(e: crate::Error) -> ChannelError {
    let source = match e.errno() {
        Some(errno) => io::Error::from_raw_os_error(errno),
        None => io::Error::other(e.to_string()),
    };
    open_error(e.to_string(), source)
}
