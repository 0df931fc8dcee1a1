//! `nc` between VMs over a channel: `send` copies standard input to the other side, `recv`
//! writes what arrives to standard output.

use std::io::{self, Read, Write};
use std::time::Duration;

use ivshmem::args::{run_tool, Args, Devices, DEVICES_HELP};
use ivshmem::channel::{Channel, ChannelError, Kind, Options, Wait};
use ivshmem::ToolError;

const PROG: &str = "ivshmem-pipe";
const DEFAULT_CHANNEL: &str = "pipe";
/// Bytes moved per read of standard input or of the channel.
const CHUNK: usize = 256 << 10;

const HELP_HEAD: &str = "\
usage: ivshmem-pipe send|recv [-d DEVICE [--peer-device PEER [--doorbell DEV]]]
                    [--channel NAME] [--wait auto|spin|doorbell]
                    [--capacity BYTES] [--liveness SECONDS] [--spin ROUNDS]

Like nc between VMs: `send` copies standard input through the channel NAME of the shared
memory, `recv` writes what arrives to standard output. Either may start first; the end of
standard input is passed on. Several pipes with different names share one device.
";

const HELP: &str = "      --channel NAME    channel name, 1 to 32 bytes (default 'pipe')
      --wait MODE       auto: sleep on the doorbell if the device has one, else spin (default);
                        spin; doorbell
      --capacity BYTES  ring size per direction when this end creates the channel
                        (a power of two; default 1M)
      --liveness SECS   a peer whose heartbeat stands still this long is gone (default 10,
                        0.1 to 3600; the longer of both ends' applies)
      --spin ROUNDS     look at the ring this often before sleeping or backing off
                        (default 10000)
  -h, --help            this help

Exit status: 0 when every byte arrived (send: the receiver read all of it; recv: the sender
closed its end after sending); 1 when the peer died or left early, or on any error (what recv
wrote until then is a prefix of what was sent); 2 on a usage error.";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Send,
    Recv,
}

#[derive(Debug)]
struct Opts {
    dir: Dir,
    devices: Devices,
    channel: String,
    wait: Wait,
    capacity: u64,
    liveness: Duration,
    spin: u32,
}

fn parse(mut args: Args) -> Result<Option<Opts>, ToolError> {
    if args.flag(&["-h", "--help"]) {
        return Ok(None);
    }
    let dir = match args.subcommand().as_deref() {
        Some("send") => Dir::Send,
        Some("recv") => Dir::Recv,
        Some(other) => return Err(ToolError::usage(format!("unknown command '{other}'"))),
        None => return Err(ToolError::usage("send or recv?")),
    };
    let devices = args.devices()?;
    let channel = args
        .value(&["--channel"])?
        .unwrap_or(DEFAULT_CHANNEL.into());
    let (wait, capacity, liveness) = args.channel_options(1 << 20)?;
    let spin = args.parsed::<u32>(&["--spin"])?.unwrap_or(10_000);
    let rest = args.finish()?;
    if let Some(extra) = rest.first() {
        return Err(ToolError::usage(format!("unexpected argument '{extra}'")));
    }
    Ok(Some(Opts {
        dir,
        devices,
        channel,
        wait,
        capacity,
        liveness,
        spin,
    }))
}

/// A channel failure as the tool reports it.
fn failed(what: &str, e: io::Error) -> ToolError {
    match ChannelError::of(&e) {
        Some(c) => ToolError::Failed(format!("{what}: {c}")),
        None => ToolError::sys(what, e),
    }
}

fn run(o: Opts) -> Result<(), ToolError> {
    let opts = Options::new()
        .kind(Kind::Stream)
        .capacity(o.capacity)
        .wait(o.wait)
        .liveness_timeout(o.liveness)
        .spin(o.spin);
    let (region, opts) = o.devices.open(&opts)?;
    let mut chan = Channel::open(&region, &o.channel, &opts)
        .map_err(|e| ToolError::Failed(format!("channel '{}': {e}", o.channel)))?;
    let mut buf = vec![0u8; CHUNK];
    match o.dir {
        Dir::Send => {
            let mut stdin = io::stdin().lock();
            loop {
                let n = match stdin.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        chan.abort();
                        return Err(ToolError::sys("standard input", e));
                    }
                };
                chan.write_all(&buf[..n]).map_err(|e| failed("send", e))?;
            }
            chan.close_write().map_err(|e| failed("send", e))?;
            // Exit 0 only once a receiver came (even for no bytes) and read every byte.
            chan.wait_peer().map_err(|e| failed("send", e))?;
            chan.drain().map_err(|e| failed("send", e))?;
        }
        Dir::Recv => {
            let mut stdout = io::stdout().lock();
            loop {
                let n = match chan.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        let _ = stdout.flush();
                        return Err(failed("recv", e));
                    }
                };
                stdout
                    .write_all(&buf[..n])
                    .map_err(|e| ToolError::sys("standard output", e))?;
            }
            stdout
                .flush()
                .map_err(|e| ToolError::sys("standard output", e))?;
        }
    }
    Ok(())
}

fn main() {
    run_tool(
        PROG,
        &format!("{HELP_HEAD}\n{DEVICES_HELP}\n{HELP}"),
        parse,
        run,
    );
}
