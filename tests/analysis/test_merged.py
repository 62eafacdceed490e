"""Merged slab caches: tracefs.read_slab_aliases on a copy of a real /sys/kernel/slab (its
links and each directory's ``aliases`` count, captured on 6.18 with the /proc/slabinfo of
the same moment), and the names the report, top, the slabinfo table and ``--cache`` give
a merged cache."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from ftslab.analysis import merged
from ftslab.analysis import build
from ftslab.analysis import slabinfo
from ftslab.analysis import tables
from ftslab.kernel.filters import cache_filter
from ftslab.dataset import Dataset, EventColumns, Metadata
from ftslab.cli.render import render_json, render_text
from ftslab.session.top import TopState
from ftslab.kernel.procfs import read_slab_aliases

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "6.18"


def _links_fixture() -> tuple[dict[str, str], dict[str, int]]:
    """(link name -> target, directory -> its aliases count) of slab-links.txt."""
    links, dirs = {}, {}
    for line in (FIX / "slab-links.txt").read_text().splitlines():
        if line.startswith("#"):
            continue
        if " -> " in line:
            name, target = line.split(" -> ")
            links[name] = target
        else:
            name, count = line.split("/ aliases=")
            dirs[name] = int(count)
    return links, dirs


@pytest.fixture(scope="module")
def slab_tree(tmp_path_factory) -> Path:
    """The captured /sys/kernel/slab rebuilt: a directory per cache, a link per name."""
    root = tmp_path_factory.mktemp("slab")
    links, dirs = _links_fixture()
    for d, n in dirs.items():
        (root / d).mkdir()
        (root / d / "aliases").write_text(f"{n}\n")
    for name, target in links.items():
        os.symlink(target, root / name)
    return root


@pytest.fixture(scope="module")
def aliases(slab_tree) -> dict[str, list[str]]:
    return read_slab_aliases(str(slab_tree))


def test_the_kernels_aliases_count_says_how_many_names_each_merged_cache_has(slab_tree,
                                                                             aliases):
    links, dirs = _links_fixture()
    assert len(dirs) + len(links) == 426  # the whole tree was captured
    merges = {d: n for d, n in dirs.items() if n}
    assert len(merges) == 40
    for d, n in dirs.items():
        names = sorted(k for k, t in links.items() if t == d)
        if n:  # merged: every one of its names maps to all of them
            assert len(names) == n + 1, d
            for k in names:
                assert aliases[k] == names, (d, k)
        else:  # one name, or none (a cache of its own directory): not merged
            assert not set(names) & set(aliases) and d not in aliases, d
    assert set(aliases) == {k for k, t in links.items() if dirs[t]}
    assert aliases["UNIX"] == aliases["signal_cache"] == ["UNIX", "UNIX-STREAM", "signal_cache"]
    assert aliases["pid"] == ["cred", "pid", "pid_2"]
    for own in ("task_struct", "kmalloc-96", "filp", "blkdev_ioc"):  # blkdev_ioc: 1 link
        assert own not in aliases


def test_slabinfo_names_each_merged_cache_by_one_of_its_names(aliases):
    """What makes the merged names necessary: /proc/slabinfo (and the events, which print
    the same s->name) know each merged cache by exactly one of its names."""
    listed = {ln.split()[0] for ln in
              (FIX / "slab-links-slabinfo.txt").read_text().splitlines()[2:]}
    for names in {tuple(v) for v in aliases.values()}:
        assert sum(n in listed for n in names) == 1, names
    assert "signal_cache" in listed and "UNIX" not in listed


def test_read_slab_aliases_unreadable_or_linked_to_a_named_directory(tmp_path):
    assert read_slab_aliases(str(tmp_path / "absent")) == {}
    # a link to a cache's own directory (no such merge on 6.18: made up) counts its name
    (tmp_path / "foo").mkdir()
    (tmp_path / ":0000064").mkdir()
    os.symlink("foo", tmp_path / "bar")
    os.symlink(":0000064", tmp_path / "lone")
    assert read_slab_aliases(str(tmp_path)) == {"bar": ["bar", "foo"], "foo": ["bar", "foo"]}


def test_merged_name_and_damaged_metadata(aliases):
    a = merged.slab_aliases({"slab_aliases": aliases})
    assert merged.merged_name("signal_cache", a) == "signal_cache|UNIX|UNIX-STREAM"
    assert merged.merged_name("UNIX", a) == "UNIX|UNIX-STREAM|signal_cache"
    assert merged.names_of(merged.merged_name("pid", a)) == ["pid", "cred", "pid_2"]
    assert merged.merged_name("filp", a) == "filp"
    assert merged.merged_name(None, a) is None
    for bad in (None, [], "x", {"a": "ab"}, {"a": ["b", "c"]}, {"a": ["a"]},
                {"a": ["a", 3]}, {"a": ["a", "b|c"]}, {3: ["3", "4"]}):
        assert merged.slab_aliases({"slab_aliases": bad}) == {}, bad
    assert merged.slab_aliases({}) == {} and merged.slab_aliases(None) == {}


N = 437  # as many unix sockets as the run


def _sockets(meta: Metadata) -> Dataset:
    """N objects from the cache the events call signal_cache (unix sockets, say), 3 filps
    and two kmalloc-64, each with its own pointer; one socket freed."""
    names = ["signal_cache"] * N + ["filp"] * 3
    n = len(names)
    name_col = np.empty(n, dtype=object)
    name_col[:] = names
    size = np.array([1152 if c == "signal_cache" else 192 for c in names], np.uint64)
    kca = EventColumns(
        "kmem", "kmem_cache_alloc", ts=np.arange(1, n + 1, dtype=np.uint64) * 10,
        cpu=np.zeros(n, np.int32), pid=np.full(n, 7, np.int32),
        fields={"call_site": np.full(n, 0xFFFFFFFF81001000, np.uint64),
                "ptr": 0xFFFF888000000000 + np.arange(n, dtype=np.uint64) * 0x1000,
                "bytes_req": size, "bytes_alloc": size, "gfp_flags": np.full(n, 0xCC0, np.uint64),
                "node": np.full(n, -1, np.int64), "name": name_col})
    km = EventColumns(
        "kmem", "kmalloc", ts=np.array([5, 6], np.uint64), cpu=np.zeros(2, np.int32),
        pid=np.full(2, 7, np.int32),
        fields={"call_site": np.full(2, 0xFFFFFFFF81002000, np.uint64),
                "ptr": np.array([0xFFFF888100000000, 0xFFFF888100001000], np.uint64),
                "bytes_req": np.array([40, 64], np.uint64),
                "bytes_alloc": np.array([64, 64], np.uint64),
                "gfp_flags": np.full(2, 0xCC0, np.uint64), "node": np.full(2, -1, np.int64)})
    kcf = EventColumns(
        "kmem", "kmem_cache_free", ts=np.array([10 * n + 100], np.uint64),
        cpu=np.zeros(1, np.int32), pid=np.full(1, 7, np.int32),
        fields={"call_site": np.full(1, 0xFFFFFFFF81003000, np.uint64),
                "ptr": np.array([0xFFFF888000000000], np.uint64)})
    return Dataset(meta, {("kmem", "kmem_cache_alloc"): kca, ("kmem", "kmalloc"): km,
                          ("kmem", "kmem_cache_free"): kcf})


SOCKETS = "signal_cache|UNIX|UNIX-STREAM"


def test_report_names_a_merged_cache_by_all_its_names(aliases):
    ds = _sockets(Metadata(extra={"slab_aliases": aliases}))
    rep = build.build_report(ds, by=("cache",), top=None)
    rows = {r["cache"]: r for r in rep.table("by_cache").rows}
    assert set(rows) == {SOCKETS, "filp", "kmalloc-64"}
    assert rows[SOCKETS]["count"] == N and rows[SOCKETS]["live"] == N - 1
    assert merged.MERGED_NOTE in rep.table("by_cache").note
    text = "\n".join(render_text(rep))
    assert SOCKETS in text and merged.MERGED_NOTE in text
    js = json.loads(render_json(rep))
    assert [r["count"] for r in js["rows"] if r["cache"] == SOCKETS] == [N]
    # every table that names caches: the default one, --live and --interval
    default = build.build_report(ds, top=None)
    for name in ("by_cache", "fragmentation_by_cache"):
        t = default.table(name)
        assert SOCKETS in {r["cache"] for r in t.rows} and merged.MERGED_NOTE in t.note, name
    assert merged.MERGED_NOTE not in default.table("by_callsite").note
    live = build.build_report(ds, live=True, top=None)
    assert {r["cache"]: r["live"] for r in live.table("live_by_cache").rows}[SOCKETS] == N - 1
    series = build.build_report(ds, interval_ns=10 ** 9, top=None)
    assert SOCKETS in {r["cache"] for r in series.tables[0].rows}
    # --by cache with another key: the same label
    two = build.build_report(ds, by=("cache", "comm"), top=None)
    assert SOCKETS in {r["cache"] for r in two.tables[0].rows}


def test_recording_without_the_metadata_keeps_the_events_names():
    rep = build.build_report(_sockets(Metadata()), by=("cache",), top=None)
    rows = {r["cache"]: r["count"] for r in rep.tables[0].rows}
    assert rows == {"signal_cache": N, "filp": 3, "kmalloc-64": 2}
    assert merged.MERGED_NOTE not in rep.tables[0].note


def test_top_names_a_merged_cache_by_all_its_names(aliases):
    rows = TopState().feed(_sockets(Metadata(extra={"slab_aliases": aliases})), 1.0, None)
    by = {r["cache"]: r for r in rows["cache"]}
    assert by[SOCKETS]["allocs_per_s"] == N and by[SOCKETS]["live"] == N - 1
    assert "signal_cache" not in by


def test_slabinfo_diff_names_a_merged_cache_by_all_its_names(aliases):
    """The 6.18 snapshots of fixtures/README.md (100 socketpairs among the workload)."""
    meta = Metadata(slabinfo_start=(FIX / "slabinfo-before.txt").read_text(),
                    slabinfo_end=(FIX / "slabinfo-after.txt").read_text(),
                    extra={"slab_aliases": aliases})
    t = slabinfo.slabinfo_diff(Dataset(meta, {}))
    rows = {r["cache"]: r for r in t.rows}
    assert rows[SOCKETS]["active_before"] == 168 and rows[SOCKETS]["active_after"] == 336
    assert "signal_cache" not in rows and "filp" in rows
    assert tables.Report({}, [t], []).tables[0].note.endswith(merged.MERGED_NOTE)
    plain = slabinfo.slabinfo_diff(Dataset(Metadata(slabinfo_start=meta.slabinfo_start,
                                                  slabinfo_end=meta.slabinfo_end), {}))
    assert "signal_cache" in {r["cache"] for r in plain.rows}


def test_cache_filter_matches_every_name_of_a_merged_cache(aliases):
    assert cache_filter("filp", aliases) == 'name == "filp"'
    want = 'name == "UNIX" || name == "UNIX-STREAM" || name == "signal_cache"'
    assert cache_filter("UNIX", aliases) == want
    assert cache_filter("signal_cache", aliases) == want
    assert cache_filter("UNIX", {}) == 'name == "UNIX"'
