"""Kernel lockdown: what its level means for ftslab, in one sentence.

Pure (tracefs.read_lockdown reads /sys/kernel/security/lockdown).  What the kernel does,
from security/lockdown/lockdown.c and include/linux/security.h (the lockdown LSM and
the tracefs/kprobes restrictions came in v5.4; kernel commits not identified), and the
users of each reason:

- The levels are ``none``, ``integrity``, ``confidentiality``; the file shows the current
  one in brackets (``none [integrity] confidentiality``).  A level can only be raised
  (``lock_kernel_down()`` refuses to lower it): a test cannot try a level and go back.
- ``security_locked_down(what)`` refuses (EPERM, and the kernel logs
  "Lockdown: COMM: use of tracefs is restricted; see man kernel_lockdown.7") every reason
  at or below the current level.  ``LOCKDOWN_KPROBES`` ("use of kprobes") and
  ``LOCKDOWN_TRACEFS`` ("use of tracefs") come after ``LOCKDOWN_INTEGRITY_MAX`` in
  ``enum lockdown_reason``: only ``confidentiality`` refuses them, ``integrity`` does not.
- Under ``confidentiality`` the opens of tracefs files fail with EPERM
  (``tracing_check_open_get_tr()``, ``dyn_event_open()``, ``probes_open()``), kprobe events
  cannot be created, and a kernel locked down at boot does not populate tracefs at all
  (``tracing_init_dentry()``: "Tracing disabled due to lockdown").
"""
from __future__ import annotations


__all__ = ["LEVELS", "parse_lockdown", "lockdown_refusal"]


LEVELS = ("none", "integrity", "confidentiality")


def parse_lockdown(text: str | None) -> str | None:
    """The current level from the lockdown file's text, None if unknown.

    ``"none [integrity] confidentiality"`` -> ``"integrity"``."""
    if not text:
        return None
    for word in text.split():
        if len(word) > 2 and word[0] == "[" and word[-1] == "]" and word[1:-1] in LEVELS:
            return word[1:-1]
    return None


def lockdown_refusal(level: str | None, what: str = "tracefs") -> str | None:
    """Why the kernel refuses ``what`` ("tracefs" or "kprobes") at this lockdown level,
    None when lockdown does not explain a refusal."""
    if level != "confidentiality":
        return None
    use = "kprobe events" if what == "kprobes" else "tracefs"
    return (f"the kernel is locked down to 'confidentiality' (/sys/kernel/security/lockdown), "
            f"which refuses all use of {use}; 'integrity' would allow it, and lockdown "
            "can only be lowered by rebooting without it (lockdown= on the kernel command "
            "line, or Secure Boot policy)")
