//! Interrupts as user space sees them. `eventfd` registers an eventfd for a vector (one open
//! file per vector: a second one gets EBUSY, a bad fd EBADF) and polls it as an epoll user
//! would; `counted` checks that the interrupts which arrive while a file is open are all
//! reported by its next wait, and only once.

use std::time::Duration;

use ivshmem::errno::{EAGAIN, EBADF, EBUSY};
use ivshmem::{Device, ToolError};

use crate::sys;

use crate::common::{open_or_report, wait_for_file, Checker};

/// Registers an eventfd for `vector`, checks a second file gets EBUSY for the same vector,
/// then polls the eventfd like an epoll user would and prints what it read.
pub(crate) fn eventfd_poll(path: &str, vector: u32, ms: i32) -> i32 {
    use std::io::Read;
    use std::os::fd::FromRawFd;
    let mut c = Checker { failed: 0 };
    let Some(dev) = open_or_report(path) else {
        return 1;
    };
    // SAFETY: Plain syscall; the fd is owned by `efd` below.
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
    // SAFETY: One valid pollfd.
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
pub(crate) fn counted(path: &str, vector: u32, go: &str) -> i32 {
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
