//! What the `stream` and `rtt` workloads run over: the [`Link`] trait (a channel or a socket),
//! the socket baseline's listener and connections (TCP, or a UNIX stream socket with
//! `--tcp unix:PATH`: `ivshmem::local_socket`), and I/O errors as tool errors.

use std::io::{self, ErrorKind, Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use ivshmem::channel::Channel;
use ivshmem::local_socket::{Addr, Listener, Stream};
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

impl Link for Stream {
    fn close_write(&mut self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

/// The socket baseline's listener, when this side listens and `--tcp` is given.
pub(crate) fn listen_tcp(c: &Common) -> Result<Option<Listener>, ToolError> {
    let Some(addr) = c.tcp.as_ref().filter(|_| c.listen) else {
        return Ok(None);
    };
    if let Addr::Unix(path) = addr {
        // A socket file a killed run left behind would make bind fail.
        let _ = std::fs::remove_file(path);
    }
    Listener::bind(addr)
        .map(Some)
        .map_err(|e| ToolError::sys(format!("bind {addr}"), e))
}

/// Connects to the listener, retrying while it is not up yet.
pub(crate) fn connect(addr: &Addr) -> Result<Stream, ToolError> {
    let start = Instant::now();
    loop {
        match Stream::connect(addr) {
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

pub(crate) fn accept(l: &Listener) -> Result<Stream, ToolError> {
    l.accept().map_err(|e| ToolError::sys("accept", e))
}

pub(crate) fn io_err(what: &str) -> impl Fn(io::Error) -> ToolError + '_ {
    move |e| ToolError::sys(what, e)
}
