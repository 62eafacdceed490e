"""The ftslab command group (``cli``) and ``main``: the commands of cli/ joined into one
group, and the one place errors are caught.

Each command's options, option logic and call into the library live in its own module
(record.py, report.py, stream.py, top.py, admin.py; shared session options in
options.py).  Errors are caught in exactly one place (``main``) and mapped to the exit
codes of errors.py, with each parameter a message names given as its flag (``FLAG_OF``).
Data goes to stdout; progress, warnings and the summary go to stderr (ui.py).
"""
from __future__ import annotations

import os
import sys

import click

from ftslab.version import __version__
from ftslab.cli.ui import err, quiet_stdout
from ftslab.errors import EXIT_CODES, EXIT_USAGE, FtslabError


__all__ = ["main", "cli"]


_EXIT_HELP = "\n".join(f"  {code:>5}  {text}" for code, text in EXIT_CODES.items())


@click.group(context_settings={"help_option_names": ["-h", "--help"]},
             epilog="Exit codes:\n\n\b\n" + _EXIT_HELP)
@click.version_option(__version__, prog_name="ftslab")
def cli():
    """Who in the kernel allocates memory: kmalloc, slab caches and pages, from ftrace.

    No eBPF, no kernel module: ftslab drives tracefs from user space, in a private
    instance it removes on exit.  Needs root.
    """


def _standard_fds() -> None:
    """Make sure fds 0-2 are open (to /dev/null if they were closed): otherwise the next
    file ftslab opens (a tracefs file, the recording) would become "stderr"."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            got = os.open(os.devnull, os.O_RDWR)
            if got != fd:
                os.dup2(got, fd)
                os.close(got)
    if sys.stdout is None:
        sys.stdout = open(1, "w", closefd=False)
    if sys.stderr is None:
        sys.stderr = open(2, "w", closefd=False)


#: The library's errors name a parameter in backquotes (`by`, FtslabError.params); the
#: command line names the flag that sets it (ftslab/errors.py).
FLAG_OF = {"by": "--by", "top": "--top", "interval": "--interval", "interval_ns": "--interval",
           "live": "--live", "comm": "--comm", "cache": "--cache", "kprobes": "--kprobes",
           "stacks": "--stacks", "plot": "--plot", "cache_name_offset": "--cache-name-offset",
           "buffer_kb": "-b", "system_frees=False": "--frees traced", "source": "--source"}


def in_flag_terms(exc: FtslabError) -> str:
    """``exc``'s line with each parameter it names (`by`) given as its flag (--by)."""
    text = str(exc)
    for p in exc.params:
        text = text.replace(f"`{p}`", FLAG_OF.get(p, f"`{p}`"), 1)
    return text



from ftslab.cli.record import record  # noqa: E402
from ftslab.cli.report import report  # noqa: E402
from ftslab.cli.stream import stream  # noqa: E402
from ftslab.cli.top import top  # noqa: E402
from ftslab.cli.serve import serve  # noqa: E402
from ftslab.cli.admin import doctor, probes, reset, recover  # noqa: E402
for _command in (record, report, stream, top, serve, doctor, probes, reset, recover):
    cli.add_command(_command)


def main(argv=None) -> int:
    _standard_fds()
    try:
        cli.main(args=argv, prog_name="ftslab", standalone_mode=False)
        return 0
    except click.exceptions.Abort:
        err("aborted")
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code if exc.exit_code else EXIT_USAGE
    except FtslabError as exc:
        err(f"error: {in_flag_terms(exc)}")
        return exc.exit_code
    except BrokenPipeError:
        quiet_stdout()
        return 0
    except KeyboardInterrupt:
        err("interrupted")
        return 130
    except BaseException as exc:
        from ftslab.session.signals import Interrupted
        if isinstance(exc, Interrupted):  # a second signal while stopping
            err(f"interrupted by {exc}")
            return 128 + exc.signum
        raise


if __name__ == "__main__":
    sys.exit(main())
