"""Live sessions: one engine (``engine.Session``, ``run.run_session``) sets up a private
instance, moves its pages, and undoes it all; ``record`` writes a trace.dat, ``stream``
prints events as they come, ``top`` keeps a live table.  tracefs files are opened only
through kernel/tracefs.py; nothing here imports cli/.
"""
from __future__ import annotations



