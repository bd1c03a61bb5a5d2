/*
 * Test harness that turns the real libxenvchan (Debian libxen-dev, linked
 * statically from libxenvchan.a) into a peer for ring-core's vchan, with no
 * Xen underneath.
 *
 * Only io.o of the library is linked. This file supplies what init.c and
 * the Xen device libraries would otherwise provide:
 *
 * - the event channel: each side has its own "wake me" eventfd; notifying
 *   the peer writes the peer's eventfd, and xenevtchn_pending() blocks on
 *   our own (with a timeout, so a lost wake-up fails a test instead of
 *   hanging it);
 * - grant mapping: all pages live in one memfd laid out as ring-core's
 *   FlatLayout (control page, then left's external pages, then right's), and
 *   a "grant ref" is a page number in that memfd. The C side maps its pages
 *   itself, separately from the Rust side's mapping, the way a Xen domain
 *   maps grants; libxenvchan_close() unmaps them with munmap() as it would
 *   on Xen;
 * - the set-up init.c would do for a server or a client, including the
 *   page initialisation.
 *
 * Only the public headers are included; no library source is copied.
 */

#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libxenvchan.h>

#define XP_PAGE 4096u
/* The port number our stand-in reports; any non-negative value works. */
#define XP_PORT 7
/* How long xenevtchn_pending() waits before reporting an error. */
static int xp_wait_timeout_ms = 30000;

/* ---- event channel stand-ins ----------------------------------------- */

struct xenevtchn_handle {
	int wake_fd; /* ours: the peer kicks it, we wait on it */
	int kick_fd; /* the peer's: we kick it */
};

int xenevtchn_notify(xenevtchn_handle *xce, evtchn_port_t port)
{
	uint64_t one = 1;
	(void)port;
	return write(xce->kick_fd, &one, sizeof one) == sizeof one ? 0 : -1;
}

xenevtchn_port_or_error_t xenevtchn_pending(xenevtchn_handle *xce)
{
	struct pollfd p = { .fd = xce->wake_fd, .events = POLLIN };
	uint64_t count;
	int r;

	do {
		r = poll(&p, 1, xp_wait_timeout_ms);
	} while (r < 0 && errno == EINTR);
	if (r != 1)
		return -1;
	if (read(xce->wake_fd, &count, sizeof count) != sizeof count)
		return -1;
	return XP_PORT;
}

int xenevtchn_unmask(xenevtchn_handle *xce, evtchn_port_t port)
{
	(void)xce;
	(void)port;
	return 0;
}

int xenevtchn_fd(xenevtchn_handle *xce)
{
	return xce->wake_fd;
}

int xenevtchn_close(xenevtchn_handle *xce)
{
	if (!xce)
		return 0;
	close(xce->wake_fd);
	close(xce->kick_fd);
	free(xce);
	return 0;
}

/* ---- grant stand-ins --------------------------------------------------- */

struct xengntdev_handle {
	int unused;
};
static struct xengntdev_handle xp_gnt_handle;

int xengntshr_unshare(xengntshr_handle *xgs, void *start_address, uint32_t count)
{
	(void)xgs;
	return munmap(start_address, (size_t)count * XP_PAGE);
}

int xengnttab_unmap(xengnttab_handle *xgt, void *start_address, uint32_t count)
{
	(void)xgt;
	return munmap(start_address, (size_t)count * XP_PAGE);
}

int xengntshr_close(xengntshr_handle *xgs)
{
	(void)xgs;
	return 0;
}

int xengnttab_close(xengnttab_handle *xgt)
{
	(void)xgt;
	return 0;
}

/* io.o calls this from libxenvchan_close() for a server; without xenstore
 * there is nothing to remove. */
int close_xs_srv(struct libxenvchan *ctrl);
int close_xs_srv(struct libxenvchan *ctrl)
{
	(void)ctrl;
	return 0;
}

/* ---- set-up: what init.c does on Xen ----------------------------------- */

static xenevtchn_handle *xp_evtchn_open(int wake_fd, int kick_fd)
{
	xenevtchn_handle *h = calloc(1, sizeof *h);
	if (!h)
		return NULL;
	h->wake_fd = dup(wake_fd);
	h->kick_fd = dup(kick_fd);
	if (h->wake_fd < 0 || h->kick_fd < 0) {
		if (h->wake_fd >= 0)
			close(h->wake_fd);
		if (h->kick_fd >= 0)
			close(h->kick_fd);
		free(h);
		return NULL;
	}
	return h;
}

static size_t xp_pages(int order)
{
	return order >= 12 ? ((size_t)1 << order) / XP_PAGE : 0;
}

/* Maps `count` pages of the memfd, named by `refs` (page numbers), at
 * consecutive addresses, one mmap per page as a grant mapping would. */
static void *xp_map_refs(int memfd, const uint32_t *refs, size_t count, int prot)
{
	struct stat st;
	size_t len = count * XP_PAGE;
	uint32_t copy[512];
	char *base;
	size_t i;

	if (count > 512 || fstat(memfd, &st) != 0)
		return NULL;
	/* Read the refs once: the page they live in is shared. */
	memcpy(copy, refs, count * sizeof *refs);
	for (i = 0; i < count; i++)
		if ((uint64_t)copy[i] * XP_PAGE + XP_PAGE > (uint64_t)st.st_size || copy[i] == 0)
			return NULL;
	base = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (base == MAP_FAILED)
		return NULL;
	for (i = 0; i < count; i++) {
		void *p = mmap(base + i * XP_PAGE, XP_PAGE, prot, MAP_SHARED | MAP_FIXED,
			       memfd, (off_t)copy[i] * XP_PAGE);
		if (p == MAP_FAILED) {
			munmap(base, len);
			return NULL;
		}
	}
	return base;
}

static void *xp_in_page(struct vchan_interface *ring, int order)
{
	return (char *)ring + (order == 10 ? 1024 : 2048);
}

static int xp_order_ok(int order)
{
	return order >= 10 && order <= 20;
}

/*
 * Server: shares the control page (memfd page 0) and the external ring
 * pages (FlatLayout order: left's, then right's), and initialises the page
 * the way libxenvchan_server_init() does: all zero, the orders and grant
 * list, cli_live = 2, srv_live = 1, cli_notify = WRITE. All four indices
 * start at `initial_index` (0 in libxenvchan; other values test the wrap).
 */
struct libxenvchan *xp_server_open(int memfd, int left_order, int right_order,
				   uint32_t initial_index, int wake_fd, int kick_fd)
{
	struct libxenvchan *ctrl;
	struct vchan_interface *ring;
	uint32_t next = 1, refs[512];
	size_t i, n;

	if (!xp_order_ok(left_order) || !xp_order_ok(right_order))
		return NULL;
	ctrl = calloc(1, sizeof *ctrl);
	if (!ctrl)
		return NULL;
	ring = mmap(NULL, XP_PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
	if (ring == MAP_FAILED)
		goto fail;
	memset(ring, 0, XP_PAGE);
	ctrl->ring = ring;
	ctrl->gntshr = &xp_gnt_handle;
	ctrl->is_server = 1;
	ctrl->server_persist = 0;
	ctrl->blocking = 0;
	ctrl->read.order = left_order;
	ctrl->write.order = right_order;
	ctrl->read.shr = &ring->left;
	ctrl->write.shr = &ring->right;

	/* left (the server's read ring), then right */
	n = xp_pages(left_order);
	if (n) {
		for (i = 0; i < n; i++)
			refs[i] = next++;
		ctrl->read.buffer = xp_map_refs(memfd, refs, n, PROT_READ | PROT_WRITE);
		if (!ctrl->read.buffer)
			goto fail;
		memcpy(ring->grants, refs, n * sizeof *refs);
	} else {
		ctrl->read.buffer = xp_in_page(ring, left_order);
	}
	i = n;
	n = xp_pages(right_order);
	if (n) {
		size_t j;
		for (j = 0; j < n; j++)
			refs[j] = next++;
		ctrl->write.buffer = xp_map_refs(memfd, refs, n, PROT_READ | PROT_WRITE);
		if (!ctrl->write.buffer)
			goto fail;
		memcpy(ring->grants + i, refs, n * sizeof *refs);
	} else {
		ctrl->write.buffer = xp_in_page(ring, right_order);
	}

	ring->left.cons = ring->left.prod = initial_index;
	ring->right.cons = ring->right.prod = initial_index;
	ring->left_order = (uint16_t)left_order;
	ring->right_order = (uint16_t)right_order;
	ring->cli_live = 2;
	ring->srv_live = 1;
	ring->cli_notify = VCHAN_NOTIFY_WRITE;

	ctrl->event_port = XP_PORT;
	ctrl->event = xp_evtchn_open(wake_fd, kick_fd);
	if (!ctrl->event)
		goto fail;
	return ctrl;
fail:
	ctrl->event = NULL;
	libxenvchan_close(ctrl);
	return NULL;
}

/*
 * Client: maps the control page, validates the orders the way
 * libxenvchan_client_init() does (10..20, not both the same in-page order),
 * maps the rings from the grant list (the ring it reads read-only), marks
 * itself connected, asks the server for a kick on its first write, and
 * sends the server one event. NULL if the page is refused.
 */
struct libxenvchan *xp_client_open(int memfd, int wake_fd, int kick_fd)
{
	struct libxenvchan *ctrl;
	struct vchan_interface *ring;
	int lo, ro;
	size_t nl;

	ctrl = calloc(1, sizeof *ctrl);
	if (!ctrl)
		return NULL;
	ring = mmap(NULL, XP_PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
	if (ring == MAP_FAILED) {
		free(ctrl);
		return NULL;
	}
	ctrl->ring = ring;
	ctrl->gnttab = &xp_gnt_handle;
	ctrl->is_server = 0;
	ctrl->server_persist = 0;
	ctrl->blocking = 0;
	/* Private copies of the orders, as init.c keeps. Set only once valid,
	 * because libxenvchan_close() unmaps rings by order. */
	lo = ring->left_order;
	ro = ring->right_order;
	if (!xp_order_ok(lo) || !xp_order_ok(ro) || (lo == ro && lo < 12))
		goto fail;
	ctrl->read.shr = &ring->right;
	ctrl->write.shr = &ring->left;

	nl = xp_pages(lo);
	if (nl) {
		ctrl->write.buffer = xp_map_refs(memfd, ring->grants, nl, PROT_READ | PROT_WRITE);
		if (!ctrl->write.buffer)
			goto fail;
	} else {
		ctrl->write.buffer = xp_in_page(ring, lo);
	}
	ctrl->write.order = lo;
	if (xp_pages(ro)) {
		ctrl->read.buffer = xp_map_refs(memfd, ring->grants + nl, xp_pages(ro), PROT_READ);
		if (!ctrl->read.buffer)
			goto fail;
	} else {
		ctrl->read.buffer = xp_in_page(ring, ro);
	}
	ctrl->read.order = ro;

	ctrl->event_port = XP_PORT;
	ctrl->event = xp_evtchn_open(wake_fd, kick_fd);
	if (!ctrl->event)
		goto fail;

	ring->cli_live = 1;
	ring->srv_notify = VCHAN_NOTIFY_WRITE;
	xenevtchn_notify(ctrl->event, ctrl->event_port);
	return ctrl;
fail:
	/* Not connected: do not touch cli_live or notify the server. */
	if (ctrl->write.order >= 12)
		munmap(ctrl->write.buffer, (size_t)1 << ctrl->write.order);
	munmap(ring, XP_PAGE);
	free(ctrl);
	return NULL;
}

/* ---- calls from Rust ----------------------------------------------------- */

void xp_set_blocking(struct libxenvchan *ctrl, int on)
{
	ctrl->blocking = on ? 1 : 0;
}

/* Server only: keep reporting "open" after the client leaves, so a new
 * client may connect to the same page (libxenvchan's server_persist). */
void xp_set_server_persist(struct libxenvchan *ctrl, int on)
{
	ctrl->server_persist = on ? 1 : 0;
}

int xp_is_blocking(struct libxenvchan *ctrl)
{
	return ctrl->blocking != 0;
}

void xp_set_wait_timeout_ms(int ms)
{
	xp_wait_timeout_ms = ms;
}

/* One unconditional event to the peer (as a server announcing itself). */
int xp_kick(struct libxenvchan *ctrl)
{
	return xenevtchn_notify(ctrl->event, ctrl->event_port);
}

int xp_read(struct libxenvchan *ctrl, void *buf, size_t n)
{
	return libxenvchan_read(ctrl, buf, n);
}

int xp_write(struct libxenvchan *ctrl, const void *buf, size_t n)
{
	return libxenvchan_write(ctrl, buf, n);
}

int xp_recv(struct libxenvchan *ctrl, void *buf, size_t n)
{
	return libxenvchan_recv(ctrl, buf, n);
}

int xp_send(struct libxenvchan *ctrl, const void *buf, size_t n)
{
	return libxenvchan_send(ctrl, buf, n);
}

int xp_data_ready(struct libxenvchan *ctrl)
{
	return libxenvchan_data_ready(ctrl);
}

int xp_buffer_space(struct libxenvchan *ctrl)
{
	return libxenvchan_buffer_space(ctrl);
}

int xp_is_open(struct libxenvchan *ctrl)
{
	return libxenvchan_is_open(ctrl);
}

int xp_wait(struct libxenvchan *ctrl)
{
	return libxenvchan_wait(ctrl);
}

int xp_fd(struct libxenvchan *ctrl)
{
	return libxenvchan_fd_for_select(ctrl);
}

/* Closes and frees `ctrl` (it must not be used afterwards). */
void xp_close(struct libxenvchan *ctrl)
{
	libxenvchan_close(ctrl);
}

/* Offsets of the shared-page fields as the C header lays them out, in the
 * order: left.cons, left.prod, right.cons, right.prod, left_order,
 * right_order, cli_live, srv_live, cli_notify, srv_notify, grants, and the
 * size of the header. Returns how many were written. */
size_t xp_layout(size_t *out, size_t n)
{
	const size_t v[] = {
		offsetof(struct vchan_interface, left) + offsetof(struct ring_shared, cons),
		offsetof(struct vchan_interface, left) + offsetof(struct ring_shared, prod),
		offsetof(struct vchan_interface, right) + offsetof(struct ring_shared, cons),
		offsetof(struct vchan_interface, right) + offsetof(struct ring_shared, prod),
		offsetof(struct vchan_interface, left_order),
		offsetof(struct vchan_interface, right_order),
		offsetof(struct vchan_interface, cli_live),
		offsetof(struct vchan_interface, srv_live),
		offsetof(struct vchan_interface, cli_notify),
		offsetof(struct vchan_interface, srv_notify),
		offsetof(struct vchan_interface, grants),
		sizeof(struct vchan_interface),
	};
	size_t i, count = sizeof v / sizeof v[0];
	if (count > n)
		count = n;
	for (i = 0; i < count; i++)
		out[i] = v[i];
	return count;
}
