"""The analysis of a recording: pure functions over a ``Dataset``'s columns, from the
pairing of allocations with their frees to the tables a report prints.
"""
from __future__ import annotations



