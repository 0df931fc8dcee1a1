//! Channels in a tokio event loop through `AsyncFd`: both ends of a stream channel and of a
//! message channel in one single-threaded runtime, each end's eventfd registered with the
//! reactor. A stream of 32 MiB crosses one way while 10,000 messages go back and forth on the
//! other channel; every byte and message is checked, and a lost wake-up (a task that waits for
//! a readiness that never comes) fails the run through its overall timeout instead of hanging.
//!
//! The pattern: an operation in non-blocking mode returns `WouldBlock` only after arming the
//! end (it drained the descriptor and asked the peer to ring once it gets to what the
//! operation waits for); the task then awaits readability for at most `poll_interval()` (the
//! retry is also where a dead peer is noticed), clears the readiness and tries again.
//!
//!     make tokio-example     (or: cargo run --release in this directory)

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ivshmem::channel::{Channel, FdWaker, Kind, Options, Region};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// A channel end in the event loop.
///
/// `fd` is declared first: it is dropped (deregistered) before `chan` closes the descriptor.
struct AsyncChannel {
    fd: AsyncFd<Fd>,
    chan: Channel,
}

/// The end's descriptor, owned by its waker (the channel): registering it borrows it.
struct Fd(RawFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

impl AsyncChannel {
    fn new(mut chan: Channel) -> io::Result<Self> {
        chan.set_nonblocking(true);
        let fd = chan
            .as_raw_fd()
            .ok_or_else(|| io::Error::other("a spinning channel has no descriptor to poll"))?;
        // SAFETY: `fd` is the eventfd of `chan`'s waker, open for as long as `chan` lives,
        // and `Fd` always returns it; the `AsyncFd` is dropped before `chan` (field order).
        let fd = unsafe { AsyncFd::register_with_interest(Fd(fd), Interest::READABLE) }?;
        Ok(Self { fd, chan })
    }

    /// Runs `op` until it does not return `WouldBlock`, awaiting the descriptor in between.
    async fn io<T>(&mut self, mut op: impl FnMut(&mut Channel) -> io::Result<T>) -> io::Result<T> {
        loop {
            match op(&mut self.chan) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                r => return r,
            }
            // Armed: a ring from now on makes the descriptor readable.
            let interval = self.chan.poll_interval();
            if let Ok(guard) = tokio::time::timeout(interval, self.fd.readable()).await {
                guard?.clear_ready();
            }
        }
    }

    async fn write_all(&mut self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            let n = self.io(|c| c.write(buf)).await?;
            buf = &buf[n..];
        }
        Ok(())
    }
}

fn byte(seed: u64, pos: u64) -> u8 {
    let mut z = (seed << 48) ^ pos.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 31)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    (z >> 40) as u8
}

/// Two ends of channel `name` in `region`, each with an eventfd of its own that the other
/// writes to ring it.
fn pair(region: &Region, name: &str, kind: Kind) -> io::Result<(AsyncChannel, AsyncChannel)> {
    let (wa, wb) = FdWaker::pair()?;
    let base = Options::new().kind(kind).capacity(64 << 10).spin(0);
    let a = Channel::open(region, name, &base.clone().waker(Arc::new(wa)))?;
    let b = Channel::open(region, name, &base.waker(Arc::new(wb)))?;
    Ok((AsyncChannel::new(a)?, AsyncChannel::new(b)?))
}

const STREAM: u64 = 32 << 20;
const MESSAGES: u64 = 10_000;

async fn run() -> io::Result<()> {
    let region = Region::anonymous(4 << 20)?;
    let (mut tx, mut rx) = pair(&region, "stream", Kind::Stream)?;
    let (mut ping, mut pong) = pair(&region, "rpc", Kind::Messages)?;
    let t0 = Instant::now();

    let writer = async move {
        let mut buf = vec![0u8; 50_000];
        let mut pos = 0u64;
        while pos < STREAM {
            let n = buf.len().min((STREAM - pos) as usize);
            for (i, b) in buf[..n].iter_mut().enumerate() {
                *b = byte(1, pos + i as u64);
            }
            tx.write_all(&buf[..n]).await?;
            pos += n as u64;
        }
        tx.chan.close_write()?;
        io::Result::Ok(())
    };
    let reader = async move {
        let mut buf = vec![0u8; 65536];
        let mut pos = 0u64;
        loop {
            let n = rx.io(|c| c.read(&mut buf)).await?;
            if n == 0 {
                break;
            }
            if let Some(i) = (0..n).find(|&i| buf[i] != byte(1, pos + i as u64)) {
                return Err(io::Error::other(format!(
                    "stream byte {} differs",
                    pos + i as u64
                )));
            }
            pos += n as u64;
        }
        if pos != STREAM {
            return Err(io::Error::other(format!("stream ended after {pos} bytes")));
        }
        io::Result::Ok(t0.elapsed())
    };
    let client = async move {
        let mut back = Vec::new();
        for i in 0..MESSAGES {
            let msg: Vec<u8> = (0..i % 300).map(|j| byte(i, j)).collect();
            ping.io(|c| c.send(&msg)).await?;
            let got = ping.io(|c| c.recv(&mut back)).await?;
            if got != Some(msg.len()) || back != msg {
                return Err(io::Error::other(format!("message {i} came back wrong")));
            }
        }
        io::Result::Ok(t0.elapsed())
    };
    let server = async move {
        let mut m = Vec::new();
        for _ in 0..MESSAGES {
            pong.io(|c| c.recv(&mut m)).await?;
            pong.io(|c| c.send(&m)).await?;
        }
        io::Result::Ok(())
    };
    let all = async { tokio::try_join!(writer, reader, client, server) };
    let ((), streamed, pinged, ()) =
        tokio::time::timeout(Duration::from_secs(120), all)
            .await
            .map_err(|_| io::Error::other("no progress for 120 s: a lost wake-up"))??;
    println!(
        "tokio AsyncFd: {} MiB streamed exact in {:.2} s; {MESSAGES} messages echoed exact in \
         {:.2} s (one thread, both ends of both channels)",
        STREAM >> 20,
        streamed.as_secs_f64(),
        pinged.as_secs_f64()
    );
    Ok(())
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    if let Err(e) = rt.block_on(run()) {
        eprintln!("tokio example: {e}");
        std::process::exit(1);
    }
}
