#!/usr/bin/env python3
"""Capture real hist-trigger output from Debian's 6.1 and 6.12 into
tests/fixtures/<kernel>/hist/ (what tests/trace/test_histtext.py parses).

Run by hand, as root, when the fixtures need refreshing (not in CI):

    python3 tests/vm/capture_hist.py            # both kernels
    python3 tests/vm/capture_hist.py -k 6.12    # one

On the host it boots each kernel with vmrun.py and runs this same file inside with
``--guest DIR``; the guest part writes into the results share, and the host part copies
the files into tests/fixtures/<kernel>/hist/ and writes a README.md there.  The guest part
works in an instance of its own (``ftslab_<pid>_hist``), removes every trigger it wrote
(appending ``!hist:...``) and the instance, and checks that nothing is left.  It uses no
ftslab code: fixtures are what the kernel said.
"""
from __future__ import annotations

import argparse
import datetime
import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
T = Path("/sys/kernel/tracing")

#: (file stem, system, event, trigger): each file holds the event's ``hist`` file, read
#: after the workload, with every trigger of that event.
TRIGGERS = (
    ("kmalloc", "kmem", "kmalloc", "hist:keys=call_site.sym-offset:vals=hitcount,bytes_alloc"),
    ("kmalloc", "kmem", "kmalloc",
     "hist:keys=common_pid.execname:vals=hitcount,bytes_alloc,bytes_req"),
    ("kmalloc", "kmem", "kmalloc", "hist:keys=bytes_alloc:vals=hitcount,bytes_req"),
    ("kmem_cache_alloc", "kmem", "kmem_cache_alloc",
     "hist:keys=call_site.sym,bytes_alloc:vals=hitcount"),
    ("mm_page_alloc", "kmem", "mm_page_alloc", "hist:keys=order:vals=hitcount"),
    ("sched_switch", "sched", "sched_switch", "hist:keys=next_comm:vals=hitcount"),
    # a table too small for its keys: every pointer is a new key (128 is the least size)
    ("kfree-full", "kmem", "kfree", "hist:keys=ptr:vals=hitcount:size=128"),
)

BAD_TRIGGER = ("kmem", "kmalloc", "hist:keys=no_such_field:vals=hitcount")


def _append(path: Path, text: str) -> str | None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, text.encode())
        return None
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    finally:
        os.close(fd)


def guest_capture(out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    log: list[str] = []
    u = os.uname()
    (out / "uname.txt").write_text(f"{u.release}\n{u.version}\n")
    inst = T / "instances" / f"ftslab_{os.getpid()}_hist"
    os.mkdir(inst)
    written: list[tuple[Path, str]] = []
    try:
        for _stem, system, event, trig in TRIGGERS:
            f = inst / "events" / system / event / "trigger"
            err = _append(f, trig)
            log.append(f"{system}:{event}: {trig!r}: {err or 'ok'}")
            if err is None:
                written.append((f, trig))
        system, event, trig = BAD_TRIGGER
        err = _append(inst / "events" / system / event / "trigger", trig)
        log.append(f"{system}:{event}: {trig!r}: {err or 'ok'} (refused on purpose)")
        (out / "error_log.txt").write_text((inst / "error_log").read_text())
        (out / "kmalloc.trigger").write_text(
            (inst / "events/kmem/kmalloc/trigger").read_text())
        # the workload: a few short processes (exec, fork, files, pipes)
        subprocess.run("ls -l /etc /usr/lib >/dev/null; cat /etc/passwd >/dev/null; "
                       "sh -c 'echo x | cat >/dev/null'", shell=True, check=False)
        seen = set()
        for stem, system, event, _trig in TRIGGERS:
            if stem in seen:
                continue
            seen.add(stem)
            (out / f"{stem}.hist").write_text(
                (inst / "events" / system / event / "hist").read_text())
    finally:
        for f, trig in reversed(written):
            err = _append(f, "!" + trig)
            if err:
                log.append(f"removing {trig!r}: {err}")
        left = [f"{f}: {line}" for f, _t in written
                for line in f.read_text().splitlines() if line.startswith("hist:")]
        os.rmdir(inst)
    if left:
        log.append("left after removal: " + "; ".join(left))
    if inst.exists():
        log.append(f"{inst} still exists")
    (out / "capture.log").write_text("\n".join(log) + "\n")
    return 1 if left or inst.exists() else 0


def _readme(kernel: str, package: str, files: list[str]) -> str:
    trig = "\n".join(f"| `{s}.hist` | {sy}:{ev} | `{t}` |" for s, sy, ev, t in TRIGGERS)
    return f"""# hist-trigger captures ({kernel})

Real output of Debian's `{package}` (`uname -r` in uname.txt), booted under QEMU (TCG)
by tests/vm/vmrun.py, captured on {datetime.date.today().isoformat()} by

```
python3 tests/vm/capture_hist.py -k {kernel}
```

which runs the same file inside the guest as root.  No ftslab code is used.  The triggers
were appended (O_APPEND) to `events/<system>/<event>/trigger` of an instance of its own
(`ftslab_<pid>_hist`); nothing was enabled into the ring buffer.  Workload:
`ls -l /etc /usr/lib; cat /etc/passwd; sh -c 'echo x | cat'`.  Each `.hist` file is that
event's `hist` file, verbatim (an event with several triggers prints one histogram after
the other).  Afterwards every trigger was removed by appending `!` + its text, the instance
removed with rmdir, and both checked gone (capture.log).

| file | event | trigger |
|---|---|---|
{trig}
| `kmalloc.trigger` | kmem:kmalloc | its `trigger` file with the three triggers above |
| `error_log.txt` | kmem:kmalloc | the instance's error_log after `{BAD_TRIGGER[2]}` was refused |

Files: {", ".join(f"`{f}`" for f in files)}.
"""


def host_capture(kernels: list[str]) -> int:
    sys.path.insert(0, str(HERE))
    import vmrun
    repo = vmrun.repo_root()
    rc = 0
    for kernel in kernels:
        cmd = f"{sys.executable} {Path(__file__).resolve()} --guest {vmrun.GUEST_RESULTS}/hist"
        res = vmrun.run(kernel, cmd, timeout=600)
        print(res.describe(), file=sys.stderr)
        src = res.results_dir / "hist"
        if not res.ok or not src.is_dir():
            print(res.output[-5000:], res.console[-3000:], sep="\n", file=sys.stderr)
            rc = 1
            continue
        dest = repo / "tests" / "fixtures" / kernel / "hist"
        dest.mkdir(parents=True, exist_ok=True)
        files = sorted(p.name for p in src.iterdir())
        for f in files:
            shutil.copyfile(src / f, dest / f)
        (dest / "README.md").write_text(_readme(kernel, res.package, files))
        print(f"{kernel}: {len(files)} files -> {dest}", file=sys.stderr)
        print((src / "capture.log").read_text(), file=sys.stderr)
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
