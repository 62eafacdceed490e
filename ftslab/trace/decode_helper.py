"""A loop over numbered items, shared with one forked child process: the second CPU for
work that holds the GIL (numpy steps on small arrays), which threads cannot share.

The child is forked, so it sees the parent's memory (decompressed pages) without a
copy.  Both processes take the next item from one queue (a pipe of item numbers: each
read of one number is atomic), so neither waits while the other has work left.  The
child writes each result, pickled with its arrays out of band, to an anonymous memory
file used as a ring (its pages are written again, not made anew for each result) and
says where on a pipe; the parent reads it, says so on a socket (that space is free
again), and hands out every result in item order.

The child must not outlive its parent, write to stdout/stderr, or run the parent's
atexit or cleanup code (it leaves with os._exit).  And it is never required: when
fork is refused, or the child dies or raises, the parent computes what is missing
itself, so results never depend on the child.
"""
from __future__ import annotations

import collections
import os
import pickle
import select
import signal
import socket
import struct
import warnings
from typing import Callable, Iterator


__all__ = ["in_order", "usable_cpus"]


_ITEM = struct.Struct("<i")


_DONE = struct.Struct("<iqq")  # item, offset in the memory file, length


_HEAD = struct.Struct("<q")    # count of out-of-band buffers, then their lengths


_ALIGN = 64                    # each buffer starts aligned (numpy reads it in place)


_RING = 64 << 20               # the memory file's size, unless one result is larger


_MAX_ITEMS = 16384             # item numbers fit in one pipe's buffer (64 KiB)


# A child with no result for this long is taken for stuck (its items are one decode
# block each: tens of milliseconds): it is killed and the parent does the rest.
_STUCK_S = 20.0


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def in_order(work: Callable[[int], object], n: int, share: bool = True,
             pack: Callable[[object], object] | None = None,
             unpack: Callable[[object], object] | None = None
             ) -> Iterator[tuple[int, object]]:
    """Yield (i, work(i)) for i in 0..n-1 in order, sharing the calls with a forked
    child when ``share`` (and fork works).  The child's results travel as
    ``pack(result)``, pickled (numpy arrays out of band: no copy in the pickle), and
    come back as ``unpack(...)``.  Closing the iterator early stops the child."""
    helper = (_Child.start(work, n, pack or _same, unpack or _same)
              if share and 1 < n <= _MAX_ITEMS else None)
    if helper is None:
        for i in range(n):
            yield i, work(i)
        return
    try:
        yield from helper.results()
    finally:
        helper.close()


class _Child:
    def __init__(self, pid: int, queue: int, done: int, acks: int, mem: int, work, n: int,
                 unpack):
        self.pid, self.queue, self.done, self.mem = pid, queue, done, mem
        self.acks = socket.socket(fileno=acks)
        self.work, self.n, self.unpack = work, n, unpack
        self._buf = b""
        self.alive = True

    @classmethod
    def start(cls, work, n: int, pack, unpack) -> "_Child | None":
        if not hasattr(os, "fork") or not hasattr(os, "memfd_create"):
            return None
        fds: list[int] = []
        try:
            q_r, q_w = os.pipe()
            fds += [q_r, q_w]
            d_r, d_w = os.pipe()
            fds += [d_r, d_w]
            # acks go the other way on a socket: a send to a dead child fails with
            # EPIPE (MSG_NOSIGNAL), never with a SIGPIPE the parent may handle
            a_w_sock, a_r_sock = socket.socketpair()
            a_r, a_w = a_r_sock.detach(), a_w_sock.detach()
            fds += [a_r, a_w]
            mem = os.memfd_create("ftslab-results", os.MFD_CLOEXEC)
            fds.append(mem)
            os.write(q_w, b"".join(_ITEM.pack(i) for i in range(n)))
            os.close(q_w)
            fds.remove(q_w)
            os.set_blocking(q_r, False)
            die_with_parent = _death_signal()
            with warnings.catch_warnings():
                # Python 3.12+ warns when other threads exist (a progress line): the
                # child only runs ``work`` and os calls, no lock another thread holds
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
        except OSError:
            for fd in fds:
                os.close(fd)
            return None
        if pid == 0:  # the child
            status = 1
            try:
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
                    signal.signal(sig, signal.SIG_DFL)  # not the parent's handlers
                die_with_parent()
                os.close(d_r)
                os.close(a_w)
                _serve(work, pack, q_r, d_w, a_r, mem)
                status = 0
            finally:
                os._exit(status)
        os.close(d_w)
        os.close(a_r)
        return cls(pid, q_r, d_r, a_w, mem, work, n, unpack)

    def _read_done(self, wait: bool) -> list[tuple[int, int, int]]:
        """The child's result notices that have come (waiting for one if ``wait``);
        marks the child gone at end of file."""
        if not self.alive:
            return []
        if not select.select([self.done], [], [], _STUCK_S if wait else 0)[0]:
            if wait:
                self._stop()
                self.alive = False
            return []
        chunk = os.read(self.done, 1 << 16)
        if not chunk:
            self.alive = False
            return []
        self._buf += chunk
        k = len(self._buf) // _DONE.size * _DONE.size
        got = [_DONE.unpack_from(self._buf, o) for o in range(0, k, _DONE.size)]
        self._buf = self._buf[k:]
        return got

    def _load(self, off: int, length: int):
        data = os.pread(self.mem, length, off)
        try:
            self.acks.send(b"\1", socket.MSG_NOSIGNAL)  # read: may be written again
        except OSError:
            pass  # the child is gone
        if len(data) != length:
            raise OSError("short read of the helper's results")
        (count,) = _HEAD.unpack_from(data, 0)
        lens = struct.unpack_from(f"<{count + 1}q", data, _HEAD.size)
        at = _HEAD.size + 8 * (count + 1)
        mv = memoryview(data)
        body = mv[at:at + lens[0]]
        at = _aligned(at + lens[0])
        bufs = []
        for ln in lens[1:]:
            bufs.append(mv[at:at + ln])
            at = _aligned(at + ln)
        return self.unpack(pickle.loads(body, buffers=bufs))

    def results(self) -> Iterator[tuple[int, object]]:
        pending: dict[int, object] = {}
        where: dict[int, tuple[int, int]] = {}
        for i in range(self.n):
            while i not in pending and i not in where:
                for item, off, length in self._read_done(wait=False):
                    where[item] = (off, length)
                if i in where:
                    break
                j = _claim(self.queue)
                if j is not None:
                    pending[j] = self.work(j)
                    continue
                # all taken: item i is the child's (or lost with it)
                for item, off, length in self._read_done(wait=True):
                    where[item] = (off, length)
                if i not in where and not self.alive:
                    pending[i] = self.work(i)
            if i in pending:
                yield i, pending.pop(i)
                continue
            off, length = where.pop(i)
            try:
                value = self._load(off, length)
            except (OSError, pickle.UnpicklingError, struct.error):
                value = self.work(i)
            yield i, value

    def _stop(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        self._stop()
        while True:
            try:
                os.waitpid(self.pid, 0)
                break
            except ChildProcessError:
                break
            except InterruptedError:
                continue
        self.acks.close()
        for fd in (self.queue, self.done, self.mem):
            os.close(fd)


def _claim(queue: int) -> int | None:
    """The next item nobody has taken, or None."""
    try:
        got = os.read(queue, _ITEM.size)
    except BlockingIOError:
        return None
    return _ITEM.unpack(got)[0] if len(got) == _ITEM.size else None


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def _same(value):
    return value


def _serve(work, pack, queue: int, done: int, acks: int, mem: int) -> None:
    """The child: results of the items it takes, until none are left."""
    pos = 0
    unread: collections.deque[tuple[int, int]] = collections.deque()  # in write order
    while (i := _claim(queue)) is not None:
        value = work(i)
        bufs: list = []
        body = pickle.dumps(pack(value), protocol=5, buffer_callback=bufs.append)
        raws = [b.raw() for b in bufs]
        lens = [len(body)] + [r.nbytes for r in raws]
        head = _HEAD.pack(len(raws)) + struct.pack(f"<{len(lens)}q", *lens)
        parts, at = [head, body], len(head) + len(body)
        for r in raws:
            pad = _aligned(at) - at
            if pad:
                parts.append(bytes(pad))
            parts.append(r)
            at += pad + r.nbytes
        if pos and pos + at > _RING:
            pos = 0  # round the ring
        # the parent reads results in the order they are written, one ack each: wait
        # until none it has not read lies where this one goes
        while any(s < pos + at and pos < e for s, e in unread):
            if not os.read(acks, 1):
                raise OSError("the parent is gone")
            unread.popleft()
        written = os.pwritev(mem, parts, pos)
        if written != at:
            raise OSError("short write of a result")
        os.write(done, _DONE.pack(i, pos, at))
        unread.append((pos, pos + at))
        pos = _aligned(pos + at)


def _death_signal() -> Callable[[], None]:
    """What the child calls to be killed when the parent dies (PR_SET_PDEATHSIG);
    made before the fork (the child imports nothing: another thread of the parent may
    have held the import lock at the fork)."""
    try:
        import ctypes
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return lambda: None
    return lambda: prctl(1, int(signal.SIGKILL), 0, 0, 0)
