//! What several checks share: opening the device or saying why not, waiting for the test's
//! GO-FILE, and the `ok NAME` / `FAIL NAME: why` lines with the errno expectations behind them.

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use ivshmem::{Device, ToolError};

pub(crate) const PAGE: usize = 4096;

/// Opens `path`, or prints `FAIL open: ...` and returns `None`.
pub(crate) fn open_or_report(path: &str) -> Option<Device> {
    Device::open(path)
        .inspect_err(|e| println!("FAIL open: {e}"))
        .ok()
}

/// Waits up to 120 s for the test to create `go`; whether it did.
pub(crate) fn wait_for_file(go: &str) -> bool {
    let start = Instant::now();
    while !Path::new(go).exists() {
        if start.elapsed() > Duration::from_secs(120) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

pub(crate) struct Checker {
    pub(crate) failed: usize,
}

impl Checker {
    pub(crate) fn check(&mut self, name: &str, result: Result<(), impl Into<ToolError>>) {
        match result.map_err(Into::into) {
            Ok(()) => println!("ok {name}"),
            Err(why) => {
                println!("FAIL {name}: {why}");
                self.failed += 1;
            }
        }
    }
}

pub(crate) fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

pub(crate) fn expect_errno(what: &str, rc_failed: bool, want: i32) -> Result<(), ToolError> {
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
