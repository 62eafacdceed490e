"""Everything that touches the running kernel: tracefs and its instances, /proc and /sys
readers, kprobe planning, BTF, lockdown, event filters, the undo stack, doctor.
"""
from __future__ import annotations



