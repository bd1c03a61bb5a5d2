/* A vchan client on libxenvchan's API, for the drop-in's tests:
 *
 *   xenvchan-xfer xfer DOMID PATH BYTES     send BYTES of pattern 1 while
 *       reading BYTES of pattern 2 (select on fd_for_select, not
 *       blocking), check them, close; "OK" at the end
 *   xenvchan-xfer hostile DOMID PATH        write 4 KiB, then move our
 *       consumer index of the server's ring 3 MiB past its producer
 *       through the public page pointer (the server's next look at its
 *       free space finds it), say REWRITTEN, and wait (bounded) for the
 *       server to go
 *
 * client_init is retried for up to ten seconds, once per wake-up of a
 * pipe nobody writes (a bounded wait, as a caller would watch xenstore).
 * Once connected it prints JOINED and waits for a line on stdin before
 * the first byte: vchan-socket-proxy's server mode waits for its client
 * with libxenvchan_wait, which takes the client's first events, and only
 * then selects on the fd, so bytes written in between would wait for an
 * event nobody sends (with Xen's library as with ours). Exit status 0
 * only on success. */
#include <errno.h>
#include <libxenvchan.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <time.h>
#include <unistd.h>

static unsigned char pattern(int seed, unsigned long i)
{
    unsigned long x = (i ^ ((unsigned long)seed * 0x9E3779B97F4A7C15ul)) * 0x2545F4914F6CDD1Dul;
    return (unsigned char)(x >> 56);
}

static struct libxenvchan *join(int domid, const char *path)
{
    for (int i = 0; i < 1000; i++) {
        struct libxenvchan *c = libxenvchan_client_init(NULL, domid, path);
        if (c)
            return c;
        poll(NULL, 0, 10);
    }
    fprintf(stderr, "FAIL client_init %s: %s\n", path, strerror(errno));
    exit(1);
}

static int xfer(struct libxenvchan *c, unsigned long bytes)
{
    static unsigned char buf[65536];
    unsigned long sent = 0, got = 0;
    int fd = libxenvchan_fd_for_select(c);
    int full = libxenvchan_buffer_space(c); /* nothing written yet */
    c->blocking = 0;
    while (got < bytes || sent < bytes) {
        while (sent < bytes) {
            unsigned long n = bytes - sent < sizeof buf ? bytes - sent : sizeof buf;
            for (unsigned long k = 0; k < n; k++)
                buf[k] = pattern(1, sent + k);
            int w = libxenvchan_write(c, buf, n);
            if (w < 0) {
                fprintf(stderr, "FAIL write after %lu: %s\n", sent, strerror(errno));
                return 1;
            }
            if (w == 0)
                break;
            sent += w;
        }
        for (;;) {
            int r = libxenvchan_read(c, buf, sizeof buf);
            if (r < 0) {
                fprintf(stderr, "FAIL read after %lu: %s\n", got, strerror(errno));
                return 1;
            }
            if (r == 0)
                break;
            for (int k = 0; k < r; k++)
                if (buf[k] != pattern(2, got + k)) {
                    fprintf(stderr, "FAIL byte %lu differs\n", got + k);
                    return 1;
                }
            got += r;
        }
        if (got >= bytes && sent >= bytes)
            break;
        /* Armed by the calls above; sleep until the fd says so. */
        if (libxenvchan_data_ready(c) > 0 || (sent < bytes && libxenvchan_buffer_space(c) > 0))
            continue;
        fd_set rfds;
        FD_ZERO(&rfds);
        FD_SET(fd, &rfds);
        struct timeval tv = {30, 0};
        int s = select(fd + 1, &rfds, NULL, NULL, &tv);
        if (s <= 0) {
            fprintf(stderr, "FAIL no event for 30 s (sent %lu, got %lu)\n", sent, got);
            return 1;
        }
        libxenvchan_wait(c);
        if (!libxenvchan_is_open(c) && libxenvchan_data_ready(c) == 0) {
            fprintf(stderr, "FAIL server gone (sent %lu, got %lu)\n", sent, got);
            return 1;
        }
    }
    /* Stay until the server has taken every byte from the ring: a proxy
     * that sees us close drops what it has not read. */
    while (libxenvchan_buffer_space(c) < full && libxenvchan_is_open(c)) {
        fd_set rfds;
        FD_ZERO(&rfds);
        FD_SET(fd, &rfds);
        struct timeval tv = {30, 0};
        if (select(fd + 1, &rfds, NULL, NULL, &tv) <= 0) {
            fprintf(stderr, "FAIL the server left bytes unread for 30 s\n");
            return 1;
        }
        libxenvchan_wait(c);
    }
    printf("OK %lu\n", got);
    return 0;
}

static int hostile(struct libxenvchan *c)
{
    static unsigned char buf[4096];
    c->blocking = 1;
    memset(buf, 'h', sizeof buf);
    if (libxenvchan_write(c, buf, sizeof buf) != (int)sizeof buf) {
        fprintf(stderr, "FAIL write: %s\n", strerror(errno));
        return 1;
    }
    c->ring->right.cons += (3u << 20) + 7;
    c->blocking = 0;
    printf("REWRITTEN\n");
    fflush(stdout);
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int fd = libxenvchan_fd_for_select(c);
    while (libxenvchan_is_open(c) == 1) {
        struct pollfd p = {fd, POLLIN, 0};
        poll(&p, 1, 100);
        if (p.revents)
            libxenvchan_wait(c);
        clock_gettime(CLOCK_MONOTONIC, &t);
        if (t.tv_sec - t0.tv_sec > 10) {
            printf("SERVER-STILL-OPEN\n");
            return 0;
        }
    }
    printf("SERVER-GONE\n");
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: %s xfer|hostile DOMID PATH [BYTES]\n", argv[0]);
        return 2;
    }
    alarm(120);
    struct libxenvchan *c = join(atoi(argv[2]), argv[3]);
    char go[16];
    printf("JOINED\n");
    fflush(stdout);
    if (!fgets(go, sizeof go, stdin)) {
        fprintf(stderr, "FAIL no go line on stdin\n");
        return 1;
    }
    int r = strcmp(argv[1], "hostile") == 0 ? hostile(c)
                                             : xfer(c, strtoul(argc > 4 ? argv[4] : "0", NULL, 0));
    libxenvchan_close(c);
    return r;
}
