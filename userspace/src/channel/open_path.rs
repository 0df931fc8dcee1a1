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
        let mut opts = spin_waker_if_asked(opts);
        let region = if kind.is_char_device() {
            let text = path
                .to_str()
                .ok_or_else(|| ChannelError::Invalid(format!("{shown}: path is not UTF-8")))?;
            let dev = Device::open(text).map_err(device_error)?;
            let map = dev.map_all().map_err(device_error)?;
            // The mapping stays without the file, which the waker keeps as its own: the driver
            // counts interrupts per open file.
            opts = doorbell_of(dev, opts)?;
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

/// The options, with a spinning waker if [`Wait::Spin`] asks for one (else the options' waker
/// until a doorbell replaces it).
fn spin_waker_if_asked(opts: &Options) -> Options {
    let opts = opts.clone();
    match opts.wait {
        Wait::Spin => opts.waker(Arc::new(SpinWaker::default())),
        _ => opts,
    }
}

/// The options with a doorbell waker on `dev` unless they spin; without a doorbell there,
/// [`Wait::Doorbell`] is an error and [`Wait::Auto`] keeps the options' waker.
fn doorbell_of(dev: Device, opts: Options) -> Result<Options, ChannelError> {
    if opts.wait == Wait::Spin {
        return Ok(opts);
    }
    let shown = dev.path().to_string();
    match DoorbellWaker::new(dev, VECTOR) {
        Ok(waker) => Ok(opts.waker(Arc::new(waker))),
        Err(e) if e.kind() != io::ErrorKind::Unsupported => {
            Err(open_error(format!("{shown}: doorbell: {e}"), e))
        }
        Err(_) if opts.wait == Wait::Doorbell => Err(no_doorbell(&shown)),
        Err(_) => Ok(opts),
    }
}

/// The isolated topology (README, "Isolation"): `own` read-write and `peer` read-only, as
/// one region ([`Region::map_pair`]): device nodes such as `/dev/ivshmem1` and `/dev/ivshmem2`
/// (QEMU maps the peer's device read-only too: `readonly=on`), or regular files. Each end
/// writes only `own`; the other end passes the same two the other way round.
///
/// The data devices of this topology are `ivshmem-plain` (an `ivshmem-doorbell`'s memory
/// cannot be read-only): interrupts come from `doorbell`, a device with a doorbell that both
/// sides have (its memory is not used), when [`Options::wait`] is not [`Wait::Spin`]. Without
/// one, waiting spins ([`Wait::Doorbell`] is then an error) or uses [`Options::waker`].
pub fn open_region_pair(
    own: impl AsRef<Path>,
    peer: impl AsRef<Path>,
    doorbell: Option<&Path>,
    opts: &Options,
) -> Result<(Region, Options), ChannelError> {
    let (own, peer) = (own.as_ref(), peer.as_ref());
    let mut opts = spin_waker_if_asked(opts);
    let open = |path: &Path, write: bool| {
        File::options()
            .read(true)
            .write(write)
            .open(path)
            .map_err(|e| open_error(format!("{}: open: {e}", path.display()), e))
    };
    let region = Region::map_pair(&open(own, true)?, &open(peer, false)?).map_err(|e| {
        open_error(
            format!("{} with peer {}: {e}", own.display(), peer.display()),
            e,
        )
    })?;
    match doorbell {
        Some(path) => {
            let text = path.to_str().ok_or_else(|| {
                ChannelError::Invalid(format!("{}: path is not UTF-8", path.display()))
            })?;
            opts = doorbell_of(Device::open(text).map_err(device_error)?, opts)?;
        }
        None if opts.wait == Wait::Doorbell => {
            return Err(ChannelError::Invalid(
                "a pair of devices has no doorbell of its own: name the doorbell device, or \
                 spin"
                    .into(),
            ))
        }
        None => {}
    }
    Ok((region, opts))
}

/// One device ([`open_region`]) or, with `peer`, a pair ([`open_region_pair`]) whose wake-ups
/// come from `doorbell`: what the tools' `-d`, `--peer-device` and `--doorbell` and the C
/// options' `peer_path` and `doorbell_path` say. A doorbell device without a peer is an error.
pub fn open_topology(
    own: impl AsRef<Path>,
    peer: Option<&Path>,
    doorbell: Option<&Path>,
    opts: &Options,
) -> Result<(Region, Options), ChannelError> {
    match peer {
        Some(peer) => open_region_pair(own, peer, doorbell, opts),
        None if doorbell.is_some() => Err(ChannelError::Invalid(
            "a doorbell device is for a pair of devices: name the peer's device too".into(),
        )),
        None => open_region(own, opts),
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
