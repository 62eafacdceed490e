"""The command line: one click command per module (record, report, stream, top, and the
housekeeping commands in admin.py), the group and ``main`` in ``entry.py``.
"""
from ftslab.cli.entry import cli, main

__all__ = ["cli", "main"]
