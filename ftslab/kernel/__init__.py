"""The running kernel: tracefs and its instances (tracefs.py, the one module that opens
tracefs files), the /proc and /sys readers (procfs.py, slabsample.py), and what is decided
or said about them, pure: kprobe planning, BTF, lockdown, event filters, events enabled
elsewhere, the undo stack, doctor.  Imports nothing from session/, analysis/ or cli/.
"""
from __future__ import annotations



