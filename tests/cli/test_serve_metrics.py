"""`ftslab serve`'s metric families, without root: a ServeState snapshot through the
collector and prometheus-client's own writers (text and OpenMetrics), read back by the
client's parsers: every figure arrives, label values with quotes, backslashes and
newlines survive escaping, duplicate /proc/slabinfo names are summed, and the bounds
hold.  The real scrape by a real Prometheus is tests/session/test_serve_kernel.py's."""
from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as om_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
from prometheus_client.parser import text_string_to_metric_families

from ftslab.analysis.counters import KEYS, OTHER, ServeState
from ftslab.cli.serve import SnapshotCollector, parse_listen


def _registry(state):
    col = SnapshotCollector({"version": "x", "kernel": "y"}, 5.0, 60.0)
    col.snap = state.snapshot(1.0)
    reg = CollectorRegistry(auto_describe=False)
    reg.register(col)
    return reg


def _samples(text, parse=text_string_to_metric_families):
    out = {}
    for fam in parse(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


ODD = 'a"b\\c\nd'


def _state():
    state = ServeState(limit=2)
    state.add_allocs("cache", {"kmalloc-64": (3, 192), "filp": (2, 384), "pid": (1, 96)})
    state.add_allocs("callsite", {"f+0x1": (6, 672)})
    state.add_allocs("comm", {ODD: (6, 672)})
    state.add_pages({0: (4, 16384), 2: (1, 16384)})
    codes = np.array([0, 1], np.int64)
    keys = {k: (codes, [ODD, "b"]) for k in KEYS}
    state.update_live(np.array([0x1000, 0x2000], np.uint64), np.array([1, 2], np.uint64),
                      np.array([64, 96]), keys, np.zeros(0, np.uint64), np.zeros(0, np.uint64))
    state.set_slabinfo([("dup", 1, 2, 64), ("dup", 10, 20, 64), ("filp", 5, 8, 192)])
    state.aliases = {"filp": ["filp", "other_cache"], "other_cache": ["filp", "other_cache"],
                     "never_shown": ["never_shown", "x"]}
    state.end_interval(0.0, events=10, lost=2, dropped=1)
    return state


def test_every_figure_arrives_and_odd_labels_survive():
    text = generate_latest(_registry(_state())).decode()
    got = _samples(text)
    assert got[("ftslab_cache_allocations_total", (("cache", "kmalloc-64"),))] == 3
    assert got[("ftslab_cache_allocations_total", (("cache", "filp"),))] == 2
    assert got[("ftslab_cache_allocations_total", (("cache", OTHER),))] == 1  # --top 2
    assert got[("ftslab_comm_allocated_bytes_total", (("comm", ODD),))] == 672
    assert got[("ftslab_comm_live_objects", (("comm", ODD),))] == 1
    assert got[("ftslab_comm_live_bytes", (("comm", "b"),))] == 96
    assert got[("ftslab_live_objects", ())] == 2
    assert got[("ftslab_page_allocations_total", (("order", "2"),))] == 1
    assert got[("ftslab_page_allocated_bytes_total", (("order", "0"),))] == 16384
    assert got[("ftslab_lost_events_total", ())] == 2
    assert got[("ftslab_dropped_events_total", ())] == 1
    assert got[("ftslab_slabinfo_active_objects", (("cache", "dup"),))] == 11  # summed
    assert got[("ftslab_cache_merged_info", (("cache", "filp"), ("names", "filp,other_cache")))] == 1
    assert not any(name == "ftslab_cache_merged_info" and ("cache", "never_shown") in labels
                   for name, labels in got)
    # the escaping is the client's: the raw text carries the escapes
    assert 'comm="a\\"b\\\\c\\nd"' in text


def test_openmetrics_output_reads_back():
    text = om_latest(_registry(_state())).decode()
    assert text.endswith("# EOF\n")
    got = _samples(text, om_parse)
    assert got[("ftslab_cache_allocated_bytes_total", (("cache", "filp"),))] == 384
    assert got[("ftslab_comm_live_objects", (("comm", ODD),))] == 1


def test_no_snapshot_yet_still_answers():
    col = SnapshotCollector({"version": "x", "kernel": "y"}, 5.0, 60.0)
    reg = CollectorRegistry(auto_describe=False)
    reg.register(col)
    got = _samples(generate_latest(reg).decode())
    assert got[("ftslab_interval_seconds", ())] == 5.0
    assert not any(name.startswith("ftslab_cache_") for name, _ in got)


def test_parse_listen():
    assert parse_listen("0.0.0.0:9464") == ("0.0.0.0", 9464)
    assert parse_listen("[::1]:0") == ("::1", 0)
    assert parse_listen(":9100") == ("127.0.0.1", 9100)
    import pytest
    from ftslab.errors import UsageError
    for bad in ("9464", "host:", "h:99999", "h:x"):
        with pytest.raises(UsageError):
            parse_listen(bad)
