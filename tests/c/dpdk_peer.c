/*
 * Test harness around DPDK's VMBus ring code (Debian libdpdk-dev,
 * librte_bus_vmbus.a, object vmbus_bufring.c.o).
 *
 * Only our own declarations are used: the three-field ring struct and the
 * four function signatures as documented in docs/interop facts. The
 * wrappers build packets the way DPDK's channel layer does (descriptor,
 * optional GPA-direct header, payload, zero padding) and hand them to
 * vmbus_txbr_write, and receive them with vmbus_rxbr_peek/vmbus_rxbr_read.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

/* DPDK's private view of one ring: pointer to the control page (data
 * follows at the page size), data size, and the writer's cached index. */
struct vmbus_br {
	void *vbr;
	uint32_t dsize;
	uint32_t windex;
};

void vmbus_br_setup(struct vmbus_br *br, void *buf, unsigned int blen);
int vmbus_txbr_write(struct vmbus_br *tbr, const struct iovec iov[], int iovlen,
		     bool *need_sig);
int vmbus_rxbr_peek(const struct vmbus_br *rbr, void *data, size_t dlen);
int vmbus_rxbr_read(struct vmbus_br *rbr, void *data, size_t dlen, size_t hlen);

/* The two things the object needs from the rest of DPDK. The page size is
 * 4096 unless a test asks for a 64 KiB-page guest's layout; it is per
 * thread, because DPDK asks on every call and tests run in parallel. */
static __thread size_t page_size = 4096;

size_t rte_mem_page_size(void)
{
	return page_size;
}

void dpdk_set_page_size(size_t size)
{
	page_size = size;
}

void __rte_panic(const char *funcname, const char *format, ...)
{
	(void)funcname;
	(void)format;
	abort();
}

struct desc {
	uint16_t type;
	uint16_t hlen8;
	uint16_t tlen8;
	uint16_t flags;
	uint64_t xid;
};

_Static_assert(sizeof(struct desc) == 16, "descriptor is 16 bytes");
_Static_assert(sizeof(struct vmbus_br) == 16, "ring struct is 16 bytes");

struct vmbus_br *dpdk_ring_open(void *ring, unsigned int total_len)
{
	struct vmbus_br *br = calloc(1, sizeof(*br));
	if (br != NULL)
		vmbus_br_setup(br, ring, total_len);
	return br;
}

void dpdk_ring_close(struct vmbus_br *br)
{
	free(br);
}

uint32_t dpdk_ring_data_size(const struct vmbus_br *br)
{
	return br->dsize;
}

static const uint8_t zeros[8];

/* Sends an in-band (or any descriptor-only) packet, as rte_vmbus_chan_send. */
int dpdk_send(struct vmbus_br *br, uint16_t type, uint16_t flags, uint64_t xid,
	      const void *data, uint32_t len, bool *need_sig)
{
	uint32_t packed = (uint32_t)sizeof(struct desc) + len;
	uint32_t padded = (packed + 7u) & ~7u;
	struct desc d = {
		.type = type,
		.hlen8 = sizeof(struct desc) >> 3,
		.tlen8 = (uint16_t)(padded >> 3),
		.flags = flags,
		.xid = xid,
	};
	struct iovec iov[3] = {
		{ .iov_base = &d, .iov_len = sizeof(d) },
		{ .iov_base = (void *)data, .iov_len = len },
		{ .iov_base = (void *)zeros, .iov_len = padded - packed },
	};
	*need_sig = false;
	return vmbus_txbr_write(br, iov, 3, need_sig);
}

struct gpa {
	uint32_t len;
	uint32_t ofs;
	uint64_t page;
};

/* Sends a GPA-direct packet with one page per range, as
 * rte_vmbus_chan_send_sglist does. */
int dpdk_send_sglist(struct vmbus_br *br, uint64_t xid, const struct gpa *sg,
		     uint32_t n, const void *data, uint32_t len, bool *need_sig)
{
	struct {
		struct desc d;
		uint32_t reserved;
		uint32_t count;
	} head;
	uint32_t hlen = (uint32_t)sizeof(head) + n * (uint32_t)sizeof(struct gpa);
	uint32_t packed = hlen + len;
	uint32_t padded = (packed + 7u) & ~7u;
	head.d.type = 9;
	head.d.hlen8 = (uint16_t)(hlen >> 3);
	head.d.tlen8 = (uint16_t)(padded >> 3);
	head.d.flags = 1;
	head.d.xid = xid;
	head.reserved = 0;
	head.count = n;
	struct iovec iov[4] = {
		{ .iov_base = &head, .iov_len = sizeof(head) },
		{ .iov_base = (void *)sg, .iov_len = n * sizeof(struct gpa) },
		{ .iov_base = (void *)data, .iov_len = len },
		{ .iov_base = (void *)zeros, .iov_len = padded - packed },
	};
	*need_sig = false;
	return vmbus_txbr_write(br, iov, 4, need_sig);
}

/*
 * Receives one packet as rte_vmbus_chan_recv_raw does: peek the descriptor,
 * then read the whole packet (descriptor included) and skip the trailer.
 * On entry *len is the buffer size; on success it is the packet length.
 * Returns 0, -EAGAIN (11) when empty, -ENOBUFS (105) if the buffer is too
 * small, -EIO (5) for a bad descriptor.
 */
int dpdk_recv_raw(struct vmbus_br *br, void *buf, uint32_t *len)
{
	struct desc d;
	int r = vmbus_rxbr_peek(br, &d, sizeof(d));
	if (r != 0)
		return r;
	uint32_t pktlen = (uint32_t)d.tlen8 << 3;
	if (d.hlen8 < 2 || d.hlen8 > d.tlen8)
		return -5;
	if (*len < pktlen) {
		*len = pktlen;
		return -105;
	}
	r = vmbus_rxbr_read(br, buf, pktlen, 0);
	if (r == 0)
		*len = pktlen;
	return r;
}

/* Receives one packet's payload as rte_vmbus_chan_recv does (skipping the
 * descriptor and any header); the descriptor goes to *out. */
int dpdk_recv(struct vmbus_br *br, struct desc *out, void *buf, uint32_t *len)
{
	int r = vmbus_rxbr_peek(br, out, sizeof(*out));
	if (r != 0)
		return r;
	if (out->hlen8 < 2 || out->hlen8 > out->tlen8)
		return -5;
	uint32_t hlen = (uint32_t)out->hlen8 << 3;
	uint32_t dlen = ((uint32_t)out->tlen8 << 3) - hlen;
	if (*len < dlen) {
		*len = dlen;
		return -105;
	}
	r = vmbus_rxbr_read(br, buf, dlen, hlen);
	if (r == 0)
		*len = dlen;
	return r;
}

/* ---- DPDK's read-side signal decision ------------------------------------
 *
 * rte_vmbus_chan_signal_read() (vmbus_channel.c.o) decides, after a reader
 * has consumed `bytes_read` bytes, whether the writer waiting on
 * pending_send_size must be signalled, and signals through the channel's
 * monitor page. It takes a whole `struct vmbus_channel`, which DPDK does
 * not install a header for; the function reads only a few of its fields,
 * placed here as Debian's DPDK 22.11 build lays them out (read from the
 * object's code): the read ring's control page pointer at 0x20 and data
 * size at 0x28 (its struct vmbus_br), the monitor id at 0x44 and the
 * monitor page pointer at 0x48. A signal sets bit (id % 32) of the 32-bit
 * word 8 + 8 * (id / 32) bytes into the monitor page.
 *
 * dpdk_read_signal_check() tells the tests whether that layout still holds
 * on this machine's DPDK (a signal where one is certainly due, none where
 * none is), so a changed layout fails with its own message rather than as
 * a disagreement.
 *
 * The object's other references, never reached by that function, get
 * stand-ins that abort.
 */
#include <stdio.h>

void rte_vmbus_chan_signal_read(void *chan, uint32_t bytes_read);

int vmbus_logtype_bus;
int rte_log(uint32_t level, uint32_t logtype, const char *format, ...)
{
	(void)level;
	(void)logtype;
	(void)format;
	return 0;
}
void rte_free(void *ptr)
{
	(void)ptr;
	abort();
}
void *rte_zmalloc_socket(const char *type, size_t size, unsigned int align, int socket)
{
	(void)type;
	(void)size;
	(void)align;
	(void)socket;
	abort();
}
int vmbus_uio_find_resource(void);
int vmbus_uio_find_resource(void)
{
	abort();
}
int vmbus_uio_get_subchan(void);
int vmbus_uio_get_subchan(void)
{
	abort();
}
int vmbus_uio_map_rings(void);
int vmbus_uio_map_rings(void)
{
	abort();
}
int vmbus_uio_subchannels_supported(void);
int vmbus_uio_subchannels_supported(void)
{
	abort();
}

/* 1 if DPDK signals the writer of the ring whose control page is `ctrl`
 * (data size `dsize`) after a read of `bytes_read` bytes, else 0. */
int dpdk_read_signal(void *ctrl, uint32_t dsize, uint32_t bytes_read)
{
	_Alignas(8) unsigned char chan[0x80];
	_Alignas(8) uint32_t monitor[1024];

	memset(chan, 0, sizeof chan);
	memset(monitor, 0, sizeof monitor);
	memcpy(chan + 0x20, &ctrl, sizeof ctrl);
	memcpy(chan + 0x28, &dsize, sizeof dsize);
	chan[0x44] = 0; /* monitor id */
	{
		void *m = monitor;
		memcpy(chan + 0x48, &m, sizeof m);
	}
	rte_vmbus_chan_signal_read(chan, bytes_read);
	return monitor[2] & 1;
}
