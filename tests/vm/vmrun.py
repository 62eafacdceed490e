#!/usr/bin/env python3
"""Boot one of Debian's own kernels under QEMU and run one shell command inside it.

The kernel ftslab's developers and CI run has no kprobes; Debian's 6.1 and 6.12 do.
This module lets a test prove ftslab's kprobe path on them, with nothing but Debian
packages and TCG (software) emulation:

* host tools are installed when missing (qemu-system-x86 --no-install-recommends,
  busybox-static, kmod for depmod; dwarves and bpftool for the tests: best effort, or
  required with ``ensure_host_tools(require_optional=True)``, as tests/vm does);
* the kernel package is fetched with ``apt-get download`` and unpacked with
  ``dpkg-deb -x`` into a cache outside the repository (FTSLAB_VM_CACHE, default
  /var/cache/ftslab-vm/<package>; nothing is installed in /boot); only vmlinuz, the
  config and the few modules the guest needs are kept;
* an initramfs of static busybox + the 9p/virtio/overlay modules of that package
  (decompressed here, loaded with busybox ``insmod``) is built once and cached;
* the host's ``/`` is shared read-only over virtio-9p and an overlayfs (upper layer in
  guest RAM) goes on top, so the guest runs the host's own python3, site-packages and
  repository at the same paths, and whatever it writes (``__pycache__``, pytest and
  spool files) stays in guest RAM: the host repository is never written.  Directories
  on other host filesystems that the guest needs (the repository, python) get shares
  of their own, overlaid the same way;
* a second, writable share carries the command in, and its output and exit code out.

The guest mounts its own proc, sys, dev, tracefs (at /sys/kernel/tracing), debugfs,
securityfs and a tmpfs /tmp; the command runs as root, through the host tree's
``/bin/sh``, in a ``chroot`` of the overlay.  Everything has a timeout: a command that
hangs is stopped inside the guest (exit 124), a guest that hangs is killed by the host,
and the result says which.  A warm cache boots to the command in ~3-7 s.

It must not: touch the host's tracefs, install a kernel, or write into the repository.

CLI (``--help`` for all options)::

    python3 tests/vm/vmrun.py -k 6.12 -- 'uname -r; head /sys/kernel/tracing/README'
"""
from __future__ import annotations

import argparse
import dataclasses
import fcntl
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import shlex
import shutil
import site
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["KERNELS", "VMError", "VMResult", "ensure_host_tools", "resolve_package",
           "prepare_kernel", "run", "main"]

#: Cache of unpacked kernels and initramfs images, shared by every checkout on the host.
CACHE = Path(os.environ.get("FTSLAB_VM_CACHE", "/var/cache/ftslab-vm"))

#: Short kernel name -> the Debian binary package name pattern; the highest ABI/patch
#: number apt knows is used.  The *amd64* flavour: Debian's *cloud* flavour lacks 9p.
#: The guest tests take no fact of one upload for granted: what they expect is read in
#: the guest from the booted kernel (tests/vm/guest/vmfacts.py), so the newest package
#: is as good as the one the fixtures (tests/fixtures/<kernel>/) were captured on.
KERNELS = {
    "6.1": re.compile(r"linux-image-6\.1\.0-(\d+)-amd64"),
    "6.12": re.compile(r"linux-image-6\.12\.(\d+)\+deb12-amd64-unsigned"),
}

#: Modules the init script needs; their dependencies are added from modules.dep, and
#: whatever the kernel has built in (modules.builtin) is left out.
WANTED_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")

#: Path of the writable results share inside the guest (the command sees it too, and
#: gets it in $FTSLAB_VM_RESULTS).
GUEST_RESULTS = "/ftslab-vm-results"

#: Host packages: command or file that proves each is there.
_HOST_TOOLS = {"qemu-system-x86": "qemu-system-x86_64", "busybox-static": "/bin/busybox",
               "kmod": "depmod"}
_OPTIONAL_TOOLS = {"dwarves": "pahole", "bpftool": "bpftool"}

# Debian's bpftool lives in /usr/sbin; root's PATH may or may not have it.
_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class VMError(Exception):
    """The harness itself could not do its job (tools, download, QEMU would not start).
    A guest that boots and fails is not a VMError: see VMResult."""


@dataclasses.dataclass(frozen=True)
class VMResult:
    kernel: str
    """Short kernel name ("6.1", "6.12")."""
    package: str
    """The Debian package that was booted."""
    exit_code: int | None
    """The command's exit status in the guest; None if it never finished (the guest did
    not boot, or was killed)."""
    booted: bool
    """The init script reached the point of running the command."""
    timed_out: bool
    """The host killed QEMU after ``timeout`` seconds."""
    seconds: float
    """Wall time of the QEMU process, boot to power-off (s)."""
    console: str
    """Serial console: kernel messages and the init script's ``ftslab-vm:`` lines."""
    output: str
    """The command's stdout and stderr, interleaved."""
    results_dir: Path
    """Host directory of the writable share (the guest's $FTSLAB_VM_RESULTS)."""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def describe(self) -> str:
        """One line on what happened, for messages."""
        if self.timed_out:
            what = "guest hung: QEMU killed by the host timeout"
        elif not self.booted:
            what = "guest did not boot (init never ran the command)"
        elif self.exit_code is None:
            what = "guest stopped without reporting an exit code"
        elif self.exit_code == 124:
            what = "command stopped by the in-guest timeout (exit 124)"
        else:
            what = f"command exited {self.exit_code}"
        return f"{self.package} ({self.kernel}): {what} after {self.seconds:.1f}s"


# One host thread runs every vCPU (thread=single).  With a thread per vCPU
# (thread=multi) the guest kernel has died, under load, with "Oops: int3" in a function
# whose static key it had just switched (kmem_cache_free+0xaf while a kmem tracepoint was
# being enabled, 6.12): another vCPU still ran the translation of the half-patched code.
# Cross-modifying code is only seen at once by every vCPU when they share a thread.
# FTSLAB_VM_TCG_THREAD=multi brings the faster mode back.
TCG_THREAD = os.environ.get("FTSLAB_VM_TCG_THREAD", "single")


def _log(msg: str) -> None:
    print(f"vmrun: {msg}", file=sys.stderr, flush=True)


# -- host tools ------------------------------------------------------------------------

def _is_static_elf(path: str) -> bool:
    """True for an ELF executable without a program interpreter (PT_INTERP): the guest
    initramfs has no libc, so busybox there must be static."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit only (amd64 host)
                return False
            phoff, = struct.unpack_from("<Q", head, 32)
            phentsize, phnum = struct.unpack_from("<HH", head, 54)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum))


def _present(probe: str) -> bool:
    if probe.startswith("/"):
        return _is_static_elf(probe) if probe == "/bin/busybox" else os.path.exists(probe)
    return shutil.which(probe, path=os.environ.get("PATH", "") + ":" + _SYSTEM_PATH) is not None


def _apt(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    return subprocess.run(["apt-get", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def _apt_install(pkgs: list[str]) -> subprocess.CompletedProcess:
    cp = _apt("install", "-y", "-q", "--no-install-recommends", *pkgs)
    if cp.returncode != 0:  # stale or missing package lists (a fresh container)
        _apt("update", "-q")
        cp = _apt("install", "-y", "-q", "--no-install-recommends", *pkgs)
    return cp


def ensure_host_tools(optional: bool = True, require_optional: bool = False) -> None:
    """Install QEMU, static busybox and depmod when missing, and pahole/bpftool (the
    guest tests' independent readers of the guest's BTF): best effort, unless
    ``require_optional``, where one that cannot be installed is a VMError."""
    missing = [pkg for pkg, probe in _HOST_TOOLS.items() if not _present(probe)]
    extra = [pkg for pkg, probe in _OPTIONAL_TOOLS.items()
             if (optional or require_optional) and not _present(probe)]
    if not missing and not extra:
        return
    if os.geteuid() != 0:
        need = missing + (extra if require_optional else [])
        if need:
            raise VMError(f"missing host packages {need} and not root to install them "
                          f"(apt-get install --no-install-recommends {' '.join(need)})")
        return
    if missing:
        _log(f"installing {' '.join(missing)}")
        cp = _apt_install(missing)
        if cp.returncode != 0:
            raise VMError(f"apt-get install {' '.join(missing)} failed:\n{cp.stderr[-2000:]}")
    if extra:
        _log(f"installing {' '.join(extra)}" + ("" if require_optional else " (optional)"))
        for pkg in extra:  # one at a time: one missing package must not cost the others
            cp = _apt_install([pkg])
            if cp.returncode != 0:
                if require_optional:
                    raise VMError(f"apt-get install {pkg} failed (the guest tests compare "
                                  f"ftslab with it):\n{cp.stderr[-2000:]}")
                _log(f"optional package {pkg} not installed: {cp.stderr.strip()[-300:]}")


# -- kernel package --------------------------------------------------------------------

def _pattern(kernel: str) -> re.Pattern:
    try:
        return KERNELS[kernel]
    except KeyError:
        raise VMError(f"unknown kernel {kernel!r}: choose from {', '.join(KERNELS)}") from None


def _newest(names, pattern: re.Pattern) -> str | None:
    found = [(int(m.group(1)), n) for n in names if (m := pattern.fullmatch(n))]
    return max(found)[1] if found else None


def resolve_package(kernel: str) -> str:
    """The newest Debian package for KERNEL that apt knows; without package lists
    (offline, no apt-get update), the newest one already in the cache."""
    pattern = _pattern(kernel)
    prefix = pattern.pattern.split("\\", 1)[0]  # "linux-image-6"
    for attempt in range(2):
        cp = subprocess.run(["apt-cache", "pkgnames", prefix], capture_output=True, text=True,
                            timeout=120)
        pkg = _newest(cp.stdout.split(), pattern)
        if pkg:
            return pkg
        if attempt == 0 and os.geteuid() == 0:
            _log("no kernel package in apt's lists: apt-get update")
            _apt("update", "-q")
    cached = _newest((p.name for p in CACHE.glob("linux-image-*") if (p / "ready").exists()),
                     pattern)
    if cached:
        _log(f"apt knows no {kernel} kernel package; using cached {cached}")
        return cached
    raise VMError(f"no package matching {pattern.pattern} in apt's lists or in {CACHE}")


@dataclasses.dataclass(frozen=True)
class Kernel:
    """A kernel ready to boot (all files in the cache)."""
    name: str
    package: str
    release: str
    """`uname -r` of the guest."""
    vmlinuz: Path
    initramfs: Path
    config: Path


def _modules_root(tree: Path) -> Path:
    """lib/modules/<release> of an unpacked package, with modules.dep made by depmod
    (Debian packages do not ship it: the postinst runs depmod)."""
    # depmod -b BASE reads BASE/lib/modules/<release>
    for base in (tree, tree / "usr"):
        mods = base / "lib/modules"
        releases = [p for p in mods.iterdir() if (p / "modules.builtin").exists()] \
            if mods.is_dir() else []
        if len(releases) == 1:
            depmod = shutil.which("depmod", path=_SYSTEM_PATH)
            if not depmod:
                raise VMError("depmod (package kmod) is missing")
            cp = subprocess.run([depmod, "-b", str(base), releases[0].name],
                                capture_output=True, text=True, timeout=300)
            if cp.returncode != 0:
                raise VMError(f"depmod failed: {cp.stderr[-1000:]}")
            return releases[0]
    raise VMError(f"no lib/modules/<release>/modules.builtin in the unpacked package {tree}")


def _modname(path: str) -> str:
    return re.sub(r"\.ko(\.(xz|zst|gz))?$", "", os.path.basename(path)).replace("-", "_")


def _module_load_order(moddir: Path, wanted) -> list[str]:
    """Paths (relative to moddir) of the wanted modules and their dependencies, each
    after everything it depends on."""
    deps: dict[str, tuple[str, list[str]]] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        if ":" in line:
            path, rest = line.split(":", 1)
            deps[_modname(path)] = (path, rest.split())
    builtin = {_modname(p) for p in (moddir / "modules.builtin").read_text().split()}
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        if name in builtin:
            return
        if name not in deps:
            raise VMError(f"module {name} is neither in modules.dep nor built in ({moddir})")
        path, needs = deps[name]
        for dep in needs:
            visit(_modname(dep))
        order.append(path)

    for name in wanted:
        visit(name)
    return order


def _decompressed(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(data)
    if path.suffix == ".gz":
        return gzip.decompress(data)
    if path.suffix == ".zst":
        return subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=True,
                              timeout=60).stdout
    return data


def _unpack_kernel(pkg: str, dest: Path) -> dict:
    """Download PKG, keep its vmlinuz, config and the modules we need (decompressed: the
    guest loads them with busybox insmod), drop the rest."""
    work = Path(tempfile.mkdtemp(prefix=f".{pkg}.", dir=CACHE))
    try:
        _log(f"downloading {pkg}")
        cp = subprocess.run(["apt-get", "download", "-q", pkg], cwd=work, capture_output=True,
                            text=True, timeout=1800)
        if cp.returncode != 0:
            raise VMError(f"apt-get download {pkg} failed:\n{cp.stderr[-2000:]}")
        deb, = work.glob("*.deb")
        _log(f"unpacking {deb.name}")
        tree = work / "tree"
        cp = subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], capture_output=True,
                            text=True, timeout=900)
        if cp.returncode != 0:
            raise VMError(f"dpkg-deb -x {deb.name} failed: {cp.stderr[-1000:]}")
        moddir = _modules_root(tree)
        release = moddir.name
        boot = tree / "boot"
        (dest / "modules").mkdir(parents=True)
        shutil.copyfile(boot / f"vmlinuz-{release}", dest / "vmlinuz")
        shutil.copyfile(boot / f"config-{release}", dest / "config")
        names = []
        for rel in _module_load_order(moddir, WANTED_MODULES):
            name = _modname(rel) + ".ko"
            (dest / "modules" / name).write_bytes(_decompressed(moddir / rel))
            names.append(name)
        return {"package": pkg, "release": release, "modules": names,
                "wanted": list(WANTED_MODULES)}
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- initramfs -------------------------------------------------------------------------

# PID 1 of the guest (busybox ash).  Per-run input comes from the results share:
# `hide` (host mount points to hide), `mounts` (extra read-only host directories),
# `timeout` and `cmd.sh` (the command); output goes back there: `output.log`,
# `exit-code`, `dmesg.log`.  Any failure before the command powers off at once, with a
# `ftslab-vm: FAILED` line on the console.
_INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
say() { echo "ftslab-vm: [$(cut -d" " -f1 /proc/uptime 2>/dev/null)] $*"; }
off() { sync; poweroff -f; sleep 10; echo o > /proc/sysrq-trigger; }
die() { say "FAILED: $*"; off; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
for m in $(cat /modules.order); do insmod /modules/$m || die "insmod $m"; done
P9=trans=virtio,version=9p2000.L,msize=512000
mkdir -p /results /lower /rw /newroot
mount -t 9p -o $P9 results /results || die "mount the results share"
# the upper layers of every overlay live in guest RAM
mount -t tmpfs -o mode=0755 rw /rw || die "tmpfs"
layer() {  # layer TAG WHERE: read-only 9p share TAG with a writable overlay at WHERE
    mkdir -p /lower/$1 /rw/$1/upper /rw/$1/work $2
    mount -t 9p -o $P9,ro,cache=loose $1 /lower/$1 || die "mount 9p $1"
    mount -t overlay -o lowerdir=/lower/$1,upperdir=/rw/$1/upper,workdir=/rw/$1/work \
        overlay-$1 $2 || die "overlay $1 at $2"
}
# The host's other mount points (/proc, /sys, /dev...) cannot be looked up through the
# share (multidevs=forbid: ENODEV), and the overlay would fail on them: a whiteout
# (char device 0/0) in the upper layer hides each, so the guest can mkdir and mount there.
while read -r p; do
    mkdir -p "/rw/hostroot/upper${p%/*}" && mknod "/rw/hostroot/upper$p" c 0 0 || die "hide $p"
done < /results/hide
layer hostroot /newroot
while read -r tag path; do layer $tag /newroot$path; done < /results/mounts
R=/newroot
mkdir -p $R/proc $R/sys $R/dev $R/tmp $R/run
mount -t proc proc $R/proc || die "proc"
mount -t sysfs sysfs $R/sys || die "sysfs"
mount -t tracefs nodev $R/sys/kernel/tracing || die "tracefs"
# as on a Debian system: kprobes/blacklist (debugfs), the lockdown file (securityfs)
mount -t debugfs nodev $R/sys/kernel/debug
mount -t securityfs nodev $R/sys/kernel/security
mount -t devtmpfs devtmpfs $R/dev || die "devtmpfs"
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts devpts $R/dev/pts
mount -t tmpfs tmpfs $R/dev/shm
mount -t tmpfs -o mode=1777 tmpfs $R/tmp || die "tmp"
mount -t tmpfs -o mode=0755 tmpfs $R/run
# host directories under the guest's own /tmp and /run (a checkout in /tmp): shared again
while read -r tag path; do layer $tag $R$path; done < /results/late-mounts
mkdir -p $R/boot $R""" + GUEST_RESULTS + r"""
# Debian's kernel config where Debian puts it (there is no /proc/config.gz)
cp /config $R/boot/config-$(uname -r)
mount -o bind /results $R""" + GUEST_RESULTS + r""" || die "bind results"
ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up
hostname ftslab-vm
T=$(cat /results/timeout)
say "guest ready: $(uname -r), running the command (in-guest timeout ${T}s)"
cd /
timeout -s KILL $T chroot $R /bin/sh """ + GUEST_RESULTS + r"""/cmd.sh \
    < /dev/null > /results/output.log 2>&1
rc=$?
# killed (137) before cmd.sh could mark itself done: the timeout; say 124 as coreutils
[ $rc -eq 137 ] && grep -q '^running$' /results/cmd-status 2>/dev/null && rc=124
dmesg > /results/dmesg.log 2>/dev/null
echo $rc > /results/exit-code
say "command exit status $rc"
off
"""

_READY = "] guest ready: "  # the init script's line just before it runs the command

_INIT_WRAPPER = """\
# written by vmrun.py on the host: the command, its environment and working directory
{exports}
cd {cwd} || exit 125
echo running > {results}/cmd-status
# the command, in a subshell so that `exit` in it still reaches the marker below
( {command}
)
rc=$?
echo done > {results}/cmd-status
exit $rc
"""


def _newc(entries) -> bytes:
    """An uncompressed cpio archive in the kernel's "newc" format.
    entries: (path, mode, data bytes or None, rdev major, rdev minor)."""
    out = io.BytesIO()

    def pad(n: int) -> None:
        out.write(b"\0" * (-n % 4))

    for ino, (name, mode, data, rmaj, rmin) in enumerate([*entries, ("TRAILER!!!", 0, None,
                                                                      0, 0)], 1):
        data = data or b""
        bname = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, rmaj, rmin, len(bname), 0)
        out.write(b"070701" + b"".join(b"%08X" % f for f in fields) + bname)
        pad(110 + len(bname))
        out.write(data)
        pad(len(data))
    return out.getvalue()


def _build_initramfs(dest: Path, meta: dict) -> Path:
    """The initramfs for one kernel: cached under a name that changes with the init
    script, busybox and the module list."""
    busybox = Path("/bin/busybox").read_bytes()
    modules = [(m, (dest / "modules" / m).read_bytes()) for m in meta["modules"]]
    key = hashlib.sha256(_INIT.encode() + busybox + json.dumps(meta["modules"]).encode())
    path = dest / f"initramfs-{key.hexdigest()[:16]}.cpio"
    if path.exists():
        return path
    d, x, f = 0o040755, 0o100755, 0o100644
    entries = [("bin", d, None, 0, 0), ("dev", d, None, 0, 0),
               ("dev/console", 0o020600, None, 5, 1), ("proc", d, None, 0, 0),
               ("sys", d, None, 0, 0), ("modules", d, None, 0, 0),
               ("bin/busybox", x, busybox, 0, 0), ("init", x, _INIT.encode(), 0, 0),
               ("config", f, (dest / "config").read_bytes(), 0, 0),
               ("modules.order", f, "\n".join(meta["modules"]).encode() + b"\n", 0, 0)]
    entries += [(f"modules/{m}", f, data, 0, 0) for m, data in modules]
    for old in dest.glob("initramfs-*.cpio"):
        old.unlink()
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(_newc(entries))
    tmp.rename(path)
    return path


def prepare_kernel(kernel: str, package: str | None = None) -> Kernel:
    """Host tools, the kernel package and the initramfs: from the cache when there."""
    ensure_host_tools()
    pkg = package or resolve_package(kernel)
    CACHE.mkdir(parents=True, exist_ok=True)
    dest = CACHE / pkg
    with open(CACHE / f".lock-{pkg}", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test runs at once: one downloads
        meta = None
        if (dest / "ready").exists():
            meta = json.loads((dest / "ready").read_text())
            if meta.get("wanted") != list(WANTED_MODULES):
                meta = None  # this file now wants other modules: unpack again
        if meta is None:
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir(parents=True)
            meta = _unpack_kernel(pkg, dest)
            (dest / "ready").write_text(json.dumps(meta, indent=1) + "\n")
        initramfs = _build_initramfs(dest, meta)
    return Kernel(kernel, pkg, meta["release"], dest / "vmlinuz", initramfs, dest / "config")


# -- running ---------------------------------------------------------------------------

def repo_root() -> Path:
    """The checkout this file belongs to (tests/vm/vmrun.py -> the repository)."""
    return Path(__file__).resolve().parent.parent.parent


def _mount_point(path: Path) -> Path:
    dev = path.stat().st_dev
    while path != path.parent and path.parent.stat().st_dev == dev:
        path = path.parent
    return path


def _extra_shares(paths) -> list[Path]:
    """Mount points (other than /) the guest needs: 9p is exported with
    multidevs=forbid, so the host / share stops at every other filesystem.  The repo,
    python and its site-packages must be visible at their host paths."""
    root_dev = os.stat("/").st_dev
    out: list[Path] = []
    for p in paths:
        p = Path(p).resolve()
        if p.exists() and p.stat().st_dev != root_dev:
            mp = _mount_point(p)
            if mp not in out:
                out.append(mp)
    return out


def _unescape(path: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def _host_mount_points() -> list[str]:
    """The host's mount points other than /, outermost only (what hides /sys hides
    /sys/kernel/tracing): the guest hides them in its root overlay (see _INIT)."""
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = _unescape(line.split()[4])
            if mp != "/" and "\n" not in mp:
                points.append(mp.rstrip("/"))
    out: list[str] = []
    for mp in sorted(set(points), key=len):
        if not any(mp.startswith(top + "/") for top in out):
            out.append(mp)
    return out


def _guest_path() -> str:
    # the host's python first, so `python3` in the guest is the one with ftslab installed
    first = os.path.dirname(sys.executable)
    return first + ":" + _SYSTEM_PATH


def run(kernel: str, command: str, *, timeout: float = 900, env: dict | None = None,
        cwd: str | os.PathLike | None = None, results_dir: str | os.PathLike | None = None,
        memory_mb: int = 2048, cpus: int = 2, package: str | None = None,
        extra_paths=()) -> VMResult:
    """Boot KERNEL ("6.1", "6.12"), run COMMAND (a /bin/sh command line) as root in the
    guest and power off.  cwd defaults to the repository root; env is added to a clean
    environment (PATH with the host python's directory first, HOME=/root, LANG=C.UTF-8,
    PYTHONPATH=the repository, PYTHONDONTWRITEBYTECODE=1, FTSLAB_VM_RESULTS,
    FTSLAB_VM_KERNEL).  The command gets ``timeout`` minus
    a boot allowance inside the guest; the host kills QEMU at ``timeout``.
    Raises VMError only when the harness cannot start the guest."""
    k = prepare_kernel(kernel, package)
    results = Path(results_dir) if results_dir else Path(tempfile.mkdtemp(prefix="ftslab-vm-"))
    results.mkdir(parents=True, exist_ok=True)
    for stale in ("exit-code", "output.log", "console.log", "cmd-status", "dmesg.log"):
        (results / stale).unlink(missing_ok=True)
    cwd = Path(cwd) if cwd else repo_root()
    shares = _extra_shares([cwd, repo_root(), sys.prefix, sys.base_prefix,
                            *site.getsitepackages(), *extra_paths])
    (results / "mounts").write_text("".join(f"ro{i} {p}\n" for i, p in enumerate(shares)))
    # the guest mounts fresh tmpfs on /tmp and /run: a checkout (or cwd) below them would
    # be hidden, so it gets a share of its own, mounted after those
    late: list[Path] = []
    for p in (repo_root(), cwd):
        p = Path(p).resolve()
        if (any(str(p).startswith(d + "/") for d in ("/tmp", "/run", "/dev/shm"))
                and p not in late and not any(p.is_relative_to(x) for x in late)):
            late.append(p)
    (results / "late-mounts").write_text("".join(f"late{i} {p}\n"
                                                 for i, p in enumerate(late)))
    (results / "hide").write_text("".join(f"{p}\n" for p in _host_mount_points()))
    # PYTHONPATH: this checkout's ftslab, whatever an editable install points at
    guest_env = {"PATH": _guest_path(), "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb",
                 "PYTHONPATH": str(repo_root()), "PYTHONDONTWRITEBYTECODE": "1",
                 "FTSLAB_VM_RESULTS": GUEST_RESULTS, "FTSLAB_VM_KERNEL": kernel,
                 **(env or {})}
    exports = "\n".join(f"export {k}={shlex.quote(str(v))}" for k, v in guest_env.items())
    (results / "cmd.sh").write_text(_INIT_WRAPPER.format(
        exports=exports, cwd=shlex.quote(str(cwd)), command=command, results=GUEST_RESULTS))
    # boot takes ~7 s under TCG; keep 30 s for it and for powering off
    (results / "timeout").write_text(f"{max(10, int(timeout) - 30)}\n")
    console = results / "console.log"
    argv = ["qemu-system-x86_64", "-accel", f"tcg,thread={TCG_THREAD}", "-cpu", "max",
            "-smp", str(cpus), "-m", str(memory_mb), "-nodefaults", "-no-user-config",
            "-display", "none", "-no-reboot",
            "-chardev", f"file,id=con,path={console}", "-serial", "chardev:con",
            "-kernel", str(k.vmlinuz), "-initrd", str(k.initramfs),
            # mitigations=off: nothing to protect in a throwaway guest, and TCG is slow;
            # loglevel=5: warnings reach the console with their backtraces
            "-append", "console=ttyS0 rdinit=/init panic=-1 loglevel=5 mitigations=off",
            "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,"
                       "multidevs=forbid",
            "-virtfs", f"local,path={results},mount_tag=results,security_model=none,"
                       "multidevs=forbid"]
    for i, p in enumerate(shares):
        argv += ["-virtfs", f"local,path={p},mount_tag=ro{i},security_model=none,"
                            "readonly=on,multidevs=forbid"]
    for i, p in enumerate(late):
        argv += ["-virtfs", f"local,path={p},mount_tag=late{i},security_model=none,"
                            "readonly=on,multidevs=forbid"]
    t0 = time.monotonic()
    try:
        qemu = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
    except OSError as exc:
        raise VMError(f"cannot start QEMU: {exc}") from None
    timed_out = False
    try:
        qemu_out, _ = qemu.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        qemu.kill()
        qemu_out, _ = qemu.communicate()
    finally:
        if qemu.poll() is None:  # interrupted (Ctrl-C): never leave a QEMU behind
            qemu.kill()
            qemu.wait()
    seconds = time.monotonic() - t0
    text = console.read_text(errors="replace") if console.exists() else ""
    if qemu_out.strip():
        text += "\n[qemu] " + qemu_out.decode(errors="replace")
    if timed_out:
        text += f"\n[vmrun] guest still running after {timeout:.0f}s: QEMU killed\n"
    if not timed_out and qemu.returncode != 0 and _READY not in text:
        raise VMError(f"QEMU exited {qemu.returncode} before the guest was up:\n{text[-3000:]}")
    code = None
    try:
        code = int((results / "exit-code").read_text())
    except (OSError, ValueError):
        pass
    output = (results / "output.log").read_text(errors="replace") \
        if (results / "output.log").exists() else ""
    return VMResult(kernel=kernel, package=k.package, exit_code=code,
                    booted=_READY in text, timed_out=timed_out,
                    seconds=seconds, console=text, output=output, results_dir=results)


# -- CLI -------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Boot a Debian kernel under QEMU (TCG) and run one shell command in it "
                    "as root, with the host's / (read-only, overlaid) and tracefs mounted.",
        epilog="Exit status: the command's; 124 if it timed out in the guest; 125 if the "
               "guest never ran it or hung; 126 on a harness error.  Example:\n"
               "  python3 tests/vm/vmrun.py -k 6.12 -- 'python3 -m ftslab doctor'")
    ap.add_argument("-k", "--kernel", choices=sorted(KERNELS), default="6.12")
    ap.add_argument("--package", help="exact Debian package instead of the newest")
    ap.add_argument("-t", "--timeout", type=float, default=900, help="seconds (default 900)")
    ap.add_argument("-e", "--env", action="append", default=[], metavar="NAME=VALUE",
                    help="environment for the command (repeatable)")
    ap.add_argument("-r", "--results", help="results directory (default: a new temp dir)")
    ap.add_argument("--prepare", action="store_true",
                    help="only install tools, download and build the initramfs")
    ap.add_argument("--console", action="store_true", help="print the whole console log")
    ap.add_argument("command", nargs="*", help="shell command line (default: uname -a)")
    args = ap.parse_args(argv)
    try:
        if args.prepare:
            k = prepare_kernel(args.kernel, args.package)
            print(f"{k.package}: {k.release}\n  {k.vmlinuz}\n  {k.initramfs}")
            return 0
        env = dict(e.split("=", 1) for e in args.env)
        res = run(args.kernel, " ".join(args.command) or "uname -a", timeout=args.timeout,
                  env=env, results_dir=args.results, package=args.package)
    except VMError as exc:
        _log(f"error: {exc}")
        return 126
    sys.stdout.write(res.output)
    if args.console or not res.ok:
        sys.stderr.write(res.console if args.console else res.console[-4000:])
    _log(res.describe())
    _log(f"results in {res.results_dir}")
    return res.exit_code if res.exit_code is not None else 125


if __name__ == "__main__":
    sys.exit(main())
