/*
 * Test harness that turns the real libxenvchan (Debian libxen-dev, linked
 * statically from libxenvchan.a) into a peer for ring-core's vchan, with no
 * Xen underneath.
 *
 * Both objects of the library are linked: io.o (the data path) and init.o
 * (set-up). This file supplies what the Xen device libraries would
 * otherwise provide:
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
 *   page initialisation (xp_server_open, xp_client_open: our re-creation);
 * - and, for libxenvchan's own set-up code (init.o, linked as it is:
 *   xp_lib_server_init, xp_lib_client_init), stand-ins for the grant,
 *   event-channel and xenstore calls it makes.
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

/* libxenvchan_close() (io.o) calls init.o's close_xs_srv() for a server:
 * with no xenstore path (the set-up below leaves it NULL) it does nothing,
 * and for libxenvchan_server_init()'s own servers it removes their entries
 * from the stand-in xenstore further down. */

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

/* ---- libxenvchan's own set-up (init.o) on stand-ins ----------------------
 *
 * libxenvchan_server_init() and libxenvchan_client_init() from the
 * library's init.o, linked as they are, over stand-ins for what they call:
 *
 * - grant sharing: pages come from the memfd named by xp_init_use(), in
 *   order from page 1 (so the grant list reads as ring-core's FlatLayout);
 *   the control page is memfd page 0, shared under XP_CTRL_REF (init.c's
 *   client refuses a ring-ref of 0). A ring page's grant ref is its page
 *   number, as in the rest of this harness;
 * - event channels: xenevtchn_open() hands out the eventfd pair named by
 *   xp_init_use(), and both binds report XP_PORT;
 * - xenstore: a small in-memory table, with "domid" reading 0.
 *
 * One set-up at a time (a lock around each call): the stand-ins take their
 * memfd and eventfds from process-wide state.
 */

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <xenstore.h>

#define XP_CTRL_REF 0x100000u

static pthread_mutex_t xp_init_lock = PTHREAD_MUTEX_INITIALIZER;
static int xp_init_memfd = -1, xp_init_wake = -1, xp_init_kick = -1;
static uint32_t xp_init_next_page = 1;

struct xengntdev_handle xp_gnt_real;

xengntshr_handle *xengntshr_open(struct xentoollog_logger *logger, unsigned open_flags)
{
	(void)logger;
	(void)open_flags;
	return &xp_gnt_real;
}

xengnttab_handle *xengnttab_open(struct xentoollog_logger *logger, unsigned open_flags)
{
	(void)logger;
	(void)open_flags;
	return &xp_gnt_real;
}

void *xengntshr_share_page_notify(xengntshr_handle *xgs, uint32_t domid, uint32_t *ref,
				  int writable, uint32_t notify_offset,
				  evtchn_port_t notify_port)
{
	void *p;
	(void)xgs;
	(void)domid;
	(void)writable;
	(void)notify_offset;
	(void)notify_port;
	p = mmap(NULL, XP_PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, xp_init_memfd, 0);
	if (p == MAP_FAILED)
		return NULL;
	*ref = XP_CTRL_REF;
	return p;
}

void *xengntshr_share_pages(xengntshr_handle *xgs, uint32_t domid, int count, uint32_t *refs,
			    int writable)
{
	uint32_t mine[512];
	int i;
	(void)xgs;
	(void)domid;
	(void)writable;
	if (count <= 0 || count > 512)
		return NULL;
	for (i = 0; i < count; i++)
		mine[i] = xp_init_next_page++;
	memcpy(refs, mine, (size_t)count * sizeof *refs);
	return xp_map_refs(xp_init_memfd, mine, (size_t)count, PROT_READ | PROT_WRITE);
}

void *xengnttab_map_grant_ref_notify(xengnttab_handle *xgt, uint32_t domid, uint32_t ref,
				     int prot, uint32_t notify_offset, evtchn_port_t notify_port)
{
	void *p;
	(void)xgt;
	(void)domid;
	(void)notify_offset;
	(void)notify_port;
	if (ref != XP_CTRL_REF)
		return NULL;
	p = mmap(NULL, XP_PAGE, prot, MAP_SHARED, xp_init_memfd, 0);
	return p == MAP_FAILED ? NULL : p;
}

void *xengnttab_map_domain_grant_refs(xengnttab_handle *xgt, uint32_t count, uint32_t domid,
				      uint32_t *refs, int prot)
{
	(void)xgt;
	(void)domid;
	return xp_map_refs(xp_init_memfd, refs, count, prot);
}

xenevtchn_handle *xenevtchn_open(struct xentoollog_logger *logger, unsigned int flags)
{
	(void)logger;
	(void)flags;
	return xp_evtchn_open(xp_init_wake, xp_init_kick);
}

xenevtchn_port_or_error_t xenevtchn_bind_unbound_port(xenevtchn_handle *xce, uint32_t domid)
{
	(void)xce;
	(void)domid;
	return XP_PORT;
}

xenevtchn_port_or_error_t xenevtchn_bind_interdomain(xenevtchn_handle *xce, uint32_t domid,
						     evtchn_port_t remote_port)
{
	(void)xce;
	(void)domid;
	return remote_port == XP_PORT ? XP_PORT : -1;
}

int xenevtchn_unbind(xenevtchn_handle *xce, evtchn_port_t port)
{
	(void)xce;
	(void)port;
	return 0;
}

/* xenstore: paths and values, both short in libxenvchan's use. */
struct xs_handle {
	int unused;
};
static struct xs_handle xp_xs;
static pthread_mutex_t xp_store_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
	char path[128];
	char value[64];
	unsigned perms_set;
} xp_store[32];

struct xs_handle *xs_open(unsigned long flags)
{
	(void)flags;
	return &xp_xs;
}

void xs_close(struct xs_handle *xsh)
{
	(void)xsh;
}

static int xp_store_find(const char *path)
{
	int i;
	for (i = 0; i < 32; i++)
		if (xp_store[i].path[0] && strcmp(xp_store[i].path, path) == 0)
			return i;
	return -1;
}

void *xs_read(struct xs_handle *h, xs_transaction_t t, const char *path, unsigned int *len)
{
	char *out = NULL;
	int i;
	(void)h;
	(void)t;
	if (strcmp(path, "domid") == 0) {
		out = strdup("0");
	} else {
		pthread_mutex_lock(&xp_store_lock);
		i = xp_store_find(path);
		if (i >= 0)
			out = strdup(xp_store[i].value);
		pthread_mutex_unlock(&xp_store_lock);
	}
	if (out && len)
		*len = (unsigned int)strlen(out);
	if (!out)
		errno = ENOENT;
	return out;
}

bool xs_write(struct xs_handle *h, xs_transaction_t t, const char *path, const void *data,
	      unsigned int len)
{
	bool ok = false;
	int i;
	(void)h;
	(void)t;
	if (strlen(path) >= sizeof xp_store[0].path || len >= sizeof xp_store[0].value)
		return false;
	pthread_mutex_lock(&xp_store_lock);
	i = xp_store_find(path);
	for (int j = 0; i < 0 && j < 32; j++)
		if (!xp_store[j].path[0])
			i = j;
	if (i >= 0) {
		snprintf(xp_store[i].path, sizeof xp_store[i].path, "%s", path);
		memcpy(xp_store[i].value, data, len);
		xp_store[i].value[len] = 0;
		ok = true;
	}
	pthread_mutex_unlock(&xp_store_lock);
	return ok;
}

bool xs_rm(struct xs_handle *h, xs_transaction_t t, const char *path)
{
	size_t n = strlen(path);
	int i;
	(void)h;
	(void)t;
	pthread_mutex_lock(&xp_store_lock);
	for (i = 0; i < 32; i++)
		if (strncmp(xp_store[i].path, path, n) == 0 &&
		    (xp_store[i].path[n] == 0 || xp_store[i].path[n] == '/'))
			xp_store[i].path[0] = 0;
	pthread_mutex_unlock(&xp_store_lock);
	return true;
}

bool xs_set_permissions(struct xs_handle *h, xs_transaction_t t, const char *path,
			struct xs_permissions *perms, unsigned int num_perms)
{
	int i;
	(void)h;
	(void)t;
	(void)perms;
	pthread_mutex_lock(&xp_store_lock);
	i = xp_store_find(path);
	if (i >= 0)
		xp_store[i].perms_set = num_perms;
	pthread_mutex_unlock(&xp_store_lock);
	return i >= 0;
}

xs_transaction_t xs_transaction_start(struct xs_handle *h)
{
	(void)h;
	return 1;
}

bool xs_transaction_end(struct xs_handle *h, xs_transaction_t t, bool abort)
{
	(void)h;
	(void)t;
	(void)abort;
	return true;
}

/* From Rust: libxenvchan_server_init() itself, its pages in `memfd`, its
 * event channel on (wake_fd, kick_fd). */
struct libxenvchan *xp_lib_server_init(int memfd, const char *xs_path, size_t left_min,
				       size_t right_min, int wake_fd, int kick_fd)
{
	struct libxenvchan *ctrl;
	pthread_mutex_lock(&xp_init_lock);
	xp_init_memfd = memfd;
	xp_init_wake = wake_fd;
	xp_init_kick = kick_fd;
	xp_init_next_page = 1;
	ctrl = libxenvchan_server_init(NULL, 0, xs_path, left_min, right_min);
	pthread_mutex_unlock(&xp_init_lock);
	return ctrl;
}

/* From Rust: libxenvchan_client_init() itself, against the server whose
 * xenstore entries are under `xs_path` and whose pages are in `memfd`. */
struct libxenvchan *xp_lib_client_init(int memfd, const char *xs_path, int wake_fd, int kick_fd)
{
	struct libxenvchan *ctrl;
	pthread_mutex_lock(&xp_init_lock);
	xp_init_memfd = memfd;
	xp_init_wake = wake_fd;
	xp_init_kick = kick_fd;
	ctrl = libxenvchan_client_init(NULL, 0, xs_path);
	pthread_mutex_unlock(&xp_init_lock);
	return ctrl;
}

/* From Rust: what xenstore holds at `path` (for tests of the entries the
 * server wrote), copied into `out`; -1 if nothing. */
int xp_xs_get(const char *path, char *out, size_t n)
{
	int i, r = -1;
	pthread_mutex_lock(&xp_store_lock);
	i = xp_store_find(path);
	if (i >= 0 && n > 0) {
		snprintf(out, n, "%s", xp_store[i].value);
		r = (int)xp_store[i].perms_set;
	}
	pthread_mutex_unlock(&xp_store_lock);
	return r;
}

/* From Rust: puts `value` at `path` in the stand-in xenstore (a server of
 * ours announcing itself to libxenvchan's client). */
int xp_xs_put(const char *path, const char *value)
{
	return xs_write(&xp_xs, 0, path, value, (unsigned int)strlen(value)) ? 0 : -1;
}
