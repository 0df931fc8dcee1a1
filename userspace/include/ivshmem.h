/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * ioctl ABI of /dev/ivshmemN, for C programs. The source of truth is rust/uapi.rs;
 * userspace/tests/c_header.rs checks that this header agrees with it.
 */
#ifndef IVSHMEM_H
#define IVSHMEM_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define IVSHMEM_IOCTL_MAGIC 0xB9

struct ivshmem_info {
	__u64 size;     /* bytes of shared memory (BAR2) */
	__u32 peer_id;  /* IVPosition, or IVSHMEM_NO_PEER */
	__u32 vectors;  /* MSI-X vectors set up (0 on ivshmem-plain) */
	__u32 flags;    /* IVSHMEM_FLAG_* */
	__u32 cache;    /* IVSHMEM_CACHE_* of this file's next mmap */
	char pci_name[16]; /* PCI address, e.g. "0000:00:04.0", NUL-padded */
	__u32 granted;  /* with IVSHMEM_FLAG_GRANTED: IVSHMEM_CACHE_* that mmap really gets */
	__u32 reserved0;
	__u64 reserved[2];
};

struct ivshmem_ring {
	__u32 peer;     /* target peer id, 0..IVSHMEM_MAX_PEER */
	__u32 vector;   /* target vector, below this device's vector count */
};

struct ivshmem_wait {
	__u32 vector;     /* vector to wait on */
	__s32 timeout_ms; /* 0: don't block (EAGAIN); < 0: no limit; expiry: ETIMEDOUT */
	__u64 count;      /* out: interrupts since this file last saw one (>= 1) */
};

struct ivshmem_eventfd {
	__u32 vector;   /* interrupts of this vector signal the eventfd */
	__s32 fd;       /* eventfd, or -1 to remove this file's */
};

#define IVSHMEM_GET_SIZE    _IOR(IVSHMEM_IOCTL_MAGIC, 0, __u64)
#define IVSHMEM_GET_INFO    _IOR(IVSHMEM_IOCTL_MAGIC, 1, struct ivshmem_info)
#define IVSHMEM_SET_CACHE   _IOW(IVSHMEM_IOCTL_MAGIC, 2, __u32)
#define IVSHMEM_RING        _IOW(IVSHMEM_IOCTL_MAGIC, 3, struct ivshmem_ring)
#define IVSHMEM_WAIT        _IOWR(IVSHMEM_IOCTL_MAGIC, 4, struct ivshmem_wait)
#define IVSHMEM_SET_EVENTFD _IOW(IVSHMEM_IOCTL_MAGIC, 5, struct ivshmem_eventfd)

#define IVSHMEM_MAX_VECTORS 64
#define IVSHMEM_MAX_PEER 0xffff

#define IVSHMEM_CACHE_WB 0
#define IVSHMEM_CACHE_WC 1
#define IVSHMEM_CACHE_UC 2
/* Granted types only (in ivshmem_info.granted, never a request): */
#define IVSHMEM_CACHE_UC_STRONG 3
#define IVSHMEM_CACHE_WT 4
#define IVSHMEM_CACHE_WP 5

#define IVSHMEM_FLAG_DOORBELL (1u << 0)
#define IVSHMEM_FLAG_GRANTED (1u << 1)
#define IVSHMEM_NO_PEER 0xffffffffu

#endif /* IVSHMEM_H */
