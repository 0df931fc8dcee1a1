/* SPDX-License-Identifier: GPL-2.0 */
/*
 * C API of the ivshmem channels library: byte streams and messages between two ends (processes,
 * VMs) over one shared region. Implemented in userspace/src/capi.rs; `make capi` builds
 * userspace/target/release/libivshmem.a and libivshmem.so. userspace/tests/c_api.rs checks
 * this header against the Rust side.
 *
 * Link: cc prog.c -I userspace/include -L userspace/target/release -livshmem
 *       (static: cc -static prog.c userspace/target/release/libivshmem.a -lpthread -ldl -lm)
 *
 * Errors: functions return -1 (open: NULL) and set errno; ivshmem_channel_last_error() gives
 * a message. The errno values:
 *   EINVAL       a NULL or invalid argument, a call of the wrong kind (read on messages...),
 *                a file too small for a channel layout, doorbell waiting without a doorbell
 *   ENAMETOOLONG a channel name longer than IVSHMEM_CHANNEL_MAX_NAME bytes
 *   E2BIG        options with fields this library does not know (a newer header)
 *   EPIPE        the peer is gone (closed early, or no heartbeat for the liveness timeout)
 *   EPROTO       the shared memory breaks the protocol (hostile or buggy peer); the channel
 *                stays unusable
 *   EBADMSG      the region holds no channel layout this library speaks
 *   EMSGSIZE     a message larger than the ring, or one the receive buffer cannot hold
 *   EAGAIN       non-blocking mode, and the call would wait
 *   ETIMEDOUT    a timeout set with ivshmem_channel_set_timeouts expired
 *   EBUSY        the channel is held by other ends that did not leave within the open timeout
 *   ENOSPC       the region is full
 *   EOPNOTSUPP   ivshmem_channel_fd on a channel that spins (ivshmem_listener_fd likewise)
 *   ECONNREFUSED ivshmem_channel_connect: no listener has the service, or it closed or died
 *                before accepting
 *   EADDRINUSE   ivshmem_listener_bind: a live listener has the service
 *   EACCES       stores into this end's own memory do not stick (with peer_path: `path` is
 *                another guest's device, which the hypervisor maps read-only)
 *   and the errno of a failed system call (ENOENT, EACCES...).
 *
 * A handle may move between threads but must not be used by two threads at once. Pointers
 * are checked for NULL (EINVAL); a handle that was already closed, or a buffer shorter than
 * the length passed, cannot be checked and is undefined behaviour.
 */
#ifndef IVSHMEM_CHANNEL_H
#define IVSHMEM_CHANNEL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Kinds of channel (options.kind). 0 is a stream too. */
#define IVSHMEM_CHANNEL_STREAM 1   /* a byte stream: write/read, partial transfers, EOF */
#define IVSHMEM_CHANNEL_MESSAGES 2 /* framed messages: send/recv, never split or merged */

/* How a blocked end waits (options.wait). */
#define IVSHMEM_CHANNEL_WAIT_AUTO 0     /* doorbell when the device has one, else spin */
#define IVSHMEM_CHANNEL_WAIT_SPIN 1     /* spin, then back off with short sleeps; works anywhere */
#define IVSHMEM_CHANNEL_WAIT_DOORBELL 2 /* sleep on the doorbell; open fails without one */

/* Longest channel name in bytes (names are 1 to this many bytes of UTF-8). */
#define IVSHMEM_CHANNEL_MAX_NAME 32

/*
 * How ivshmem_channel_open opens a channel. A zero field means its default; set `size` to
 * sizeof(struct ivshmem_channel_options) (IVSHMEM_CHANNEL_OPTIONS_INIT does), so later
 * versions of the library, which only append fields, know which ones the caller has.
 */
struct ivshmem_channel_options {
	uint32_t size;                /* sizeof(struct ivshmem_channel_options) */
	uint32_t kind;                /* IVSHMEM_CHANNEL_STREAM (default) or _MESSAGES */
	uint64_t capacity;            /* ring bytes per direction if this end creates the
	                                 channel: a power of two, 64 B to 1 GiB; 0: 256 KiB */
	uint32_t wait;                /* IVSHMEM_CHANNEL_WAIT_*; 0: auto */
	uint32_t spin_rounds;         /* spin rounds before waiting; 0: 10000 */
	uint32_t liveness_timeout_ms; /* a peer without heartbeat this long is gone (the longer
	                                 of both ends' applies; 100 to 3600000); 0: 10000 */
	uint32_t open_timeout_ms;     /* how long open waits for a busy layout or channel;
	                                 0: 30000 */
	/* Appended in the second version (a library accepts the first, 32-byte, one too). */
	const char *peer_path;        /* the isolated topology: the peer's device (or file),
	                                 mapped read-only, `path` being this end's own, which
	                                 alone it writes (README, "Isolation"); NULL: one
	                                 device that both ends write */
	const char *doorbell_path;    /* with peer_path: a device whose doorbell carries the
	                                 wake-ups (the data devices are ivshmem-plain); NULL:
	                                 none (waiting spins) */
};

#define IVSHMEM_CHANNEL_OPTIONS_INIT \
	{ sizeof(struct ivshmem_channel_options), 0, 0, 0, 0, 0, 0, NULL, NULL }

/* One end of a channel (opaque). */
struct ivshmem_channel;

/*
 * Opens channel `name` on `path`, creating the layout and the channel when missing; either
 * end may come first. `path` is a device node (/dev/ivshmemN: all of BAR2) or a regular file
 * (the host side, e.g. a file in /dev/shm; always spins) large enough for the layout and the
 * rings (a few MiB is plenty). `opts` may be
 * NULL for all defaults. Returns a handle, or NULL with errno set.
 */
struct ivshmem_channel *ivshmem_channel_open(const char *path, const char *name,
					     const struct ivshmem_channel_options *opts);

/* Leaves the channel cleanly (the peer reads what is left, then EOF) and frees `ch`. NULL is
 * ignored. `ch` must not be used afterwards. */
void ivshmem_channel_close(struct ivshmem_channel *ch);

/* Leaves without closing the write side and frees `ch`: the peer reads what was published,
 * then gets EPIPE instead of EOF. For a sender that failed before it finished. NULL is
 * ignored. */
void ivshmem_channel_abort(struct ivshmem_channel *ch);

/* Stream: writes at least 1 and at most `len` bytes of `buf`, waiting for room as configured.
 * Returns the count (0 only for `len` 0), or -1. `buf` may be NULL if `len` is 0. */
ssize_t ivshmem_channel_write(struct ivshmem_channel *ch, const void *buf, size_t len);

/* Stream: reads at least 1 and at most `len` bytes into `buf`, waiting as configured. Returns
 * the count, 0 at the end of the stream (the peer closed its writing and everything was read;
 * or `len` 0), or -1 (EPIPE: the peer died; what was read before is all it published). */
ssize_t ivshmem_channel_read(struct ivshmem_channel *ch, void *buf, size_t len);

/* Ends this end's writing (stream or messages): the peer reads the rest, then EOF. Reading
 * goes on. Returns 0 or -1. */
int ivshmem_channel_close_write(struct ivshmem_channel *ch);

/* Waits until the peer has consumed everything this end wrote (EPIPE if it went away first).
 * A sender calls it before exiting successfully. Returns 0 or -1. */
int ivshmem_channel_flush(struct ivshmem_channel *ch);

/* Waits until a peer has joined this end's session (it may have left since): a sender with
 * nothing to send calls it so that its end of the stream is seen. Returns 0 or -1. */
int ivshmem_channel_wait_peer(struct ivshmem_channel *ch);

/* Messages: sends `len` bytes (0 is a valid, empty message) whole or not at all, waiting for
 * room as configured. EMSGSIZE if `len` exceeds ivshmem_channel_max_message. Returns 0 or -1. */
int ivshmem_channel_send(struct ivshmem_channel *ch, const void *msg, size_t len);

/*
 * Messages: receives the next message into `buf` (`cap` bytes), waiting as configured.
 * Returns 1 with `*len` its size, 0 at the end (the peer closed and every message was read),
 * or -1. If it does not fit, -1 with errno EMSGSIZE and `*len` its size: the message stays
 * next, so call again with a buffer that large (`cap` 0 with NULL `buf` asks for the size).
 * `len` may be NULL.
 */
int ivshmem_channel_recv(struct ivshmem_channel *ch, void *buf, size_t cap, size_t *len);

/* The largest message ivshmem_channel_send takes on this channel, or -1. */
ssize_t ivshmem_channel_max_message(struct ivshmem_channel *ch);

/* `on` != 0: calls that would wait fail with EAGAIN instead; 0: they wait. Returns 0 or -1. */
int ivshmem_channel_set_nonblocking(struct ivshmem_channel *ch, int on);

/* Waiting limits of reads/recv and of writes/send/flush in milliseconds (ETIMEDOUT when
 * exceeded); negative: no limit (the default). Returns 0 or -1. */
int ivshmem_channel_set_timeouts(struct ivshmem_channel *ch, int read_ms, int write_ms);

/* A descriptor that becomes readable when the peer rings (doorbell or eventfd waiting), for
 * poll/epoll in non-blocking mode: a call that failed with EAGAIN armed the handle (the peer
 * rings once it gets to what the call waits for), so poll at most
 * ivshmem_channel_poll_interval_ms, then retry. -1 with EOPNOTSUPP when the channel spins.
 * Owned by `ch`. */
int ivshmem_channel_fd(struct ivshmem_channel *ch);

/* How long to poll the descriptor before retrying, in milliseconds (a tenth of the liveness
 * timeout while the peer rings, 20 while it does not), or -1. */
int ivshmem_channel_poll_interval_ms(struct ivshmem_channel *ch);

/* Splits `ch` for two threads: `ch` becomes the writing half (write, send, close_write, flush,
 * wait_peer), `*reader` a new handle for the reading half (read, recv); the other calls fail
 * with EBADF. Close both; the end leaves when both are closed. Returns 0 or -1. */
int ivshmem_channel_split(struct ivshmem_channel *ch, struct ivshmem_channel **reader);

/*
 * Connections (on the same regions as named channels: layout version 2). A listener names
 * a service; each connection to it has rings
 * of its own and is an ordinary channel handle; its memory is freed when both of its ends
 * are closed or dead, so a region serves connections without end.
 */
struct ivshmem_listener;

/* Listens for connections to `service` (1 to IVSHMEM_CHANNEL_MAX_NAME bytes) on `path`,
 * laying out a zeroed region first. `opts->kind` is the kind of its connections; accepted
 * ends wait and watch their peers as `opts` says. A listener whose process died holds the name
 * until it is seen dead (seven tenths of its liveness timeout): bind waits that long, then
 * takes it over. Returns a handle, or NULL with errno set (EADDRINUSE for a live one). */
struct ivshmem_listener *ivshmem_listener_bind(const char *path, const char *service,
					       const struct ivshmem_channel_options *opts);

/* The next connection to the listener, as a channel handle: waits up to `timeout_ms` (-1: for
 * ever; 0: not at all, EAGAIN when none is pending; else ETIMEDOUT when it expires). */
struct ivshmem_channel *ivshmem_listener_accept(struct ivshmem_listener *l, int timeout_ms);

/* A descriptor that becomes readable when a connector rings (doorbell devices), for poll;
 * then accept with timeout 0. -1 with EOPNOTSUPP when the listener spins. Owned by `l`. */
int ivshmem_listener_fd(struct ivshmem_listener *l);

/* Stops listening (pending connects fail with ECONNREFUSED) and frees `l`; NULL is ignored.
 * Accepted connections go on. */
void ivshmem_listener_close(struct ivshmem_listener *l);

/* Connects to the listener of `service` on `path` with rings of `opts->capacity` each way
 * (0: 256 KiB) and returns the channel once it accepted, or NULL: ECONNREFUSED, ETIMEDOUT
 * (not accepted within the open timeout), EINVAL (the service carries the other kind). Each
 * call maps the device. */
struct ivshmem_channel *ivshmem_channel_connect(const char *path, const char *service,
						const struct ivshmem_channel_options *opts);

/* The message of the last failure on the calling thread, "" if none; never NULL. Valid until
 * the next failing call on this thread. */
const char *ivshmem_channel_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* IVSHMEM_CHANNEL_H */
