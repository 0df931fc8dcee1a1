//! Unmodified programs' sockets between VMs, over connections in shared memory (as `ssh -L`
//! forwards a port): `forward` listens on a local TCP or UNIX socket and carries each
//! connection made to it through a channel connection to a service; `serve` accepts those
//! in the other VM and connects each to the real server's socket there.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::time::Duration;

use ivshmem::args::{run_tool, Args, Devices, DEVICES_HELP};
use ivshmem::channel::{Channel, ChannelError, Kind, Listener, Options, ReadHalf, Wait, WriteHalf};
use ivshmem::local_socket::{Addr, Listener as Local, Stream};
use ivshmem::ToolError;

const PROG: &str = "ivshmem-socket";
/// Bytes moved per read of a socket or a channel.
const CHUNK: usize = 64 << 10;

const HELP_HEAD: &str = "\
usage: ivshmem-socket serve --service NAME --connect ADDR [options]
       ivshmem-socket forward --listen ADDR --service NAME [options]

Carries sockets of unmodified programs between VMs, through connections in the shared
memory of an ivshmem device (as ssh -L forwards a port). In the VM that runs the real
server, `serve` accepts connections to the service NAME on the device and connects each to
the server's socket ADDR; in the VM whose programs connect, `forward` listens on ADDR and
carries each connection made there to NAME. Both directions and half-closes pass through;
when the other side dies, its connections' sockets close within the liveness bound. Many
connections and services share one device, also with ivshmem-pipe's named channels.

  --service NAME        the service, 1 to 32 bytes
  --connect ADDR        serve: the real server's socket
  --listen ADDR         forward: where local programs connect
                        ADDR: tcp:HOST:PORT (or HOST:PORT) or unix:PATH (a stream socket)";

const HELP: &str = "      --wait MODE       auto: sleep on the doorbell if the device has one, else spin (default);
                        spin; doorbell
      --capacity BYTES  ring size per direction of each connection (forward; a power of two;
                        default 256K)
      --liveness SECS   a peer whose heartbeat stands still this long is gone (default 10)
      --once            carry one connection, then exit with its status
  -v, --verbose         a line on standard error per connection
  -h, --help            this help

Exit status: with --once, 0 when the connection ended cleanly both ways and 1 when its peer
died or an error cut it; without, it runs until killed (1 on an error that stops it, such as
a service name in use); 2 on a usage error.";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Server,
    Client,
}

#[derive(Debug)]
struct Opts {
    role: Role,
    service: String,
    addr: Addr,
    devices: Devices,
    wait: Wait,
    capacity: u64,
    liveness: Duration,
    once: bool,
    verbose: bool,
}

fn parse(mut args: Args) -> Result<Option<Opts>, ToolError> {
    if args.flag(&["-h", "--help"]) {
        return Ok(None);
    }
    let role = match args.subcommand().as_deref() {
        Some("serve") => Role::Server,
        Some("forward") => Role::Client,
        Some(other) => return Err(ToolError::usage(format!("unknown command '{other}'"))),
        None => return Err(ToolError::usage("serve or forward?")),
    };
    let service = args
        .value(&["--service"])?
        .ok_or_else(|| ToolError::usage("--service NAME, please"))?;
    if service.is_empty() || service.len() > ivshmem::channel::MAX_NAME {
        return Err(ToolError::usage(format!(
            "--service '{service}': 1 to {} bytes",
            ivshmem::channel::MAX_NAME
        )));
    }
    let (want, other) = match role {
        Role::Server => ("--connect", "--listen"),
        Role::Client => ("--listen", "--connect"),
    };
    if args.value(&[other])?.is_some() {
        return Err(ToolError::usage(format!(
            "{other} is for the other command: {want} ADDR here"
        )));
    }
    let addr = args
        .value(&[want])?
        .ok_or_else(|| ToolError::usage(format!("{want} ADDR, please")))?
        .parse::<Addr>()
        .map_err(|e| ToolError::usage(format!("{want}: {e}")))?;
    let devices = args.devices()?;
    let (wait, capacity, liveness) = args.channel_options(256 << 10)?;
    let once = args.flag(&["--once"]);
    let verbose = args.flag(&["-v", "--verbose"]);
    let rest = args.finish()?;
    if let Some(extra) = rest.first() {
        return Err(ToolError::usage(format!("unexpected argument '{extra}'")));
    }
    Ok(Some(Opts {
        role,
        service,
        addr,
        devices,
        wait,
        capacity,
        liveness,
        once,
        verbose,
    }))
}

/// Socket to channel: the socket's end of stream closes the channel's write side; an error
/// aborts it, so the peer sees the connection cut, not a clean end.
fn upstream(mut sock: Stream, mut w: WriteHalf) -> io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = match sock.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                w.abort();
                return Err(e);
            }
        };
        w.write_all(&buf[..n])?;
        total += n as u64;
    }
    w.close_write()?;
    Ok(total)
}

/// Channel to socket: the channel's end of stream shuts the socket's write side; a dead or
/// aborted peer resets the socket both ways, so the local program sees the cut.
fn downstream(mut r: ReadHalf, mut sock: Stream) -> io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = sock.shutdown(Shutdown::Both);
                return Err(e);
            }
        };
        if let Err(e) = sock.write_all(&buf[..n]) {
            let _ = sock.shutdown(Shutdown::Both);
            return Err(e);
        }
        total += n as u64;
    }
    let _ = sock.shutdown(Shutdown::Write);
    Ok(total)
}

/// Carries one connection both ways until both directions ended.
fn forward(id: u64, chan: Channel, sock: Stream, verbose: bool) -> Result<(), String> {
    let reader = sock.try_clone().map_err(|e| format!("socket: {e}"))?;
    let (w, r) = chan.split();
    let up = std::thread::spawn(move || upstream(reader, w));
    let down = downstream(r, sock);
    let up = up
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("panicked")));
    let show = |e: &io::Error| match ChannelError::of(e) {
        Some(c) => c.to_string(),
        None => e.to_string(),
    };
    let result = match (&up, &down) {
        (Ok(_), Ok(_)) => Ok(()),
        (Err(e), _) => Err(format!("connection {id}: to the peer: {}", show(e))),
        (_, Err(e)) => Err(format!("connection {id}: from the peer: {}", show(e))),
    };
    if verbose {
        eprintln!(
            "{PROG}: connection {id} closed: {} bytes out, {} in{}",
            up.as_ref().map_or(0, |n| *n),
            down.as_ref().map_or(0, |n| *n),
            result
                .as_ref()
                .err()
                .map_or(String::new(), |e| format!(" ({e})"))
        );
    }
    result
}

fn options(o: &Opts) -> Options {
    Options::new()
        .kind(Kind::Stream)
        .capacity(o.capacity)
        .wait(o.wait)
        .liveness_timeout(o.liveness)
}

/// Starts connection `id`: `setup` makes its other half (connects the target, or the service),
/// then it is carried, on a thread of its own so that a slow setup holds up no other
/// connection; with `--once` here, returning its result.
fn start(
    o: &Opts,
    id: u64,
    setup: impl FnOnce() -> Result<(Channel, Stream), String> + Send + 'static,
) -> Option<Result<(), ToolError>> {
    let verbose = o.verbose;
    let life = move || {
        let (chan, sock) = setup().map_err(|e| format!("connection {id}: {e}"))?;
        forward(id, chan, sock, verbose)
    };
    if o.once {
        return Some(life().map_err(ToolError::Failed));
    }
    std::thread::spawn(move || {
        if let Err(e) = life() {
            eprintln!("{PROG}: {e}");
        }
    });
    None
}

fn run(o: Opts) -> Result<(), ToolError> {
    let opts = options(&o);
    let mut next = 0u64..;
    match o.role {
        Role::Server => {
            let (region, opts) = o.devices.open(&opts)?;
            let listener = Listener::bind(&region, &o.service, &opts)
                .map_err(|e| ToolError::Failed(format!("service '{}': {e}", o.service)))?;
            if o.verbose {
                eprintln!("{PROG}: serving '{}' to {}", o.service, o.addr);
            }
            loop {
                let chan = listener
                    .accept()
                    .map_err(|e| ToolError::Failed(format!("accept: {e}")))?;
                let id = next.next().unwrap_or_default();
                let (addr, verbose) = (o.addr.clone(), o.verbose);
                let setup = move || match Stream::connect(&addr) {
                    Ok(sock) => {
                        if verbose {
                            eprintln!("{PROG}: connection {id} to {addr}");
                        }
                        Ok((chan, sock))
                    }
                    Err(e) => {
                        // The peer sees the connection cut; the server keeps serving.
                        chan.abort();
                        Err(format!("{addr}: {e}"))
                    }
                };
                if let Some(done) = start(&o, id, setup) {
                    return done;
                }
            }
        }
        Role::Client => {
            let (region, opts) = o.devices.open(&opts)?;
            let local = Local::bind(&o.addr)
                .map_err(|e| ToolError::Failed(format!("listen on {}: {e}", o.addr)))?;
            if o.verbose {
                eprintln!("{PROG}: {} carried to '{}'", o.addr, o.service);
            }
            loop {
                let sock = local
                    .accept()
                    .map_err(|e| ToolError::Failed(format!("accept on {}: {e}", o.addr)))?;
                let id = next.next().unwrap_or_default();
                let (region, opts) = (region.clone(), opts.clone());
                let (service, verbose) = (o.service.clone(), o.verbose);
                let setup = move || match Channel::connect(&region, &service, &opts) {
                    Ok(chan) => {
                        if verbose {
                            eprintln!("{PROG}: connection {id} to '{service}'");
                        }
                        Ok((chan, sock))
                    }
                    Err(e) => {
                        // The local program sees the connection closed at once.
                        let _ = sock.shutdown(Shutdown::Both);
                        Err(format!("service '{service}': {e}"))
                    }
                };
                if let Some(done) = start(&o, id, setup) {
                    return done;
                }
            }
        }
    }
}

fn main() {
    run_tool(
        PROG,
        &format!("{HELP_HEAD}\n{DEVICES_HELP}\n{HELP}"),
        parse,
        run,
    );
}
