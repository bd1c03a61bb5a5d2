/* A scripted run of every libxenvchan call, compiled against Xen's own
 * header (libxenvchan.h) and run unchanged on Xen's library and on ours:
 * a server (the parent) and a client (a forked child) take turns, each
 * call printed on one line with what it returned and what libxenvchan's
 * documented behaviour says it should return.
 *
 *   xenvchan-script LIB DOMID PATH HOSTILE-PATH
 *
 * LIB ("ours" or "xen") picks the expectations of the last part, where
 * the client corrupts the shared page: Xen's library reports nothing
 * there, ours fails with EPROTO. DOMID is the peer's domain for both
 * sides (0 when both run in dom0). Lines:
 *
 *   STEP <n> <S|C> <call> <size> <blocking> = <ret> <errno> <ok|MISMATCH want=N>
 *
 * then "SUMMARY <S|C> mismatches=N"; the exit status is 1 on any
 * mismatch. Every process is bounded by alarm(). */
#include <errno.h>
#include <libxenvchan.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define R 2048 /* the server's write ring: right, order 11 */
#define L 1024 /* the server's read ring: left, order 10 */

static int to_child[2], to_parent[2];
static int me_server;
static int step_no;
static int mismatches;
static const char *lib;
static unsigned char out[4 * R], in[4 * R];

static const char *errname(int e)
{
    switch (e) {
    case EPROTO: return "EPROTO";
    case EPIPE: return "EPIPE";
    case EMSGSIZE: return "EMSGSIZE";
    case EINVAL: return "EINVAL";
    case EBADF: return "EBADF";
    case EAGAIN: return "EAGAIN";
    case EIO: return "EIO";
    case 0: return "0";
    default: return "other";
    }
}

/* Prints one call's line; `want` < -1 means "no expectation". */
static void report(const char *call, long size, int blocking, int ret, int err, int want)
{
    int ok = want < -1 || ret == want;
    if (!ok)
        mismatches++;
    printf("STEP %d %c %s %ld %d = %d %s %s", step_no, me_server ? 'S' : 'C', call, size,
           blocking, ret, ret < 0 ? errname(err) : "-", ok ? "ok" : "MISMATCH");
    if (!ok)
        printf(" want=%d", want);
    printf("\n");
    fflush(stdout);
}

/* Hands the turn to the other side. */
static void give(void)
{
    char b = 0;
    if (write(me_server ? to_child[1] : to_parent[1], &b, 1) != 1) {
        printf("LOST the other side at step %d\n", step_no);
        exit(2);
    }
}

/* Waits for the turn to come back. */
static void take(void)
{
    char b;
    if (read(me_server ? to_parent[0] : to_child[0], &b, 1) != 1) {
        printf("LOST the other side at step %d\n", step_no);
        exit(2);
    }
}

static void pass(void)
{
    give();
    take();
}

static void fill(unsigned char *p, long n, int seed)
{
    for (long i = 0; i < n; i++)
        p[i] = (unsigned char)(i * 31 + seed);
}

static void check_data(const unsigned char *p, long n, int seed, long from)
{
    for (long i = 0; i < n; i++)
        if (p[i] != (unsigned char)((i + from) * 31 + seed)) {
            printf("DATA differs at byte %ld\n", i + from);
            mismatches++;
            return;
        }
}

#define CALL(expr, name, size, want)                                                      \
    do {                                                                                  \
        int b_ = ctrl->blocking != 0;                                                     \
        errno = 0;                                                                        \
        int r_ = (expr);                                                                  \
        report(name, (long)(size), b_, r_, errno, (want));                                \
    } while (0)

static int min(int a, int b) { return a < b ? a : b; }

/* The server's half; the client's is `client` below, turn for turn. */
static void server(int domid, const char *path)
{
    struct libxenvchan *ctrl = libxenvchan_server_init(NULL, domid, path, 0, 0);
    step_no = 1;
    if (!ctrl) {
        printf("STEP 1 S server_init 0 0 = NULL %s MISMATCH\n", errname(errno));
        exit(1);
    }
    ctrl->blocking = 0;
    CALL(libxenvchan_is_open(ctrl), "is_open", 0, 2);
    pass(); /* the client connects */
    step_no = 3;
    for (int n = 0; libxenvchan_is_open(ctrl) != 1 && n < 1000; n++)
        libxenvchan_wait(ctrl);
    CALL(libxenvchan_is_open(ctrl), "is_open", 0, 1);
    /* Our write ring (R bytes), not blocking. */
    static const int rs[] = {0, 1, R - 1, R, R + 1};
    for (int k = 0; k < 5; k++) {
        int n = rs[k];
        step_no = 10 + 10 * k;
        fill(out, n, k);
        CALL(libxenvchan_buffer_space(ctrl), "buffer_space", 0, R);
        CALL(libxenvchan_send(ctrl, out, n), "send", n, n <= R ? n : 0);
        pass(); /* the client: data_ready, recv, read */
        step_no = 10 + 10 * k + 5;
        fill(out, n, k + 50);
        CALL(libxenvchan_write(ctrl, out, n), "write", n, min(n, R));
        pass(); /* the client: read, data_ready */
    }
    /* Our read ring (L bytes), not blocking. */
    static const int ls[] = {0, 1, L - 1, L, L + 1};
    for (int k = 0; k < 5; k++) {
        int n = ls[k];
        pass(); /* the client: buffer_space, send */
        step_no = 100 + 10 * k + 2;
        CALL(libxenvchan_data_ready(ctrl), "data_ready", 0, n <= L ? n : 0);
        CALL(libxenvchan_recv(ctrl, in, n), "recv", n, n <= L ? n : 0);
        if (n <= L)
            check_data(in, n, k + 100, 0);
        pass(); /* the client: write */
        step_no = 100 + 10 * k + 4;
        CALL(libxenvchan_read(ctrl, in, n), "read", n, n == 0 ? 0 : min(n, L));
        check_data(in, min(n, L), k + 150, 0);
    }
    /* Blocking. */
    ctrl->blocking = 1;
    static const int bs[] = {1, R - 1, R};
    for (int k = 0; k < 3; k++) {
        int n = bs[k];
        step_no = 200 + 10 * k;
        fill(out, n, k + 200);
        CALL(libxenvchan_send(ctrl, out, n), "send", n, n);
        pass(); /* the client: recv */
    }
    step_no = 240;
    CALL(libxenvchan_send(ctrl, out, R + 1), "send", R + 1, -1);
    pass(); /* the client: recv(R+1) */
    step_no = 250;
    /* More than the ring: the client reads while we block. */
    give();
    fill(out, R + 1, 250);
    CALL(libxenvchan_write(ctrl, out, R + 1), "write", R + 1, R + 1);
    take(); /* the client read it all and writes L+1 while we read */
    step_no = 260;
    {
        long got = 0;
        int r = 0;
        while (got < L + 1 && (r = libxenvchan_read(ctrl, in + got, L + 1 - got)) > 0)
            got += r;
        check_data(in, got, 260, 0);
        report("read-total", L + 1, 1, (int)got, errno, L + 1);
    }
    CALL(libxenvchan_recv(ctrl, in, L + 1), "recv", L + 1, -1);
    fill(out, 3, 270);
    CALL(libxenvchan_send(ctrl, out, 3), "send", 3, 3);
    pass(); /* the client: read(0), recv(3) */
    /* The end: five bytes left behind, then close. */
    step_no = 300;
    ctrl->blocking = 0;
    fill(out, 5, 300);
    CALL(libxenvchan_write(ctrl, out, 5), "write", 5, 5);
    libxenvchan_close(ctrl);
    report("close", 0, 0, 0, 0, 0);
    pass(); /* the client sees the end */
}

static void client(int domid, const char *path)
{
    take(); /* the server is up */
    step_no = 2;
    struct libxenvchan *ctrl = libxenvchan_client_init(NULL, domid, path);
    if (!ctrl) {
        printf("STEP 2 C client_init 0 0 = NULL %s MISMATCH\n", errname(errno));
        exit(1);
    }
    ctrl->blocking = 0;
    CALL(libxenvchan_is_open(ctrl), "is_open", 0, 1);
    pass();
    static const int rs[] = {0, 1, R - 1, R, R + 1};
    for (int k = 0; k < 5; k++) {
        int n = rs[k];
        step_no = 10 + 10 * k + 2;
        CALL(libxenvchan_data_ready(ctrl), "data_ready", 0, n <= R ? n : 0);
        CALL(libxenvchan_recv(ctrl, in, n), "recv", n, n <= R ? n : 0);
        if (n <= R)
            check_data(in, n, k, 0);
        CALL(libxenvchan_read(ctrl, in, 1), "read", 1, 0);
        pass();
        step_no = 10 + 10 * k + 7;
        CALL(libxenvchan_read(ctrl, in, n), "read", n, n == 0 ? 0 : min(n, R));
        check_data(in, min(n, R), k + 50, 0);
        CALL(libxenvchan_data_ready(ctrl), "data_ready", 0, 0);
        pass();
    }
    static const int ls[] = {0, 1, L - 1, L, L + 1};
    for (int k = 0; k < 5; k++) {
        int n = ls[k];
        step_no = 100 + 10 * k;
        fill(out, n, k + 100);
        CALL(libxenvchan_buffer_space(ctrl), "buffer_space", 0, L);
        CALL(libxenvchan_send(ctrl, out, n), "send", n, n <= L ? n : 0);
        pass();
        step_no = 100 + 10 * k + 3;
        fill(out, n, k + 150);
        CALL(libxenvchan_write(ctrl, out, n), "write", n, min(n, L));
        pass();
    }
    ctrl->blocking = 1;
    static const int bs[] = {1, R - 1, R};
    for (int k = 0; k < 3; k++) {
        int n = bs[k];
        step_no = 200 + 10 * k + 1;
        CALL(libxenvchan_recv(ctrl, in, n), "recv", n, n);
        check_data(in, n, k + 200, 0);
        pass();
    }
    step_no = 241;
    CALL(libxenvchan_recv(ctrl, in, R + 1), "recv", R + 1, -1);
    pass(); /* the server writes R+1, blocking, while we read */
    step_no = 251;
    {
        long got = 0;
        int r = 0;
        while (got < R + 1 && (r = libxenvchan_read(ctrl, in + got, R + 1 - got)) > 0)
            got += r;
        check_data(in, got, 250, 0);
        report("read-total", R + 1, 1, (int)got, errno, R + 1);
    }
    give();
    fill(out, L + 1, 260);
    CALL(libxenvchan_write(ctrl, out, L + 1), "write", L + 1, L + 1);
    take(); /* the server read it and sent 3 */
    step_no = 271;
    CALL(libxenvchan_read(ctrl, in, 0), "read", 0, 0);
    CALL(libxenvchan_recv(ctrl, in, 3), "recv", 3, 3);
    check_data(in, 3, 270, 0);
    pass(); /* the server writes 5 and closes */
    step_no = 301;
    ctrl->blocking = 0;
    CALL(libxenvchan_is_open(ctrl), "is_open", 0, 0);
    CALL(libxenvchan_data_ready(ctrl), "data_ready", 0, 5);
    CALL(libxenvchan_recv(ctrl, in, 10), "recv", 10, -1);
    CALL(libxenvchan_read(ctrl, in, 10), "read", 10, 5);
    check_data(in, 5, 300, 0);
    CALL(libxenvchan_read(ctrl, in, 10), "read", 10, -1);
    CALL(libxenvchan_recv(ctrl, in, 0), "recv", 0, 0);
    CALL(libxenvchan_read(ctrl, in, 0), "read", 0, -1);
    CALL(libxenvchan_write(ctrl, out, 1), "write", 1, -1);
    CALL(libxenvchan_write(ctrl, out, 0), "write", 0, -1);
    CALL(libxenvchan_send(ctrl, out, 1), "send", 1, -1);
    CALL(libxenvchan_send(ctrl, out, 0), "send", 0, -1);
    CALL(libxenvchan_data_ready(ctrl), "data_ready", 0, 0);
    CALL(libxenvchan_buffer_space(ctrl), "buffer_space", 0, L);
    ctrl->blocking = 1;
    CALL(libxenvchan_read(ctrl, in, 10), "read", 10, -1);
    CALL(libxenvchan_recv(ctrl, in, 1), "recv", 1, -1);
    CALL(libxenvchan_write(ctrl, out, 1), "write", 1, -1);
    CALL(libxenvchan_send(ctrl, out, 1), "send", 1, -1);
    libxenvchan_close(ctrl);
    give(); /* the server's hostile round */
}

/* A client that corrupts the page (its own producer index, 3 MiB past
 * what the ring can hold) and a server that keeps calling: what each
 * call returns on each library. */
static void hostile_server(int domid, const char *path)
{
    int ours = strcmp(lib, "ours") == 0;
    struct libxenvchan *ctrl = libxenvchan_server_init(NULL, domid, path, 0, 0);
    step_no = 400;
    if (!ctrl) {
        printf("STEP 400 S server_init 0 0 = NULL %s MISMATCH\n", errname(errno));
        exit(1);
    }
    ctrl->blocking = 0;
    pass(); /* the client connects, writes 16 bytes, corrupts the page */
    step_no = 402;
    {
        int n = 0;
        while (libxenvchan_is_open(ctrl) == 2 && n++ < 1000)
            libxenvchan_wait(ctrl);
    }
    CALL(libxenvchan_data_ready(ctrl), "data_ready", 0, ours ? -1 : 0);
    CALL(libxenvchan_read(ctrl, in, 16), "read", 16, ours ? -1 : 0);
    CALL(libxenvchan_recv(ctrl, in, 16), "recv", 16, ours ? -1 : 0);
    CALL(libxenvchan_is_open(ctrl), "is_open", 0, ours ? 0 : 1);
    CALL(libxenvchan_buffer_space(ctrl), "buffer_space", 0, ours ? -1 : R);
    CALL(libxenvchan_write(ctrl, out, 16), "write", 16, ours ? -1 : 16);
    if (ours) {
        /* Blocking: ours fails at once (Xen's would wait for ever). */
        ctrl->blocking = 1;
        CALL(libxenvchan_read(ctrl, in, 16), "read", 16, -1);
        CALL(libxenvchan_recv(ctrl, in, 16), "recv", 16, -1);
    }
    libxenvchan_close(ctrl);
    give();
}

static void hostile_client(int domid, const char *path)
{
    take();
    step_no = 401;
    struct libxenvchan *ctrl = libxenvchan_client_init(NULL, domid, path);
    if (!ctrl) {
        printf("STEP 401 C client_init 0 0 = NULL %s MISMATCH\n", errname(errno));
        exit(1);
    }
    ctrl->blocking = 0;
    fill(out, 16, 400);
    CALL(libxenvchan_write(ctrl, out, 16), "write", 16, 16);
    /* The hostile part: through the header's public page pointer. */
    ctrl->ring->left.prod += (3u << 20) + 7;
    libxenvchan_write(ctrl, out, 0); /* nothing, but a chance to kick */
    report("corrupt", 0, 0, 0, 0, 0);
    pass();
    libxenvchan_close(ctrl);
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: %s ours|xen DOMID PATH HOSTILE-PATH\n", argv[0]);
        return 2;
    }
    lib = argv[1];
    int domid = atoi(argv[2]);
    if (pipe(to_child) || pipe(to_parent))
        return 2;
    alarm(120);
    pid_t pid = fork();
    if (pid < 0)
        return 2;
    me_server = pid != 0;
    if (me_server) {
        server(domid, argv[3]);
        hostile_server(domid, argv[4]);
        printf("SUMMARY S mismatches=%d\n", mismatches);
        int status = 0;
        waitpid(pid, &status, 0);
        return mismatches || !WIFEXITED(status) || WEXITSTATUS(status) ? 1 : 0;
    }
    client(domid, argv[3]);
    hostile_client(domid, argv[4]);
    printf("SUMMARY C mismatches=%d\n", mismatches);
    return mismatches ? 1 : 0;
}
