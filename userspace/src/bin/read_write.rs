//! The seeds' shared-memory exchange, through /dev/ivshmemN: the first run writes a message,
//! the next run (on another VM) reads and clears it.

use std::time::{Duration, Instant};

use ivshmem::args::{device_path, run_tool, Args};
use ivshmem::errno::ETIMEDOUT;
use ivshmem::message::{self, Slot};
use ivshmem::{Device, ToolError};

const PROG: &str = "read_write";
const DEFAULT_MESSAGE: &str = "Other VM says hello world!";
/// The window mapped at the offset: the longest message is this less the header.
const WINDOW: u64 = 1 << 20;
const PAGE: u64 = 4096;

const HELP: &str = "\
usage: read_write [-d DEVICE] [-o OFFSET] [-m MESSAGE] [--clear] [--wait SECONDS] [--peer ID]

If the shared memory holds a message at OFFSET, print it and clear it;
otherwise write MESSAGE there for another VM to read.

  -d, --device DEVICE   /dev/ivshmemN path or index N (default /dev/ivshmem0)
  -o, --offset OFFSET   byte offset of the message slot (default 0; 4K, 1M, 0x1000 work)
  -m, --message TEXT    message to write (default: 'Other VM says hello world!')
      --clear           clear the slot (e.g. after a corrupt message) and exit
      --wait SECONDS    (doorbell devices) if there is no message, sleep until a peer rings
                        vector 0 and read it, instead of writing one
      --peer ID         (doorbell devices) after writing, ring vector 0 of peer ID
  -h, --help            this help

Exit status: 0 on success, 1 on a device or message error, 2 on a usage error.";

#[derive(Debug)]
struct Opts {
    device: String,
    offset: u64,
    message: String,
    clear: bool,
    wait: Option<u64>,
    peer: Option<u32>,
}

fn parse(mut args: Args) -> Result<Option<Opts>, ToolError> {
    if args.flag(&["-h", "--help"]) {
        return Ok(None);
    }
    let clear = args.flag(&["--clear"]);
    let device = device_path(args.value(&["-d", "--device"])?);
    let offset = args.size(&["-o", "--offset"])?.unwrap_or(0);
    let message = args
        .value(&["-m", "--message"])?
        .unwrap_or(DEFAULT_MESSAGE.into());
    let wait = args.parsed::<u64>(&["--wait"])?;
    let peer = args.parsed::<u32>(&["--peer"])?;
    let rest = args.finish()?;
    if !rest.is_empty() {
        return Err(ToolError::Usage(format!(
            "unexpected argument '{}'",
            rest[0]
        )));
    }
    if offset % 4 != 0 {
        return Err(ToolError::Usage(format!(
            "offset {offset} is not a multiple of 4"
        )));
    }
    if message.len() as u64 > WINDOW - message::HEADER_LEN as u64 {
        return Err(ToolError::Usage(format!(
            "message too long: {} bytes",
            message.len()
        )));
    }
    Ok(Some(Opts {
        device,
        offset,
        message,
        clear,
        wait,
        peer,
    }))
}

fn run(o: &Opts) -> Result<(), ToolError> {
    let dev = Device::open(&o.device)?;
    let size = dev.size()?;
    if o.offset + message::HEADER_LEN as u64 > size {
        return Err(ToolError::Failed(format!(
            "offset {} leaves no room for a message in the {size}-byte region of {}",
            o.offset, o.device
        )));
    }
    let base = o.offset & !(PAGE - 1);
    let len = (size - base).min(WINDOW + PAGE);
    let map = dev.map(base, len as usize)?;
    println!("--- mmap successful");
    let at = (o.offset - base) as usize;
    if o.clear {
        message::clear(&map, at)?;
        println!("Cleared the message slot at offset {}", o.offset);
        return Ok(());
    }
    let mut slot = message::read(&map, at)?;
    if let (Slot::Empty, Some(secs)) = (&slot, o.wait) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        println!("--- waiting for a message (up to {secs} s)");
        while slot == Slot::Empty {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ToolError::Failed(format!("no message within {secs} s")));
            }
            match dev.wait(0, Some(left)) {
                Ok(_) => {}
                Err(e) if e.errno() == Some(ETIMEDOUT) => {}
                Err(e) => return Err(e.into()),
            }
            slot = message::read(&map, at)?;
        }
    }
    match slot {
        Slot::Message(text) => {
            message::clear(&map, at)?;
            println!("Read from shmem: '{text}'");
        }
        Slot::Empty => {
            if o.message.len() + message::HEADER_LEN > map.len() - at {
                return Err(ToolError::Failed(format!(
                    "message does not fit at offset {}",
                    o.offset
                )));
            }
            message::write(&map, at, &o.message)?;
            if let Some(peer) = o.peer {
                dev.ring(peer, 0)?;
                println!("Written to shmem: '{}'; rang peer {peer}", o.message);
            } else {
                println!(
                    "Written to shmem: '{}'; run this program again on another VM",
                    o.message
                );
            }
        }
        Slot::Corrupt(why) => {
            return Err(ToolError::Check(format!(
                "corrupt message at offset {} ({why}); left as is: run with --clear to reset it",
                o.offset
            )));
        }
    }
    Ok(())
}

fn main() {
    run_tool(PROG, HELP, parse, |o| run(&o));
}

#[cfg(test)]
mod tests {
    use super::*;
    use ivshmem::errno::ENOENT;

    fn p(a: &[&str]) -> Result<Option<Opts>, ToolError> {
        parse(Args::new(a.iter().copied()))
    }

    #[test]
    fn defaults() {
        let o = p(&[]).unwrap().unwrap();
        assert_eq!(o.device, "/dev/ivshmem0");
        assert_eq!(o.offset, 0);
        assert_eq!(o.message, DEFAULT_MESSAGE);
        assert!(!o.clear);
    }

    #[test]
    fn options() {
        let o = p(&["-d", "1", "-o", "4K", "-m", "hi there"])
            .unwrap()
            .unwrap();
        assert_eq!(o.device, "/dev/ivshmem1");
        assert_eq!(o.offset, 4096);
        assert_eq!(o.message, "hi there");
        assert!(p(&["--help"]).unwrap().is_none());
    }

    #[test]
    fn bad_input() {
        let usage = |a: &[&str], text: &str| match p(a) {
            Err(ToolError::Usage(m)) => assert!(m.contains(text), "{a:?}: {m}"),
            other => panic!("{a:?}: {other:?}"),
        };
        usage(&["-o", "3"], "multiple of 4");
        usage(&["--frobnicate"], "unknown option");
        usage(&["extra"], "unexpected");
        usage(&["-m", &"x".repeat(2 << 20)], "too long");
    }

    #[test]
    fn missing_device_names_the_cause() {
        let o = p(&["-d", "/nonexistent/ivshmem9"]).unwrap().unwrap();
        let e = run(&o).unwrap_err();
        assert!(matches!(e, ToolError::Device(_)), "{e:?}");
        assert_eq!(e.errno(), Some(ENOENT));
        assert_eq!(e.exit_code(), 1);
        let e = e.to_string();
        assert!(e.contains("/nonexistent/ivshmem9"), "{e}");
        assert!(e.contains("is the ivshmem module loaded"), "{e}");
    }
}
