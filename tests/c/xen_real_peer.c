/*
 * The libxenvchan end of the xen_real tests (ring-cli/tests/xen_real.rs):
 * an unmodified Debian libxenvchan (linked dynamically, as
 * vchan-socket-proxy is) on the real Xen devices, speaking the same
 * command line as ring-xen-peer (tests/xen-guest):
 *
 *   server PEER PATH SIZE MODE [BYTES]   (prints READY once published)
 *   client SERVER PATH MODE [BYTES]
 *
 * MODE xfer: the client sends BYTES of seeded pattern 1, the server checks
 * them and sends BYTES of pattern 2, the client checks those; "OK" at the
 * end. stream: write until the peer goes. sink: read, "RECEIVING" after
 * the first MiB, "CLOSED" when the peer's end is seen. Non-blocking
 * library calls and poll() on its event fd: every wait is bounded.
 */
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libxenvchan.h>

#define WAIT_MS 60000

static uint8_t pattern(uint64_t seed, uint64_t i)
{
	uint64_t x = (i ^ (seed * 0x9E3779B97F4A7C15ull)) * 0x2545F4914F6CDD1Dull;
	return (uint8_t)(x >> 56);
}

static void say(const char *line)
{
	printf("%s\n", line);
	fflush(stdout);
}

/* Waits for an event (bounded); -1 on timeout or error. */
static int wait_event(struct libxenvchan *c)
{
	struct pollfd p = { .fd = libxenvchan_fd_for_select(c), .events = POLLIN };
	int r;

	do {
		r = poll(&p, 1, WAIT_MS);
	} while (r < 0 && errno == EINTR);
	if (r != 1)
		return -1;
	return libxenvchan_wait(c);
}

static int send_pattern(struct libxenvchan *c, uint64_t seed, uint64_t bytes)
{
	static uint8_t buf[65536];
	uint64_t at = 0;

	while (at < bytes) {
		size_t n = bytes - at < sizeof buf ? (size_t)(bytes - at) : sizeof buf;
		size_t done = 0;

		for (size_t k = 0; k < n; k++)
			buf[k] = pattern(seed, at + k);
		while (done < n) {
			int w = libxenvchan_write(c, buf + done, n - done);

			if (w < 0)
				return -1;
			if (w == 0 && wait_event(c) < 0)
				return -1;
			done += (size_t)w;
		}
		at += n;
	}
	return 0;
}

/* Reads BYTES (checking pattern seed if seed != 0) or, with bytes == 0,
 * until the peer's end. Returns the count read, -1 on a bad byte or a
 * timeout; *ended says whether the end was seen. */
static int64_t recv_pattern(struct libxenvchan *c, uint64_t seed, uint64_t bytes, int *ended)
{
	static uint8_t buf[65536];
	uint64_t at = 0;
	int told = 0;

	*ended = 0;
	while (bytes == 0 || at < bytes) {
		size_t want = sizeof buf;
		int r;

		if (bytes && bytes - at < want)
			want = (size_t)(bytes - at);
		r = libxenvchan_read(c, buf, want);
		if (r < 0) {
			*ended = 1;
			return (int64_t)at;
		}
		if (r == 0) {
			if (!libxenvchan_is_open(c)) {
				*ended = 1;
				return (int64_t)at;
			}
			if (wait_event(c) < 0)
				return -1;
			continue;
		}
		if (seed)
			for (int k = 0; k < r; k++)
				if (buf[k] != pattern(seed, at + (uint64_t)k)) {
					printf("FAIL byte %llu differs\n", (unsigned long long)(at + (uint64_t)k));
					return -1;
				}
		at += (uint64_t)r;
		if (!told && at >= (1u << 20)) {
			say("RECEIVING");
			told = 1;
		}
	}
	return (int64_t)at;
}

static int run(struct libxenvchan *c, int server, const char *mode, uint64_t bytes)
{
	int ended;
	int64_t got;

	if (!strcmp(mode, "xfer")) {
		if (server) {
			got = recv_pattern(c, 1, bytes, &ended);
			if (got != (int64_t)bytes) {
				printf("FAIL received %lld of %llu bytes\n", (long long)got,
				       (unsigned long long)bytes);
				return -1;
			}
			if (send_pattern(c, 2, bytes) < 0) {
				say("FAIL send");
				return -1;
			}
			/* The client closes once it has every byte. */
			got = recv_pattern(c, 0, 0, &ended);
			if (got != 0 || !ended) {
				say("FAIL no end after the exchange");
				return -1;
			}
			return 0;
		}
		if (send_pattern(c, 1, bytes) < 0) {
			say("FAIL send");
			return -1;
		}
		got = recv_pattern(c, 2, bytes, &ended);
		if (got != (int64_t)bytes) {
			printf("FAIL received %lld of %llu bytes\n", (long long)got,
			       (unsigned long long)bytes);
			return -1;
		}
		return 0;
	}
	if (!strcmp(mode, "sink")) {
		got = recv_pattern(c, 0, 0, &ended);
		if (!ended) {
			say("FAIL no end seen");
			return -1;
		}
		printf("CLOSED bytes=%lld\n", (long long)got);
		fflush(stdout);
		return 0;
	}
	if (!strcmp(mode, "stream")) {
		for (;;)
			if (send_pattern(c, 3, 1u << 20) < 0)
				return 0;
	}
	printf("FAIL unknown mode %s\n", mode);
	return -1;
}

int main(int argc, char **argv)
{
	struct libxenvchan *c;
	int server, r;
	const char *mode;
	uint64_t bytes;

	if (argc < 5) {
		say("FAIL usage: server PEER PATH SIZE MODE [BYTES] | client SERVER PATH MODE [BYTES]");
		return 2;
	}
	server = !strcmp(argv[1], "server");
	if (server) {
		size_t size = strtoul(argv[4], NULL, 0);

		if (argc < 6) {
			say("FAIL missing mode");
			return 2;
		}
		mode = argv[5];
		bytes = argc > 6 ? strtoull(argv[6], NULL, 0) : 0;
		c = libxenvchan_server_init(NULL, atoi(argv[2]), argv[3], size, size);
		if (!c) {
			printf("FAIL libxenvchan_server_init: %s\n", strerror(errno));
			return 1;
		}
		say("READY");
		c->blocking = 0;
		/* Wait for the client: cli_live goes from 2 (waiting) to 1. */
		while (c->ring->cli_live == 2)
			if (wait_event(c) < 0) {
				say("FAIL no client came");
				return 1;
			}
	} else {
		mode = argv[4];
		bytes = argc > 5 ? strtoull(argv[5], NULL, 0) : 0;
		c = libxenvchan_client_init(NULL, atoi(argv[2]), argv[3]);
		if (!c) {
			printf("FAIL libxenvchan_client_init: %s\n", strerror(errno));
			return 1;
		}
		c->blocking = 0;
	}
	r = run(c, server, mode, bytes);
	libxenvchan_close(c);
	if (r == 0)
		say("OK");
	return r == 0 ? 0 : 1;
}
