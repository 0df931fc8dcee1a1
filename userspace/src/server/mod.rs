//! A drop-in for QEMU's `contrib/ivshmem-server`, in std-only Rust.
//!
//! Protocol (QEMU `docs/specs/ivshmem-spec.rst`): every message is a little-endian i64,
//! possibly with one file descriptor. A new client receives the protocol version (0), its peer
//! id, then -1 with the shared-memory fd; then, for every other peer, one message per vector:
//! the peer's id with that vector's eventfd; then its own id with each of its own eventfds.
//! Existing peers receive the newcomer's id with each of its eventfds. When a peer leaves, the
//! others receive its id without a fd.

mod fdpass;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

pub use fdpass::{recv_msg, send_msg};

/// The protocol version QEMU expects.
pub const PROTOCOL_VERSION: i64 = 0;
/// QEMU's limit on vectors per peer.
pub const MAX_VECTORS: u32 = 64;
/// Peer ids are 16 bits (the doorbell register's high half).
pub const MAX_PEERS: usize = 1 << 16;
/// How long a client may leave a message unread before the server drops it.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

extern "C" {
    fn eventfd(initval: u32, flags: i32) -> i32;
}
const EFD_CLOEXEC: i32 = 0o2000000;

fn new_eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is checked and owned.
    let fd = unsafe { eventfd(0, EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

struct Peer {
    stream: UnixStream,
    vectors: Vec<OwnedFd>,
}

/// The server's state: the shared memory and the connected peers.
pub struct Server {
    shm: File,
    vectors: u32,
    verbose: bool,
    write_timeout: Duration,
    peers: Mutex<Peers>,
}

struct Peers {
    by_id: BTreeMap<u16, Peer>,
    /// Next id to try: ids are handed out in increasing order and wrap, like QEMU's server, so
    /// a departed id is not reused while younger ids are free.
    next_id: u16,
}

impl Server {
    /// A server for `shm` with `vectors` interrupt vectors per peer.
    pub fn new(shm: File, vectors: u32, verbose: bool) -> io::Result<Arc<Self>> {
        Self::with_write_timeout(shm, vectors, verbose, DEFAULT_WRITE_TIMEOUT)
    }

    /// Like [`Server::new`], dropping a client that leaves a message unread for `write_timeout`.
    pub fn with_write_timeout(
        shm: File,
        vectors: u32,
        verbose: bool,
        write_timeout: Duration,
    ) -> io::Result<Arc<Self>> {
        if write_timeout.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "write timeout must be positive",
            ));
        }
        if vectors == 0 || vectors > MAX_VECTORS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("vectors must be 1..={MAX_VECTORS}"),
            ));
        }
        Ok(Arc::new(Self {
            shm,
            vectors,
            verbose,
            write_timeout,
            peers: Mutex::new(Peers {
                by_id: BTreeMap::new(),
                next_id: 0,
            }),
        }))
    }

    fn log(&self, msg: &str) {
        if self.verbose {
            println!("{msg}");
        }
    }

    /// Ids of the connected peers.
    pub fn peer_ids(&self) -> Vec<u16> {
        self.peers.lock().unwrap().by_id.keys().copied().collect()
    }

    /// Accepts clients until `stop` is set (checked every 20 ms).
    pub fn serve(self: &Arc<Self>, listener: UnixListener, stop: &AtomicBool) -> io::Result<()> {
        listener.set_nonblocking(true)?;
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((stream, _)) => {
                    if let Err(e) = self.add_peer(stream) {
                        self.log(&format!("client rejected: {e}"));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_millis(20))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self.log(&format!("accept: {e}")),
            }
        }
        // Closing every client socket makes QEMU see the server go away.
        self.peers.lock().unwrap().by_id.clear();
        Ok(())
    }

    fn add_peer(self: &Arc<Self>, stream: UnixStream) -> io::Result<()> {
        stream.set_nonblocking(false)?;
        // A client that stops reading must not stall the server.
        stream.set_write_timeout(Some(self.write_timeout))?;
        let mut peers = self.peers.lock().unwrap();
        if peers.by_id.len() >= MAX_PEERS {
            return Err(io::Error::other("no free peer id"));
        }
        let mut id = peers.next_id;
        while peers.by_id.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        peers.next_id = id.wrapping_add(1);
        let vectors = (0..self.vectors)
            .map(|_| new_eventfd())
            .collect::<io::Result<Vec<_>>>()?;

        send_msg(&stream, PROTOCOL_VERSION, None)?;
        send_msg(&stream, i64::from(id), None)?;
        send_msg(&stream, -1, Some(self.shm.as_raw_fd()))?;
        // Tell the others about the newcomer; a peer we cannot reach is dropped.
        let mut gone = Vec::new();
        for (&other_id, other) in peers.by_id.iter() {
            for fd in &vectors {
                if send_msg(&other.stream, i64::from(id), Some(fd.as_raw_fd())).is_err() {
                    gone.push(other_id);
                    break;
                }
            }
        }
        for (&other_id, other) in peers.by_id.iter() {
            for fd in &other.vectors {
                send_msg(&stream, i64::from(other_id), Some(fd.as_raw_fd()))?;
            }
        }
        for fd in &vectors {
            send_msg(&stream, i64::from(id), Some(fd.as_raw_fd()))?;
        }
        let watch = stream.try_clone()?;
        peers.by_id.insert(id, Peer { stream, vectors });
        for other in gone {
            Self::remove_locked(&mut peers, other, self);
        }
        drop(peers);
        self.log(&format!("peer {id} joined"));

        let server = Arc::clone(self);
        thread::spawn(move || server.watch(id, watch));
        Ok(())
    }

    /// Waits for peer `id` to hang up (QEMU sends nothing; other bytes are ignored).
    fn watch(self: Arc<Self>, id: u16, mut stream: UnixStream) {
        let mut buf = [0u8; 256];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        let mut peers = self.peers.lock().unwrap();
        // The id may already belong to a newer peer if this one was dropped as unreachable.
        if peers
            .by_id
            .get(&id)
            .is_some_and(|p| same_socket(&p.stream, &stream))
        {
            Self::remove_locked(&mut peers, id, &self);
        }
    }

    fn remove_locked(peers: &mut Peers, id: u16, server: &Server) {
        if let Some(peer) = peers.by_id.remove(&id) {
            let _ = peer.stream.shutdown(std::net::Shutdown::Both);
            for other in peers.by_id.values() {
                let _ = send_msg(&other.stream, i64::from(id), None);
            }
            server.log(&format!("peer {id} left"));
        }
    }
}

/// Whether two streams are the same socket (one a `try_clone` of the other).
fn same_socket(a: &UnixStream, b: &UnixStream) -> bool {
    use std::os::unix::fs::MetadataExt;
    let ino = |s: &UnixStream| {
        // SAFETY: `fstat` through a borrowed fd; `File` is forgotten, not closed.
        let f = std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(s.as_raw_fd()) });
        f.metadata().map(|m| m.ino()).ok()
    };
    ino(a).is_some() && ino(a) == ino(b)
}
