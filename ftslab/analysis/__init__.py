"""The analysis of a recording: pure functions over a ``Dataset``'s columns, from the
pairing of allocations with their frees to the tables a report prints.  No I/O and no
printing; imports nothing from kernel/, session/ or cli/.
"""
from __future__ import annotations



