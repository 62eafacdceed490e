"""ftslab's version: written into every recording (trace.dat's ftslab section)."""

__version__ = "0.1.0"
