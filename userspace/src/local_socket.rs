//! Local stream sockets named `tcp:HOST:PORT` (or `HOST:PORT`) or `unix:PATH`: what
//! `ivshmem-socket` carries between VMs and what `ivshmem-bench` measures channels against.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::str::FromStr;

/// A local socket address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addr {
    /// `HOST:PORT`, as `TcpStream::connect` takes it.
    Tcp(String),
    /// The path of a UNIX stream socket.
    Unix(PathBuf),
}

impl Addr {
    /// The transport's name: `tcp` or `unix`.
    pub fn transport(&self) -> &'static str {
        match self {
            Self::Tcp(_) => "tcp",
            Self::Unix(_) => "unix",
        }
    }
}

impl FromStr for Addr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            return if p.is_empty() {
                Err("unix: needs a path".into())
            } else {
                Ok(Self::Unix(p.into()))
            };
        }
        let a = s.strip_prefix("tcp:").unwrap_or(s);
        match a.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Self::Tcp(a.into()))
            }
            _ => Err(format!("'{s}' is neither tcp:HOST:PORT nor unix:PATH")),
        }
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(a) => write!(f, "tcp:{a}"),
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A connected stream socket. A TCP one sends small writes at once (`TCP_NODELAY`; a UNIX
/// socket has no Nagle to turn off).
#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    /// Connects to `addr`.
    pub fn connect(addr: &Addr) -> io::Result<Self> {
        match addr {
            Addr::Tcp(a) => Self::tcp(TcpStream::connect(a)?),
            Addr::Unix(p) => Ok(Self::Unix(UnixStream::connect(p)?)),
        }
    }

    fn tcp(t: TcpStream) -> io::Result<Self> {
        t.set_nodelay(true)?;
        Ok(Self::Tcp(t))
    }

    /// A second handle on the same socket, for the other direction.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(match self {
            Self::Tcp(t) => Self::Tcp(t.try_clone()?),
            Self::Unix(u) => Self::Unix(u.try_clone()?),
        })
    }

    /// Shuts down one direction or both.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Self::Tcp(t) => t.shutdown(how),
            Self::Unix(u) => u.shutdown(how),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(t) => t.read(buf),
            Self::Unix(u) => u.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(t) => t.write(buf),
            Self::Unix(u) => u.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A listening stream socket. A UNIX one removes the socket file it made when dropped.
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Listener {
    /// Listens on `addr`.
    pub fn bind(addr: &Addr) -> io::Result<Self> {
        Ok(match addr {
            Addr::Tcp(a) => Self::Tcp(TcpListener::bind(a)?),
            Addr::Unix(p) => Self::Unix(UnixListener::bind(p)?, p.clone()),
        })
    }

    /// Waits for the next connection.
    pub fn accept(&self) -> io::Result<Stream> {
        match self {
            Self::Tcp(l) => Stream::tcp(l.accept()?.0),
            Self::Unix(l, _) => Ok(Stream::Unix(l.accept()?.0)),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Self::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_print_back() {
        for (text, addr, shown) in [
            ("tcp:127.0.0.1:80", Addr::Tcp("127.0.0.1:80".into()), None),
            (
                "[::1]:22",
                Addr::Tcp("[::1]:22".into()),
                Some("tcp:[::1]:22"),
            ),
            ("unix:/run/x.sock", Addr::Unix("/run/x.sock".into()), None),
        ] {
            let parsed: Addr = text.parse().unwrap();
            assert_eq!(parsed, addr);
            assert_eq!(parsed.to_string(), shown.unwrap_or(text));
        }
        for bad in ["unix:", "tcp:host", ":80", "host:port", "host:70000", ""] {
            assert!(bad.parse::<Addr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_unix_listener_removes_its_socket_file() {
        let dir = std::env::temp_dir().join(format!("local-socket-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let addr = Addr::Unix(dir.join("s"));
        let l = Listener::bind(&addr).unwrap();
        let mut c = Stream::connect(&addr).unwrap();
        let mut s = l.accept().unwrap();
        c.write_all(b"ping").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"ping");
        drop(l);
        assert!(!dir.join("s").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
