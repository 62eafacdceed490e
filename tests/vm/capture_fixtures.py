#!/usr/bin/env python3
"""Capture real kernel output from Debian's 6.1 and 6.12 into tests/fixtures/<kernel>/.

Run by hand, as root, when a fixture needs refreshing (not in CI):

    python3 tests/vm/capture_fixtures.py            # both kernels
    python3 tests/vm/capture_fixtures.py -k 6.12    # one

On the host it boots each kernel with vmrun.py and runs this same file inside with
``--guest DIR``; the guest part writes into the results share, and the host part copies
the files into tests/fixtures/<kernel>/ and writes its README.md.  Everything the guest
part does to tracefs is in a group and an instance of its own (``ftslab_<pid>``, as
ftslab names them), removed before it ends; it checks that nothing is left.

The guest part uses no ftslab code: fixtures must be what the kernel said, not what
ftslab thinks it said.
"""
from __future__ import annotations

import argparse
import datetime
import errno
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "guest"))

T = Path("/sys/kernel/tracing")
KMEM_EVENTS = ("kmalloc", "kmem_cache_alloc", "kfree", "kmem_cache_free", "mm_page_alloc",
               "mm_page_free")
FAMILY_RE = re.compile(r"^(__kmalloc|kmalloc|__kmem_cache_alloc|kmem_cache_alloc|__alloc_pages|"
                       r"alloc_pages|__kvmalloc|kvmalloc|kmem_buckets|__kmalloc_cache)"
                       r"[\w.]*$")
BUDGET = 1_000_000  # bytes per kernel, all files


# -- guest side ---------------------------------------------------------------------------

def _write_def(text: str) -> str | None:
    """Append one dynamic event definition; None, or the errno name it was refused with."""
    fd = os.open(T / "kprobe_events", os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, text.encode())
        return None
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    finally:
        os.close(fd)


def _write(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


class _Probes:
    """Probes of one group, removed (disabled first by removing the instance) on exit."""

    def __init__(self, group: str):
        self.group = group
        self.made: list[str] = []

    def add(self, kind: str, event: str, place: str, args: str = "") -> str | None:
        d = f"{kind}:{self.group}/{event} {place} {args}".strip()
        err = _write_def(d)
        if err is None:
            self.made.append(event)
        return err

    def remove_all(self) -> list[str]:
        problems = []
        for ev in reversed(self.made):
            err = _write_def(f"-:{self.group}/{ev}")
            if err:
                problems.append(f"-:{self.group}/{ev}: {err}")
        self.made.clear()
        return problems


def _symbols_kmalloc(syms) -> dict[str, str]:
    """The role -> symbol names of this kernel (probing the kernel, not its version)."""
    pick = lambda *names: next((n for n in names if syms.get(n) == 1), None)
    return {"kmalloc": pick("__kmalloc_noprof", "__kmalloc"),
            "kmalloc_node": pick("__kmalloc_node_noprof", "__kmalloc_node"),
            "kmalloc_cache": pick("__kmalloc_cache_noprof", "kmalloc_trace"),
            "kmem_cache_alloc": pick("kmem_cache_alloc_noprof", "kmem_cache_alloc"),
            "alloc_pages": pick("__alloc_pages_noprof", "__alloc_pages")}


def _workload(n: int = 3000, calls: int = 20) -> None:
    """setxattr with an N-byte value (one kvmalloc(N) each), and a few files and pipes."""
    import tempfile
    fd, path = tempfile.mkstemp()
    os.close(fd)
    for _ in range(calls):
        try:
            os.setxattr(path, "user.ftslab", b"x" * n)
        except OSError:
            pass
        os.close(os.open("/etc/hostname", os.O_RDONLY))
        r, w = os.pipe()
        os.close(r)
        os.close(w)
    os.unlink(path)


def _read_raw_pages(cpu_dir: Path, max_pages: int, page: int = 4096) -> bytes:
    fd = os.open(cpu_dir / "trace_pipe_raw", os.O_RDONLY | os.O_NONBLOCK)
    out = b""
    try:
        while len(out) < max_pages * page:
            try:
                chunk = os.read(fd, page)
            except BlockingIOError:
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(fd)
    return out


def guest_capture(out: Path) -> int:
    from vmfacts import BtfRaw, kallsyms_text_counts, tool
    out.mkdir(parents=True, exist_ok=True)
    log: list[str] = []
    (out / "uname.txt").write_text(f"{os.uname().release}\n{os.uname().version}\n")
    for ev in KMEM_EVENTS:
        shutil.copyfile(T / f"events/kmem/{ev}/format", out / f"kmem-{ev}.format")
    for f in ("header_page", "header_event"):
        shutil.copyfile(T / f"events/{f}", out / f)
    shutil.copyfile(T / "README", out / "tracefs-README.txt")
    shutil.copyfile("/proc/slabinfo", out / "slabinfo.txt")

    # kmalloc-family lines of kallsyms and available_filter_functions
    with open("/proc/kallsyms") as f:
        ks = [l for l in f if len(l.split()) >= 3 and FAMILY_RE.match(l.split()[2])]
    (out / "kallsyms-kmalloc.txt").write_text("".join(ks))
    with open(T / "available_filter_functions") as f:
        aff = [l for l in f if FAMILY_RE.match(l.split()[0])]
    (out / "available_filter_functions-kmalloc.txt").write_text("".join(aff))

    config = Path(f"/boot/config-{os.uname().release}")
    if config.exists():
        keep = re.compile(r"^(# )?CONFIG_(KPROBE|KPROBES|KRETPROBE|FPROBE|PROBE_EVENTS_BTF|"
                          r"DEBUG_INFO_BTF|SLUB|SLAB|MEMCG|MEM_ALLOC_PROFILING|FTRACE|"
                          r"FUNCTION_TRACER|DYNAMIC_FTRACE|SECURITY_LOCKDOWN|LOCK_DOWN|"
                          r"RANDOM_KMALLOC|KASAN|HAVE_FUNCTION_ARG_ACCESS)")
        (out / "config-excerpt.txt").write_text(
            "".join(l for l in config.read_text().splitlines(True) if keep.match(l)))

    pahole = tool("pahole")
    if pahole:
        cp = subprocess.run([pahole, "-C", "kmem_cache", "/sys/kernel/btf/vmlinux"],
                            capture_output=True, text=True, timeout=300)
        (out / "pahole-kmem_cache.txt").write_text(cp.stdout + cp.stderr)
    syms = kallsyms_text_counts()
    role = _symbols_kmalloc(syms)
    if tool("bpftool"):
        btf = BtfRaw.from_file()
        lines = []
        for name in sorted(s for s in syms if FAMILY_RE.match(s) and s in btf.funcs):
            params = btf.prototype(name)
            args = ", ".join(t + ("" if t.endswith("*") else " ") + n for n, t in params)
            lines.append(f"{name}({args})\n")
        (out / "btf-prototypes.txt").write_text(
            "# parameters of each kmalloc-family function in this kernel's BTF "
            "(bpftool btf dump file /sys/kernel/btf/vmlinux format raw)\n" + "".join(lines))
    else:
        log.append("bpftool missing: no btf-prototypes.txt")

    group = f"ftslab_{os.getpid()}"
    inst = T / "instances" / group
    probes = _Probes(group)
    btf_args = "<argname>" in (T / "README").read_text()
    try:
        # -- error_log texts of refused definitions -----------------------------------
        k = role["kmalloc"]
        kc = role["kmem_cache_alloc"]
        bad = [
            ("p", "bad_sym", "no_such_function_ftslab", ""),
            ("p", "bad_reg", k, "size=%zz:u64"),
            ("p", "bad_type", k, "size=%di:u65"),
            ("p", "bad_strtype", k, "name=+96(%di):strin"),
            ("p", "bad_retval", k, "ret=$retval"),
            ("p", "bad_argN", k, "x=$arg0"),
            ("p", "bad_btfarg", k, "size"),
            ("p", "bad_btfarg_name", k, "no_such_arg"),
            ("p", "bad_argstar", k, "$arg*"),
            ("p", "bad.name", k, ""),
            ("p", "bad_offset", f"{k}+3", ""),
            ("p", "bad_deref", k, "x=+0(%zz):u32"),
            ("p", "bad_dup_arg", k, "a=%di a=%si"),
            ("p", "blacklisted", "asm_exc_divide_error", ""),
            ("p", "btf_field", kc, "name=s->name:string"),
            ("p", "btf_bad_field", kc, "x=s->no_such_field"),
            ("p", "dup", k, "size=%di:u64"),
            ("p", "dup", k, "size=%di:u32"),
        ]
        report = []
        for kind, ev, place, args in bad:
            _write(T / "error_log", "")
            d = f"{kind}:{group}/{ev} {place} {args}".strip()
            err = probes.add(kind, ev, place, args)
            text = (T / "error_log").read_text()
            report.append(f"===== {d}\n{'refused: ' + err if err else 'ACCEPTED'}\n{text}\n")
        (out / "error_log.txt").write_text(
            f"# each definition appended alone to kprobe_events (group {group}); the write's "
            "errno, then error_log (cleared before each)\n" + "".join(report))
        log += probes.remove_all()

        # -- kprobe events like ftslab's, their formats, a text and a raw capture ---------
        defs = [
            ("p", "kp_kmalloc", k, "size=%di:u64 gfp=%si:x32 caller=$stack0:symbol"),
            ("p", "kp_kmalloc_cache", role["kmalloc_cache"],
             "name=+0(+96(%di)):string objsize=+28(%di):u32 size=%dx:u64 "
             "caller=$stack0:symbol"),
            ("p", "kp_kmem_cache_alloc", kc,
             "name=+0(+96(%di)):string objsize=+28(%di):u32 gfp=%si:x32 "
             "caller=$stack0:symbol"),
            ("p", "kp_kmalloc_node", role["kmalloc_node"],
             "size=$arg1:u64 comm=$comm:string caller=$stack0:symbol"),
            ("p", "kp_alloc_pages", role["alloc_pages"],
             "gfp=%di:x32 order=%si:u32 caller=$stack0:symbol"),
        ]
        if btf_args:  # BTF-typed args: field names from the prototype
            defs.append(("p", "kp_btf_kmalloc_cache", role["kmalloc_cache"],
                         "name=s->name:string size"))
        for kind, ev, place, args in defs:
            err = probes.add(kind, ev, place, args)
            if err:
                log.append(f"{kind}:{group}/{ev} {place} {args}: refused {err}")
        (out / "kprobe_events.txt").write_text(
            "".join(l + "\n" for l in (T / "kprobe_events").read_text().splitlines()
                    if group in l))
        for ev in probes.made:
            shutil.copyfile(T / f"events/{group}/{ev}/format", out / f"kprobe-{ev}.format")
        _capture(inst, group, probes.made, out / "kprobe-trace.txt", out, KMEM_EVENTS)
        # a kretprobe, alone: return probes turn call sites into the trampoline
        log += probes.remove_all()
        err = probes.add("r", "kp_kmalloc_node_ret", role["kmalloc_node"],
                         "ptr=$retval:x64 caller=$stack0:symbol")
        if err:
            log.append(f"kretprobe refused: {err}")
        else:
            shutil.copyfile(T / f"events/{group}/kp_kmalloc_node_ret/format",
                            out / "kprobe-kp_kmalloc_node_ret.format")
            _capture(inst, group, probes.made, out / "kretprobe-trace.txt", None,
                     ("kmalloc",))
    finally:
        if inst.exists():
            _write(inst / "tracing_on", "0")
            inst.rmdir()
        log += probes.remove_all()
    # the call sites in the captures, symbolizable with this boot's addresses
    text = "".join(p.read_text() for p in out.glob("*trace.txt"))
    seen = set(re.findall(r"(?:caller|call_site)=([A-Za-z_][\w.]*)\+0x", text))
    seen.update(m for m in re.findall(r"\(([A-Za-z_][\w.]*)\+0x", text))
    with open("/proc/kallsyms") as f:
        lines = [l for l in f if len(l.split()) >= 3 and l.split()[2] in seen]
    (out / "kallsyms-callsites.txt").write_text("".join(lines))
    left = [l for l in (T / "kprobe_events").read_text().splitlines() if "ftslab" in l]
    left += [d for d in os.listdir(T / "instances") if "ftslab" in d]
    if left:
        log.append(f"LEFT BEHIND: {left}")
    (out / "capture.log").write_text("".join(l + "\n" for l in log))
    return 1 if left else 0


def _capture(inst: Path, group: str, events: list[str], text_out: Path,
             raw_dir: Path | None, kmem: tuple[str, ...]) -> None:
    """Enable EVENTS and the KMEM tracepoints in a fresh instance, for this process only,
    run the workload, then keep `trace` (text) and, with raw_dir, the raw per-CPU pages."""
    inst.mkdir()
    try:
        _write(inst / "tracing_on", "0")
        _write(inst / "buffer_size_kb", "32")  # a few pages per CPU is all we keep
        _write(inst / "options/overwrite", "0")  # keep the first events, not the last
        _write(inst / "set_event_pid", str(os.getpid()))
        enabled = []
        for ev in events:
            _write(inst / f"events/{group}/{ev}/enable", "1")
            enabled.append(f"events/{group}/{ev}/enable")
        for ev in kmem:
            _write(inst / f"events/kmem/{ev}/enable", "1")
            enabled.append(f"events/kmem/{ev}/enable")
        _write(inst / "trace", "")
        _write(inst / "tracing_on", "1")
        _workload()
        _write(inst / "tracing_on", "0")
        for e in reversed(enabled):
            _write(inst / e, "0")
        lines = (inst / "trace").read_text().splitlines(True)
        text_out.write_text("".join(lines[:600]))
        if raw_dir is not None:
            for cpu in sorted(os.listdir(inst / "per_cpu")):
                data = _read_raw_pages(inst / "per_cpu" / cpu, max_pages=8)
                if data:
                    (raw_dir / f"kprobe-{cpu}.raw").write_bytes(data)
                (raw_dir / f"kprobe-{cpu}.stats").write_text(
                    (inst / "per_cpu" / cpu / "stats").read_text())
    finally:
        _write(inst / "tracing_on", "0")
        inst.rmdir()


# -- host side ----------------------------------------------------------------------------

_DESCRIBE = {
    "uname.txt": "`uname -r` and `uname -v` of the guest",
    "kmem-*.format": "events/kmem/<event>/format of the six kmem tracepoints, verbatim",
    "header_page, header_event": "events/header_page and events/header_event, verbatim "
                                 "(what the raw pages need)",
    "tracefs-README.txt": "the tracefs README (kprobe syntax: `$arg<N>`; on 6.12 also "
                          "`<argname>[->field...]` BTF-typed args)",
    "slabinfo.txt": "/proc/slabinfo at the time (note: its objsize column is "
                    "kmem_cache.size, not .object_size)",
    "kallsyms-kmalloc.txt": "the kmalloc-family lines of /proc/kallsyms (addresses of "
                            "that boot, KASLR)",
    "available_filter_functions-kmalloc.txt": "the kmalloc-family lines of "
                                              "available_filter_functions",
    "config-excerpt.txt": "kprobe/BTF/slab/ftrace lines of /boot/config-<release> from "
                          "the package",
    "pahole-kmem_cache.txt": "`pahole -C kmem_cache /sys/kernel/btf/vmlinux` (dwarves 1.24)",
    "btf-prototypes.txt": "parameters (type, name, in order) of every kmalloc-family "
                          "function in the kernel's BTF, decoded from `bpftool btf dump "
                          "file /sys/kernel/btf/vmlinux format raw`",
    "error_log.txt": "refused (and some accepted) definitions, each written alone with "
                     "O_APPEND to kprobe_events: errno, then the error_log text",
    "kprobe_events.txt": "the kprobe definitions as the kernel lists them back",
    "kprobe-*.format": "events/<group>/<event>/format of each kprobe event",
    "kprobe-trace.txt": "`trace` of an instance with the kprobe events and the six kmem "
                        "tracepoints, pid-filtered to the capturing process, during the "
                        "workload (first 600 lines)",
    "kprobe-cpuN.raw": "per_cpu/cpuN/trace_pipe_raw of the same instance after tracing "
                       "stopped (read after `trace`: same events), up to 8 pages per CPU",
    "kprobe-cpuN.stats": "per_cpu/cpuN/stats of that instance",
    "kretprobe-trace.txt": "`trace` of a kretprobe (`r:`) on the kmalloc_node function "
                           "with kmem:kmalloc alone (return probes turn call sites into "
                           "the rethook trampoline)",
    "kallsyms-callsites.txt": "/proc/kallsyms lines of every function named in the "
                              "captures (to symbolize the raw pages' addresses)",
    "capture.log": "what the capture could not do (empty: everything worked)",
}


def _readme(kernel: str, package: str, files: list[str], others: list[str]) -> str:
    today = datetime.date.today().isoformat()
    groups = []
    for pattern, what in _DESCRIBE.items():
        pats = [p.strip() for p in pattern.split(",")]
        rx = [re.compile("^" + re.escape(p).replace(r"\*", ".*").replace("cpuN", r"cpu\d+")
                         + "$") for p in pats]
        hit = [f for f in files if any(r.match(f) for r in rx)]
        if hit:
            groups.append(f"| `{pattern}` | {what} |")
    tail = ""
    if others:
        tail = ("\nNot made by capture_fixtures.py (see the tests that use them): "
                + ", ".join(f"`{o}`" for o in others) + ".\n")
    return f"""# Debian {kernel} captures

Real output of Debian's `{package}` (`uname -r` in uname.txt), booted under QEMU (TCG,
2 vCPUs, `-cpu max`) by tests/vm/vmrun.py, captured on {today} by

```
python3 tests/vm/capture_fixtures.py -k {kernel}
```

which runs the same file inside the guest as root (`--guest DIR`).  No ftslab code is
used to make these files.  The kprobe events are defined in a group of their own,
`ftslab_<pid>`, with event names `kp_<role>` (as ftslab names them), written with
O_APPEND to kprobe_events; the captures use an instance of the same name with
`buffer_size_kb` 32, `options/overwrite` 0 and `set_event_pid` = the capturing process;
its workload is 20 x (setxattr of a 3000-byte value on a tmpfs file, open+close
/etc/hostname, pipe()+close).  Probes and instance were removed afterwards and checked
gone.  The guest's trace clock is `global` (the kernel switches to it on TCG: "Unstable
clock detected").

| file | what it is |
|---|---|
""" + "\n".join(groups) + "\n" + tail


def host_capture(kernels: list[str]) -> int:
    import vmrun
    repo = vmrun.repo_root()
    rc = 0
    for kernel in kernels:
        cmd = f"{sys.executable} {Path(__file__).resolve()} --guest {vmrun.GUEST_RESULTS}/fixtures"
        res = vmrun.run(kernel, cmd, timeout=600)
        print(res.describe(), file=sys.stderr)
        src = res.results_dir / "fixtures"
        if not res.ok or not src.is_dir():
            print(res.output[-5000:], res.console[-3000:], sep="\n", file=sys.stderr)
            rc = 1
            continue
        dest = repo / "tests" / "fixtures" / kernel
        dest.mkdir(parents=True, exist_ok=True)
        files = sorted(p.name for p in src.iterdir())
        total = sum((src / f).stat().st_size for f in files)
        if total > BUDGET:
            print(f"{kernel}: captures are {total} bytes, over the {BUDGET} budget",
                  file=sys.stderr)
            rc = 1
            continue
        for f in files:
            shutil.copyfile(src / f, dest / f)
        others = sorted(p.name for p in dest.iterdir()
                        if p.name not in files and p.name != "README.md")
        (dest / "README.md").write_text(_readme(kernel, res.package, files, others))
        print(f"{kernel}: {len(files)} files, {total} bytes -> {dest}", file=sys.stderr)
        log = (src / "capture.log").read_text().strip()
        if log:
            print(f"{kernel}: capture.log:\n{log}", file=sys.stderr)
    return rc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-k", "--kernel", action="append", help="6.1 and/or 6.12 (default both)")
    ap.add_argument("--guest", metavar="DIR", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.guest:
        return guest_capture(Path(args.guest))
    return host_capture(args.kernel or ["6.1", "6.12"])


if __name__ == "__main__":
    sys.exit(main())
