"""The one error root of ftslab, and the exit codes it maps to.

Every failure a user can cause or meet (bad input, missing privileges, a kernel that
refuses a write, a damaged recording) is raised as a subclass of FtslabError, with a
message that says what happened and a hint that says what to do.  The CLI catches
FtslabError in exactly one place and turns it into one line on stderr and the exit
code below.  Nothing else in the package may print to the user or call sys.exit.

The package is also a library, so a message speaks of the parameters of the call, not of
command-line flags: it names a parameter in backquotes (`by`, `interval_ns`) before any
value it quotes, and lists it in ``params``; the CLI says the flag that sets it there
instead (cli/entry.FLAG_OF, applied where it catches the error).
"""
from __future__ import annotations


__all__ = [
    "EXIT_OK", "EXIT_USAGE", "EXIT_PERMISSION", "EXIT_TRACEFS", "EXIT_KERNEL",
    "EXIT_INPUT", "EXIT_IO", "EXIT_UNSUPPORTED", "EXIT_TRUNCATED", "EXIT_LOST",
    "EXIT_CODES", "FtslabError", "UsageError", "PermissionDenied", "TracefsUnavailable",
    "KernelWriteError", "BadInput", "ParseError", "TruncatedRecording", "OutputError",
    "Unsupported", "Stopped", "CleanupIncomplete"
]


EXIT_OK = 0


EXIT_USAGE = 2          # bad command line (also click's own usage errors)


EXIT_PERMISSION = 3     # not root / no CAP_SYS_ADMIN / lockdown / read-only tracefs


EXIT_TRACEFS = 4        # tracefs not mounted or not usable


EXIT_KERNEL = 5         # the kernel refused a tracefs write (error_log says why)


EXIT_INPUT = 6          # an input file is missing, not a recording, or corrupt


EXIT_IO = 7             # writing the recording or the output failed (disk full, ...)


EXIT_UNSUPPORTED = 8    # the kernel lacks a feature that was explicitly asked for


EXIT_TRUNCATED = 9      # --strict: the recording was cut short


EXIT_LOST = 10          # --strict: events were lost


EXIT_VERIFY = 11        # kprobe fetch args read garbage: cache names not this kernel's


#: Documented in `ftslab --help`.
EXIT_CODES = {
    EXIT_OK: "success",
    1: "internal error (a bug: please report it)",
    EXIT_USAGE: "bad command line",
    EXIT_PERMISSION: "not permitted (not root, lockdown, read-only tracefs)",
    EXIT_TRACEFS: "tracefs not mounted or not usable",
    EXIT_KERNEL: "the kernel refused a tracefs write",
    EXIT_INPUT: "input file missing, not a recording, or unreadable",
    EXIT_IO: "could not write output (disk full, closed pipe, ...)",
    EXIT_UNSUPPORTED: "kernel lacks a feature that was asked for",
    EXIT_TRUNCATED: "recording truncated (with --strict)",
    EXIT_LOST: "events were lost (with --strict)",
    EXIT_VERIFY: "kprobe cache names read at the chosen offset are not this kernel's "
                 "caches (nothing recorded; give --cache-name-offset)",
    "128+N": "stopped by signal N before recording started (nothing recorded)",
}


class FtslabError(Exception):
    """Root of every error ftslab reports to a user.

    ``message`` says what happened; ``hint`` (optional) says what to do about it;
    ``params``: the parameters of the call they name (each as `name`, its first mention).
    """

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None, params: tuple[str, ...] = ()):
        super().__init__(message)
        self.message = message
        if hint is not None:
            self.hint = hint
        if params:
            self.params = tuple(params)

    hint: str | None = None
    params: tuple[str, ...] = ()

    def __str__(self) -> str:  # one line, always
        text = self.message
        if self.hint:
            text += f" ({self.hint})"
        return " ".join(text.split("\n"))


class UsageError(FtslabError):
    exit_code = EXIT_USAGE


class PermissionDenied(FtslabError):
    exit_code = EXIT_PERMISSION
    # tracefs checks file modes only (root's 0700/0640 files), not capabilities: root
    # without CAP_SYS_ADMIN records fine (tested: tests/robustness/test_permissions.py)
    hint = "run ftslab as root: tracefs files belong to root"


class TracefsUnavailable(FtslabError):
    exit_code = EXIT_TRACEFS
    hint = "mount it: mount -t tracefs nodev /sys/kernel/tracing"


class CleanupIncomplete(FtslabError):
    """The session ended, but some of its undo steps failed: something of it is left in
    tracefs (the warnings before say what)."""

    exit_code = EXIT_KERNEL


class KernelWriteError(FtslabError):
    """A write into tracefs was refused.  Carries what was written, where, and the
    kernel's own explanation from error_log when there is one."""

    exit_code = EXIT_KERNEL

    def __init__(self, path: str, written: str, errno_name: str, error_log: str | None = None,
                 hint: str | None = None):
        msg = f"kernel refused writing {written!r} to {path}: {errno_name}"
        if error_log:
            msg += f"; error_log: {error_log.strip()}"
        super().__init__(msg, hint)
        self.path = path
        self.written = written
        self.errno_name = errno_name
        self.error_log = error_log


class BadInput(FtslabError):
    exit_code = EXIT_INPUT


class ParseError(BadInput):
    """Input bytes/text that do not follow the expected grammar or layout."""


class TruncatedRecording(BadInput):
    exit_code = EXIT_TRUNCATED


class OutputError(FtslabError):
    exit_code = EXIT_IO


class Unsupported(FtslabError):
    exit_code = EXIT_UNSUPPORTED


class Stopped(FtslabError):
    """A stop signal arrived before anything was recorded: exit 128 + the signal."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class ProbeVerifyFailed(FtslabError):
    """The kprobe fetch args were checked against the kernel and read garbage."""

    exit_code = EXIT_VERIFY
