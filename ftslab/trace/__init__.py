"""The recorded data: event format files, ring-buffer pages and their decoding, trace.dat
read and write, the spool of a recording in progress, text traces, gfp flag tables, and
loading a recording into columns.  Pure over bytes and text (the spool writes files).
"""
from __future__ import annotations



