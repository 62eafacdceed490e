"""The recorded data: event format files, ring-buffer pages and their decoding, trace.dat
read and write, the spool of a recording in progress, text traces, gfp flag tables,
kallsyms and /proc/slabinfo texts, and loading a recording into columns.  Pure over bytes
and text, except for the files named to it (trace.dat, spool) and the decoding helpers
(a forked child, prefaulted memory).  Touches no kernel interface: imports nothing from
kernel/, session/, analysis/ or cli/.
"""
from __future__ import annotations



