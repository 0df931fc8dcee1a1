//! What the `stream` and `rtt` workloads run over: the [`Link`] trait (a channel or a socket),
//! the socket baseline's listener and connections (TCP, or a UNIX stream socket with
//! `--tcp unix:PATH`), and I/O errors as tool errors.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ivshmem::channel::Channel;
use ivshmem::ToolError;

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

/// The socket baseline: a TCP connection, or a UNIX stream socket's.
pub(crate) enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Socket {
    /// Sends small writes at once (TCP_NODELAY; a UNIX socket has no Nagle to turn off).
    pub(crate) fn no_delay(&self) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => s.set_nodelay(true),
            Socket::Unix(_) => Ok(()),
        }
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.read(buf),
            Socket::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.write(buf),
            Socket::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Link for Socket {
    fn close_write(&mut self) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => s.shutdown(Shutdown::Write),
            Socket::Unix(s) => s.shutdown(Shutdown::Write),
        }
    }
}

/// The socket baseline's listener; a UNIX one removes its socket file when dropped.
pub(crate) enum SocketListener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Drop for SocketListener {
    fn drop(&mut self) {
        if let SocketListener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The path of a `unix:PATH` address, `None` for a TCP one.
fn unix_path(addr: &str) -> Option<&str> {
    addr.strip_prefix("unix:")
}

/// The transport name the results print for the socket baseline at `addr`.
pub(crate) fn transport(addr: &str) -> &'static str {
    if unix_path(addr).is_some() {
        "unix"
    } else {
        "tcp"
    }
}

pub(crate) fn listen_tcp(c: &Common) -> Result<Option<SocketListener>, ToolError> {
    let Some(addr) = c.tcp.as_deref().filter(|_| c.listen) else {
        return Ok(None);
    };
    let bound = match unix_path(addr) {
        Some(path) => {
            // A socket file a killed run left behind would make bind fail.
            let _ = std::fs::remove_file(path);
            UnixListener::bind(path).map(|l| SocketListener::Unix(l, path.into()))
        }
        None => TcpListener::bind(addr).map(SocketListener::Tcp),
    };
    bound
        .map(Some)
        .map_err(|e| ToolError::sys(format!("bind {addr}"), e))
}

/// Connects to the listener, retrying while it is not up yet.
pub(crate) fn connect(addr: &str) -> Result<Socket, ToolError> {
    let start = Instant::now();
    loop {
        let r = match unix_path(addr) {
            Some(path) => UnixStream::connect(path).map(Socket::Unix),
            None => TcpStream::connect(addr).map(Socket::Tcp),
        };
        match r {
            Ok(s) => return Ok(s),
            Err(e)
                if start.elapsed() < CONNECT_PATIENCE
                    && matches!(
                        e.kind(),
                        ErrorKind::ConnectionRefused | ErrorKind::TimedOut | ErrorKind::NotFound
                    ) =>
            {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => return Err(ToolError::sys(format!("connect {addr}"), e)),
        }
    }
}

pub(crate) fn accept(l: &SocketListener) -> Result<Socket, ToolError> {
    match l {
        SocketListener::Tcp(l) => l.accept().map(|(s, _)| Socket::Tcp(s)),
        SocketListener::Unix(l, _) => l.accept().map(|(s, _)| Socket::Unix(s)),
    }
    .map_err(|e| ToolError::sys("accept", e))
}

pub(crate) fn io_err(what: &str) -> impl Fn(io::Error) -> ToolError + '_ {
    move |e| ToolError::sys(what, e)
}
