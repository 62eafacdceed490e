"""ftslab: who in the Linux kernel allocates memory, from ftrace, without eBPF or modules.

Scripting API::

    import ftslab
    for ev in ftslab.read("run.dat"):      # typed, frozen ftslab.Event records
        ...
    ds = ftslab.load("run.dat")           # columnar Dataset, as reports use it
"""
from ftslab.version import __version__

__all__ = ["read", "load", "Event", "EventColumns", "Dataset", "Metadata", "__version__"]

# The records and the decoder bring numpy (~0.2 s): they load on first use, so that the
# command line starts light and a Ctrl-C while they load reaches cli.main, which says
# "interrupted" instead of a traceback out of an import.
_FROM_DATASET = ("Dataset", "Event", "EventColumns", "Metadata")


def __getattr__(name):
    if name in _FROM_DATASET:
        from ftslab import dataset
        return getattr(dataset, name)
    if name in ("read", "load"):
        from ftslab.trace import loader
        return getattr(loader, name)
    raise AttributeError(f"module 'ftslab' has no attribute {name!r}")
