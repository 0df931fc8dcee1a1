// SPDX-License-Identifier: GPL-2.0
/*
 * Macros and inline functions the Rust side needs, which bindgen cannot reach:
 * pgprot_noncached() (a macro on x86; vma_pfn.rs), pgprot_writecombine() (a macro on arm64;
 * vma_pfn.rs), try_module_get() (file_pins.rs: kernels whose misc devices leave `owner` unset)
 * and the x86 page-table arithmetic that reads the cache type PAT granted (mem_region.rs).
 */
#include <linux/build_bug.h>
#include <linux/mm.h>
#include <linux/module.h>

#ifdef CONFIG_ARM64
/* vma_pfn.rs's PMD_ORDER for arm64, where bindgen cannot evaluate PMD_SHIFT. */
static_assert(PMD_ORDER == PAGE_SHIFT - 3);
#endif

pgprot_t ivshmem_pgprot_noncached(pgprot_t prot);
pgprot_t ivshmem_pgprot_writecombine(pgprot_t prot);
bool ivshmem_try_module_get(struct module *module);

pgprot_t ivshmem_pgprot_noncached(pgprot_t prot)
{
	return pgprot_noncached(prot);
}

pgprot_t ivshmem_pgprot_writecombine(pgprot_t prot)
{
	return pgprot_writecombine(prot);
}

bool ivshmem_try_module_get(struct module *module)
{
	return try_module_get(module);
}

#ifdef CONFIG_X86_PAT
#include <asm/pgtable.h>

int ivshmem_kernel_cachemode(const void *addr);

/*
 * The cache mode (enum page_cache_mode) of the kernel mapping at @addr, which an ioremap*()
 * call returned: the type PAT granted the range, which user mappings of it get as well (a
 * write-back request where the MTRRs make the range uncachable is granted as UC-). The
 * entry's cache bits are matched against what cachemode2protval() gives each mode, since
 * pgprot2cachemode() is not exported; UC- comes before WC, which it stands for without PAT.
 * -1 when @addr is not mapped or its bits match no mode.
 */
int ivshmem_kernel_cachemode(const void *addr)
{
	static const enum page_cache_mode modes[] = {
		_PAGE_CACHE_MODE_WB, _PAGE_CACHE_MODE_UC_MINUS, _PAGE_CACHE_MODE_UC,
		_PAGE_CACHE_MODE_WC, _PAGE_CACHE_MODE_WT,	_PAGE_CACHE_MODE_WP,
	};
	unsigned int level;
	pte_t *pte = lookup_address((unsigned long)addr, &level);
	pgprotval_t bits;
	int i;

	if (!pte || !pte_present(*pte))
		return -1;
	bits = pte_flags(*pte);
	if (level != PG_LEVEL_4K)
		bits = protval_large_2_4k(bits);
	bits &= _PAGE_CACHE_MASK;
	for (i = 0; i < ARRAY_SIZE(modes); i++)
		if (cachemode2protval(modes[i]) == bits)
			return modes[i];
	return -1;
}
#endif
