//! What the `stream` and `rtt` workloads run over: the [`Link`] trait (a channel or a kernel
//! baseline), the baseline's listener and connections (TCP, a UNIX stream socket with
//! `--tcp unix:PATH`: `ivshmem::local_socket`; or named pipes with `--tcp pipe:PATH`), and I/O
//! errors as tool errors.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind, Read, Write};
use std::net::Shutdown;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::time::{Duration, Instant};

use ivshmem::channel::Channel;
use ivshmem::local_socket::{Addr, Listener, Stream};
use ivshmem::{os, ToolError};

use crate::common::Common;

/// How long the driving side retries connecting to a listener that is not up yet.
const CONNECT_PATIENCE: Duration = Duration::from_secs(60);

/// A connection the stream and rtt workloads run over: a channel or a socket.
pub(crate) trait Link: Read + Write {
    /// Ends this side's stream: the peer reads the rest, then end-of-file.
    fn close_write(&mut self) -> io::Result<()>;
    /// The channel under this link, for zero-copy.
    fn channel(&mut self) -> Option<&mut Channel> {
        None
    }
}

impl Link for Channel {
    fn close_write(&mut self) -> io::Result<()> {
        Channel::close_write(self)
    }
    fn channel(&mut self) -> Option<&mut Channel> {
        Some(self)
    }
}

/// The kernel baseline `--tcp` names: a socket (`tcp:HOST:PORT`, `unix:PATH`), or a pair of
/// named pipes (`pipe:PATH`), one each way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Baseline {
    Socket(Addr),
    Pipe(PathBuf),
}

impl FromStr for Baseline {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.strip_prefix("pipe:") {
            Some("") => Err("pipe: needs a path".into()),
            Some(p) => Ok(Self::Pipe(p.into())),
            None => s.parse().map(Self::Socket),
        }
    }
}

impl fmt::Display for Baseline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Socket(a) => a.fmt(f),
            Self::Pipe(p) => write!(f, "pipe:{}", p.display()),
        }
    }
}

impl Baseline {
    /// The transport name the results print.
    pub(crate) fn transport(&self) -> &'static str {
        match self {
            Self::Socket(a) => a.transport(),
            Self::Pipe(_) => "pipe",
        }
    }
}

/// A connection of the baseline: a socket, or two named pipes (this side's ends).
pub(crate) enum Conn {
    Socket(Stream),
    Pipe { rd: File, wr: Option<File> },
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Socket(s) => s.read(buf),
            Self::Pipe { rd, .. } => rd.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Socket(s) => s.write(buf),
            Self::Pipe { wr: Some(w), .. } => w.write(buf),
            Self::Pipe { wr: None, .. } => Err(ErrorKind::BrokenPipe.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Link for Conn {
    fn close_write(&mut self) -> io::Result<()> {
        match self {
            Self::Socket(s) => s.shutdown(Shutdown::Write),
            Self::Pipe { wr, .. } => {
                *wr = None;
                Ok(())
            }
        }
    }
}

/// The baseline's listener. Named pipes carry one connection at a time and have no accept:
/// connection `k` is a fresh pair, `PATH.k.up` (driver to listener) and `PATH.k.down`, which
/// the listener makes and unlinks once both ends are open, so no connection can take over
/// another's ends while they close.
pub(crate) enum BaselineListener {
    Socket(Listener),
    Pipe(PathBuf),
}

/// The number of the next pipe connection this process accepts, and connects: the two sides
/// count alike (a test runs both in one process).
static NEXT_ACCEPT: AtomicU32 = AtomicU32::new(0);
static NEXT_CONNECT: AtomicU32 = AtomicU32::new(0);

/// The named pipes of pipe connection `k`: up (driver to listener) and down.
fn fifos(path: &Path, k: u32) -> (PathBuf, PathBuf) {
    let name = |dir: &str| {
        let mut p = path.as_os_str().to_owned();
        p.push(format!(".{k}.{dir}"));
        PathBuf::from(p)
    };
    (name("up"), name("down"))
}

/// The baseline's listener, when this side listens and `--tcp` is given.
pub(crate) fn listen_tcp(c: &Common) -> Result<Option<BaselineListener>, ToolError> {
    let Some(addr) = c.tcp.as_ref().filter(|_| c.listen) else {
        return Ok(None);
    };
    let addr = match addr {
        Baseline::Pipe(path) => return Ok(Some(BaselineListener::Pipe(path.clone()))),
        Baseline::Socket(a) => a,
    };
    if let Addr::Unix(path) = addr {
        // A socket file a killed run left behind would make bind fail.
        let _ = std::fs::remove_file(path);
    }
    Listener::bind(addr)
        .map(|l| Some(BaselineListener::Socket(l)))
        .map_err(|e| ToolError::sys(format!("bind {addr}"), e))
}

/// Connects to the listener, retrying while it is not up yet.
pub(crate) fn connect(addr: &Baseline) -> Result<Conn, ToolError> {
    let r = match addr {
        Baseline::Socket(a) => retry(|| Stream::connect(a).map(Conn::Socket)),
        Baseline::Pipe(path) => {
            let (up, down) = fifos(path, NEXT_CONNECT.fetch_add(1, Relaxed));
            // Opening blocks until the listener opens the other end.
            retry(|| {
                let wr = OpenOptions::new().write(true).open(&up)?;
                Ok(Conn::Pipe {
                    rd: File::open(&down)?,
                    wr: Some(wr),
                })
            })
        }
    };
    r.map_err(|e| ToolError::sys(format!("connect {addr}"), e))
}

/// Calls `open` until it succeeds, or fails otherwise than a listener that is not up yet
/// would make it, or for [`CONNECT_PATIENCE`].
fn retry(mut open: impl FnMut() -> io::Result<Conn>) -> io::Result<Conn> {
    let start = Instant::now();
    loop {
        match open() {
            Err(e)
                if start.elapsed() < CONNECT_PATIENCE
                    && matches!(
                        e.kind(),
                        ErrorKind::ConnectionRefused | ErrorKind::TimedOut | ErrorKind::NotFound
                    ) =>
            {
                std::thread::sleep(Duration::from_millis(50))
            }
            r => return r,
        }
    }
}

pub(crate) fn accept(l: &BaselineListener) -> Result<Conn, ToolError> {
    let err = |e| ToolError::sys("accept", e);
    match l {
        BaselineListener::Socket(l) => l.accept().map(Conn::Socket).map_err(err),
        BaselineListener::Pipe(path) => {
            let (up, down) = fifos(path, NEXT_ACCEPT.fetch_add(1, Relaxed));
            for p in [&up, &down] {
                // A killed run's pipe would hold the driver's ends of another run.
                let _ = std::fs::remove_file(p);
                os::mkfifo(p).map_err(|e| ToolError::sys(format!("mkfifo {}", p.display()), e))?;
            }
            // Both opens block until the driver opens its ends, in the same order.
            let rd = File::open(&up).map_err(err)?;
            let wr = OpenOptions::new().write(true).open(&down).map_err(err)?;
            let _ = std::fs::remove_file(&up);
            let _ = std::fs::remove_file(&down);
            Ok(Conn::Pipe { rd, wr: Some(wr) })
        }
    }
}

pub(crate) fn io_err(what: &str) -> impl Fn(io::Error) -> ToolError + '_ {
    move |e| ToolError::sys(what, e)
}
