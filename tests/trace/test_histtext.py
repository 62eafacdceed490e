"""trace/histtext.py against real ``hist`` files of Debian's 6.1 and 6.12
(tests/fixtures/<kernel>/hist, captured by tests/vm/capture_hist.py)."""
from __future__ import annotations

import pytest

from ftslab.errors import ParseError
from ftslab.trace.histtext import Comm, Sym, parse_hist, parse_trigger_keys

from conftest import FIXTURES

KERNELS = ("6.1", "6.12")


def _tables(kernel: str, stem: str):
    return parse_hist((FIXTURES / kernel / "hist" / f"{stem}.hist").read_text(), strict=True)


@pytest.mark.parametrize("kernel", KERNELS)
def test_three_tables_of_one_event(kernel):
    sym, comm, size = _tables(kernel, "kmalloc")
    assert sym.keys == ("call_site.sym-offset",)
    assert comm.keys == ("common_pid.execname",)
    assert size.keys == ("bytes_alloc",)
    for t in (sym, comm, size):
        assert t.trigger.startswith("hist:keys=") and t.trigger.endswith("[active]")
        assert t.entry_count == len(t.entries) and t.dropped == 0 and not t.unreadable
        # Hits is read after the entries are printed: never fewer than they hold
        assert t.hits >= sum(v["hitcount"] for _k, v in t.entries)
    # sym-offset: address and symbol+off/size, module text with its [module]
    k, v = sym.entries[0]
    assert isinstance(k["call_site"], Sym) and k["call_site"].address > 0xffff000000000000
    assert "+0x" in k["call_site"].text and "/0x" in k["call_site"].text
    assert set(v) == {"hitcount", "bytes_alloc"}
    # execname: the comm (padding dropped) and the pid
    comms = [k["common_pid"] for k, _v in comm.entries]
    assert all(isinstance(c, Comm) and c.pid > 0 and c.comm == c.comm.strip() for c in comms)
    assert "python3" in {c.comm for c in comms}
    # numeric key, bytes_req summed
    sizes = {k["bytes_alloc"]: v for k, v in size.entries}
    assert 32 in sizes and sizes[32]["bytes_req"] <= 32 * sizes[32]["hitcount"]


def test_values_read_exactly():
    # the first and last lines of 6.12's kmalloc.hist execname table, by hand
    t = _tables("6.12", "kmalloc")[1]
    assert t.entries[0] == ({"common_pid": Comm("kworker/u8:2", 37)},
                            {"hitcount": 6, "bytes_alloc": 16448, "bytes_req": 16448})
    assert t.entries[-1] == ({"common_pid": Comm("python3", 186)},
                             {"hitcount": 33726, "bytes_alloc": 1528112, "bytes_req": 1321667})
    assert (t.hits, t.entry_count, t.dropped) == (39092, 7, 0)
    s = _tables("6.12", "kmalloc")[0]
    assert s.entries[0] == ({"call_site": Sym(0xffffffffbb43d802, "tracing_log_err+0x182/0x1c0")},
                            {"hitcount": 1, "bytes_alloc": 192})


@pytest.mark.parametrize("kernel", KERNELS)
def test_two_keys_with_a_padded_symbol(kernel):
    (t,) = _tables(kernel, "kmem_cache_alloc")
    assert t.keys == ("call_site.sym", "bytes_alloc")
    for k, v in t.entries:
        assert set(k) == {"call_site", "bytes_alloc"} and isinstance(k["bytes_alloc"], int)
        assert k["call_site"].text == k["call_site"].text.strip() and "+0x" not in k["call_site"].text
        assert set(v) == {"hitcount"}
    assert ({"call_site": Sym(t.entries[0][0]["call_site"].address, "proc_alloc_inode"),
             "bytes_alloc": t.entries[0][0]["bytes_alloc"]}) == t.entries[0][0]


@pytest.mark.parametrize("kernel", KERNELS)
def test_string_key(kernel):
    (t,) = _tables(kernel, "sched_switch")
    names = [k["next_comm"] for k, _v in t.entries]
    assert "swapper/0" in names and "timeout" in names
    assert all(n == n.rstrip() and n for n in names)


@pytest.mark.parametrize("kernel", KERNELS)
def test_order_key(kernel):
    (t,) = _tables(kernel, "mm_page_alloc")
    orders = {k["order"]: v["hitcount"] for k, v in t.entries}
    assert 0 in orders and orders[0] == max(orders.values())


@pytest.mark.parametrize("kernel", KERNELS)
def test_full_table_counts_dropped(kernel):
    (t,) = _tables(kernel, "kfree-full")
    assert "size=128" in t.trigger
    assert t.entry_count == 128 == len(t.entries)
    assert t.dropped > 0


def test_unreadable_lines_are_kept_not_guessed():
    text = ("# trigger info: hist:keys=call_site.sym:vals=hitcount:sort=hitcount:size=2048 [active]\n"
            "{ call_site: ffffffff81000000 nobracket } hitcount: 3\n"
            "{ call_site: [ffffffff81000000] foo } hitcount: 4\n")
    (t,) = parse_hist(text)
    assert t.unreadable == ["{ call_site: ffffffff81000000 nobracket } hitcount: 3"]
    assert t.entries == [({"call_site": Sym(0xffffffff81000000, "foo")}, {"hitcount": 4})]
    assert t.hits is None
    with pytest.raises(ParseError):
        parse_hist(text, strict=True)


def test_an_unknown_pid_and_a_comm_with_blanks():
    text = ("# trigger info: hist:keys=common_pid.execname,order:vals=hitcount:size=128 [active]\n"
            "{ common_pid: <...>           [      4242], order:          0 } hitcount:          2\n"
            "{ common_pid: Web Content     [        77], order:          3 } hitcount:          1\n"
            "{ common_pid: a, b            [        78], order:          1 } hitcount:          1\n")
    (t,) = parse_hist(text, strict=True)
    assert t.entries == [({"common_pid": Comm("<...>", 4242), "order": 0}, {"hitcount": 2}),
                         ({"common_pid": Comm("Web Content", 77), "order": 3}, {"hitcount": 1}),
                         ({"common_pid": Comm("a, b", 78), "order": 1}, {"hitcount": 1})]


def test_trigger_keys():
    assert parse_trigger_keys("hist:keys=a.sym,b:vals=hitcount:sort=hitcount") == ("a.sym", "b")
    assert parse_trigger_keys("hist:key=x:vals=hitcount") == ("x",)
    assert parse_trigger_keys("") == ()
