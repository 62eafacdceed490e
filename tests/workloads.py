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
