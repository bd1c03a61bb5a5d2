/* Prints the uapi facts ring-hosted's device shims rely on, one
 * "name value" line each, for tests/uapi_layout.rs to compare with the
 * Rust constants and struct layouts.
 *
 * Headers: <linux/vfio.h>, <xen/gntalloc.h>, <xen/gntdev.h>,
 * <xen/evtchn.h> from Debian's linux-libc-dev; <xen/io/xs_wire.h> from
 * libxen-dev. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <linux/vfio.h>
/* The Linux Xen uapi headers use the hypervisor's types without defining
 * them; Xen's own tools define them the same way before including. */
typedef uint16_t domid_t;
typedef uint32_t grant_ref_t;
#include <xen/gntalloc.h>
#include <xen/gntdev.h>
#include <xen/evtchn.h>
#include <xen/io/xs_wire.h>

#define P(name, v) printf("%s %llu\n", name, (unsigned long long)(v))
#define N(x) P(#x, x)
#define S(t) P("sizeof " #t, sizeof(struct t))
#define O(t, f) P("offsetof " #t "." #f, offsetof(struct t, f))

int main(void)
{
	/* VFIO ioctls and constants */
	N(VFIO_API_VERSION);
	N(VFIO_GET_API_VERSION);
	N(VFIO_CHECK_EXTENSION);
	N(VFIO_SET_IOMMU);
	N(VFIO_GROUP_GET_STATUS);
	N(VFIO_GROUP_SET_CONTAINER);
	N(VFIO_GROUP_UNSET_CONTAINER);
	N(VFIO_GROUP_GET_DEVICE_FD);
	N(VFIO_DEVICE_GET_INFO);
	N(VFIO_DEVICE_GET_REGION_INFO);
	N(VFIO_DEVICE_GET_IRQ_INFO);
	N(VFIO_DEVICE_SET_IRQS);
	N(VFIO_DEVICE_RESET);
	N(VFIO_TYPE1_IOMMU);
	N(VFIO_TYPE1v2_IOMMU);
	N(VFIO_NOIOMMU_IOMMU);
	N(VFIO_GROUP_FLAGS_VIABLE);
	N(VFIO_GROUP_FLAGS_CONTAINER_SET);
	N(VFIO_DEVICE_FLAGS_PCI);
	N(VFIO_REGION_INFO_FLAG_READ);
	N(VFIO_REGION_INFO_FLAG_WRITE);
	N(VFIO_REGION_INFO_FLAG_MMAP);
	N(VFIO_IRQ_INFO_EVENTFD);
	N(VFIO_IRQ_SET_DATA_NONE);
	N(VFIO_IRQ_SET_DATA_EVENTFD);
	N(VFIO_IRQ_SET_ACTION_TRIGGER);
	N(VFIO_PCI_BAR0_REGION_INDEX);
	N(VFIO_PCI_CONFIG_REGION_INDEX);
	N(VFIO_PCI_MSIX_IRQ_INDEX);
	S(vfio_group_status);
	O(vfio_group_status, argsz);
	O(vfio_group_status, flags);
	S(vfio_device_info);
	O(vfio_device_info, flags);
	O(vfio_device_info, num_regions);
	O(vfio_device_info, num_irqs);
	O(vfio_device_info, cap_offset);
	S(vfio_region_info);
	O(vfio_region_info, flags);
	O(vfio_region_info, index);
	O(vfio_region_info, cap_offset);
	O(vfio_region_info, size);
	O(vfio_region_info, offset);
	S(vfio_irq_info);
	O(vfio_irq_info, flags);
	O(vfio_irq_info, index);
	O(vfio_irq_info, count);
	S(vfio_irq_set);
	O(vfio_irq_set, flags);
	O(vfio_irq_set, index);
	O(vfio_irq_set, start);
	O(vfio_irq_set, count);
	O(vfio_irq_set, data);

	/* gntalloc */
	N(IOCTL_GNTALLOC_ALLOC_GREF);
	N(IOCTL_GNTALLOC_DEALLOC_GREF);
	N(IOCTL_GNTALLOC_SET_UNMAP_NOTIFY);
	N(GNTALLOC_FLAG_WRITABLE);
	N(UNMAP_NOTIFY_CLEAR_BYTE);
	N(UNMAP_NOTIFY_SEND_EVENT);
	S(ioctl_gntalloc_alloc_gref);
	O(ioctl_gntalloc_alloc_gref, domid);
	O(ioctl_gntalloc_alloc_gref, flags);
	O(ioctl_gntalloc_alloc_gref, count);
	O(ioctl_gntalloc_alloc_gref, index);
	O(ioctl_gntalloc_alloc_gref, gref_ids);
	S(ioctl_gntalloc_dealloc_gref);
	O(ioctl_gntalloc_dealloc_gref, index);
	O(ioctl_gntalloc_dealloc_gref, count);
	S(ioctl_gntalloc_unmap_notify);
	O(ioctl_gntalloc_unmap_notify, index);
	O(ioctl_gntalloc_unmap_notify, action);
	O(ioctl_gntalloc_unmap_notify, event_channel_port);

	/* gntdev */
	N(IOCTL_GNTDEV_MAP_GRANT_REF);
	N(IOCTL_GNTDEV_UNMAP_GRANT_REF);
	N(IOCTL_GNTDEV_SET_UNMAP_NOTIFY);
	S(ioctl_gntdev_grant_ref);
	O(ioctl_gntdev_grant_ref, domid);
	O(ioctl_gntdev_grant_ref, ref);
	S(ioctl_gntdev_map_grant_ref);
	O(ioctl_gntdev_map_grant_ref, count);
	O(ioctl_gntdev_map_grant_ref, index);
	O(ioctl_gntdev_map_grant_ref, refs);
	S(ioctl_gntdev_unmap_grant_ref);
	O(ioctl_gntdev_unmap_grant_ref, index);
	O(ioctl_gntdev_unmap_grant_ref, count);
	S(ioctl_gntdev_unmap_notify);

	/* evtchn */
	N(IOCTL_EVTCHN_BIND_INTERDOMAIN);
	N(IOCTL_EVTCHN_BIND_UNBOUND_PORT);
	N(IOCTL_EVTCHN_UNBIND);
	N(IOCTL_EVTCHN_NOTIFY);
	S(ioctl_evtchn_bind_interdomain);
	O(ioctl_evtchn_bind_interdomain, remote_domain);
	O(ioctl_evtchn_bind_interdomain, remote_port);
	S(ioctl_evtchn_bind_unbound_port);
	S(ioctl_evtchn_notify);
	S(ioctl_evtchn_unbind);

	/* xenstore wire */
	S(xsd_sockmsg);
	O(xsd_sockmsg, type);
	O(xsd_sockmsg, req_id);
	O(xsd_sockmsg, tx_id);
	O(xsd_sockmsg, len);
	N(XENSTORE_PAYLOAD_MAX);
	N(XS_DIRECTORY);
	N(XS_READ);
	N(XS_GET_PERMS);
	N(XS_WATCH);
	N(XS_UNWATCH);
	N(XS_TRANSACTION_START);
	N(XS_TRANSACTION_END);
	N(XS_GET_DOMAIN_PATH);
	N(XS_WRITE);
	N(XS_MKDIR);
	N(XS_RM);
	N(XS_SET_PERMS);
	N(XS_WATCH_EVENT);
	N(XS_ERROR);
	return 0;
}
