"""ftslab: who in the Linux kernel allocates memory, from ftrace, without eBPF or modules.

Scripting API::

    import ftslab
    for ev in ftslab.read("run.dat"):      # typed, frozen ftslab.Event records
        ...
    ds = ftslab.load("run.dat")           # columnar Dataset, as reports use it
"""
import sys as _sys
import types as _types

__version__ = "0.1.0"

__all__ = ["read", "load", "Event", "EventColumns", "Dataset", "Metadata", "__version__"]

# The records and the decoder bring numpy (~0.2 s): they load on first use, so that the
# command line starts light and a Ctrl-C while they load reaches cli.main, which says
# "interrupted" instead of a traceback out of an import.
_FROM_RECORDS = ("Dataset", "Event", "EventColumns", "Metadata")


def __getattr__(name):
    if name in _FROM_RECORDS:
        from . import records
        return getattr(records, name)
    if name == "read":
        from .load import read
        return read
    raise AttributeError(f"module 'ftslab' has no attribute {name!r}")


class _Package(_types.ModuleType):
    # ``ftslab.load`` is the function, though a submodule has the same name: importing
    # the submodule sets the package's attribute to it, which this setter ignores.
    @property
    def load(self):
        from .load import load
        return load

    @load.setter
    def load(self, value):
        pass


_sys.modules[__name__].__class__ = _Package
