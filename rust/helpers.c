// SPDX-License-Identifier: GPL-2.0
/*
 * What the Rust side (vma_pfn.rs) needs but cannot reach through bindgen: a macro and an
 * architecture feature test. Nothing else is written in C.
 */
#include <linux/mm.h>

pgprot_t ivshmem_pgprot_noncached(pgprot_t prot);
bool ivshmem_pud_mappable(void);

pgprot_t ivshmem_pgprot_noncached(pgprot_t prot)
{
	return pgprot_noncached(prot);
}

/*
 * Whether user mappings may use 1 GiB (PUD) entries. The kernel's fault path does not check
 * this for huge PFN mappings: on x86 a CPU without gbpages (QEMU's default qemu64 model has
 * none) treats the PUD's page-size bit as reserved.
 */
bool ivshmem_pud_mappable(void)
{
#ifdef CONFIG_X86
	return boot_cpu_has(X86_FEATURE_GBPAGES);
#else
	return IS_ENABLED(CONFIG_ARCH_SUPPORTS_PUD_PFNMAP);
#endif
}
