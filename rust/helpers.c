// SPDX-License-Identifier: GPL-2.0
/*
 * pgprot_noncached() is a macro on x86, so Rust cannot reach it through bindgen. This is the
 * one function the Rust side (vma_pfn.rs) needs from C.
 */
#include <linux/mm.h>

pgprot_t ivshmem_pgprot_noncached(pgprot_t prot);

pgprot_t ivshmem_pgprot_noncached(pgprot_t prot)
{
	return pgprot_noncached(prot);
}
