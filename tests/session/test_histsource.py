"""session/histsource.py over a fake instance whose ``hist`` files are written by the test
(in the kernel's layout, as in tests/fixtures/<kernel>/hist).  The real kernel's tables
are checked in the guests (tests/vm/guest/test_guest_hist.py)."""
from __future__ import annotations

from ftslab.kernel.hist import HistSpec
from ftslab.kernel.undo import UndoStack
from ftslab.session.histsource import HistSource

CALLSITE = HistSpec("kmem", "kmalloc", ("call_site.sym-offset",), ("hitcount", "bytes_alloc"),
                    4096, "callsite")
COMM = HistSpec("kmem", "kmalloc", ("common_pid.execname",), ("hitcount", "bytes_alloc"),
                8, "comm")  # a tiny size, to see the clearing
CACHE = HistSpec("kmem", "kmalloc", ("bytes_alloc",), ("hitcount", "bytes_req"), 512, "cache")
ORDER = HistSpec("kmem", "mm_page_alloc", ("order",), ("hitcount",), 128, "order")


def _table(spec: HistSpec, lines: list[str], dropped: int = 0) -> str:
    info = spec.trigger.replace(":size=", ":sort=hitcount:size=") + " [active]"
    body = "\n".join(lines)
    hits = sum(int(l.split("hitcount:")[1].split()[0]) for l in lines)
    return (f"# event histogram\n#\n# trigger info: {info}\n#\n\n{body}\n\nTotals:\n"
            f"    Hits: {hits}\n    Entries: {len(lines)}\n    Dropped: {dropped}\n")


class FakeInstance:
    name = "ftslab_1"

    def __init__(self):
        self.writes: list[tuple[str, str]] = []
        self.hist: dict[str, str] = {}

    def event_trigger_add(self, system, name, text):
        self.writes.append((name, text))

    def event_trigger_remove(self, system, name, text):
        self.writes.append((name, "!" + text))

    def event_hist_read(self, system, name):
        return self.hist.get(name, "")


def _set(inst, callsite, comm, cache, order, comm_dropped=0):
    inst.hist["kmalloc"] = "\n\n".join([_table(CALLSITE, callsite), _table(COMM, comm, comm_dropped),
                                        _table(CACHE, cache)])
    inst.hist["mm_page_alloc"] = _table(ORDER, order)


def test_install_pushes_each_removal_and_unwind_removes_them_newest_first():
    inst = FakeInstance()
    undo = UndoStack()
    HistSource(inst, [CALLSITE, ORDER]).install(undo)
    assert inst.writes == [("kmalloc", CALLSITE.trigger), ("mm_page_alloc", ORDER.trigger)]
    assert len(undo) == 2
    inst.writes.clear()
    assert undo.unwind() == []
    assert inst.writes == [("mm_page_alloc", ORDER.removal), ("kmalloc", CALLSITE.removal)]


def test_increments_by_label():
    inst = FakeInstance()
    src = HistSource(inst, [CALLSITE, COMM, CACHE, ORDER], page_size=4096)
    _set(inst,
         ["{ call_site: [ffffffff81000010] alloc_pipe_info+0x2a/0x1c0 } hitcount: 3  bytes_alloc: 192",
          "{ call_site: [ffffffffc0001000] p9_fid_create+0x12/0x80 [9pnet] } hitcount: 1  bytes_alloc: 96"],
         ["{ common_pid: sh              [       188] } hitcount: 2  bytes_alloc: 128",
          "{ common_pid: sh              [       190] } hitcount: 1  bytes_alloc: 64",
          "{ common_pid: <...>           [       999] } hitcount: 1  bytes_alloc: 96"],
         ["{ bytes_alloc:         64 } hitcount: 3  bytes_req: 150",
          "{ bytes_alloc:       1024 } hitcount: 1  bytes_req: 1000"],
         ["{ order:          0 } hitcount: 5", "{ order:          2 } hitcount: 1"])
    d = src.read()
    assert d.by["callsite"] == {"alloc_pipe_info+0x2a": (3, 192), "p9_fid_create+0x12 [9pnet]": (1, 96)}
    assert d.by["comm"] == {"sh": (3, 192), "<...>": (1, 96)}
    assert d.by["cache"] == {"kmalloc-64": (3, 192), "kmalloc-1k": (1, 1024)}
    assert d.by["order"] == {0: (5, 5 * 4096), 2: (1, 4 * 4096)}
    assert d.hits == 4 + 6 and d.dropped == 0

    # a second read: only what grew; pid 190 gone (never lowers "sh"), pid 188 grew
    _set(inst,
         ["{ call_site: [ffffffff81000010] alloc_pipe_info+0x2a/0x1c0 } hitcount: 5  bytes_alloc: 320",
          "{ call_site: [ffffffffc0001000] p9_fid_create+0x12/0x80 [9pnet] } hitcount: 1  bytes_alloc: 96"],
         ["{ common_pid: sh              [       188] } hitcount: 4  bytes_alloc: 256",
          "{ common_pid: <...>           [       999] } hitcount: 1  bytes_alloc: 96"],
         ["{ bytes_alloc:         64 } hitcount: 5  bytes_req: 250",
          "{ bytes_alloc:       1024 } hitcount: 1  bytes_req: 1000"],
         ["{ order:          0 } hitcount: 5", "{ order:          2 } hitcount: 1"],
         comm_dropped=0)
    d = src.read()
    assert d.by["callsite"] == {"alloc_pipe_info+0x2a": (2, 128)}
    assert d.by["comm"] == {"sh": (2, 128)}
    assert d.by["cache"] == {"kmalloc-64": (2, 128)}
    assert d.by["order"] == {}
    assert d.hits == 2


def test_a_table_cleared_by_someone_counts_from_zero_and_dropped_never_goes_back():
    inst = FakeInstance()
    src = HistSource(inst, [CALLSITE], page_size=4096)
    inst.hist["kmalloc"] = _table(CALLSITE, [
        "{ call_site: [ffffffff81000010] f+0x2/0x10 } hitcount: 10  bytes_alloc: 640"], dropped=7)
    assert src.read().dropped == 7
    inst.hist["kmalloc"] = _table(CALLSITE, [
        "{ call_site: [ffffffff81000010] f+0x2/0x10 } hitcount: 12  bytes_alloc: 768"], dropped=9)
    d = src.read()
    assert d.by["callsite"] == {"f+0x2": (2, 128)} and d.dropped == 2
    inst.hist["kmalloc"] = _table(CALLSITE, [
        "{ call_site: [ffffffff81000010] f+0x2/0x10 } hitcount: 4  bytes_alloc: 256"], dropped=2)
    d = src.read()
    assert d.by["callsite"] == {"f+0x2": (4, 256)}
    assert d.dropped == 2


def test_a_nearly_full_table_is_cleared_after_its_read():
    inst = FakeInstance()
    src = HistSource(inst, [COMM], page_size=4096)
    lines = [f"{{ common_pid: sh              [{p:10d}] }} hitcount: 1  bytes_alloc: 8"
             for p in range(100, 106)]  # 6 of 8: at 3/4
    inst.hist["kmalloc"] = _table(COMM, lines, dropped=3)
    d = src.read()
    assert d.by["comm"] == {"sh": (6, 48)} and d.dropped == 3
    assert inst.writes == [("kmalloc", COMM.clear)]
    assert d.cleared == ["kmem:kmalloc common_pid.execname"]
    # after the clear the kernel's table starts empty: what it holds next is all new
    inst.hist["kmalloc"] = _table(COMM, lines[:1], dropped=0)
    d = src.read()
    assert d.by["comm"] == {"sh": (1, 8)} and d.dropped == 0 and not d.cleared
