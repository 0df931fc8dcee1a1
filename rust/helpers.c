// SPDX-License-Identifier: GPL-2.0
/*
 * Macros and inline functions the Rust side needs, which bindgen cannot reach:
 * pgprot_noncached() (a macro on x86; vma_pfn.rs) and try_module_get() (compat.rs, 7.2 only).
 */
#include <linux/mm.h>
#include <linux/module.h>

pgprot_t ivshmem_pgprot_noncached(pgprot_t prot);
bool ivshmem_try_module_get(struct module *module);

pgprot_t ivshmem_pgprot_noncached(pgprot_t prot)
{
	return pgprot_noncached(prot);
}

bool ivshmem_try_module_get(struct module *module)
{
	return try_module_get(module);
}
