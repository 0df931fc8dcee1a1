//! Framed messages on an end: a record is an 8-byte header (length and its complement) and the
//! payload padded to 8 bytes, published with one index store.

use super::*;

impl Channel {
    /// Sends one message (blocking as configured). It arrives whole or not at all.
    pub fn send(&mut self, msg: &[u8]) -> io::Result<()> {
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
        let need = MSG_HDR + (len as u64).next_multiple_of(8);
        self.wait(Dir::Out, need, |c| c.writable(need))
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// Receives the next message into `buf` (replacing its contents): `Some(len)`, or `None`
    /// once the peer closed and every message was read.
    pub fn recv(&mut self, buf: &mut Vec<u8>) -> io::Result<Option<usize>> {
        let Some((len, need)) = self.next_message()? else {
            return Ok(None);
        };
        buf.clear();
        buf.reserve(len);
        let spare: &mut [MaybeUninit<u8>] = &mut buf.spare_capacity_mut()[..len];
        self.copy_from_ring(self.rx.pos + MSG_HDR, spare.as_mut_ptr().cast(), len);
        // SAFETY: the copy above initialised the first `len` bytes of the spare capacity.
        unsafe { buf.set_len(len) };
        self.release(need)?;
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
        let avail = self
            .wait(Dir::In, MSG_HDR, |c| c.readable(MSG_HDR))
            .map_err(|e| self.fail(e))?;
        if avail == 0 {
            return Ok(None);
        }
        let hdr = u64::from_le(self.ring_word(self.inp, self.rx.pos).load(Relaxed));
        let len = hdr as u32;
        let check = (hdr >> 32) as u32;
        let need = MSG_HDR + u64::from(len).next_multiple_of(8);
        if check != !len || u64::from(len) > self.inp.cap - MSG_HDR || need > avail {
            let e = self.violation(format!(
                "message header {len:#x}/{check:#x} at {} with {avail} bytes published",
                self.rx.pos
            ));
            return Err(self.fail(e));
        }
        Ok(Some((len as usize, need)))
    }

    /// Writes the header of a message of `len` bytes at the producer position and publishes
    /// its record (header, payload written by the caller, padding).
    #[inline]
    pub(super) fn commit_message(&mut self, len: u32) -> io::Result<()> {
        // One store: the length in the low half, its complement in the high half (both
        // little-endian, as the layout says).
        let hdr = u64::from(len) | u64::from(!len) << 32;
        self.ring_word(self.out, self.tx.pos)
            .store(hdr.to_le(), Relaxed);
        self.publish(MSG_HDR + u64::from(len).next_multiple_of(8))
    }

    /// The 8-byte word at free-running position `pos` of ring `r`: a message header, which is
    /// 8-aligned and never straddles the wrap (records are 8-aligned in a ring of 2^n >= 64
    /// bytes). An atomic (relaxed) access: the peer may write it at any time; what orders it
    /// is the index protocol, as for the payload.
    pub(super) fn ring_word(&self, r: Ring, pos: u64) -> &AtomicU64 {
        debug_assert!(pos.is_multiple_of(8));
        self.mem.w64(r.data + (pos & (r.cap - 1)) as usize)
    }
}
