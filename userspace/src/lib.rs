//! Safe access to QEMU ivshmem shared memory through the `/dev/ivshmemN` nodes of the
//! `ivshmem` kernel module.
//!
//! ```no_run
//! let dev = ivshmem::Device::open_index(0)?;
//! let map = dev.map(0, 4096)?;
//! map.write(0, b"hello")?;
//! # Ok::<(), ivshmem::Error>(())
//! ```

pub mod capi;
pub mod channel;
mod device;
mod error;
mod mapping;
pub mod server;

// The tools' plumbing: public because the binaries of this package use it, not part of the
// documented API (no stability promise): argument parsing, the reproducible test pattern, the
// message encoding of read_write, placed mappings, the system calls beyond std as typed
// wrappers (`os`; the raw ones in `sys` are the library's own), errno values, the tools'
// errors, the local sockets that ivshmem-socket carries and ivshmem-bench measures against.
#[doc(hidden)]
pub mod args;
#[doc(hidden)]
pub mod local_socket;
#[doc(hidden)]
pub mod message;
#[doc(hidden)]
pub mod os;
#[doc(hidden)]
pub mod pattern;
#[doc(hidden)]
pub mod placed;
mod sys;
#[doc(hidden)]
pub use sys::errno;
mod tool_error;

/// The ioctl ABI, shared with the kernel module: one source file for both.
#[path = "../../rust/uapi.rs"]
#[allow(dead_code)]
pub mod uapi;

pub use device::{CacheType, Device, GrantedCache};
pub use error::Error;
pub use mapping::Mapping;
#[doc(hidden)]
pub use tool_error::ToolError;

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;
