"""decode_helper.in_order: items shared with a forked child come back complete and in order,
whatever happens to the child."""
import os
import signal
import time

import numpy as np
import pytest

from ftslab.trace import decode_helper


_PARENT = os.getpid()
_CHILD_TOOK_ONE = os.memfd_create("child-took-one")


def _work(i):
    """One item.  The parent's calls wait while a child is alive and has taken no item
    yet, so that both processes take some however the machine schedules them."""
    if os.getpid() != _PARENT:
        os.pwrite(_CHILD_TOOK_ONE, b"x", 0)
    else:
        deadline = time.monotonic() + 120  # a guard against a hang, not a measure
        while (os.fstat(_CHILD_TOOK_ONE).st_size == 0 and _live_children()
               and time.monotonic() < deadline):
            time.sleep(0.001)
    return {"i": i, "pid": os.getpid(), "a": np.arange(i * 1000, dtype=np.uint64),
            "s": f"item {i}"}


def _check(results, n):
    assert [i for i, _ in results] == list(range(n))
    for i, v in results:
        assert v["i"] == i and v["s"] == f"item {i}"
        assert np.array_equal(v["a"], np.arange(i * 1000, dtype=np.uint64))


def _children() -> set[int]:
    """This process's children, zombies included (not yet reaped)."""
    out: set[int] = set()
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/children") as f:
            out |= {int(p) for p in f.read().split()}
    return out


def _live_children() -> set[int]:
    """This process's children that have not exited (zombies left out)."""
    live = set()
    for pid in _children():
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X"):
            live.add(pid)
    return live


@pytest.fixture(autouse=True)
def _no_child_left():
    os.ftruncate(_CHILD_TOOK_ONE, 0)
    before = _children()
    yield
    assert _children() <= before  # the helper was killed and reaped on every path


def test_items_come_back_in_order_and_the_child_computes_some():
    results = list(decode_helper.in_order(_work, 40))
    _check(results, 40)
    pids = {v["pid"] for _, v in results}
    assert os.getpid() in pids and len(pids) == 2  # both processes took items


def test_pack_and_unpack_apply_to_the_childs_results_only():
    parent = os.getpid()
    results = list(decode_helper.in_order(_work, 30, pack=lambda v: dict(v, packed=True),
                                   unpack=lambda v: dict(v, unpacked=True)))
    _check(results, 30)
    for _, v in results:
        from_child = v["pid"] != parent
        assert v.get("packed", False) == from_child
        assert v.get("unpacked", False) == from_child


def test_not_shared_runs_everything_here():
    results = list(decode_helper.in_order(_work, 10, share=False))
    _check(results, 10)
    assert {v["pid"] for _, v in results} == {os.getpid()}


@pytest.mark.parametrize("how", ["killed", "raises"])
def test_a_child_that_dies_leaves_its_items_to_the_parent(how):
    parent = os.getpid()

    def work(i):
        if os.getpid() != parent and i >= 5:
            if how == "killed":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError("child fails")
        return _work(i)

    results = list(decode_helper.in_order(work, 40))
    _check(results, 40)


def test_fork_refused_computes_everything_here(monkeypatch):
    def refuse():
        raise OSError(11, "Resource temporarily unavailable")
    monkeypatch.setattr(os, "fork", refuse)
    results = list(decode_helper.in_order(_work, 10))
    _check(results, 10)
    assert {v["pid"] for _, v in results} == {os.getpid()}


def test_stopping_early_reaps_the_child():
    it = decode_helper.in_order(_work, 200)
    for i, _ in it:
        if i == 3:
            break
    it.close()


def test_an_error_in_the_parent_reaps_the_child():
    parent = os.getpid()

    def work(i):
        if os.getpid() == parent and i >= 2:
            raise ValueError("bad block")
        return _work(i)

    with pytest.raises(ValueError):
        list(decode_helper.in_order(work, 100))


def test_a_stuck_child_is_killed_and_its_items_done_here(monkeypatch):
    parent = os.getpid()
    monkeypatch.setattr(decode_helper, "_STUCK_S", 0.5)

    def work(i):
        if os.getpid() != parent and i >= 3:
            time.sleep(3600)  # a child that never answers
        return _work(i)

    t0 = time.monotonic()
    results = list(decode_helper.in_order(work, 20))
    _check(results, 20)
    assert time.monotonic() - t0 < 30


@pytest.mark.parametrize("ring", [1 << 16, 3000])
def test_the_childs_results_go_round_the_ring(monkeypatch, ring):
    """Many results through a small ring (written over once read), and results larger
    than the whole ring, all come back intact."""
    monkeypatch.setattr(decode_helper, "_RING", ring)
    results = list(decode_helper.in_order(_work, 60))
    _check(results, 60)
    assert len({v["pid"] for _, v in results}) == 2


def test_a_dead_childs_acks_raise_no_sigpipe_in_the_parent(monkeypatch):
    """A parent that handles SIGPIPE (ftslab's capture loop does) is not interrupted
    when it tells a dead child that a result was read."""
    got = []
    old = signal.signal(signal.SIGPIPE, lambda s, f: got.append(s))
    try:
        parent = os.getpid()

        def work(i):
            if os.getpid() != parent and i >= 5:
                os.kill(os.getpid(), signal.SIGKILL)
            return _work(i)
        _check(list(decode_helper.in_order(work, 40)), 40)
    finally:
        signal.signal(signal.SIGPIPE, old)
    assert got == []
