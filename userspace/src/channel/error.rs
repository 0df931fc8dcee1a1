//! The one error type of the channel layer, convertible into `io::Error` with a fitting kind.

use std::fmt;
use std::io;

/// What went wrong in the channel layer.
///
/// Operations that implement `std::io` traits return `io::Error`; those built here carry a
/// `ChannelError` inside, which [`ChannelError::of`] gets back.
#[derive(Debug)]
#[non_exhaustive]
pub enum ChannelError {
    /// The region does not hold a channel layout this library understands (wrong magic or
    /// sizes in the header, or layout version 1 of an older ivshmem-rs).
    BadLayout(String),
    /// The layout was written by another version of this library.
    Version {
        /// The version in the header.
        found: u32,
        /// The version this library speaks.
        supported: u32,
    },
    /// The region is too small for the layout.
    TooSmall {
        /// Bytes needed.
        need: u64,
        /// Bytes the region has.
        have: u64,
    },
    /// A word read from shared memory breaks the protocol: a buggy or hostile peer, or the host
    /// writing into the region. The channel is unusable afterwards.
    Corrupt(String),
    /// An argument is not valid (name, capacity, a call on the wrong kind of channel).
    Invalid(String),
    /// The region has no room left for the rings of a new channel or connection.
    NoSpace {
        /// What needed the room: `channel 'NAME'`, `connection to 'SERVICE'`, ...
        name: String,
        /// Bytes it needs.
        need: u64,
        /// Bytes left in the region.
        free: u64,
    },
    /// Someone else holds the layout or the channel and did not let go in time.
    Busy(String),
    /// The message can never fit the ring.
    MessageTooLarge {
        /// The message's length.
        len: usize,
        /// The largest message the ring takes.
        max: usize,
    },
    /// The peer closed the channel, or stopped (its heartbeat did not advance for the liveness
    /// timeout), or this side was declared dead by the peer.
    PeerGone(String),
    /// No listener has the service, or it closed or died before accepting.
    Refused(String),
    /// A live listener already has the service.
    InUse(String),
    /// The timeout set on the channel expired first.
    TimedOut,
    /// Non-blocking mode, and the operation would have to wait.
    WouldBlock,
    /// The waker (eventfd, doorbell) failed.
    Io(io::Error),
    /// Opening, inspecting or mapping the device or file failed ([`super::Channel::open_path`]).
    Open {
        /// What failed, on which path, and a hint when there is one.
        what: String,
        /// The error, with the errno when the kernel gave one.
        source: io::Error,
    },
}

impl ChannelError {
    /// The `io::ErrorKind` this error maps to.
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            Self::BadLayout(_) | Self::Version { .. } | Self::Corrupt(_) => {
                io::ErrorKind::InvalidData
            }
            Self::TooSmall { .. } | Self::Invalid(_) | Self::MessageTooLarge { .. } => {
                io::ErrorKind::InvalidInput
            }
            Self::NoSpace { .. } => io::ErrorKind::StorageFull,
            Self::Busy(_) => io::ErrorKind::ResourceBusy,
            Self::PeerGone(_) => io::ErrorKind::BrokenPipe,
            Self::Refused(_) => io::ErrorKind::ConnectionRefused,
            Self::InUse(_) => io::ErrorKind::AddrInUse,
            Self::TimedOut => io::ErrorKind::TimedOut,
            Self::WouldBlock => io::ErrorKind::WouldBlock,
            Self::Io(e) | Self::Open { source: e, .. } => e.kind(),
        }
    }

    /// The errno behind the error, when the kernel reported it.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Self::Io(e) | Self::Open { source: e, .. } => e.raw_os_error(),
            _ => None,
        }
    }

    /// The `ChannelError` inside an `io::Error` returned by a channel, if there is one.
    pub fn of(err: &io::Error) -> Option<&ChannelError> {
        err.get_ref()?.downcast_ref()
    }
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadLayout(m) => write!(f, "not a usable channel layout: {m}"),
            Self::Version { found, supported } => write!(
                f,
                "channel layout version {found}, this library speaks version {supported}: zero \
                 the region to reuse it, or use the ivshmem-rs that laid it out"
            ),
            Self::TooSmall { need, have } => write!(
                f,
                "region of {have} bytes is too small: the layout needs {need}"
            ),
            Self::Corrupt(m) => write!(f, "shared memory corrupt: {m}"),
            Self::Invalid(m) => write!(f, "{m}"),
            Self::NoSpace { name, need, free } => write!(
                f,
                "no room for {name}: it needs {need} bytes, {free} are left"
            ),
            Self::Busy(m) => write!(f, "busy: {m}"),
            Self::MessageTooLarge { len, max } => write!(
                f,
                "message of {len} bytes is larger than the ring takes ({max} bytes at most)"
            ),
            Self::PeerGone(m) => write!(f, "peer gone: {m}"),
            Self::Refused(m) => write!(f, "connection refused: {m}"),
            Self::InUse(m) => write!(f, "in use: {m}"),
            Self::TimedOut => write!(f, "timed out"),
            Self::WouldBlock => write!(f, "operation would block"),
            Self::Io(e) => write!(f, "waker: {e}"),
            Self::Open { what, .. } => write!(f, "{what}"),
        }
    }
}

impl std::error::Error for ChannelError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io(e) | Self::Open { source: e, .. } => Some(e),
            _ => None,
        }
    }
}

impl From<ChannelError> for io::Error {
    fn from(e: ChannelError) -> Self {
        match e {
            ChannelError::Io(e) => e,
            e => io::Error::new(e.kind(), e),
        }
    }
}

impl From<io::Error> for ChannelError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_messages() {
        let e: io::Error = ChannelError::Corrupt("producer index 9 beyond 8".into()).into();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert_eq!(
            e.to_string(),
            "shared memory corrupt: producer index 9 beyond 8"
        );
        assert!(matches!(
            ChannelError::of(&e),
            Some(ChannelError::Corrupt(_))
        ));
        let e: io::Error = ChannelError::PeerGone("closed".into()).into();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
        let e: io::Error = ChannelError::Io(io::Error::from_raw_os_error(9)).into();
        assert_eq!(e.raw_os_error(), Some(9));
        assert_eq!(
            ChannelError::Version {
                found: 7,
                supported: 2
            }
            .to_string(),
            "channel layout version 7, this library speaks version 2: zero the region to \
             reuse it, or use the ivshmem-rs that laid it out"
        );
    }
}
