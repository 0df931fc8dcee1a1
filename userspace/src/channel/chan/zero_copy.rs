//! Zero-copy access to the rings: slices of the byte stream ([`WriteSlice`], [`ReadSlice`])
//! and whole messages ([`MessageSlot`], [`MessageView`]).
//!
//! The protocol gives the bytes of a slice to this end until it commits or releases them, but
//! a hostile peer can still write into them: the safe interfaces copy, and only `unsafe`
//! methods, whose contract is a trusted peer, make Rust slices.

use std::io;

use super::{Channel, ChannelError, Dir, Kind, MSG_HDR};

impl Channel {
    /// Borrows the free part of the outgoing ring up to where it wraps (at least one byte;
    /// waits as configured): write into it, then [`WriteSlice::commit`] what was written.
    pub fn write_slice(&mut self) -> io::Result<WriteSlice<'_>> {
        self.usable(Kind::Stream)?;
        self.check_write().map_err(|e| self.fail(e))?;
        let free = self
            .wait(Dir::Out, 1, |c| c.writable(1))
            .map_err(|e| self.fail(e))?;
        let off = (self.tx.pos & (self.out.cap - 1)) as usize;
        let len = (free as usize).min(self.out.cap as usize - off);
        Ok(WriteSlice {
            off: self.out.data + off,
            len,
            chan: self,
        })
    }

    /// Borrows the published part of the incoming ring up to where it wraps (waits as
    /// configured; empty at the end of the stream): read it, then [`ReadSlice::release`] what
    /// was used.
    pub fn read_slice(&mut self) -> io::Result<ReadSlice<'_>> {
        self.usable(Kind::Stream)?;
        let avail = self
            .wait(Dir::In, 1, |c| c.readable(1))
            .map_err(|e| self.fail(e))?;
        // The caller reads these bytes in place, before `release` can validate them.
        self.check_session()?;
        let off = (self.rx.pos & (self.inp.cap - 1)) as usize;
        let len = (avail as usize).min(self.inp.cap as usize - off);
        Ok(ReadSlice {
            off: self.inp.data + off,
            len,
            chan: self,
        })
    }

    /// Reserves room for a message of `len` bytes in the outgoing ring (waits as configured):
    /// fill it, then [`MessageSlot::commit`] it. Nothing is sent if the slot is dropped.
    pub fn reserve(&mut self, len: usize) -> io::Result<MessageSlot<'_>> {
        self.reserve_message(len)?;
        Ok(MessageSlot {
            pos: self.tx.pos.wrapping_add(MSG_HDR),
            len,
            chan: self,
        })
    }

    /// The next message in the incoming ring, in place (waits as configured); `None` once
    /// the peer closed and every message was read. [`MessageView::release`] consumes it; a
    /// view dropped without release leaves it next.
    pub fn peek(&mut self) -> io::Result<Option<MessageView<'_>>> {
        let Some((len, need)) = self.next_message()? else {
            return Ok(None);
        };
        // As in `read_slice`.
        self.check_session()?;
        Ok(Some(MessageView {
            pos: self.rx.pos.wrapping_add(MSG_HDR),
            len,
            need,
            chan: self,
        }))
    }
}

/// The offsets in the region of `len` bytes at free-running position `pos` of a ring whose
/// payload starts at `data` and holds `cap` (a power of two) bytes: one part, or two when they
/// wrap.
fn parts(data: usize, cap: u64, pos: u64, len: usize) -> [(usize, usize); 2] {
    let off = (pos & (cap - 1)) as usize;
    let first = len.min(cap as usize - off);
    [(data + off, first), (data, len - first)]
}

/// Panics unless `n` bytes at `at` lie within the `len` bytes of a slice or message (`what`):
/// the bounds check of every copy in and out of the zero-copy types.
fn assert_within(at: usize, n: usize, len: usize, what: &str) {
    assert!(
        at.checked_add(n).is_some_and(|e| e <= len),
        "{n} bytes at {at} exceed the {len}-byte {what}"
    );
}

/// Room for one message in the outgoing ring, from [`Channel::reserve`].
pub struct MessageSlot<'a> {
    chan: &'a mut Channel,
    pos: u64,
    len: usize,
}

impl std::fmt::Debug for MessageSlot<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageSlot")
            .field("len", &self.len)
            .finish()
    }
}

impl MessageSlot<'_> {
    /// Bytes reserved.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the slot is for an empty message.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn parts(&self) -> [(usize, usize); 2] {
        let r = self.chan.out;
        parts(r.data, r.cap, self.pos, self.len)
    }

    /// Copies `src` to offset `at` of the message.
    ///
    /// # Panics
    ///
    /// If `at + src.len()` exceeds [`len`](Self::len).
    pub fn copy_from(&mut self, at: usize, src: &[u8]) {
        assert_within(at, src.len(), self.len, "message");
        // Wraps as the ring does: the payload is `len` bytes from `pos`, in at most two parts.
        self.chan
            .copy_to_ring(self.pos.wrapping_add(at as u64), src);
    }

    /// The message's bytes as Rust memory: one slice, and a second one when the message wraps
    /// around the end of the ring (empty otherwise).
    ///
    /// # Safety
    ///
    /// As [`WriteSlice::as_mut_slice`]: the peer must be trusted not to write into its free
    /// ring space while the slices live.
    pub unsafe fn as_mut_slices(&mut self) -> (&mut [u8], &mut [u8]) {
        let [(a, la), (b, lb)] = self.parts();
        let base = self.chan.mem.base();
        // SAFETY: Both parts lie in the ring's free space, which the protocol gives to this
        // end until it commits (`reserve` waited for it); they do not overlap (`parts`), and
        // `&mut self` keeps them exclusive here while the caller upholds the trust above.
        unsafe {
            (
                std::slice::from_raw_parts_mut(base.add(a), la),
                std::slice::from_raw_parts_mut(base.add(b), lb),
            )
        }
    }

    /// Sends the first `n` bytes as the message (`n` at most [`len`](Self::len)).
    pub fn commit(self, n: usize) -> io::Result<()> {
        if n > self.len {
            return Err(ChannelError::Invalid(format!(
                "commit of {n} bytes from a {}-byte message slot",
                self.len
            ))
            .into());
        }
        self.chan.commit_message(n as u32)
    }
}

/// One received message in place, from [`Channel::peek`].
pub struct MessageView<'a> {
    chan: &'a mut Channel,
    pos: u64,
    len: usize,
    need: u64,
}

impl std::fmt::Debug for MessageView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageView")
            .field("len", &self.len)
            .finish()
    }
}

impl MessageView<'_> {
    /// The message's length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the message is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies bytes from offset `at` of the message into `dst`.
    ///
    /// # Panics
    ///
    /// If `at + dst.len()` exceeds [`len`](Self::len).
    pub fn copy_to(&self, at: usize, dst: &mut [u8]) {
        assert_within(at, dst.len(), self.len, "message");
        let pos = self.pos.wrapping_add(at as u64);
        self.chan.copy_from_ring(pos, dst.as_mut_ptr(), dst.len());
    }

    /// The message as Rust memory: one slice, and a second one when it wraps around the end of
    /// the ring (empty otherwise).
    ///
    /// # Safety
    ///
    /// As [`ReadSlice::as_slice`]: the peer must be trusted not to write into published bytes
    /// while the slices live.
    pub unsafe fn as_slices(&self) -> (&[u8], &[u8]) {
        let r = self.chan.inp;
        let [(a, la), (b, lb)] = parts(r.data, r.cap, self.pos, self.len);
        let base = self.chan.mem.base();
        // SAFETY: Both parts lie in committed bytes of the ring (`peek` saw the record's
        // header committed and checked its length against the ring), which are this end's until it releases them;
        // unchanged while the caller upholds the trust above.
        unsafe {
            (
                std::slice::from_raw_parts(base.add(a), la),
                std::slice::from_raw_parts(base.add(b), lb),
            )
        }
    }

    /// Consumes the message. An error (`BrokenPipe`, "detached") means the bytes seen may have
    /// been a newer session's: this end left its session meanwhile.
    pub fn release(self) -> io::Result<()> {
        self.chan.release_message(self.need)
    }
}

/// The writable part of the outgoing ring, from [`Channel::write_slice`].
///
/// The protocol gives these bytes to this side alone until it commits them, but a hostile peer
/// can still write into them; so the safe interface copies ([`copy_from`](Self::copy_from))
/// and only [`as_mut_slice`](Self::as_mut_slice) (unsafe) makes a Rust slice.
pub struct WriteSlice<'a> {
    chan: &'a mut Channel,
    off: usize,
    len: usize,
}

impl std::fmt::Debug for WriteSlice<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteSlice")
            .field("len", &self.len)
            .finish()
    }
}

impl WriteSlice<'_> {
    /// Bytes available.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no byte is available (never: the slice waits for one).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first byte, for raw writes of at most [`len`](Self::len) bytes (e.g. `read(2)`).
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        // SAFETY: `off` is inside the region (checked when the slice was made).
        unsafe { self.chan.mem.base().add(self.off) }
    }

    /// Copies `src` to offset `at` of the slice.
    ///
    /// # Panics
    ///
    /// If `at + src.len()` exceeds [`len`](Self::len).
    pub fn copy_from(&mut self, at: usize, src: &[u8]) {
        assert_within(at, src.len(), self.len, "slice");
        // SAFETY: The range is inside the slice (asserted), which the protocol gives to us;
        // `src` is private memory.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.as_mut_ptr().add(at), src.len()) }
    }

    /// The slice as Rust memory.
    ///
    /// # Safety
    ///
    /// The peer must be trusted not to write into its free ring space while the slice lives.
    /// A hostile peer writing concurrently makes this a data race (undefined behaviour: the
    /// compiler may assume the bytes do not change under the reference).
    pub unsafe fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: In bounds (see `as_mut_ptr`), exclusive by the protocol and by `&mut self`
        // while the caller upholds the trust above.
        unsafe { std::slice::from_raw_parts_mut(self.as_mut_ptr(), self.len) }
    }

    /// Publishes the first `n` bytes to the peer.
    pub fn commit(self, n: usize) -> io::Result<()> {
        if n > self.len {
            return Err(ChannelError::Invalid(format!(
                "commit of {n} bytes from a {}-byte slice",
                self.len
            ))
            .into());
        }
        self.chan.publish(n as u64)
    }
}

/// The readable part of the incoming ring, from [`Channel::read_slice`]; empty at the end of
/// the stream.
///
/// The protocol gives these bytes to this side until it releases them, and the peer has
/// finished writing them; a hostile peer may still change them, so the safe interface copies
/// ([`copy_to`](Self::copy_to)) and only [`as_slice`](Self::as_slice) (unsafe) makes a Rust
/// slice.
pub struct ReadSlice<'a> {
    chan: &'a mut Channel,
    off: usize,
    len: usize,
}

impl std::fmt::Debug for ReadSlice<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadSlice").field("len", &self.len).finish()
    }
}

impl ReadSlice<'_> {
    /// Bytes available.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the stream ended.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first byte, for raw reads of at most [`len`](Self::len) bytes (e.g. `write(2)`).
    pub fn as_ptr(&self) -> *const u8 {
        // SAFETY: `off` is inside the region (checked when the slice was made).
        unsafe { self.chan.mem.base().add(self.off) }
    }

    /// Copies bytes from offset `at` of the slice into `dst`.
    ///
    /// # Panics
    ///
    /// If `at + dst.len()` exceeds [`len`](Self::len).
    pub fn copy_to(&self, at: usize, dst: &mut [u8]) {
        assert_within(at, dst.len(), self.len, "slice");
        // SAFETY: The range is inside the slice (asserted); `dst` is private memory.
        unsafe { std::ptr::copy_nonoverlapping(self.as_ptr().add(at), dst.as_mut_ptr(), dst.len()) }
    }

    /// The slice as Rust memory.
    ///
    /// # Safety
    ///
    /// The peer must be trusted not to write into published bytes while the slice lives; a
    /// hostile peer writing concurrently makes this a data race, and code that checks a byte
    /// and then uses it may see two different values.
    pub unsafe fn as_slice(&self) -> &[u8] {
        // SAFETY: In bounds (see `as_ptr`); unchanged while the caller upholds the trust above.
        unsafe { std::slice::from_raw_parts(self.as_ptr(), self.len) }
    }

    /// Gives the first `n` bytes back to the peer.
    pub fn release(self, n: usize) -> io::Result<()> {
        if n > self.len {
            return Err(ChannelError::Invalid(format!(
                "release of {n} bytes from a {}-byte slice",
                self.len
            ))
            .into());
        }
        self.chan.release(n as u64)
    }
}
