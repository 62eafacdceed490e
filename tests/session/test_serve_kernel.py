"""``ftslab serve`` on the real kernel, scraped by a real Prometheus (tests/promserver.py):
the figures a dashboard reads through Prometheus's query API against workloads whose
allocations are known, the exposition checked by promtool, the bounds on series with 200
commands, label values with quotes, backslashes and newlines, the textfile written
atomically and removed at the end, and the instances gone after SIGTERM (or removed by
``ftslab reset`` after SIGKILL).

The eventfd call site's function is the running kernel's (test_record_stacks.
eventfd_frames); no cache name is assumed."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
from prometheus_client.parser import text_string_to_metric_families

from conftest import TRACEFS, popen_ftslab, run_ftslab
from promserver import (prometheus_server, promql_regex, promql_string,  # noqa: F401
                        promtool_check_metrics)
from test_record_stacks import eventfd_frames
from workloads import MANY_COMMS

OM_ACCEPT = "application/openmetrics-text; version=1.0.0; charset=utf-8"


class ServeRun:
    """``ftslab serve ARGS`` as a separate process.  Starting it waits for its banner
    (``ftslab serve: listening on http://HOST:PORT/metrics`` or ``no HTTP server``);
    its stderr is read on a thread from then on.  ``stop`` sends a signal and waits;
    ``close`` (every exit path) stops one still running with SIGINT, and SIGKILL plus
    ``ftslab reset`` only if it will not end."""

    def __init__(self, *args: str):
        self.args = args
        self.proc = popen_ftslab("serve", *args, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        banner = ""
        while "ftslab serve: " not in banner:
            banner = self.proc.stderr.readline()
            if not banner:
                self.close()
                raise AssertionError(f"serve {args} ended before its banner: "
                                     + "".join(self.lines))
            self.lines.append(banner)
        self.banner = banner
        m = re.search(r"listening on http://(\S+?)/metrics", banner)
        self.target = m.group(1) if m else None
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def scrape(self, accept: str | None = None) -> str:
        req = urllib.request.Request(f"http://{self.target}/metrics",
                                     headers={"Accept": accept} if accept else {})
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.read().decode()

    def wait_snapshot(self, timeout: float = 60) -> str:
        """The first scrape with the session's figures (the banner comes before the
        session is set up: a scrape then has only the exporter's own)."""
        deadline = time.monotonic() + timeout
        while "ftslab_lost_events_total" not in (text := self.scrape()):
            assert time.monotonic() < deadline and self.proc.poll() is None, \
                self.stderr + text
            time.sleep(0.1)
        return text

    def stop(self, sig=signal.SIGTERM, timeout: float = 60) -> int:
        self.proc.send_signal(sig)
        self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return self.proc.returncode

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                run_ftslab("reset")


@pytest.fixture
def serve_run():
    """A factory of ServeRun; each is closed when the test ends, however it ends."""
    runs: list[ServeRun] = []

    def start(*args: str) -> ServeRun:
        runs.append(ServeRun(*map(str, args)))
        return runs[-1]

    yield start
    for r in runs:
        r.close()


def _family_samples(text: str, parse=text_string_to_metric_families) -> dict:
    """sample name -> {labels tuple: value} of one scrape."""
    out: dict = {}
    for fam in parse(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


# ----------------------------------------------------------------- a) known live objects
N = 300
STEPS = 10
COMM = f"fsrv{os.getpid() % 100000}"
# named first, so that a serve limited to that name sees its eventfds and nobody else's;
# on each "open" line it opens N/STEPS eventfds, on "close" closes them all
HOLDER = [sys.executable, "-c",
          "import ctypes, os, sys\n"
          f"ctypes.CDLL(None).prctl(15, b'{COMM}', 0, 0, 0)\n"
          "fds = []\n"
          "print('ready', flush=True)\n"
          "for line in sys.stdin:\n"
          "    if line.strip() == 'open':\n"
          f"        fds += [os.eventfd(0) for _ in range({N // STEPS})]\n"
          "    else:\n"
          "        for fd in fds: os.close(fd)\n"
          "        fds = []\n"
          "    print(len(fds), flush=True)\n"]


def test_prometheus_reads_the_live_eventfds(kernel, serve_run, prometheus_server):
    """serve limited to the holder's comm: the holder opens N eventfds in STEPS steps
    (half a second apart, over five seconds) and holds them, then closes them all.
    eventfd(2) kmallocs one struct eventfd_ctx at its call site and takes one struct file
    (and more: a dentry, the fd table's growth), so Prometheus must read exactly N live at
    the eventfd call site, at least 2N live for the comm, the comm's figure equal to the
    total and to the sum over caches (every live object is the holder's), a leak signal
    of several windows while it grew, then 0 at the call site and at least 2N fewer for
    the comm once they are closed."""
    site = eventfd_frames()[1]
    srv = serve_run("--listen", "127.0.0.1:0", "-n", "1", "--leak-window", "0.5",
                    "--comm", COMM, "--top", "50")
    assert srv.target and srv.target.startswith("127.0.0.1:") and \
        not srv.target.endswith(":0"), srv.banner
    prom = prometheus_server([srv.target])
    prom.wait_targets_up()
    holder = subprocess.Popen(HOLDER, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        comm_q = f"ftslab_comm_live_objects{{comm={promql_string(COMM)}}}"
        # (a label whose objects are all freed has no series: vector(0) is its 0)
        site_q = (f"sum(ftslab_callsite_live_objects{{call_site=~"
                  f"{promql_regex(site + '+', '.*')}}}) or vector(0)")
        t0 = time.time()
        for i in range(STEPS):
            holder.stdin.write("open\n")
            holder.stdin.flush()
            assert int(holder.stdout.readline()) == (i + 1) * (N // STEPS)
            time.sleep(0.5)
        held = prom.wait_until(site_q, lambda r: r and r[0].value == N,
                               "all eventfds live at their call site")
        t1 = held[0].t
        # a scrape later, every figure at one time is of one snapshot
        time.sleep(2)
        at = time.time()

        def at_(expr):
            [got] = prom.query(expr, at)
            return got.value
        peak = at_(comm_q)
        assert at_(site_q) == N
        assert peak >= 2 * N, peak
        assert at_("ftslab_live_objects") == peak
        assert at_("sum(ftslab_cache_live_objects)") == peak
        assert at_("sum(ftslab_callsite_live_objects)") == peak
        # the growth as Prometheus stored it: the call site's series rose step by step
        # to N, never above; the leak signal counted consecutive windows of growth
        [(_labels, values)] = prom.query_range(site_q, t0 - 1, t1, 0.5)
        vals = [v for _t, v in values]
        assert vals == sorted(vals) and vals[-1] == N and len(set(vals)) >= 3, vals
        grew = at_(f"max_over_time(ftslab_comm_live_growth_intervals"
                   f"{{comm={promql_string(COMM)}}}[2m])")
        assert grew >= 3, grew

        holder.stdin.write("close\n")
        holder.stdin.flush()
        assert int(holder.stdout.readline()) == 0
        prom.wait_until(site_q, lambda r: r and r[0].value == 0, "eventfds freed")
        time.sleep(2)
        after = prom.value(comm_q, default=0)
        assert after <= peak - 2 * N, (peak, after)
        # the signal ends with the growth
        assert prom.value(f'ftslab_comm_live_growth_intervals{{comm="{COMM}"}}',
                          default=0) == 0
        assert prom.value("ftslab_lost_events_total") == 0, srv.stderr
        assert prom.value("ftslab_dropped_events_total") == 0, srv.stderr
    finally:
        holder.kill()
        holder.wait()
    assert srv.stop() == 0, srv.stderr


# ----------------------------------------------------------- b) promtool reads a scrape
def test_promtool_accepts_a_real_scrape(kernel, serve_run):
    """The plain text format (what promtool reads) passes promtool's lint untouched; the
    OpenMetrics answer (what Prometheus asks for) passes the client's strict parser and
    carries the same families.  promtool 2.42 reads only the text format: it cannot be
    the judge of OpenMetrics (``info`` is no type there)."""
    srv = serve_run("--listen", "127.0.0.1:0", "-n", "0.5")
    text = srv.wait_snapshot()
    res = promtool_check_metrics(text)
    assert res.ok, (res, text[:3000])
    om = srv.scrape(OM_ACCEPT)
    assert om.endswith("# EOF\n"), om[-200:]
    om_names = {f.name for f in om_parse(om)}
    text_names = {f.name for f in text_string_to_metric_families(text)}
    # the text format names a counter's family with its _total, an info's with its
    # _info, OpenMetrics without
    assert {re.sub("_(total|info)$", "", n) for n in text_names} == om_names >= {
        "ftslab_cache_allocations", "ftslab_comm_live_objects", "ftslab_source",
        "ftslab_lost_events", "ftslab_slabinfo_active_objects"}, (om_names, text_names)
    assert srv.stop() == 0, srv.stderr


# ------------------------------------------------------- c) 200 commands, bounded series
K = 200
PREFIX = f"fsm{os.getpid() % 1000}_"
ODD = 'q"\\'
TOP = 5
LABELLED = {  # family (sample name) -> its label; counters as the text format names them
    f"ftslab_{k}_{fig}": lab
    for k, lab in (("cache", "cache"), ("callsite", "call_site"), ("comm", "comm"))
    for fig in ("allocations_total", "allocated_bytes_total", "live_objects", "live_bytes",
                "live_growth_intervals")}


def test_series_stay_bounded_monotonic_and_escaped(kernel, serve_run, prometheus_server):
    """K commands of distinct names (and two whose names hold a quote and a backslash)
    allocate for several seconds under two exporters: one with --top TOP, whose
    every labelled family has at most TOP+1 series, <other> holding the rest, every
    counter series only growing (successive scrapes; Prometheus's resets() of <other>
    and the unlabelled counters), the
    families' sums equal; one with --include/--exclude, whose comm series are exactly the
    names those let through, with the odd names arriving in Prometheus as they were
    set.  promtool accepts both scrapes."""
    top = serve_run("--listen", "127.0.0.1:0", "-n", "1", "--top", TOP)
    # P1, P10..P19 and P100..P199 match the include; the exclude takes P10..P19 away
    filt = serve_run("--listen", "127.0.0.1:0", "-n", "1", "--top", 500, "--no-live",
                     "--include", f"^{re.escape(PREFIX)}1", "--include", '"',
                     "--exclude", f"^{re.escape(PREFIX)}1[0-9]$")
    prom = prometheus_server([top.target, filt.target])
    prom.wait_targets_up()
    work = subprocess.Popen([sys.executable, "-c", MANY_COMMS, str(K), PREFIX, "8"],
                            stdout=subprocess.PIPE, text=True)
    odd = subprocess.Popen([sys.executable, "-c", MANY_COMMS, "2", ODD, "8"],
                           stdout=subprocess.PIPE, text=True)
    scrapes = []
    try:
        assert work.stdout.readline().strip() == "ready"
        assert odd.stdout.readline().strip() == "ready"
        while work.poll() is None:
            scrapes.append(_family_samples(top.scrape()))
            time.sleep(0.7)
        assert work.stdout.read().strip() == "done"
        assert odd.wait() == 0 and odd.stdout.read().strip() == "done"
        time.sleep(2.5)  # the last interval's figures, scraped by Prometheus
        scrapes.append(_family_samples(top.scrape()))
        last_filt = filt.scrape()
    finally:
        for p in (work, odd):
            if p.poll() is None:
                p.kill()
                p.wait()

    # --top: every labelled family bounded, <other> present where there were more
    tgt = f'instance="{top.target}"'
    for fam, lab in LABELLED.items():
        res = prom.query(f"{fam}{{{tgt}}}")
        assert len(res) <= TOP + 1, (fam, [s.labels for s in res])
    comms = {s.labels["comm"] for s in prom.query(f"ftslab_comm_allocations_total{{{tgt}}}")}
    assert "<other>" in comms and len(comms) == TOP + 1, comms
    # (live objects: bounded above too; <other> there only while more than TOP commands
    # hold something, which the exited workload no longer does)
    # counters: <other> and the unlabelled ones never reset in Prometheus; no series goes
    # back between successive scrapes.  (A label that loses its series to a busier one
    # and wins it back later starts from zero again: a reset Prometheus sees, by design,
    # README "Bounded cardinality"; its counts meanwhile went to <other>.)
    counters = sorted({n for sc in scrapes for n in sc if n.endswith("_total")})
    assert len(counters) >= 10, counters
    for name in counters:
        sel = f'{tgt},{LABELLED[name]}="<other>"' if name in LABELLED else tgt
        resets = prom.query(f"resets({name}{{{sel}}}[5m]) > 0")
        assert not resets, (name, [(s.labels, s.value) for s in resets])
    back = []
    for a, b in zip(scrapes, scrapes[1:]):
        for name, series in b.items():
            if name.endswith("_total"):
                back += [(name, lbl, a[name][lbl], v) for lbl, v in series.items()
                         if lbl in a.get(name, {}) and v < a[name][lbl]]
    assert not back, back[:10]
    # each family counts every allocation once: their sums agree within a scrape
    for s in scrapes:
        sums = {k: sum(s[f"ftslab_{k}_allocations_total"].values())
                for k in ("cache", "callsite", "comm")}
        assert len(set(sums.values())) == 1, sums

    # --include/--exclude: exactly the names let through, the odd ones as set
    got = {s.labels["comm"] for s in prom.query(
        f'ftslab_comm_allocations_total{{instance="{filt.target}"}}')}
    want = ({f"{PREFIX}1"} | {f"{PREFIX}{i}" for i in range(100, K)}
            | {f"{ODD}{i}" for i in range(2)} | {"<other>"})
    assert got == want, (sorted(got - want), sorted(want - got))
    caches = {s.labels["cache"] for s in prom.query(
        f'ftslab_cache_allocations_total{{instance="{filt.target}"}}')}
    assert caches == {"<other>"}, caches   # the patterns hold for every label
    assert not prom.query(f'ftslab_comm_live_objects{{instance="{filt.target}"}}')  # --no-live

    for text in (top.scrape(), last_filt):
        res = promtool_check_metrics(text)
        assert res.ok, (res, text[:2000])
    assert top.stop() == 0 and filt.stop() == 0, top.stderr + filt.stderr


# --------------------------------------------------------------- d) signals and cleanup
def _instances_of(pid: int) -> list[str]:
    return sorted(n for n in os.listdir(TRACEFS / "instances")
                  if re.fullmatch(rf"ftslab_{pid}(_.*)?", n))


def test_sigterm_removes_everything_exit_0(kernel, serve_run):
    srv = serve_run("--listen", "127.0.0.1:0", "-n", "0.5")
    srv.wait_snapshot()
    pid = srv.proc.pid
    assert _instances_of(pid), "no instance while serving"
    assert srv.stop(signal.SIGTERM) == 0, srv.stderr
    assert _instances_of(pid) == []
    assert "stopped by SIGTERM" in srv.stderr and "Traceback" not in srv.stderr, srv.stderr


def test_sigkill_leaves_the_instance_that_reset_removes(kernel, serve_run):
    srv = serve_run("--listen", "127.0.0.1:0", "-n", "0.5")
    srv.wait_snapshot()
    pid = srv.proc.pid
    before = _instances_of(pid)
    assert before
    assert srv.stop(signal.SIGKILL) == -signal.SIGKILL
    assert _instances_of(pid) == before   # nothing ran to undo them
    cp = run_ftslab("reset")
    assert cp.returncode == 0, cp.stderr
    assert _instances_of(pid) == [], cp.stderr


# ---------------------------------------------------------------------- e) the textfile
def test_textfile_is_replaced_whole(kernel, serve_run, tmp_path):
    """--textfile alone: no HTTP server, DIR/ftslab.prom rewritten every interval by a
    rename: read in a loop while serve writes it, every read is a whole file (it parses,
    it ends with its newline, it holds every family of a finished one), several distinct
    versions are seen, promtool accepts them; when serve stops the file goes (stale
    figures are not current ones) and no temporary file is left."""
    d = tmp_path / "textfile"
    d.mkdir()
    path = d / "ftslab.prom"
    srv = serve_run("--textfile", d, "-n", "0.2")
    assert srv.target is None and "no HTTP server" in srv.banner, srv.banner
    deadline = time.monotonic() + 60
    while not path.exists():
        assert time.monotonic() < deadline and srv.proc.poll() is None, srv.stderr
        time.sleep(0.05)
    # a snapshot's file has these, the last family written (slabinfo's) among them:
    # a file cut short would lack it, or end mid-line, or not parse
    whole = {"ftslab_build_info", "ftslab_lost_events_total", "ftslab_live_objects",
             "ftslab_slabinfo_objects"}
    reads, versions, snapshots = 0, set(), 0
    end = time.monotonic() + 6
    while time.monotonic() < end:
        text = path.read_text()
        reads += 1
        assert text.endswith("\n"), (reads, text[-300:])
        names = {x.name for f in text_string_to_metric_families(text) for x in f.samples}
        if "ftslab_lost_events_total" in names:  # not the exporter's first, empty one
            snapshots += 1
            assert whole <= names, (reads, whole - names)
        versions.add(text)
    assert srv.stop() == 0, srv.stderr
    assert snapshots and len(versions) >= 5, (len(versions), reads)
    for text in list(versions)[:3]:
        res = promtool_check_metrics(text)
        assert res.ok, res
    assert os.listdir(d) == []


NL = f"nl{os.getpid() % 1000}\n"


def test_a_comm_with_a_newline_keeps_it(kernel, serve_run):
    """prctl takes any byte but NUL: two commands named NL0, NL1 (a newline inside)
    keep their names (read from /proc/PID/comm, or from saved_cmdlines once exited,
    where a newline would cut them) through the text format's escaping."""
    srv = serve_run("--listen", "127.0.0.1:0", "-n", "1", "--no-live", "--include", "\n")
    srv.wait_snapshot()
    work = subprocess.Popen([sys.executable, "-c", MANY_COMMS, "2", NL, "3"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert work.stdout.readline().strip() == "ready"
        assert work.wait(timeout=60) == 0
        time.sleep(2)
        text = srv.scrape()
    finally:
        if work.poll() is None:
            work.kill()
            work.wait()
    assert srv.stop() == 0, srv.stderr
    got = {dict(lbl)["comm"] for lbl in _family_samples(text)["ftslab_comm_allocations_total"]}
    assert got - {"<other>"} == {f"{NL}0", f"{NL}1"}, got
