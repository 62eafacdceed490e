"""ftslab: who in the Linux kernel allocates memory, from ftrace, without eBPF or modules.

Scripting API::

    import ftslab
    for ev in ftslab.read("run.dat"):      # typed, frozen ftslab.Event records
        ...
    ds = ftslab.load("run.dat")           # columnar Dataset, as reports use it
"""
__version__ = "0.1.0"

from .records import Dataset, Event, EventColumns, Metadata  # noqa: E402
from .load import load, read  # noqa: E402

__all__ = ["read", "load", "Event", "EventColumns", "Dataset", "Metadata", "__version__"]
