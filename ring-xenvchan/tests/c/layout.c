/* Where Xen's header (libxenvchan.h, as the distribution ships it) puts
 * every public field of struct libxenvchan, as "name value" lines for
 * the layout test to compare with the library's own struct. The three
 * 1-bit fields have no offsetof: each is set alone in a zeroed struct,
 * and the 32-bit word holding it and the word's value are printed. */
#include <libxenvchan.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

static void bit(const char *name, struct libxenvchan *x)
{
    const unsigned char *p = (const unsigned char *)x;
    for (size_t i = 0; i < sizeof *x; i++)
        if (p[i]) {
            size_t word = i & ~(size_t)3;
            uint32_t v;
            memcpy(&v, p + word, 4);
            printf("bitfields %zu\nbit.%s %u\n", word, name, v);
            return;
        }
    printf("bit.%s none\n", name);
}

int main(void)
{
    struct libxenvchan x;
    printf("gntshr %zu\n", offsetof(struct libxenvchan, gntshr));
    printf("ring %zu\n", offsetof(struct libxenvchan, ring));
    printf("event %zu\n", offsetof(struct libxenvchan, event));
    printf("event_port %zu\n", offsetof(struct libxenvchan, event_port));
    printf("read.shr %zu\n", offsetof(struct libxenvchan, read.shr));
    printf("read.buffer %zu\n", offsetof(struct libxenvchan, read.buffer));
    printf("read.order %zu\n", offsetof(struct libxenvchan, read.order));
    printf("write.shr %zu\n", offsetof(struct libxenvchan, write.shr));
    printf("write.buffer %zu\n", offsetof(struct libxenvchan, write.buffer));
    printf("write.order %zu\n", offsetof(struct libxenvchan, write.order));
    printf("xs_path %zu\n", offsetof(struct libxenvchan, xs_path));
    printf("sizeof %zu\n", sizeof x);
    memset(&x, 0, sizeof x);
    x.is_server = 1;
    bit("is_server", &x);
    memset(&x, 0, sizeof x);
    x.server_persist = 1;
    bit("server_persist", &x);
    memset(&x, 0, sizeof x);
    x.blocking = 1;
    bit("blocking", &x);
    return 0;
}
