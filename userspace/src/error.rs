//! Errors that name the device, the operation and the errno, with a hint for the usual causes.

use std::fmt;
use std::io;

use crate::sys::errno::{EACCES, ENODEV, ENOENT, ENOTTY, EOPNOTSUPP, EPERM};

/// An error of an operation on an ivshmem device.
#[derive(Debug)]
pub struct Error {
    path: String,
    op: &'static str,
    source: io::Error,
}

impl Error {
    pub(crate) fn new(path: &str, op: &'static str, source: io::Error) -> Self {
        Self {
            path: path.to_string(),
            op,
            source,
        }
    }

    /// An error detected here rather than by the kernel.
    pub(crate) fn invalid(path: &str, op: &'static str, msg: String) -> Self {
        Self::new(path, op, io::Error::new(io::ErrorKind::InvalidInput, msg))
    }

    /// The errno, when the kernel reported the error.
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }

    /// The device path.
    pub fn path(&self) -> &str {
        &self.path
    }

    fn hint(&self) -> Option<&'static str> {
        match (self.op, self.errno()?) {
            ("open", ENOENT) => Some("is the ivshmem module loaded? (insmod ivshmem.ko)"),
            ("open", EACCES | EPERM) => {
                Some("permission denied: run as root or see the udev rule in README.md")
            }
            (_, ENODEV) => Some("the device was removed"),
            (_, EOPNOTSUPP) => Some("not a doorbell device: ivshmem-plain has no interrupts"),
            ("ioctl", ENOTTY) => Some("not an ivshmem device, or the module is too old"),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.path, self.op, self.source)?;
        if let Some(hint) = self.hint() {
            write!(f, " ({hint})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::errno::EINVAL;

    fn err(op: &'static str, errno: i32) -> String {
        Error::new("/dev/ivshmem0", op, io::Error::from_raw_os_error(errno)).to_string()
    }

    #[test]
    fn messages_name_path_operation_errno_and_hint() {
        let e = err("open", ENOENT);
        assert!(
            e.starts_with("/dev/ivshmem0: open: No such file or directory"),
            "{e}"
        );
        assert!(e.contains("is the ivshmem module loaded"), "{e}");
        let e = err("open", EACCES);
        assert!(
            e.contains("Permission denied") && e.contains("udev rule in README.md"),
            "{e}"
        );
        assert!(err("ioctl", ENODEV).contains("the device was removed"));
        assert!(err("ioctl", EOPNOTSUPP).contains("not a doorbell device"));
        assert!(err("ioctl", ENOTTY).contains("not an ivshmem device"));
        assert_eq!(
            err("mmap", EINVAL),
            "/dev/ivshmem0: mmap: Invalid argument (os error 22)"
        );
    }

    #[test]
    fn errno_is_kept() {
        let e = Error::new("x", "open", io::Error::from_raw_os_error(EACCES));
        assert_eq!(e.errno(), Some(EACCES));
        assert_eq!(e.path(), "x");
        assert_eq!(
            Error::invalid("x", "read", "out of range".into()).errno(),
            None
        );
    }
}
