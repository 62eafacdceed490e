"""Workloads the kernel tests run under ftslab, as ``python3 -c`` scripts."""

#: ``python3 -c EVENTFD_HOLDER N PAUSE MODE PIDFILE``: after PAUSE seconds a forked child
#: opens N eventfds (eventfd(2) kmallocs one eventfd_ctx and takes one struct file per
#: call), closes them again if MODE is ``close``, writes its pid to PIDFILE and holds
#: what it kept for 120 s, past the end of the recording; the parent (the COMMAND) exits
#: PAUSE seconds after the child says it is done.  The test kills the child by PIDFILE.
EVENTFD_HOLDER = r"""
import os, sys, time
n, pause, close, pidfile = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3] == "close", sys.argv[4]
r, w = os.pipe()
time.sleep(pause)
if os.fork() == 0:
    os.close(r)
    null = os.open(os.devnull, os.O_RDWR)  # let go of ftslab's pipes: its caller waits
    for fd in (0, 1, 2):                   # for them to close
        os.dup2(null, fd)
    fds = [os.eventfd(0) for _ in range(n)]
    if close:
        for fd in fds:
            os.close(fd)
    with open(pidfile, "w") as f:
        f.write(str(os.getpid()))
    os.write(w, b"x")
    time.sleep(120)
    os._exit(0)
os.close(w)
os.read(r, 1)
time.sleep(pause)
"""

#: ``python3 -c MANY_COMMS K PREFIX SECONDS``: K forked children, child i named
#: PREFIX + str(i) (prctl PR_SET_NAME: the kernel keeps the first 15 bytes), each opening
#: and closing pipes (a pipe_inode_info kmalloc, two struct files, ... per pipe(2)) for
#: SECONDS, then exiting; prints ``ready`` once every child has named itself and
#: ``done`` when all have exited.  A name is taken as bytes: PREFIX may hold any
#: character but NUL (a ``"`` or ``\`` tests the exporter's escaping).
MANY_COMMS = r"""
import ctypes, os, sys, time
k, prefix, seconds = int(sys.argv[1]), sys.argv[2].encode(), float(sys.argv[3])
libc = ctypes.CDLL(None, use_errno=True)
PR_SET_NAME = 15
r, w = os.pipe()
kids = []
for i in range(k):
    pid = os.fork()
    if pid == 0:
        os.close(r)
        if libc.prctl(PR_SET_NAME, ctypes.c_char_p(prefix + str(i).encode()), 0, 0, 0):
            os._exit(1)
        os.write(w, b"x")
        os.close(w)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            a, b = os.pipe()
            os.close(a)
            os.close(b)
            time.sleep(0.01)
        os._exit(0)
    kids.append(pid)
os.close(w)
got = 0
while got < k:
    b = os.read(r, k - got)
    if not b:
        break
    got += len(b)
print("ready" if got == k else f"only {got} of {k} named", flush=True)
bad = sum(os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) != 0 for p in kids)
print("done" if not bad else f"{bad} children failed", flush=True)
"""
