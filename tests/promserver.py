"""A real Prometheus server for the tests of ``ftslab serve``, and promtool's linter.

``PromServer`` runs the ``prometheus`` binary (Debian's 2.42 here) on 127.0.0.1 on a free
port, with a config of its own (one job, every target scraped at /metrics each second)
and its storage in a test's temporary directory; the tests read what it scraped through
its HTTP API (query, query_range, targets), as a dashboard would.  It is stopped with
SIGTERM (SIGKILL only if it will not end) on every exit path: use it as a context manager
or through ``prometheus_server``, whose finaliser stops it.  It never touches a
Prometheus the system runs (the package's service listens on 9090; this one does not).

``promtool_check_metrics`` runs ``promtool check metrics`` (text exposition format only
in 2.42: it reads OpenMetrics as the older format) and returns what it found.

Nothing here reads tracefs or starts ftslab: the tests do that.
"""
from __future__ import annotations

import json
import math
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import need_tool

__all__ = ["PromServer", "PromtoolResult", "Sample", "need_prometheus", "prometheus_server",
           "promtool_check_metrics", "free_port", "promql_regex",
           "promql_string"]


@dataclass(frozen=True)
class Sample:
    """One series of an instant query's answer."""
    labels: dict
    """the series' labels, ``__name__`` included (absent for an expression's result)"""
    value: float
    """its value at the query's time"""
    t: float
    """that time, Unix seconds"""


@dataclass(frozen=True)
class PromtoolResult:
    """What ``promtool check metrics`` said about a text."""
    returncode: int
    """0: clean; 3: lint findings; 1: the text could not be parsed"""
    findings: list
    """its complaints, one a line (stderr and stdout together)"""

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.findings


def need_prometheus() -> tuple[str, str]:
    """(prometheus, promtool) paths, or skip (fail under FTSLAB_KERNEL_TESTS=1)."""
    return need_tool("prometheus"), need_tool("promtool")


def free_port() -> int:
    """A TCP port on 127.0.0.1 free a moment ago (whoever binds it next may race: the
    server's start retries on another port when its bind fails)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PromServer:
    """A Prometheus of our own scraping TARGETS (``host:port`` strings) every
    SCRAPE_INTERVAL seconds at /metrics, under job ``JOB``."""

    def __init__(self, workdir: Path, targets: list[str], scrape_interval: float = 1.0,
                 job: str = "ftslab", binary: str = "prometheus"):
        self.workdir = Path(workdir)
        self.targets = list(targets)
        self.job = job
        self.scrape_interval = scrape_interval
        self.binary = binary
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.log = self.workdir / "prometheus.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- life cycle --------------------------------------------------------------------
    def _write_config(self) -> Path:
        iv = f"{int(self.scrape_interval * 1000)}ms"
        # JSON is YAML: no YAML library needed, and every string is quoted
        cfg = {"global": {"scrape_interval": iv, "scrape_timeout": iv,
                          "evaluation_interval": iv},
               "scrape_configs": [{"job_name": self.job, "metrics_path": "/metrics",
                                   "static_configs": [{"targets": self.targets}]}]}
        path = self.workdir / "prometheus.yml"
        path.write_text(json.dumps(cfg, indent=1) + "\n")
        return path

    def start(self, timeout: float = 60) -> "PromServer":
        """Start it and wait until /-/ready answers 200; a bind lost to a race is
        retried on another port.  Raises AssertionError with its log on failure."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        for _attempt in range(3):
            self.port = free_port()
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen(
                    [self.binary, f"--config.file={config}",
                     f"--storage.tsdb.path={self.workdir / 'data'}",
                     f"--web.listen-address=127.0.0.1:{self.port}",
                     "--log.level=warn"],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.workdir)
            if self._wait_ready(timeout):
                return self
            code = self.proc.poll()
            self.stop()
            if code is None or "address already in use" not in self.log_text():
                break
        raise AssertionError(f"prometheus did not become ready:\n{self.log_text()[-3000:]}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=5) as r:
                    if r.status == 200:
                        return True
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        return False

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM and wait (SIGKILL after TIMEOUT s); its exit code (None: not started).
        Safe to call twice."""
        p = self.proc
        if p is None:
            return None
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        return p.returncode

    def __enter__(self) -> "PromServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    # --- the HTTP API ------------------------------------------------------------------
    def api(self, path: str, **params) -> dict | list:
        """GET /api/v1/PATH?PARAMS: its ``data``; AssertionError when it says error."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:  # 400/422: a bad query, with its reason
            body = json.load(e)
        if body.get("status") != "success":
            raise AssertionError(f"prometheus {path} {params}: {body.get('errorType')}: "
                                 f"{body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[Sample]:
        """An instant query (at AT, Unix seconds; default now): one Sample per series;
        a scalar answer is one Sample without labels."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("query", **params)
        if data["resultType"] in ("scalar", "string"):
            t, v = data["result"]
            return [Sample({}, float(v), float(t))]
        return [Sample(s["metric"], float(s["value"][1]), float(s["value"][0]))
                for s in data["result"]]

    def query_range(self, expr: str, start: float, end: float,
                    step: float = 1.0) -> list[tuple[dict, list[tuple[float, float]]]]:
        """A range query: per series, (labels, [(t, value), ...]) in time order.  The
        steps are counted back from END (Prometheus counts them on from START), so
        that the last point is the value at END, as an instant query there gives it."""
        start = end - step * math.ceil((end - start) / step - 1e-9)
        data = self.api("query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}",
                        step=f"{step}")
        return [(s["metric"], [(float(t), float(v)) for t, v in s["values"]])
                for s in data["result"]]

    def value(self, expr: str, default: float | None = None) -> float | None:
        """The value of an expression that yields at most one series (DEFAULT: none)."""
        res = self.query(expr)
        assert len(res) <= 1, f"{expr}: {len(res)} series: {res[:5]}"
        return res[0].value if res else default

    def active_targets(self) -> list[dict]:
        return self.api("targets", state="active")["activeTargets"]

    def wait_targets_scraped(self, timeout: float = 60) -> list[dict]:
        """Wait until every configured target was scraped once (its health is no longer
        "unknown": the first scrape waits for service discovery's first update, seconds
        after the start); returns the targets, up or down."""
        deadline = time.monotonic() + timeout
        while True:
            ts = self.active_targets()
            if len(ts) == len(self.targets) and all(t["health"] != "unknown" for t in ts):
                return ts
            if time.monotonic() > deadline:
                raise AssertionError(f"targets not scraped after {timeout}s: {ts}")
            time.sleep(0.2)

    def wait_targets_up(self, timeout: float = 60) -> list[dict]:
        """Wait until every configured target was scraped and found up; fails with each
        target's last error once they were all scraped and one stays down that long."""
        deadline = time.monotonic() + timeout
        while True:
            ts = self.wait_targets_scraped(max(0.0, deadline - time.monotonic()))
            if all(t["health"] == "up" for t in ts):
                return ts
            if time.monotonic() > deadline:
                raise AssertionError(f"targets not up after {timeout}s: "
                                     + "; ".join(f"{t['scrapeUrl']} {t['health']} "
                                                 f"{t.get('lastError', '')}" for t in ts))
            time.sleep(0.2)

    def wait_until(self, expr: str, cond, what: str, timeout: float = 60):
        """Query EXPR (instant) until COND(samples) is true; returns those samples.  The
        timeout is a hang guard, not a measurement: it fails with the last answer."""
        deadline = time.monotonic() + timeout
        while True:
            res = self.query(expr)
            if cond(res):
                return res
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: after {timeout}s {expr} = {res[:20]}")
            time.sleep(0.25)


@pytest.fixture
def prometheus_server(tmp_path):
    """A factory: ``prometheus_server(targets)`` starts a PromServer (storage under
    tmp_path); every one started is stopped when the test ends, however it ends."""
    binary, _ = need_prometheus()
    started: list[PromServer] = []

    def start(targets: list[str], scrape_interval: float = 1.0) -> PromServer:
        srv = PromServer(tmp_path / f"prometheus{len(started)}", targets, scrape_interval,
                         binary=binary)
        started.append(srv)
        return srv.start()

    yield start
    for srv in started:
        srv.stop()


def promql_string(text: str) -> str:
    """TEXT as a double-quoted PromQL string literal (Go's escapes)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def promql_regex(literal: str, then: str = "") -> str:
    """A PromQL string literal holding a regular expression (RE2): LITERAL matched as
    it is (its metacharacters backslashed), followed by the regex THEN (e.g. ``.*``)."""
    return promql_string(re.sub(r"([\\.+*?()|\[\]{}^$])", r"\\\1", literal) + then)


def promtool_check_metrics(text: str | bytes) -> PromtoolResult:
    """``promtool check metrics`` on TEXT (its stdin)."""
    _, promtool = need_prometheus()
    data = text.encode() if isinstance(text, str) else text
    cp = subprocess.run([promtool, "check", "metrics"], input=data, capture_output=True,
                        timeout=60)
    out = (cp.stdout + cp.stderr).decode(errors="replace")
    return PromtoolResult(cp.returncode, [l for l in out.splitlines() if l.strip()])
