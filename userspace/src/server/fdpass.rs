//! Sending one 8-byte message with an optional file descriptor (SCM_RIGHTS) over a UNIX
//! socket: the unit of QEMU's ivshmem server protocol. std has no stable API for it.

use std::ffi::{c_int, c_void};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

use crate::sys::{recvmsg, sendmsg, IoVec, MsgHdr};

/// A header for one buffer and a control buffer (`controllen` 0: none).
fn msghdr(iov: &mut IoVec, control: *mut c_void, controllen: usize) -> MsgHdr {
    MsgHdr {
        name: std::ptr::null_mut(),
        namelen: 0,
        iov,
        iovlen: 1,
        control,
        controllen,
        flags: 0,
    }
}

const SOL_SOCKET: c_int = 1;
const SCM_RIGHTS: c_int = 1;
const MSG_NOSIGNAL: c_int = 0x4000;
/// `CMSG_LEN(sizeof(int))` and `CMSG_SPACE(sizeof(int))` on 64-bit Linux.
const CMSG_LEN_FD: usize = 16 + 4;
const CMSG_SPACE_FD: usize = 16 + 8;

/// Sends `value` (little-endian i64, as QEMU reads it) and, if given, `fd` along with it.
pub fn send_msg(stream: &UnixStream, value: i64, fd: Option<RawFd>) -> io::Result<()> {
    let mut bytes = value.to_le_bytes();
    let mut iov = IoVec {
        base: bytes.as_mut_ptr().cast(),
        len: bytes.len(),
    };
    // u64 storage keeps the control buffer aligned for cmsghdr.
    let mut control = [0u64; CMSG_SPACE_FD / 8];
    let mut msg = msghdr(&mut iov, std::ptr::null_mut(), 0);
    if let Some(fd) = fd {
        let buf = control.as_mut_ptr().cast::<u8>();
        // SAFETY: `control` is CMSG_SPACE_FD bytes, 8-aligned: room for a cmsghdr (len: usize,
        // level: c_int, type: c_int) followed by one c_int.
        unsafe {
            buf.cast::<usize>().write(CMSG_LEN_FD);
            buf.add(8).cast::<c_int>().write(SOL_SOCKET);
            buf.add(12).cast::<c_int>().write(SCM_RIGHTS);
            buf.add(16).cast::<c_int>().write(fd);
        }
        msg.control = buf.cast();
        msg.controllen = CMSG_SPACE_FD;
    }
    // SAFETY: `msg` and everything it points to live across the call.
    let n = unsafe { sendmsg(stream.as_raw_fd(), &msg, MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != bytes.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short sendmsg"));
    }
    Ok(())
}

/// Receives one message as QEMU does: the i64 and the fd that came with it, if any.
/// `Ok(None)` at end of stream.
pub fn recv_msg(stream: &UnixStream) -> io::Result<Option<(i64, Option<std::os::fd::OwnedFd>)>> {
    use std::os::fd::FromRawFd;
    let mut bytes = [0u8; 8];
    let mut iov = IoVec {
        base: bytes.as_mut_ptr().cast(),
        len: bytes.len(),
    };
    let mut control = [0u64; CMSG_SPACE_FD / 8];
    let mut msg = msghdr(&mut iov, control.as_mut_ptr().cast(), CMSG_SPACE_FD);
    // SAFETY: `msg` and its buffers live across the call; MSG_WAITALL for the 8 bytes.
    let n = unsafe { recvmsg(stream.as_raw_fd(), &mut msg, 0x100) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n == 0 {
        return Ok(None);
    }
    if n != 8 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "short message",
        ));
    }
    let mut fd = None;
    if msg.controllen >= CMSG_LEN_FD {
        let buf = control.as_ptr().cast::<u8>();
        // SAFETY: The kernel filled a cmsghdr of at least CMSG_LEN_FD bytes into `control`.
        let (level, kind, raw) = unsafe {
            (
                buf.add(8).cast::<c_int>().read(),
                buf.add(12).cast::<c_int>().read(),
                buf.add(16).cast::<c_int>().read(),
            )
        };
        if level == SOL_SOCKET && kind == SCM_RIGHTS {
            // SAFETY: SCM_RIGHTS installed `raw` in our table; we own it now.
            fd = Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) });
        }
    }
    Ok(Some((i64::from_le_bytes(bytes), fd)))
}
