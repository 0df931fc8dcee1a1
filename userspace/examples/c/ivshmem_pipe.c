// SPDX-License-Identifier: GPL-2.0
/*
 * ivshmem-pipe-c: the C twin of the Rust `ivshmem-pipe`, on the C API (ivshmem_channel.h).
 *
 *   ivshmem-pipe-c send|recv [-d DEVICE [--peer-device PEER [--doorbell DEV]]]
 *                            [--channel NAME] [--wait auto|spin|doorbell]
 *                            [--capacity BYTES] [--liveness SECS]
 *
 * send copies stdin into the channel, ends the stream and waits until the receiver has read
 * every byte; recv copies the channel to stdout until the end of the stream. Exit 0 when every
 * byte arrived, 1 on any failure (peer gone, I/O error) with one "ivshmem-pipe-c: ..." line on
 * stderr, 2 on a usage error. DEVICE: a path, or N for /dev/ivshmemN (default /dev/ivshmem0).
 * With --peer-device (the isolated topology), DEVICE is this end's own device, which alone it
 * writes, and PEER the other end's, mapped read-only; --doorbell names a device with a
 * doorbell for the wake-ups.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ivshmem_channel.h"

#define PROG "ivshmem-pipe-c"
#define CHUNK (64 * 1024)

static const char usage_text[] =
	"usage: " PROG " send|recv [-d DEVICE [--peer-device PEER [--doorbell DEV]]]\n"
	"                       [--channel NAME] [--wait auto|spin|doorbell]\n"
	"                       [--capacity BYTES] [--liveness SECS]\n"
	"  send: stdin to the channel; recv: the channel to stdout (defaults: /dev/ivshmem0,\n"
	"  channel \"pipe\", capacity 1M, wait auto, liveness 10 s)";

static void usage(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, PROG ": ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n%s\n", usage_text);
	exit(2);
}

/* Exit 1 with the library's message for the last failure. */
static void fail(const char *what)
{
	const char *msg = ivshmem_channel_last_error();

	fprintf(stderr, PROG ": %s: %s\n", what, *msg ? msg : strerror(errno));
	exit(1);
}

/* "4096", "0x1000", "64K", "1M", "1G" (binary units). 0 on a malformed value. */
static uint64_t parse_size(const char *s)
{
	char *end;
	unsigned long long n;
	int shift = 0;

	errno = 0;
	n = strtoull(s, &end, 0);
	if (errno || end == s || *s == '-')
		return 0;
	switch (*end) {
	case 'K': case 'k': shift = 10; end++; break;
	case 'M': case 'm': shift = 20; end++; break;
	case 'G': case 'g': shift = 30; end++; break;
	}
	if (!strcmp(end, "iB") || !strcmp(end, "B"))
		end += strlen(end);
	if (*end || n > (UINT64_MAX >> shift))
		return 0;
	return (uint64_t)n << shift;
}

/* The value of option `name` at argv[*i] ("--name VALUE" or "--name=VALUE"), or NULL. */
static const char *option(int argc, char **argv, int *i, const char *name)
{
	size_t len = strlen(name);
	const char *a = argv[*i];

	if (strncmp(a, name, len))
		return NULL;
	if (a[len] == '=')
		return a + len + 1;
	if (a[len])
		return NULL;
	if (*i + 1 >= argc)
		usage("option %s needs a value", name);
	return argv[++*i];
}

static int send_stdin(struct ivshmem_channel *ch)
{
	static char buf[CHUNK];

	for (;;) {
		ssize_t got = read(STDIN_FILENO, buf, sizeof(buf));

		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0) {
			int e = errno;

			/* The receiver must not take a partial stream for a whole one. */
			ivshmem_channel_abort(ch);
			fprintf(stderr, PROG ": reading stdin: %s\n", strerror(e));
			return 1;
		}
		if (got == 0)
			break;
		for (ssize_t off = 0; off < got;) {
			ssize_t n = ivshmem_channel_write(ch, buf + off, (size_t)(got - off));

			if (n < 0)
				fail("send");
			off += n;
		}
	}
	if (ivshmem_channel_close_write(ch) < 0)
		fail("send");
	/* Exit 0 only once a receiver came (even for no bytes) and read every byte. */
	if (ivshmem_channel_wait_peer(ch) < 0 || ivshmem_channel_flush(ch) < 0)
		fail("send: waiting for the receiver");
	ivshmem_channel_close(ch);
	return 0;
}

static int recv_stdout(struct ivshmem_channel *ch)
{
	static char buf[CHUNK];

	for (;;) {
		ssize_t got = ivshmem_channel_read(ch, buf, sizeof(buf));

		if (got < 0)
			fail("recv");
		if (got == 0)
			break;
		for (ssize_t off = 0; off < got;) {
			ssize_t n = write(STDOUT_FILENO, buf + off, (size_t)(got - off));

			if (n < 0 && errno == EINTR)
				continue;
			if (n < 0) {
				fprintf(stderr, PROG ": writing stdout: %s\n", strerror(errno));
				ivshmem_channel_abort(ch);
				return 1;
			}
			off += n;
		}
	}
	ivshmem_channel_close(ch);
	return 0;
}

/* A device argument: a path, or N for /dev/ivshmemN. */
static void device_arg(char *out, size_t size, const char *v)
{
	if (*v && strspn(v, "0123456789") == strlen(v))
		snprintf(out, size, "/dev/ivshmem%s", v);
	else if (snprintf(out, size, "%s", v) >= (int)size)
		usage("device path too long");
}

int main(int argc, char **argv)
{
	struct ivshmem_channel_options opts = IVSHMEM_CHANNEL_OPTIONS_INIT;
	const char *mode = NULL, *name = "pipe", *v;
	char device[4096] = "/dev/ivshmem0", peer[4096], doorbell[4096];
	struct ivshmem_channel *ch;

	opts.kind = IVSHMEM_CHANNEL_STREAM;
	opts.capacity = 1 << 20;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];

		if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			puts(usage_text);
			return 0;
		} else if ((v = option(argc, argv, &i, "-d")) || (v = option(argc, argv, &i, "--device"))) {
			device_arg(device, sizeof(device), v);
		} else if ((v = option(argc, argv, &i, "--peer-device"))) {
			device_arg(peer, sizeof(peer), v);
			opts.peer_path = peer;
		} else if ((v = option(argc, argv, &i, "--doorbell"))) {
			device_arg(doorbell, sizeof(doorbell), v);
			opts.doorbell_path = doorbell;
		} else if ((v = option(argc, argv, &i, "--channel"))) {
			name = v;
		} else if ((v = option(argc, argv, &i, "--wait"))) {
			if (!strcmp(v, "auto"))
				opts.wait = IVSHMEM_CHANNEL_WAIT_AUTO;
			else if (!strcmp(v, "spin"))
				opts.wait = IVSHMEM_CHANNEL_WAIT_SPIN;
			else if (!strcmp(v, "doorbell"))
				opts.wait = IVSHMEM_CHANNEL_WAIT_DOORBELL;
			else
				usage("bad value '%s' for --wait: auto, spin or doorbell", v);
		} else if ((v = option(argc, argv, &i, "--capacity"))) {
			opts.capacity = parse_size(v);
			if (!opts.capacity)
				usage("bad value '%s' for --capacity: a size (65536, 64K, 1M)", v);
			if (opts.capacity & (opts.capacity - 1))
				usage("--capacity %s is not a power of two", v);
		} else if ((v = option(argc, argv, &i, "--liveness"))) {
			char *end;
			double s = strtod(v, &end);

			if (*end || end == v || !(s >= 0.1 && s <= 3600))
				usage("--liveness %s: 0.1 to 3600 seconds", v);
			opts.liveness_timeout_ms = (uint32_t)(s * 1000 + 0.5);
		} else if (a[0] == '-' && a[1]) {
			usage("unknown option %s", a);
		} else if (!mode) {
			mode = a;
		} else {
			usage("unexpected argument %s", a);
		}
	}
	if (!mode)
		usage("send or recv?");
	if (strcmp(mode, "send") && strcmp(mode, "recv"))
		usage("unknown command %s: send or recv", mode);

	ch = ivshmem_channel_open(device, name, &opts);
	if (!ch)
		fail("open");
	return strcmp(mode, "send") ? recv_stdout(ch) : send_stdin(ch);
}
