//! The C header must agree with rust/uapi.rs: compile a C program with the system compiler
//! that prints every constant and the struct layout, and compare with the Rust values.

use std::process::Command;

use ivshmem::uapi;

#[test]
fn c_header_matches_rust_abi() {
    let dir = std::env::temp_dir().join(format!("ivshmem-h-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("abi.c");
    std::fs::write(
        &src,
        r#"#include <stdio.h>
#include <stddef.h>
#include "ivshmem.h"
int main(void) {
    printf("%lu %lu %lu %lu %lu %lu\n", (unsigned long)IVSHMEM_GET_SIZE,
           (unsigned long)IVSHMEM_GET_INFO, (unsigned long)IVSHMEM_SET_CACHE,
           (unsigned long)IVSHMEM_RING, (unsigned long)IVSHMEM_WAIT,
           (unsigned long)IVSHMEM_SET_EVENTFD);
    printf("%d %d %zu %zu %zu %zu %zu %zu\n", IVSHMEM_MAX_VECTORS, IVSHMEM_MAX_PEER,
           sizeof(struct ivshmem_ring), offsetof(struct ivshmem_ring, vector),
           sizeof(struct ivshmem_wait), offsetof(struct ivshmem_wait, count),
           sizeof(struct ivshmem_eventfd), offsetof(struct ivshmem_eventfd, fd));
    printf("%d %d %d %d %d %d %u %u %u\n", IVSHMEM_CACHE_WB, IVSHMEM_CACHE_WC, IVSHMEM_CACHE_UC,
           IVSHMEM_CACHE_UC_STRONG, IVSHMEM_CACHE_WT, IVSHMEM_CACHE_WP,
           IVSHMEM_FLAG_DOORBELL, IVSHMEM_FLAG_GRANTED, IVSHMEM_NO_PEER);
    printf("%zu %zu %zu %zu %zu %zu %zu %zu %zu %zu\n", sizeof(struct ivshmem_info),
           offsetof(struct ivshmem_info, size), offsetof(struct ivshmem_info, peer_id),
           offsetof(struct ivshmem_info, vectors), offsetof(struct ivshmem_info, flags),
           offsetof(struct ivshmem_info, cache), offsetof(struct ivshmem_info, pci_name),
           offsetof(struct ivshmem_info, granted), offsetof(struct ivshmem_info, reserved0),
           offsetof(struct ivshmem_info, reserved));
    return 0;
}
"#,
    )
    .unwrap();
    let exe = dir.join("abi");
    let include = concat!(env!("CARGO_MANIFEST_DIR"), "/include");
    let status = Command::new("cc")
        .args(["-Wall", "-Werror", "-I", include, "-o"])
        .arg(&exe)
        .arg(&src)
        .status()
        .expect("a C compiler (cc) is needed for this test");
    assert!(status.success(), "ivshmem.h does not compile");
    let out = Command::new(&exe).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();

    let want = format!(
        "{} {} {} {} {} {}",
        uapi::IVSHMEM_GET_SIZE,
        uapi::IVSHMEM_GET_INFO,
        uapi::IVSHMEM_SET_CACHE,
        uapi::IVSHMEM_RING,
        uapi::IVSHMEM_WAIT,
        uapi::IVSHMEM_SET_EVENTFD
    );
    assert_eq!(lines.next().unwrap(), want, "ioctl numbers");
    let want = format!(
        "{} {} {} {} {} {} {} {}",
        uapi::IVSHMEM_MAX_VECTORS,
        uapi::IVSHMEM_MAX_PEER,
        std::mem::size_of::<uapi::IvshmemRing>(),
        std::mem::offset_of!(uapi::IvshmemRing, vector),
        std::mem::size_of::<uapi::IvshmemWait>(),
        std::mem::offset_of!(uapi::IvshmemWait, count),
        std::mem::size_of::<uapi::IvshmemEventfd>(),
        std::mem::offset_of!(uapi::IvshmemEventfd, fd),
    );
    assert_eq!(
        lines.next().unwrap(),
        want,
        "doorbell constants and structs"
    );
    let want = format!(
        "{} {} {} {} {} {} {} {} {}",
        uapi::IVSHMEM_CACHE_WB,
        uapi::IVSHMEM_CACHE_WC,
        uapi::IVSHMEM_CACHE_UC,
        uapi::IVSHMEM_CACHE_UC_STRONG,
        uapi::IVSHMEM_CACHE_WT,
        uapi::IVSHMEM_CACHE_WP,
        uapi::IVSHMEM_FLAG_DOORBELL,
        uapi::IVSHMEM_FLAG_GRANTED,
        uapi::IVSHMEM_NO_PEER
    );
    assert_eq!(lines.next().unwrap(), want, "constants");
    let want = format!(
        "{} {} {} {} {} {} {} {} {} {}",
        std::mem::size_of::<uapi::IvshmemInfo>(),
        std::mem::offset_of!(uapi::IvshmemInfo, size),
        std::mem::offset_of!(uapi::IvshmemInfo, peer_id),
        std::mem::offset_of!(uapi::IvshmemInfo, vectors),
        std::mem::offset_of!(uapi::IvshmemInfo, flags),
        std::mem::offset_of!(uapi::IvshmemInfo, cache),
        std::mem::offset_of!(uapi::IvshmemInfo, pci_name),
        std::mem::offset_of!(uapi::IvshmemInfo, granted),
        std::mem::offset_of!(uapi::IvshmemInfo, reserved0),
        std::mem::offset_of!(uapi::IvshmemInfo, reserved),
    );
    assert_eq!(lines.next().unwrap(), want, "struct ivshmem_info layout");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ioctl_numbers_are_the_documented_ones() {
    // _IOR(0xB9, 0, __u64) and friends, computed by hand.
    assert_eq!(uapi::IVSHMEM_GET_SIZE, 0x8008_b900);
    assert_eq!(uapi::IVSHMEM_GET_INFO, 0x8040_b901);
    assert_eq!(uapi::IVSHMEM_SET_CACHE, 0x4004_b902);
    assert_eq!(uapi::IVSHMEM_RING, 0x4008_b903);
    assert_eq!(uapi::IVSHMEM_WAIT, 0xc010_b904);
    assert_eq!(uapi::IVSHMEM_SET_EVENTFD, 0x4008_b905);
}

/// The arm64 guests' encoding: `ivshmem.h` compiled by the aarch64 cross compiler, against the
/// arm64 kernel uapi headers (`<asm/ioctl.h>` of libc6-dev-arm64-cross), must give every ioctl
/// number and struct layout that `uapi.rs` gives. Checked at compile time with `_Static_assert`,
/// so nothing has to run on arm64; a run with one value off must fail to compile.
#[test]
fn c_header_matches_rust_abi_on_aarch64() {
    let cc = std::env::var("IVSHMEM_AARCH64_CC").unwrap_or_else(|_| "aarch64-linux-gnu-gcc".into());
    let dir = std::env::temp_dir().join(format!("ivshmem-h-arm64-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let checks = [
        ("IVSHMEM_GET_SIZE", u64::from(uapi::IVSHMEM_GET_SIZE)),
        ("IVSHMEM_GET_INFO", u64::from(uapi::IVSHMEM_GET_INFO)),
        ("IVSHMEM_SET_CACHE", u64::from(uapi::IVSHMEM_SET_CACHE)),
        ("IVSHMEM_RING", u64::from(uapi::IVSHMEM_RING)),
        ("IVSHMEM_WAIT", u64::from(uapi::IVSHMEM_WAIT)),
        ("IVSHMEM_SET_EVENTFD", u64::from(uapi::IVSHMEM_SET_EVENTFD)),
        (
            "sizeof(struct ivshmem_info)",
            size_of::<uapi::IvshmemInfo>() as u64,
        ),
        (
            "offsetof(struct ivshmem_info, pci_name)",
            std::mem::offset_of!(uapi::IvshmemInfo, pci_name) as u64,
        ),
        (
            "sizeof(struct ivshmem_ring)",
            size_of::<uapi::IvshmemRing>() as u64,
        ),
        (
            "sizeof(struct ivshmem_wait)",
            size_of::<uapi::IvshmemWait>() as u64,
        ),
        (
            "offsetof(struct ivshmem_wait, count)",
            std::mem::offset_of!(uapi::IvshmemWait, count) as u64,
        ),
        (
            "sizeof(struct ivshmem_eventfd)",
            size_of::<uapi::IvshmemEventfd>() as u64,
        ),
    ];
    let compile = |name: &str, off_by_one: Option<usize>| {
        let mut src = String::from("#include <stddef.h>\n#include \"ivshmem.h\"\n");
        src.push_str("_Static_assert(__aarch64__ == 1, \"not an aarch64 compiler\");\n");
        for (i, (expr, value)) in checks.iter().enumerate() {
            let value = value + u64::from(off_by_one == Some(i));
            src.push_str(&format!(
                "_Static_assert({expr} == {value}ULL, \"{expr}\");\n"
            ));
        }
        let file = dir.join(name);
        std::fs::write(&file, src).unwrap();
        Command::new(&cc)
            .args(["-std=c11", "-Wall", "-Werror", "-fsyntax-only", "-I"])
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/include"))
            .arg(&file)
            .output()
            .unwrap_or_else(|e| {
                panic!("{cc}: {e}: the aarch64 cross compiler is needed (IVSHMEM_ARCH=arm64 scripts/setup.sh host)")
            })
    };
    let out = compile("abi.c", None);
    assert!(
        out.status.success(),
        "ivshmem.h on aarch64 disagrees with uapi.rs:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = compile("abi-wrong.c", Some(4));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("IVSHMEM_WAIT"),
        "a wrong IVSHMEM_WAIT compiled: the check cannot fail:\n{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
