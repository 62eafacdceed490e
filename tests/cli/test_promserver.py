"""The Prometheus harness (tests/promserver.py) against a real Prometheus, without the
kernel: an exporter in this process (prometheus_client) serves a counter the test sets;
the server scrapes it and its query API gives that value back, then the next one.  This is
what lets the serve tests trust a value they read through Prometheus."""
from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from promserver import (prometheus_server, promql_regex, promql_string,  # noqa: F401
                        promtool_check_metrics)


@pytest.fixture
def exporter():
    """(registry, "127.0.0.1:PORT") of an HTTP exporter in this process, on a free port."""
    reg = CollectorRegistry()
    httpd, thread = start_http_server(0, addr="127.0.0.1", registry=reg)
    try:
        yield reg, f"127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def test_prometheus_reads_what_the_exporter_serves(prometheus_server, exporter):
    reg, target = exporter
    c = Counter("harness_ticks", "Ticks the test counted.", ["who"], registry=reg)
    g = Gauge("harness_level", "A level the test sets.", registry=reg)
    c.labels(who='a"b\\c').inc(7)
    g.set(-2.5)
    t0 = time.time()
    prom = prometheus_server([target])
    ups = prom.wait_targets_up()
    assert [t["scrapeUrl"] for t in ups] == [f"http://{target}/metrics"]

    got = prom.wait_until('harness_ticks_total', lambda r: len(r) == 1, "first scrape")
    # the odd label value comes back as it was set: the harness decodes nothing wrongly
    assert got[0].labels["who"] == 'a"b\\c'
    assert got[0].labels["job"] == "ftslab" and got[0].labels["instance"] == target
    assert got[0].value == 7
    assert prom.value("harness_level") == -2.5
    assert prom.value("absent_metric_name") is None

    # a later value reaches the query API: it reads fresh scrapes, not a first one kept
    c.labels(who='a"b\\c').inc(5)
    got = prom.wait_until("harness_ticks_total", lambda r: r and r[0].value == 12,
                          "second value")
    # its last point is the value at the time that answer was for
    series = prom.query_range("harness_ticks_total", t0, got[0].t, 0.5)
    assert len(series) == 1
    values = [v for _, v in series[0][1]]
    assert values[0] == 7 and values[-1] == 12 and values == sorted(values), values
    assert prom.value("resets(harness_ticks_total[1m])") == 0

    # a label matched literally, whatever regex characters it holds
    odd = 'a"b\\c'
    assert [x.value for x in prom.query(f"harness_ticks_total{{who={promql_string(odd)}}}")] \
        == [12]
    assert [x.value for x in prom.query(f"harness_ticks_total{{who=~{promql_regex(odd)}}}")] \
        == [12]
    assert not prom.query(f"harness_ticks_total{{who=~{promql_regex('a.b')}}}")
    with pytest.raises(AssertionError, match="bad_data"):
        prom.query("sum(")
    assert prom.stop() == 0
    assert prom.stop() == 0  # twice is harmless


def test_a_target_down_is_reported(prometheus_server, tmp_path):
    """wait_targets_up fails (with the scrape error) when nothing answers there (the
    first scrape waits for the discovery's first update: seconds)."""
    from promserver import free_port
    prom = prometheus_server([f"127.0.0.1:{free_port()}"])
    [t] = prom.wait_targets_scraped()
    assert t["health"] == "down" and "connection refused" in t["lastError"], t
    with pytest.raises(AssertionError, match="connection refused"):
        prom.wait_targets_up(timeout=2)
    assert prom.value("up") == 0


def test_promtool_check_metrics_findings():
    assert promtool_check_metrics("# HELP a_total A.\n# TYPE a_total counter\n"
                                  "a_total 1\n").ok
    bad = promtool_check_metrics("# HELP a A.\n# TYPE a counter\na 1\n")
    assert bad.returncode == 3 and any('"_total" suffix' in f for f in bad.findings), bad
    broken = promtool_check_metrics("a{{ 1\n")
    assert broken.returncode == 1 and not broken.ok, broken
