// SPDX-License-Identifier: GPL-2.0
/*
 * The module's version for modinfo: 7.3's `module!` macro has no version field. Kbuild passes
 * IVSHMEM_VERSION, the version of userspace/Cargo.toml, so module and tools share one number.
 */
#include <linux/module.h>

MODULE_VERSION(IVSHMEM_VERSION);
