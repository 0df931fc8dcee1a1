//! The error of a tool, as a type: exit statuses and errno checks follow the variant, never the
//! text of a message. The messages are what users and the VM suite (`scripts/vmtests/`) read.

use std::fmt;
use std::io;

use crate::sys::errno;

/// Why a tool failed.
#[derive(Debug)]
pub enum ToolError {
    /// A bad command line: exit status 2.
    Usage(String),
    /// A device operation failed (path, operation, errno and hint).
    Device(crate::Error),
    /// A device operation whose errno is the answer scripts look for (`ivshmem wait`): shown
    /// with the errno's name first, e.g. `ETIMEDOUT: /dev/ivshmem0: ioctl: ...`.
    Errno(crate::Error),
    /// A system call outside the device failed (a plain file, a socket).
    Io(io::Error),
    /// As `Io`, with what it was done to: `socket /tmp/x: Address in use`.
    Sys {
        /// The object of the call, as the user named it.
        what: String,
        source: io::Error,
    },
    /// The memory does not hold what it should: a corrupt message, a pattern mismatch, a copy
    /// that did not arrive.
    Check(String),
    /// The request cannot be done as asked: a region too small, no answer in time, ...
    Failed(String),
}

impl ToolError {
    /// A usage error with `msg`.
    pub fn usage(msg: impl Into<String>) -> Self {
        Self::Usage(msg.into())
    }

    /// A failed system call on `what`.
    pub fn sys(what: impl Into<String>, source: io::Error) -> Self {
        Self::Sys {
            what: what.into(),
            source,
        }
    }

    /// The process exit status for this error: 2 for usage errors, 1 for the rest.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Usage(_) => 2,
            _ => 1,
        }
    }

    /// The errno, when a system call failed.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Device(e) | Self::Errno(e) => e.errno(),
            Self::Io(e) | Self::Sys { source: e, .. } => e.raw_os_error(),
            _ => None,
        }
    }

    /// Prints `prog: message` on stderr and exits with [`ToolError::exit_code`].
    pub fn exit(&self, prog: &str) -> ! {
        eprintln!("{prog}: {self}");
        std::process::exit(self.exit_code())
    }
}

impl fmt::Display for ToolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Usage(m) | Self::Check(m) | Self::Failed(m) => f.write_str(m),
            Self::Device(e) => e.fmt(f),
            Self::Errno(e) => {
                let name = e.errno().and_then(errno::name).unwrap_or("error");
                write!(f, "{name}: {e}")
            }
            Self::Io(e) => e.fmt(f),
            Self::Sys { what, source } => write!(f, "{what}: {source}"),
        }
    }
}

impl std::error::Error for ToolError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Device(e) | Self::Errno(e) => Some(e),
            Self::Io(e) | Self::Sys { source: e, .. } => Some(e),
            _ => None,
        }
    }
}

impl From<crate::Error> for ToolError {
    fn from(e: crate::Error) -> Self {
        Self::Device(e)
    }
}

impl From<io::Error> for ToolError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::errno::{EAGAIN, EINVAL, ENOENT, ETIMEDOUT};

    fn dev_err(op: &'static str, n: i32) -> crate::Error {
        crate::Error::new("/dev/ivshmem0", op, io::Error::from_raw_os_error(n))
    }

    #[test]
    fn usage_exits_2_everything_else_1() {
        assert_eq!(ToolError::usage("unknown option -x").exit_code(), 2);
        assert_eq!(ToolError::Device(dev_err("open", ENOENT)).exit_code(), 1);
        assert_eq!(ToolError::Check("checksum mismatch".into()).exit_code(), 1);
        assert_eq!(ToolError::Failed("too small".into()).exit_code(), 1);
        assert_eq!(ToolError::from(io::Error::other("x")).exit_code(), 1);
    }

    #[test]
    fn messages_are_the_underlying_ones() {
        let e = ToolError::from(dev_err("open", ENOENT));
        assert_eq!(e.to_string(), dev_err("open", ENOENT).to_string());
        assert!(
            e.to_string().contains("is the ivshmem module loaded"),
            "{e}"
        );
        assert_eq!(ToolError::usage("usage: x").to_string(), "usage: x");
        assert_eq!(
            ToolError::from(io::Error::from_raw_os_error(EINVAL)).to_string(),
            "Invalid argument (os error 22)"
        );
    }

    #[test]
    fn errno_variant_names_the_errno_first() {
        let e = ToolError::Errno(dev_err("ioctl", ETIMEDOUT));
        assert_eq!(
            e.to_string(),
            "ETIMEDOUT: /dev/ivshmem0: ioctl: Connection timed out (os error 110)"
        );
        assert_eq!(e.errno(), Some(ETIMEDOUT));
        assert!(ToolError::Errno(dev_err("ioctl", EAGAIN))
            .to_string()
            .starts_with("EAGAIN: "));
        let other = crate::Error::invalid("/dev/ivshmem0", "ioctl", "odd".into());
        assert!(ToolError::Errno(other).to_string().starts_with("error: "));
    }

    #[test]
    fn errno_is_carried() {
        assert_eq!(
            ToolError::from(dev_err("open", ENOENT)).errno(),
            Some(ENOENT)
        );
        assert_eq!(
            ToolError::from(io::Error::from_raw_os_error(EAGAIN)).errno(),
            Some(EAGAIN)
        );
        assert_eq!(ToolError::Check("x".into()).errno(), None);
    }
}
