// SPDX-License-Identifier: GPL-2.0
/*
 * Macros and inline functions the Rust side needs, which bindgen cannot reach:
 * pgprot_noncached() (a macro on x86; vma_pfn.rs), pgprot_writecombine() (a macro on arm64;
 * vma_pfn.rs) and try_module_get() (file_pins.rs: kernels whose misc devices leave `owner` unset).
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
