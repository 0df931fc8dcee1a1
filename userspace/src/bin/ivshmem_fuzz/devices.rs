//! The devices: the `/dev/ivshmemN` nodes and the PCI devices bound to the driver, and the
//! rebinder thread that unbinds and binds them again while the workers run.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use crate::generate::Rng;
use crate::shared::Shared;

/// `/dev/ivshmemN` nodes present, by number.
pub(crate) fn device_nodes() -> Vec<String> {
    let mut nums: Vec<u32> = std::fs::read_dir("/dev")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_prefix("ivshmem")?
                        .parse()
                        .ok()
                })
                .collect()
        })
        .unwrap_or_default();
    nums.sort_unstable();
    nums.into_iter()
        .map(|n| format!("/dev/ivshmem{n}"))
        .collect()
}

/// PCI addresses of the 1af4:1110 devices bound to the ivshmem driver.
pub(crate) fn bound_devices() -> Vec<String> {
    let base = "/sys/bus/pci/devices";
    let mut out: Vec<String> = std::fs::read_dir(base)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().map(String::from))
                .filter(|bdf| {
                    let read = |f: &str| std::fs::read_to_string(format!("{base}/{bdf}/{f}"));
                    let driver = std::fs::read_link(format!("{base}/{bdf}/driver"));
                    read("vendor").is_ok_and(|v| v.trim() == "0x1af4")
                        && read("device").is_ok_and(|v| v.trim() == "0x1110")
                        && driver.is_ok_and(|d| d.ends_with("ivshmem"))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

pub(crate) const DRIVER: &str = "/sys/bus/pci/drivers/ivshmem";

/// Unbinds a random device (sometimes all), waits a little, binds it again; repeats.
pub(crate) fn rebinder(
    sh: &Shared,
    bdfs: &[String],
    unbind: &File,
    bind: &File,
    ms: (u64, u64),
    seed: u64,
) {
    let mut r = Rng::new(seed);
    while !sh.stop.load(Relaxed) {
        let chosen: Vec<&String> = if r.chance(25) {
            bdfs.iter().collect()
        } else {
            vec![&bdfs[r.below(bdfs.len() as u64) as usize]]
        };
        for bdf in &chosen {
            if unbind.write_at(bdf.as_bytes(), 0).is_err() {
                sh.rebind_errors.fetch_add(1, Relaxed);
            }
        }
        std::thread::sleep(Duration::from_millis(r.below(ms.1 / 2 + 1)));
        for bdf in &chosen {
            match bind.write_at(bdf.as_bytes(), 0) {
                Ok(_) => {
                    sh.rebinds.fetch_add(1, Relaxed);
                }
                Err(_) => {
                    sh.rebind_errors.fetch_add(1, Relaxed);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(r.between(ms.0, ms.1)));
    }
}

/// Binds every device in `bdfs` that is not bound; whether all are bound in the end.
pub(crate) fn bind_all(bdfs: &[String], bind: &File) -> bool {
    for _ in 0..50 {
        let unbound: Vec<&String> = bdfs
            .iter()
            .filter(|b| std::fs::read_link(format!("/sys/bus/pci/devices/{b}/driver")).is_err())
            .collect();
        if unbound.is_empty() {
            return true;
        }
        for b in unbound {
            let _ = bind.write_at(b.as_bytes(), 0);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}
