//! `ivshmem-server`: hands QEMU's `ivshmem-doorbell` devices their shared memory and eventfds.
//! Accepts the options of QEMU's contrib/ivshmem-server with the same meanings.

use std::ffi::c_int;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};

use ivshmem::args::{parse_size, run_tool, Args};
use ivshmem::server::{Server, MAX_VECTORS};
use ivshmem::{os, ToolError};

const PROG: &str = "ivshmem-server";

const HELP: &str = "\
usage: ivshmem-server [-S SOCKET] [-l SIZE] [-n VECTORS] [-m DIR | -M NAME | --memfd]
                      [-F] [-p PIDFILE] [-v]

Serves QEMU ivshmem-doorbell devices (-chardev socket,path=SOCKET,id=X
-device ivshmem-doorbell,chardev=X,vectors=VECTORS): each gets the shared memory,
its peer id and one eventfd per vector for every peer.

  -S SOCKET   UNIX socket path (default /tmp/ivshmem_socket)
  -l SIZE     shared memory size, a power of two (default 4M; K, M, G suffixes)
  -n VECTORS  interrupt vectors per peer, 1..64 (default 1)
  -m DIR      back the memory with an unlinked file in DIR (e.g. a hugetlbfs mount)
  -M NAME     back the memory with /dev/shm/NAME (POSIX shm; default 'ivshmem')
  --memfd     back the memory with an anonymous memfd
  -F          stay in the foreground (default: daemonize)
  -p PIDFILE  pid file (default /var/run/ivshmem-server.pid)
  -v          verbose: log joins and departures
  -h          this help";

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: c_int) {
    STOP.store(true, Ordering::Relaxed);
}

#[derive(Debug)]
enum Backing {
    Dir(String),
    Name(String),
    Memfd,
}

#[derive(Debug)]
struct Opts {
    socket: String,
    size: u64,
    vectors: u32,
    backing: Backing,
    foreground: bool,
    pidfile: String,
    verbose: bool,
}

fn parse(mut a: Args) -> Result<Option<Opts>, ToolError> {
    if a.flag(&["-h", "--help"]) {
        return Ok(None);
    }
    let foreground = a.flag(&["-F"]);
    let verbose = a.flag(&["-v"]);
    let memfd = a.flag(&["--memfd"]);
    let socket = a.value(&["-S"])?.unwrap_or("/tmp/ivshmem_socket".into());
    let size = match a.value(&["-l"])? {
        Some(v) => {
            parse_size(&v).map_err(|e| ToolError::usage(format!("bad value '{v}' for -l: {e}")))?
        }
        None => 4 << 20,
    };
    let vectors = a.parsed::<u32>(&["-n"])?.unwrap_or(1);
    let dir = a.value(&["-m"])?;
    let name = a.value(&["-M"])?;
    let pidfile = a
        .value(&["-p"])?
        .unwrap_or("/var/run/ivshmem-server.pid".into());
    let rest = a.finish()?;
    if !rest.is_empty() {
        return Err(ToolError::usage(format!(
            "unexpected argument '{}'",
            rest[0]
        )));
    }
    if !size.is_power_of_two() {
        return Err(ToolError::usage(format!(
            "size {size} is not a power of two"
        )));
    }
    if vectors == 0 || vectors > MAX_VECTORS {
        return Err(ToolError::usage(format!("-n must be 1..={MAX_VECTORS}")));
    }
    let backing = match (dir, name, memfd) {
        (Some(d), None, false) => Backing::Dir(d),
        (None, Some(n), false) => Backing::Name(n),
        (None, None, true) => Backing::Memfd,
        (None, None, false) => Backing::Name("ivshmem".into()),
        _ => return Err(ToolError::usage("-m, -M and --memfd exclude each other")),
    };
    Ok(Some(Opts {
        socket,
        size,
        vectors,
        backing,
        foreground,
        pidfile,
        verbose,
    }))
}

fn open_shm(o: &Opts) -> io::Result<File> {
    let file = match &o.backing {
        Backing::Name(name) => {
            if name.contains('/') {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "-M takes a name, not a path",
                ));
            }
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .mode(0o600)
                .open(format!("/dev/shm/{name}"))?
        }
        Backing::Dir(dir) => {
            let path = format!("{dir}/ivshmem.{}", std::process::id());
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            fs::remove_file(&path)?;
            f
        }
        Backing::Memfd => File::from(os::memfd_create(c"ivshmem")?),
    };
    file.set_len(o.size)?;
    Ok(file)
}

/// Binds the socket; a stale socket file (nobody listening) is replaced, a live one is an error.
fn bind(path: &str) -> io::Result<UnixListener> {
    match UnixListener::bind(path) {
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{path}: a server is already listening"),
                ));
            }
            fs::remove_file(path)?;
            UnixListener::bind(path)
        }
        r => r,
    }
}

fn daemonize() -> io::Result<()> {
    // SAFETY: Called before any thread exists, so the child is a full copy of this process.
    match unsafe { os::fork() }? {
        os::Forked::Child => {
            os::setsid()?;
            let null = OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")?;
            use std::os::fd::AsFd;
            for fd in 0..3 {
                // SAFETY: Standard input, output and error, which nothing owns as a `File`:
                // they become /dev/null.
                unsafe { os::dup2(null.as_fd(), fd) }?;
            }
            Ok(())
        }
        os::Forked::Parent(_) => std::process::exit(0),
    }
}

/// Writes our pid to `path` so that a reader never finds it empty or half written (scripts and
/// tests read it as soon as it exists): a temporary file beside it, renamed over it.
fn write_pid_file(path: &str) -> io::Result<()> {
    let tmp = format!("{path}.{}.tmp", std::process::id());
    fs::write(&tmp, format!("{}\n", std::process::id()))?;
    fs::rename(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

fn run(o: Opts) -> Result<(), ToolError> {
    let shm = open_shm(&o).map_err(|e| ToolError::sys("shared memory", e))?;
    let listener =
        bind(&o.socket).map_err(|e| ToolError::sys(format!("socket {}", o.socket), e))?;
    if !o.foreground {
        daemonize().map_err(|e| ToolError::sys("daemonize", e))?;
    }
    write_pid_file(&o.pidfile).map_err(|e| ToolError::sys(format!("pid file {}", o.pidfile), e))?;
    // Peers that hang up must not kill the server: keep SIGPIPE ignored (run_tool restored it).
    os::ignore_signal(os::Signal::PIPE);
    for sig in [os::Signal::INT, os::Signal::TERM] {
        // SAFETY: The handler only stores to an atomic.
        unsafe { os::set_signal_handler(sig, on_signal) };
    }
    let server = Server::new(shm, o.vectors, o.verbose)?;
    if o.verbose {
        println!(
            "listening on {} ({} bytes, {} vectors)",
            o.socket, o.size, o.vectors
        );
    }
    let result = server.serve(listener, &STOP).map_err(ToolError::from);
    let _ = fs::remove_file(&o.socket);
    let _ = fs::remove_file(&o.pidfile);
    result
}

fn main() {
    run_tool(PROG, HELP, parse, run);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(a: &[&str]) -> Result<Option<Opts>, String> {
        parse(Args::new(a.iter().copied())).map_err(|e| e.to_string())
    }

    #[test]
    fn qemu_defaults() {
        let o = p(&[]).unwrap().unwrap();
        assert_eq!(o.socket, "/tmp/ivshmem_socket");
        assert_eq!(o.size, 4 << 20);
        assert_eq!(o.vectors, 1);
        assert!(matches!(o.backing, Backing::Name(ref n) if n == "ivshmem"));
        assert!(!o.foreground);
        assert_eq!(o.pidfile, "/var/run/ivshmem-server.pid");
    }

    #[test]
    fn qemu_options() {
        let o = p(&[
            "-S",
            "/tmp/s",
            "-l",
            "1G",
            "-n",
            "4",
            "-m",
            "/mnt/huge",
            "-F",
            "-p",
            "/tmp/p",
            "-v",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (
                o.socket.as_str(),
                o.size,
                o.vectors,
                o.foreground,
                o.verbose
            ),
            ("/tmp/s", 1 << 30, 4, true, true)
        );
        assert!(matches!(o.backing, Backing::Dir(ref d) if d == "/mnt/huge"));
    }

    #[test]
    fn bad_options() {
        assert!(p(&["-l", "3M"]).unwrap_err().contains("power of two"));
        assert!(p(&["-n", "0"]).is_err());
        assert!(p(&["-n", "65"]).is_err());
        assert!(p(&["-m", "/a", "-M", "b"]).unwrap_err().contains("exclude"));
        assert!(p(&["-x"]).unwrap_err().contains("unknown option"));
    }
}
