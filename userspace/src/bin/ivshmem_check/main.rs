//! `ivshmem-check`: the driver's contract, checked from user space inside a guest.
//!
//! `ivshmem-check errors DEVICE` runs every bad-input case and prints `ok NAME` or
//! `FAIL NAME: why` per check (exit 1 if any failed). `ivshmem-check revoke DEVICE FILE` maps
//! the device, says `mapped`, waits for FILE to exist (the test removes the device meanwhile),
//! then checks that ioctl and mmap fail with ENODEV and touches the old mapping, which must
//! kill it with SIGBUS. `ivshmem-check hold DEVICE CACHE FILE` only maps and waits.
//! `ivshmem-check revoke-huge` does what `revoke` does on a mapping placed for huge entries.

use ivshmem::ToolError;

mod churn;
mod common;
mod doorbell;
mod echo;
mod errors;
mod poll;
mod revoke;
mod scribble;
mod split;
mod sys;

use common::PAGE;

const USAGE: &str = "\
usage: ivshmem-check errors DEVICE            every bad input gets its errno
       ivshmem-check revoke DEVICE GO-FILE    map, wait for GO-FILE, expect ENODEV and SIGBUS
       ivshmem-check revoke-huge DEVICE GO-FILE OFFSET LEN touched|untouched
                                       as revoke, on [OFFSET, OFFSET+LEN) mapped at an address
                                       congruent to OFFSET modulo 1 GiB (LEN >= 1 GiB) or
                                       2 MiB; touched: its first page is written before the
                                       removal and read after, untouched: nothing is accessed
                                       before, the middle page after
       ivshmem-check split DEVICE OFFSET LEN   map [OFFSET, OFFSET+LEN) placed for huge entries,
                                       fill probe pages with pattern 241, fault the entries in,
                                       then munmap, mprotect and madvise (EINVAL: VM_PFNMAP)
                                       pages inside them: the
                                       probe pages keep their bytes, take pattern 242 (the
                                       read-only one excepted), the hole and the read-only page
                                       fault (SIGSEGV)
       ivshmem-check hold DEVICE wb|wc|uc GO-FILE   map with a cache type until GO-FILE exists
       ivshmem-check eventfd DEVICE VECTOR MS   register an eventfd, poll it up to MS ms
       ivshmem-check counted DEVICE VECTOR GO-FILE   open, wait for GO-FILE, count interrupts
       ivshmem-check race DEVICE GO-FILE   mmap in a loop while the device is removed;
                                           after GO-FILE every mapping must raise SIGBUS
       ivshmem-check churn DEVICE N   hold DEVICE open while N children map it and exit;
                                      print the drop of MemAvailable
       ivshmem-check poll DEVICE N MESSAGES send|recv   N message channels on one doorbell
                                      device; recv polls them all on their shared eventfd
       ivshmem-check echo PORT        a TCP echo server on 127.0.0.1:PORT (until killed)
       ivshmem-check scribble DEVICE GO-FILE   store random words all over DEVICE until
                                      GO-FILE exists; print how many stuck (read back)";

fn main() {
    ivshmem::args::die_on_closed_output();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["errors", dev] => errors::run(dev),
        ["revoke", dev, go] => revoke::revoke(dev, go),
        ["race", dev, go] => revoke::race(dev, go),
        ["split", dev, offset, len] => {
            let size = |v: &str| ivshmem::args::parse_size(v).ok();
            match (
                size(offset),
                size(len).and_then(|l| usize::try_from(l).ok()),
            ) {
                (Some(o), Some(l)) if l >= 1 << 21 && l.is_multiple_of(PAGE) => {
                    split::run(dev, o, l)
                }
                _ => {
                    eprintln!("{USAGE}");
                    2
                }
            }
        }
        ["revoke-huge", dev, go, offset, len, how] => {
            let size = |v: &str| ivshmem::args::parse_size(v).ok();
            match (
                size(offset),
                size(len).and_then(|l| usize::try_from(l).ok()),
                how,
            ) {
                (Some(o), Some(l), "touched" | "untouched") => {
                    revoke::revoke_huge(dev, go, o, l, how == "touched")
                }
                _ => {
                    eprintln!("{USAGE}");
                    2
                }
            }
        }
        ["scribble", dev, go] => scribble::run(dev, go),
        ["echo", port] => match port.parse() {
            Ok(p) => echo::run(p),
            Err(_) => 2,
        },
        ["poll", dev, n, m, side] => match (n.parse(), m.parse()) {
            (Ok(n @ 1..), Ok(m)) => poll::run(dev, n, m, side),
            _ => 2,
        },
        ["churn", dev, n] => match n.parse() {
            Ok(n) => churn::run(dev, n),
            Err(_) => 2,
        },
        ["counted", dev, vector, go] => match vector.parse() {
            Ok(v) => doorbell::counted(dev, v, go),
            Err(_) => 2,
        },
        ["eventfd", dev, vector, ms] => match (vector.parse(), ms.parse()) {
            (Ok(v), Ok(ms)) => doorbell::eventfd_poll(dev, v, ms),
            _ => 2,
        },
        ["hold", dev, cache, go] => match cache
            .parse()
            .map_err(ToolError::Usage)
            .and_then(|c| revoke::hold(dev, c, go))
        {
            Ok(_) => 0,
            Err(e) => {
                println!("FAIL hold: {e}");
                1
            }
        },
        ["-h"] | ["--help"] => {
            println!("{USAGE}");
            0
        }
        _ => {
            eprintln!("{USAGE}");
            2
        }
    };
    std::process::exit(code);
}
