"""Which processes are alive: the owner pid in the name of an instance, a probe group or a
spool, checked before anything of theirs is called stale.

It only asks the kernel whether a pid exists (signal 0): it signals no one.
"""
from __future__ import annotations
import os

__all__ = ["pid_alive"]


#: PID_MAX_LIMIT (include/linux/threads.h, 64-bit): no pid is larger.
_PID_MAX_LIMIT = 4 * 1024 * 1024


def pid_alive(pid: int) -> bool:
    if not 0 < pid <= _PID_MAX_LIMIT:  # kill(0) is our group; a name can say anything
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
