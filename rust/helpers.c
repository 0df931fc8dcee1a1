// SPDX-License-Identifier: GPL-2.0
/*
 * pgprot_noncached() is a macro on x86, and pgprot_writecombine() one on arm64, so Rust cannot
 * reach them through bindgen. These are the functions the Rust side (vma_pfn.rs) needs from C.
 */
#include <linux/build_bug.h>
#include <linux/mm.h>

#ifdef CONFIG_ARM64
/* vma_pfn.rs's PMD_ORDER for arm64, where bindgen cannot evaluate PMD_SHIFT. */
static_assert(PMD_ORDER == PAGE_SHIFT - 3);
#endif

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
