"""make install into a guest root (DESTDIR) for the guest kernel's release, then one guest booted
from an image with that root, which loads the module by its PCI alias as a distribution's udev
does: busybox's mdev loads the module on the PCI uevent (modprobe, modules.alias from make
install's depmod) and sets the node's group and mode from the repository's udev rule, translated
at image build time into mdev.conf (busybox cannot run udev rules). Checks the module, the nodes'
owner and mode, who may open them, and that make uninstall removes every file install put.
Release kind only (kinds.py): the debug flavour adds nothing to installing. The guest image is
this scenario's own; the kind's stays as it is."""

import os
import re
import subprocess
import tempfile
from types import SimpleNamespace

import pytest

from helpers import MAIN_SIZE
from kinds import ROOT
from lab import check

ALIAS = "alias pci:v00001AF4d00001110sv*sd*bc*sc*i* ivshmem"


def glob_regex(glob):
    out = ""
    for c in glob:
        out += {"*": ".*", "?": "."}.get(c, c if c in "[]-^" or c.isalnum() else re.escape(c))
    return out


def mdev_conf(rules):
    """The rule's KERNEL match, GROUP and MODE as an mdev.conf line (user root)."""
    lines = []
    with open(rules) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            keys = dict(re.findall(r'(\w+)=?="([^"]*)"', line))
            check(set(keys) == {"KERNEL", "GROUP", "MODE"}, f"cannot translate udev rule: {line}")
            lines.append(f"{glob_regex(keys['KERNEL'])} 0:{keys['GROUP']} {keys['MODE']}")
    check(lines, f"no rule in {rules}")
    return lines


def run(cmd, env):
    """Runs a host command; its output on failure."""
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {r.returncode}:\n{(r.stdout + r.stderr)[-3000:]}", pytrace=False)
    return r.stdout


def write(path, text, mode=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    if mode is not None:
        os.chmod(path, mode)


@pytest.fixture(scope="module")
def installed(vm):
    """make install DESTDIR=<guest root> PREFIX=/usr for the guest kernel's release, mdev.conf
    (from the installed udev rule), users and an rcS that coldplugs; then this scenario's guest
    image with that root laid over it. Attributes: root, kdir, release, moddir, conf (mdev.conf's
    lines), ours (the files added beside make install's), image, env."""
    k = vm.kind
    env = dict(os.environ, **k.selecting_env())
    work = tempfile.mkdtemp(prefix="install-lab-", dir=vm.run_dir)
    root = os.path.join(work, "root")
    try:
        kdir = run(["bash", os.path.join(ROOT, "scripts/setup.sh")], env).strip().splitlines()[-1]
        with open(os.path.join(kdir, "include/config/kernel.release")) as f:
            release = f.read().strip()
        run(["make", "-s", "-C", ROOT, "install", f"DESTDIR={root}", "PREFIX=/usr", f"KDIR={kdir}"], env)
        conf = mdev_conf(os.path.join(root, "etc/udev/rules.d/70-ivshmem.rules"))
        conf.append('$MODALIAS=.* 0:0 0660 @modprobe "$MODALIAS"')
        etc = os.path.join(root, "etc")
        write(os.path.join(etc, "mdev.conf"), "\n".join(conf) + "\n")
        write(os.path.join(etc, "passwd"),
              "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/tmp:/bin/sh\nbob:x:1001:1001::/tmp:/bin/sh\n")
        write(os.path.join(etc, "group"), "root:x:0:\nalice:x:1000:\nbob:x:1001:\nivshmem:x:990:alice\n")
        os.makedirs(os.path.join(etc, "init.d"))
        # Coldplug as udevadm trigger does: mdev listens on netlink, every PCI device announces
        # itself again, mdev runs modprobe for its MODALIAS.
        write(os.path.join(etc, "init.d/rcS"),
              "#!/bin/sh\nmdev -d\nfor u in /sys/bus/pci/devices/*/uevent; do echo add > $u; done\n", 0o755)
        image = os.path.join(vm.run_dir, f"initramfs-install-{k.name}.cpio.gz")
        run(["bash", os.path.join(ROOT, "scripts/initramfs.sh"), image, k.module, k.tools, k.race],
            dict(env, IVSHMEM_IMAGE_OVERLAY=root))
        yield SimpleNamespace(root=root, kdir=kdir, release=release, moddir=os.path.join(root, "lib/modules", release),
                              conf=conf, ours=["etc/mdev.conf", "etc/passwd", "etc/group", "etc/init.d/rcS"],
                              image=image, env=env)
    finally:
        subprocess.run(["rm", "-rf", work], check=False)


@pytest.fixture(scope="module")
def s(vm, installed):
    """One guest booted from the install image (no insmod: mdev loads the module)."""
    vm.image = installed.image
    vm.boot(1, "4M")
    return vm


def test_make_install_puts_the_module_in_updates_its_pci_alias_and_the_udev_rule_and_the_image_builds(installed):
    check(os.path.isfile(os.path.join(installed.moddir, "updates/ivshmem.ko")),
          f"no updates/ivshmem.ko in {installed.moddir}")
    with open(os.path.join(installed.moddir, "modules.alias")) as f:
        alias = f.read()
    check(ALIAS in alias, alias)
    print("mdev.conf from userspace/udev/70-ivshmem.rules: " + installed.conf[0])
    check(os.path.isfile(installed.image), f"no image {installed.image}")


def test_ivshmem_is_loaded_by_its_pci_alias_without_insmod_with_version_0_1_0_from_updates(s, installed):
    _, out = s.sh(1, "for i in $(seq 60); do [ -e /dev/ivshmem1 ] && break; sleep 0.5; done; "
                     "grep '^ivshmem ' /proc/modules; ls /dev/ivshmem*; cat /proc/cmdline")
    check(re.search(r"^ivshmem ", out, re.M) and "/dev/ivshmem0" in out and "/dev/ivshmem1" in out, out)
    _, out = s.sh(1, "modinfo -F version ivshmem; modinfo -F filename ivshmem")
    check(out.split()[:2] == ["0.1.0", f"/lib/modules/{installed.release}/updates/ivshmem.ko"], out)


def wait_for_nodes(s):
    """Waits (up to 30 s) for mdev to have loaded the module and made both nodes."""
    s.sh(1, "for i in $(seq 60); do [ -e /dev/ivshmem1 ] && break; sleep 0.5; done")


def test_the_udev_rule_via_mdev_conf_makes_the_nodes_crw_rw_root_ivshmem(s):
    wait_for_nodes(s)
    _, out = s.sh(1, "stat -c '%n %F %a %U %G' /dev/ivshmem0 /dev/ivshmem1; ls -l /dev/ivshmem0")
    for n in (0, 1):
        check(f"/dev/ivshmem{n} character special file 660 root ivshmem" in out, out)
    check(re.search(r"^crw-rw----\s+1 root\s+ivshmem ", out, re.M), out)


def test_dmesg_is_clean(s):
    wait_for_nodes(s)
    s.dmesg_clean(1)


def test_a_member_of_the_group_ivshmem_opens_the_device_and_others_get_eacces(s):
    wait_for_nodes(s)
    # alice is in the group ivshmem, bob is not.
    _, out = s.sh(1, "su alice -c 'id; /usr/bin/ivshmem info'")
    check("990(ivshmem)" in out and f"size {MAIN_SIZE}" in out, out)
    status, out = s.sh(1, "su bob -c '/usr/bin/ivshmem info'", ok=False)
    check(status != 0 and "ermission denied" in out, f"status {status}: {out}")


def test_make_uninstall_removes_every_file_install_put(installed):
    # Last: it empties the guest root the other tests' image came from (the image stays).
    run(["make", "-s", "-C", ROOT, "uninstall", f"DESTDIR={installed.root}", "PREFIX=/usr", f"KDIR={installed.kdir}"],
        installed.env)
    root = installed.root
    left = sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)
    check(left == sorted(installed.ours), f"left after make uninstall: {left}")
