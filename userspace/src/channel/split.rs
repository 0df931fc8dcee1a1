//! The two halves of a split end ([`Channel::split`]): one writes, one reads, each from its
//! own thread. They share the end's session, heartbeat and waker; each has its own
//! non-blocking mode and timeout.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use super::{Channel, Kind, ReadSlice, WriteSlice};

/// The writing half of a split end: `Write`, [`send`](Self::send),
/// [`write_slice`](Self::write_slice). Dropping it closes the write side (the peer reads
/// the rest, then end-of-file).
#[derive(Debug)]
pub struct WriteHalf(pub(super) Channel);

/// The reading half of a split end: `Read`, [`recv`](Self::recv),
/// [`read_slice`](Self::read_slice).
#[derive(Debug)]
pub struct ReadHalf(pub(super) Channel);

impl WriteHalf {
    /// See [`Channel::send`].
    pub fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        self.0.send(msg)
    }

    /// See [`Channel::write_slice`].
    pub fn write_slice(&mut self) -> io::Result<WriteSlice<'_>> {
        self.0.write_slice()
    }

    /// See [`Channel::close_write`].
    pub fn close_write(&mut self) -> io::Result<()> {
        self.0.close_write()
    }

    /// See [`Channel::drain`].
    pub fn drain(&mut self) -> io::Result<()> {
        self.0.drain()
    }

    /// See [`Channel::wait_peer`].
    pub fn wait_peer(&mut self) -> io::Result<()> {
        self.0.wait_peer()
    }

    /// See [`Channel::set_write_timeout`].
    pub fn set_write_timeout(&mut self, t: Option<Duration>) {
        self.0.set_write_timeout(t)
    }

    /// Whether this half's operations return `WouldBlock` instead of waiting.
    pub fn set_nonblocking(&mut self, on: bool) {
        self.0.set_nonblocking(on)
    }

    /// See [`Channel::as_raw_fd`] (the same descriptor as the reading half's).
    pub fn as_raw_fd(&self) -> Option<RawFd> {
        self.0.as_raw_fd()
    }

    /// See [`Channel::poll_interval`].
    pub fn poll_interval(&self) -> Duration {
        self.0.poll_interval()
    }

    /// See [`Channel::max_message`].
    pub fn max_message(&self) -> usize {
        self.0.max_message()
    }

    /// Stream or messages.
    pub fn kind(&self) -> Kind {
        self.0.kind()
    }

    /// See [`Channel::abort`]: the peer gets `BrokenPipe` instead of end-of-file.
    pub fn abort(self) {
        self.0.abort()
    }
}

impl io::Write for WriteHalf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ReadHalf {
    /// See [`Channel::recv`].
    pub fn recv(&mut self, buf: &mut Vec<u8>) -> io::Result<Option<usize>> {
        self.0.recv(buf)
    }

    /// See [`Channel::read_slice`].
    pub fn read_slice(&mut self) -> io::Result<ReadSlice<'_>> {
        self.0.read_slice()
    }

    /// See [`Channel::set_read_timeout`].
    pub fn set_read_timeout(&mut self, t: Option<Duration>) {
        self.0.set_read_timeout(t)
    }

    /// Whether this half's operations return `WouldBlock` instead of waiting.
    pub fn set_nonblocking(&mut self, on: bool) {
        self.0.set_nonblocking(on)
    }

    /// See [`Channel::as_raw_fd`] (the same descriptor as the writing half's).
    pub fn as_raw_fd(&self) -> Option<RawFd> {
        self.0.as_raw_fd()
    }

    /// See [`Channel::poll_interval`].
    pub fn poll_interval(&self) -> Duration {
        self.0.poll_interval()
    }

    /// Stream or messages.
    pub fn kind(&self) -> Kind {
        self.0.kind()
    }
}

impl io::Read for ReadHalf {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::{FdWaker, Options, Region};
    use std::io::{Read, Write};
    use std::sync::Arc;

    fn send_and_sync<T: Send + Sync>() {}

    /// Both ends split, four threads: each direction streams 4 MiB through 4 KiB rings while
    /// the other does, with sleeping wakers (one descriptor per end, shared by its halves).
    /// A wake-up one half takes from the other costs the other a whole sleep slice (a tenth
    /// of the 60 s liveness timeout): the bound below catches that, far above a healthy run
    /// (under a second).
    #[test]
    fn split_halves_stream_both_ways_from_four_threads() {
        send_and_sync::<WriteHalf>();
        send_and_sync::<ReadHalf>();
        let r = Region::anonymous(1 << 20).unwrap();
        let (wa, wb) = FdWaker::pair().unwrap();
        let o = Options::new()
            .capacity(4096)
            .spin(0)
            .liveness_timeout(Duration::from_secs(60));
        let start = std::time::Instant::now();
        let a = Channel::open(&r, "s", &o.clone().waker(Arc::new(wa))).unwrap();
        let b = Channel::open(&r, "s", &o.waker(Arc::new(wb))).unwrap();
        let data = |seed: u8| -> Vec<u8> {
            (0..4u32 << 20)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ seed)
                .collect()
        };
        let mut threads = Vec::new();
        for (end, seed_out, seed_in) in [(a, 1u8, 2u8), (b, 2, 1)] {
            let (mut w, mut rd) = end.split();
            let out = data(seed_out);
            threads.push(std::thread::spawn(move || {
                for chunk in out.chunks(3000) {
                    w.write_all(chunk).unwrap();
                }
                drop(w); // closes the write side
            }));
            let want = data(seed_in);
            threads.push(std::thread::spawn(move || {
                let mut got = Vec::new();
                rd.read_to_end(&mut got).unwrap();
                assert!(got == want, "the stream differs");
            }));
        }
        for t in threads {
            t.join().unwrap();
        }
        let took = start.elapsed();
        assert!(
            took < Duration::from_secs(30),
            "{took:?}: a half slept through its wake-up"
        );
    }

    #[test]
    fn the_end_leaves_when_both_halves_are_gone() {
        let r = Region::anonymous(1 << 20).unwrap();
        let o = Options::new().open_timeout(Duration::from_millis(100));
        let a = Channel::open(&r, "s", &o).unwrap();
        let mut b = Channel::open(&r, "s", &o).unwrap();
        let (w, rd) = a.split();
        drop(w);
        let mut buf = Vec::new();
        b.read_to_end(&mut buf).unwrap(); // end-of-file: the writing half closed
                                          // `a` still holds its side through the reading half: the channel is busy.
        assert!(Channel::open(&r, "s", &o).is_err());
        b.write_all(b"still read").unwrap();
        let mut rd = rd;
        let mut got = [0u8; 10];
        rd.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"still read");
        drop(rd);
        drop(b);
        Channel::open(&r, "s", &o).unwrap();
    }
}
