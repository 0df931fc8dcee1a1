// SPDX-License-Identifier: GPL-2.0
/*
 * pgprot_noncached() is a macro on x86, and pgprot_writecombine() one on arm64, so Rust cannot
 * reach them through bindgen. These are the functions the Rust side (vma_pfn.rs) needs from C.
 */
#include <linux/mm.h>

pgprot_t ivshmem_pgprot_noncached(pgprot_t prot);
pgprot_t ivshmem_pgprot_writecombine(pgprot_t prot);

pgprot_t ivshmem_pgprot_noncached(pgprot_t prot)
{
	return pgprot_noncached(prot);
}

pgprot_t ivshmem_pgprot_writecombine(pgprot_t prot)
{
	return pgprot_writecombine(prot);
}
