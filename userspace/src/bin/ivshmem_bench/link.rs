//! What the `stream` and `rtt` workloads run over: the [`Link`] trait (a channel or a TCP
//! socket), the TCP listener and connections, and I/O errors as tool errors.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use ivshmem::channel::Channel;
use ivshmem::ToolError;

use crate::common::Common;

/// How long the driving side retries connecting to a listener that is not up yet.
const CONNECT_PATIENCE: Duration = Duration::from_secs(60);

/// A connection the stream and rtt workloads run over: a channel or a TCP socket.
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

impl Link for TcpStream {
    fn close_write(&mut self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}

pub(crate) fn listen_tcp(c: &Common) -> Result<Option<TcpListener>, ToolError> {
    match &c.tcp {
        Some(addr) if c.listen => TcpListener::bind(addr)
            .map(Some)
            .map_err(|e| ToolError::sys(format!("bind {addr}"), e)),
        _ => Ok(None),
    }
}

/// Connects to the listener, retrying while it is not up yet.
pub(crate) fn connect(addr: &str) -> Result<TcpStream, ToolError> {
    let start = Instant::now();
    loop {
        match TcpStream::connect(addr) {
            Ok(s) => return Ok(s),
            Err(e)
                if start.elapsed() < CONNECT_PATIENCE
                    && matches!(e.kind(), ErrorKind::ConnectionRefused | ErrorKind::TimedOut) =>
            {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => return Err(ToolError::sys(format!("connect {addr}"), e)),
        }
    }
}

pub(crate) fn accept(l: &TcpListener) -> Result<TcpStream, ToolError> {
    l.accept()
        .map(|(s, _)| s)
        .map_err(|e| ToolError::sys("accept", e))
}

pub(crate) fn io_err(what: &str) -> impl Fn(io::Error) -> ToolError + '_ {
    move |e| ToolError::sys(what, e)
}
