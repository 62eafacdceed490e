"""LIVE against the kernel's own counters, on the real kernel (reconcile.py, slabsample.py).

- A whole-system recording while a process opens N eventfds and keeps them open past the
  end (a forked child holds them): each eventfd is one struct file from the ``filp``
  cache, so the kernel's active filp objects rise by about N, and the trace's LIVE and
  balance must agree with that within the per-CPU slack.  /proc/slabinfo is sampled
  each second: the samples must show the rise, on the events' own clock.
- A recording limited to a command that creates and joins threads: the task_structs
  are freed in RCU callbacks, which run while some other task is current, so the
  recording (set_event_pid) does not see those frees and LIVE claims more task_structs
  than the kernel has at the end.  The check must flag it, with the reason.
"""
from __future__ import annotations

import json
import os
import signal
import sys

from conftest import run_ftslab
from workloads import EVENTFD_HOLDER

from ftslab.analysis import reconcile

N = 1500
PAUSE_S = 1.5  # the sampler reads /proc/slabinfo each second: samples before and after
THREADS = ("import threading\n"
           "ts = [threading.Thread(target=lambda: None) for _ in range(1000)]\n"
           "for t in ts: t.start()\n"
           "for t in ts: t.join()\n")


def _json(path, *args):
    return json.loads(run_ftslab("report", path, "--format", "json", *args,
                                 check=True).stdout)


def _slack(meta_params, cache):
    p = meta_params["caches"][cache]
    return reconcile.slab_slack(p[0], p[1], p[2], meta_params["cpus"], meta_params["nodes"])


def test_whole_system_eventfds_agree_with_slabinfo_and_its_samples(kernel, tmp_path):
    out, pidfile = tmp_path / "efd.dat", tmp_path / "efd.pid"
    try:
        cp = run_ftslab("record", "-a", "-o", out, "--", sys.executable, "-c", EVENTFD_HOLDER,
                        str(N), str(PAUSE_S), "keep", str(pidfile), check=True)
    finally:
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
    assert "lost 0" in cp.stderr, cp.stderr
    import ftslab
    ds = ftslab.load(out)
    params = ds.meta.extra["slab_params"]
    slack = _slack(params, "filp")
    rep = _json(out)
    rows = {r["cache"]: r for r in rep["tables"]["reconcile"]["rows"]}
    filp = rows["filp"]
    # the kernel's own counters saw the N files, and so did the trace
    assert filp["delta_active"] >= N - slack, filp
    assert filp["live"] >= N, filp
    assert filp["verdict"] == "explained", filp
    assert abs(filp["delta_active"] - filp["expected"]) <= slack, filp
    assert not any("filp (LIVE" in w for w in rep["warnings"]), rep["warnings"]

    # the samples: on the events' clock, before and after the eventfds were made
    s = ds.meta.extra["slabinfo_samples"]
    t = s["t"]
    assert len(t) >= 3 and t == sorted(t)
    c = ds.columns[("kmem", "kmem_cache_alloc")]
    pid = int(pidfile.read_text())
    mine = (c.pid == pid) & (c.fields["name"] == "filp")
    first, last = int(c.ts[mine].min()), int(c.ts[mine].max())
    times, series = reconcile.kernel_active_series(ds)
    before = [i for i, x in enumerate(times) if x < first]
    after = [i for i, x in enumerate(times) if x > last]
    assert before and after, (t, first, last)
    grew = int(series["filp"][after[0]] - series["filp"][before[-1]])
    assert grew >= N - slack, (grew, series["filp"].tolist())

    # --interval draws them beside the traced outstanding objects
    iv = _json(out, "--interval", "1s", "--by", "cache", "--top", "1000")
    f_rows = [r for r in iv["rows"] if r["cache"] == "filp"]
    assert f_rows[-1]["outstanding_objs"] >= N
    assert f_rows[-1]["kernel_delta_active"] >= N - slack
    assert f_rows[0]["kernel_delta_active"] < N - slack


def test_task_limited_threads_are_flagged(kernel, tmp_path):
    out = tmp_path / "thr.dat"
    # where record can take the frees of every context (--frees all), this case needs
    # the frees of the traced tasks alone: --frees traced
    only_traced = (["--frees", "traced"] if "--frees" in run_ftslab("record", "--help").stdout
                   else [])
    cp = run_ftslab("record", *only_traced, "-o", out, "--", sys.executable, "-c", THREADS,
                    check=True)
    assert "lost 0" in cp.stderr, cp.stderr
    import ftslab
    ds = ftslab.load(out)
    assert reconcile.free_scope(ds) == "filtered"
    end = {ln.split()[0]: int(ln.split()[1])
           for ln in ds.meta.slabinfo_end.splitlines()[2:]}["task_struct"]
    slack = _slack(ds.meta.extra["slab_params"], "task_struct")
    rep = _json(out)
    live = {r["cache"]: r["live"] for r in rep["tables"]["by_cache"]["rows"]}["task_struct"]
    # the premise, from the kernel's own count: more task_structs claimed live than exist
    assert live > end + slack, ("the frees of the joined threads were seen: this "
                                "recording has no phantom task_structs to flag", live, end)
    row = {r["cache"]: r for r in rep["tables"]["reconcile"]["rows"]}["task_struct"]
    assert row["verdict"] == "LIVE contradicted" and row["live"] == live
    assert "were not recorded" in row["reason"]
    assert any(w.startswith("WARNING: /proc/slabinfo contradicts LIVE") and "task_struct"
               in w for w in rep["warnings"])
    text = run_ftslab("report", out, "--live", check=True).stdout
    assert "LIVE checked against /proc/slabinfo" in text
