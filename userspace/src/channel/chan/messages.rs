//! Framed messages on an end: a record is an 8-byte header (length and its complement) and the
//! payload padded to 8 bytes, committed in band (layout version 3): the producer clears the
//! next record's header word, then stores this record's header last (release), and the
//! consumer polls the header word at its position: one load on the line its payload starts on,
//! where waiting for the producer index costs a second serial cache miss per message
//! (`protocol::Producer::commit`).

use std::hint::black_box;

use super::*;

impl Channel {
    /// Sends one message (blocking as configured). It arrives whole or not at all.
    ///
    /// Inlined into the caller: the common case (room in the ring, this end in its session) is
    /// a straight line of checks, the copy and the commit, without a call; waiting and errors
    /// are `send_slow`'s.
    #[inline]
    pub fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        if !self.send_ready(msg.len() as u64) {
            return self.send_slow(msg);
        }
        // As in `check_write`.
        fence(Acquire);
        self.copy_to_ring(self.tx.pos + MSG_HDR, msg);
        self.commit_message(msg.len() as u32)
    }

    /// Whether `send` needs neither a wait nor an error before the copy: the checks of
    /// `reserve_message` that pass on its first look, with the free space this end saw last
    /// (which also bounds the length: a message longer than `max_message` never fits).
    #[inline(always)]
    fn send_ready(&self, len: u64) -> bool {
        self.broken.is_none()
            && self.kind == Kind::Messages
            && !self.write_closed
            && self.tx.cap - self.tx.pos.wrapping_sub(self.tx.seen) >= MSG_HDR + record_len(len)
            && self.check.holds(&self.mem)
    }

    /// `send` when `send_ready` said no: waits, or says why not.
    #[inline(never)]
    fn send_slow(&mut self, msg: &[u8]) -> io::Result<()> {
        self.reserve_message(msg.len())?;
        self.copy_to_ring(self.tx.pos + MSG_HDR, msg);
        self.commit_message(msg.len() as u32)
    }

    /// Waits (as configured) until a message of `len` bytes fits in the outgoing ring.
    #[inline]
    pub(super) fn reserve_message(&mut self, len: usize) -> io::Result<()> {
        self.usable(Kind::Messages)?;
        self.check_write().map_err(|e| self.fail(e))?;
        let max = self.max_message();
        if len > max {
            return Err(ChannelError::MessageTooLarge { len, max }.into());
        }
        // Room for the record and for the next one's header word, which the commit clears.
        let need = MSG_HDR + record_len(len as u64);
        self.wait(Dir::Out, need, |c| c.writable(need))
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// Receives the next message into `buf` (replacing its contents): `Some(len)`, or `None`
    /// once the peer closed and every message was read.
    ///
    /// A committed message that fits `buf` is taken without a call; waiting, growing `buf`
    /// and errors are `recv_slow`'s.
    #[inline]
    pub fn recv(&mut self, buf: &mut Vec<u8>) -> io::Result<Option<usize>> {
        match self.message_now() {
            Some((len, need)) if len <= buf.capacity() => self.take_message(buf, len, need),
            _ => self.recv_slow(buf),
        }
    }

    /// `recv` when no message was there, or `buf` must grow. Inlined into `recv` with the
    /// wait: where the spin sees the message, no call returns before the copy and the release
    /// (TCG lab, `rtt --bare`, 64-byte messages, near vCPU placement: round trip 3.13x the
    /// bare ping-pong with `recv_slow` and `next_message` called, 2.90x inlined; medians of
    /// 27/28 rounds in 10 boots, A/B in the same boots). The compiler may then keep `recv`
    /// itself out of line: one copy per crate that receives.
    #[inline(always)]
    fn recv_slow(&mut self, buf: &mut Vec<u8>) -> io::Result<Option<usize>> {
        let Some((len, need)) = self.next_message()? else {
            return Ok(None);
        };
        buf.clear();
        buf.reserve(len);
        self.take_message(buf, len, need)
    }

    /// Copies the message of `len` bytes (a record of `need`) at the consumer position into
    /// `buf`, whose capacity is at least `len`, and releases it; on an error `buf` is empty.
    #[inline(always)]
    fn take_message(
        &mut self,
        buf: &mut Vec<u8>,
        len: usize,
        need: u64,
    ) -> io::Result<Option<usize>> {
        debug_assert!(buf.capacity() >= len);
        self.copy_from_ring(self.rx.pos + MSG_HDR, buf.as_mut_ptr(), len);
        // SAFETY: The capacity is at least `len` (callers), and the copy above initialised
        // `len` bytes.
        unsafe { buf.set_len(len) };
        if let Err(e) = self.release_message(need) {
            // The bytes may be a newer session's: none is delivered.
            buf.clear();
            return Err(e);
        }
        Ok(Some(len))
    }

    /// [`recv`](Self::recv) without waiting: `WouldBlock` when no message is there (the end is
    /// armed, as in non-blocking mode).
    pub fn try_recv(&mut self, buf: &mut Vec<u8>) -> io::Result<Option<usize>> {
        let was = std::mem::replace(&mut self.nonblocking, true);
        let r = self.recv(buf);
        self.nonblocking = was;
        r
    }

    /// [`recv`](Self::recv) waiting at most `t` (`TimedOut` after), whatever the read timeout.
    pub fn recv_timeout(&mut self, buf: &mut Vec<u8>, t: Duration) -> io::Result<Option<usize>> {
        let was = self.read_timeout.replace(t);
        let nb = std::mem::replace(&mut self.nonblocking, false);
        let r = self.recv(buf);
        (self.read_timeout, self.nonblocking) = (was, nb);
        r
    }

    /// Waits for the next message's header and checks it: its payload length and the bytes
    /// its record takes in the ring, or `None` at the end of the sequence.
    #[inline]
    pub(super) fn next_message(&mut self) -> io::Result<Option<(usize, u64)>> {
        self.usable(Kind::Messages)?;
        let hdr = self
            .wait(Dir::In, MSG_HDR, |c| c.next_header())
            .map_err(|e| self.fail(e))?;
        if hdr == 0 {
            return Ok(None);
        }
        let Some(m) = record_of(hdr, self.inp.cap) else {
            let e = self.violation(format!(
                "message header {:#x}/{:#x} at {} in a ring of {} bytes",
                hdr as u32,
                hdr >> 32,
                self.rx.pos,
                self.inp.cap
            ));
            return Err(self.fail(e));
        };
        Ok(Some(m))
    }

    /// `next_message` when a valid record is committed at the consumer position (the common
    /// case): its first look, without the paths for waiting, the end and errors. `None` when
    /// anything needs the full path, which then looks again.
    #[inline]
    fn message_now(&self) -> Option<(usize, u64)> {
        if self.broken.is_some() || self.kind != Kind::Messages {
            return None;
        }
        let hdr = u64::from_le(
            self.rx
                .committed::<Std>(self.ring_word(self.inp, self.rx.pos)),
        );
        record_of(hdr, self.inp.cap)
    }

    /// The committed header at the consumer position (never 0), `Some(0)` at the end of the
    /// sequence (the peer closed and nothing follows), `None` while neither.
    #[inline]
    fn next_header(&mut self) -> Result<Option<u64>, ChannelError> {
        let hdr = self
            .rx
            .committed::<Std>(self.ring_word(self.inp, self.rx.pos));
        if hdr != 0 {
            return Ok(Some(u64::from_le(hdr)));
        }
        // While waiting, load the line after the header's too (the value is not used): a record
        // of more than 56 bytes goes on there, and a look that fetches both lines at once saves
        // the second transfer in a row once the record lands (x86 orders the two loads, so the
        // look that sees the header has the line's new bytes). Host, two processes, 64-byte
        // messages: round trip 1.29x the bare ping-pong without, 1.23x with (medians of 8).
        black_box(
            self.ring_word(self.inp, self.rx.pos.wrapping_add(64))
                .load(Relaxed),
        );
        // Acquire: pairs with the release store of the flag, which follows the peer's last
        // commit, so the re-read below sees everything it sent.
        if self.w32(self.inp.closed).load(Acquire) == 0 {
            return Ok(None);
        }
        let hdr = self
            .rx
            .committed::<Std>(self.ring_word(self.inp, self.rx.pos));
        self.check_session()?;
        Ok(Some(u64::from_le(hdr)))
    }

    /// Writes the header of a message of `len` bytes at the producer position and commits its
    /// record (header, payload written by the caller, padding), if this end is still in its
    /// session.
    #[inline(always)]
    pub(super) fn commit_message(&mut self, len: u32) -> io::Result<()> {
        // One word: the length in the low half, its complement in the high half (both
        // little-endian, as the layout says); never 0.
        let hdr = u64::from(len) | u64::from(!len) << 32;
        let need = record_len(u64::from(len));
        self.check_session()?;
        let wakeups = self.wakeups();
        let this = self.mem.w64(word_at(self.out, self.tx.pos));
        let next = self
            .mem
            .w64(word_at(self.out, self.tx.pos.wrapping_add(need)));
        let prod = self.mem.w64(self.out.prod);
        let wake = self.mem.w64(self.out.cons_wake);
        if self
            .tx
            .commit::<Std>(need, this, next, hdr.to_le(), prod, wake, wakeups)
        {
            self.notify_peer();
        }
        Ok(())
    }

    /// Gives a message record of `need` bytes back, if this end is still in its session (as
    /// `release`; the record was seen committed in band, not through the producer index).
    #[inline]
    pub(super) fn release_message(&mut self, need: u64) -> io::Result<()> {
        self.rx.record_committed(need);
        self.release(need)
    }

    /// The 8-byte word at free-running position `pos` of ring `r`: a message header, which is
    /// 8-aligned and never straddles the wrap (records are 8-aligned in a ring of 2^n >= 64
    /// bytes). An atomic (relaxed) access: the peer may write it at any time; what orders it
    /// is the index protocol, as for the payload.
    pub(super) fn ring_word(&self, r: Ring, pos: u64) -> &AtomicU64 {
        self.mem.w64(word_at(r, pos))
    }
}

/// The bytes a record of a `len`-byte message takes in the ring: its header and the payload
/// padded to 8 bytes. (`len` is at most a slice's length, far from overflowing; the mask is
/// shorter than `next_multiple_of`, which the hot path computes twice per message.)
#[inline(always)]
fn record_len(len: u64) -> u64 {
    MSG_HDR + ((len + 7) & !7)
}

/// The payload length and the record's bytes of a committed header `hdr` (the length in the
/// low half, its complement in the high half) in a ring of `cap` bytes: `None` for a header no
/// honest producer writes, or a record that leaves no room for the next one's header word.
#[inline(always)]
fn record_of(hdr: u64, cap: u64) -> Option<(usize, u64)> {
    let len = hdr as u32;
    let need = record_len(u64::from(len));
    (hdr >> 32 == u64::from(!len) && need + MSG_HDR <= cap).then_some((len as usize, need))
}

/// The offset of the 8-byte word at free-running position `pos` of ring `r` (see
/// `Channel::ring_word`).
#[inline]
fn word_at(r: Ring, pos: u64) -> usize {
    debug_assert!(pos.is_multiple_of(8));
    r.data + (pos & (r.cap - 1)) as usize
}
