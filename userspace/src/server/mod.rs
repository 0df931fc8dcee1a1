//! A drop-in for QEMU's `contrib/ivshmem-server`, in std-only Rust.
//!
//! Protocol (QEMU `docs/specs/ivshmem-spec.rst`): every message is a little-endian i64,
//! possibly with one file descriptor. A new client receives the protocol version (0), its peer
//! id, then -1 with the shared-memory fd; then, for every other peer, one message per vector:
//! the peer's id with that vector's eventfd; then its own id with each of its own eventfds.
//! Existing peers receive the newcomer's id with each of its eventfds. When a peer leaves, the
//! others receive its id without a fd.
//!
//! Every peer has its own outbound queue, served by its own writer thread: the peers lock is
//! only held to queue messages, never across a socket write, so a client that stops reading
//! delays nobody else. A message left unread for the write timeout drops that client, and its
//! departure is announced to everyone it was announced to (which is every remaining peer:
//! joins and departures are queued to all peers under the one lock, in one order).

mod fdpass;

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{self, Read};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
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
/// Stack for the per-peer threads: each only waits in one syscall or on its queue.
const PEER_THREAD_STACK: usize = 64 << 10;

use crate::sys::{eventfd, EFD_CLOEXEC};

fn new_eventfd() -> io::Result<OwnedFd> {
    // SAFETY: Plain syscall; the result is checked and owned.
    let fd = unsafe { eventfd(0, EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// One protocol message as queued: the fd is shared, and stays open until the message is sent
/// or dropped with its queue.
struct Msg {
    value: i64,
    fd: Option<Arc<OwnedFd>>,
}

/// A peer's outbound queue. Closing it drops what is still queued and stops its writer.
struct Outbox {
    state: Mutex<OutboxState>,
    ready: Condvar,
}

struct OutboxState {
    queue: VecDeque<Msg>,
    closed: bool,
}

impl Outbox {
    fn new() -> Self {
        Self {
            state: Mutex::new(OutboxState {
                queue: VecDeque::new(),
                closed: false,
            }),
            ready: Condvar::new(),
        }
    }

    fn push(&self, value: i64, fd: Option<&Arc<OwnedFd>>) {
        let mut state = self.state.lock().unwrap();
        if !state.closed {
            state.queue.push_back(Msg {
                value,
                fd: fd.cloned(),
            });
            self.ready.notify_one();
        }
    }

    /// The next message to send; `None` once closed.
    fn next(&self) -> Option<Msg> {
        let mut state = self.state.lock().unwrap();
        loop {
            if state.closed {
                return None;
            }
            if let Some(msg) = state.queue.pop_front() {
                return Some(msg);
            }
            state = self.ready.wait(state).unwrap();
        }
    }

    fn close(&self) {
        let mut state = self.state.lock().unwrap();
        state.closed = true;
        state.queue.clear();
        self.ready.notify_one();
    }
}

struct Peer {
    /// Tells this peer apart from a later one given the same id.
    serial: u64,
    stream: UnixStream,
    vectors: Vec<Arc<OwnedFd>>,
    outbox: Arc<Outbox>,
}

/// The server's state: the shared memory and the connected peers.
pub struct Server {
    shm: Arc<OwnedFd>,
    vectors: u32,
    verbose: bool,
    write_timeout: Duration,
    peers: Mutex<Peers>,
    /// The per-peer threads, joined when `serve` returns so nothing of a client outlives it.
    threads: Mutex<Vec<JoinHandle<()>>>,
}

struct Peers {
    by_id: BTreeMap<u16, Peer>,
    /// Next id to try: ids are handed out in increasing order and wrap, like QEMU's server, so
    /// a departed id is not reused while younger ids are free.
    next_id: u16,
    next_serial: u64,
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
            shm: Arc::new(shm.into()),
            vectors,
            verbose,
            write_timeout,
            peers: Mutex::new(Peers {
                by_id: BTreeMap::new(),
                next_id: 0,
                next_serial: 0,
            }),
            threads: Mutex::new(Vec::new()),
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

    /// Accepts clients until `stop` is set (checked every 20 ms). On return every client has
    /// been hung up on and every descriptor of theirs closed.
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
        // Hanging up on every client makes QEMU see the server go away; it also wakes their
        // threads, whatever they are blocked in.
        let peers = std::mem::take(&mut self.peers.lock().unwrap().by_id);
        for peer in peers.values() {
            peer.outbox.close();
            let _ = peer.stream.shutdown(Shutdown::Both);
        }
        drop(peers);
        let threads = std::mem::take(&mut *self.threads.lock().unwrap());
        for t in threads {
            let _ = t.join();
        }
        Ok(())
    }

    fn add_peer(self: &Arc<Self>, stream: UnixStream) -> io::Result<()> {
        stream.set_nonblocking(false)?;
        // A client that leaves a message unread this long is dropped.
        stream.set_write_timeout(Some(self.write_timeout))?;
        let writer = stream.try_clone()?;
        let reader = stream.try_clone()?;
        let vectors = (0..self.vectors)
            .map(|_| new_eventfd().map(Arc::new))
            .collect::<io::Result<Vec<_>>>()?;
        let outbox = Arc::new(Outbox::new());

        let mut peers = self.peers.lock().unwrap();
        if peers.by_id.len() >= MAX_PEERS {
            return Err(io::Error::other("no free peer id"));
        }
        let mut id = peers.next_id;
        while peers.by_id.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        peers.next_id = id.wrapping_add(1);
        let serial = peers.next_serial;
        peers.next_serial += 1;
        // Only queued here: the writers send. Queuing under the lock gives every peer the
        // joins and departures in the same order.
        outbox.push(PROTOCOL_VERSION, None);
        outbox.push(i64::from(id), None);
        outbox.push(-1, Some(&self.shm));
        for (&other_id, other) in &peers.by_id {
            for fd in &other.vectors {
                outbox.push(i64::from(other_id), Some(fd));
            }
            for fd in &vectors {
                other.outbox.push(i64::from(id), Some(fd));
            }
        }
        for fd in &vectors {
            outbox.push(i64::from(id), Some(fd));
        }
        peers.by_id.insert(
            id,
            Peer {
                serial,
                stream,
                vectors,
                outbox: Arc::clone(&outbox),
            },
        );
        drop(peers);
        self.log(&format!("peer {id} joined"));

        let server = Arc::clone(self);
        self.spawn(id, serial, move || {
            server.write_loop(id, serial, writer, &outbox)
        })?;
        let server = Arc::clone(self);
        self.spawn(id, serial, move || server.watch(id, serial, reader))
    }

    /// Starts a thread for peer `id`; if that fails the peer is dropped (and its departure
    /// announced, as it was already announced).
    fn spawn(&self, id: u16, serial: u64, f: impl FnOnce() + Send + 'static) -> io::Result<()> {
        let spawned = thread::Builder::new()
            .name(format!("ivshmem-peer-{id}"))
            .stack_size(PEER_THREAD_STACK)
            .spawn(f);
        match spawned {
            Ok(t) => {
                let mut threads = self.threads.lock().unwrap();
                threads.retain(|t| !t.is_finished());
                threads.push(t);
                Ok(())
            }
            Err(e) => {
                self.remove(id, serial, &format!("dropped: {e}"));
                Err(e)
            }
        }
    }

    /// Sends peer `id`'s queue in order; a send that fails or times out drops the peer.
    fn write_loop(&self, id: u16, serial: u64, stream: UnixStream, outbox: &Outbox) {
        while let Some(msg) = outbox.next() {
            let fd = msg.fd.as_ref().map(|fd| fd.as_raw_fd());
            let sent = loop {
                match send_msg(&stream, msg.value, fd) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    r => break r,
                }
            };
            if let Err(e) = sent {
                let why = if e.kind() == io::ErrorKind::WouldBlock {
                    format!("not reading for {:?}", self.write_timeout)
                } else {
                    e.to_string()
                };
                self.remove(id, serial, &format!("dropped: {why}"));
                return;
            }
        }
    }

    /// Waits for peer `id` to hang up (QEMU sends nothing; other bytes are ignored).
    fn watch(&self, id: u16, serial: u64, mut stream: UnixStream) {
        let mut buf = [0u8; 256];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        self.remove(id, serial, "left");
    }

    /// Removes peer `id` unless it is already gone (or the id now belongs to a later peer),
    /// hangs up on it and announces its departure to all others: each of them was sent its
    /// eventfds, either when it joined or in their own greeting.
    fn remove(&self, id: u16, serial: u64, why: &str) {
        let mut peers = self.peers.lock().unwrap();
        if peers.by_id.get(&id).map(|p| p.serial) != Some(serial) {
            return;
        }
        let peer = peers.by_id.remove(&id).expect("checked above");
        peer.outbox.close();
        let _ = peer.stream.shutdown(Shutdown::Both);
        for other in peers.by_id.values() {
            other.outbox.push(i64::from(id), None);
        }
        drop(peers);
        self.log(&format!("peer {id} {why}"));
    }
}
