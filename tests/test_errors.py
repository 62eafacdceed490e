"""Errors speak of parameters in the library and of flags on the command line.

A library call (build_report, parse_interval, comm_filter, Session.plan, ...) that is
given a bad argument raises an error naming the parameter (`by`, `interval_ns`) and no
command-line flag; the command line says the same thing of its flag (--by, --interval),
in the very words it used before the library stopped naming flags (ftslab/errors.py,
entry.FLAG_OF).  Without root: the recordings of tests/fixtures and a fake tracefs.
"""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

import ftslab
from ftslab.cli import admin
from ftslab.cli import entry
from ftslab.session.options import SessionOptions
from ftslab.session.engine import Session
from ftslab.cli.entry import main
from ftslab.errors import KernelWriteError, Unsupported, UsageError
from ftslab.kernel.filters import cache_filter, comm_filter
from ftslab.analysis.tables import GROUP_KEYS
from ftslab.analysis.build import build_report
from ftslab.analysis.grouping import group_allocations
from ftslab.analysis.series import parse_interval
from ftslab.kernel.tracefs import Tracefs

from conftest import make_fake_tracefs

FIX = Path(__file__).resolve().parent / "fixtures"
OPEN200 = FIX / "6.18" / "ftslab-open200.dat"
KPROBES = FIX / "6.12" / "ftslab-kprobes.dat"
PKG = Path(ftslab.__file__).resolve().parent
FLAG = re.compile(r"(?<![\w-])--[a-z]")


@pytest.fixture(autouse=True)
def _no_process_wide_malloc_settings(monkeypatch):
    from ftslab.trace import prefault
    monkeypatch.setattr(prefault, "keep_freed_memory", lambda: False)
    monkeypatch.setenv("FTSLAB_TRACEFS", "/nonexistent-tracefs")


@pytest.fixture(scope="module")
def open200():
    return ftslab.load(OPEN200)


@pytest.fixture(scope="module")
def kprobe_ds():
    return ftslab.load(KPROBES)


def _fake(tmp_path, kernel_stack: bool = False) -> Path:
    root = make_fake_tracefs(tmp_path)
    if kernel_stack:  # CONFIG_STACKTRACE's event (its fields do not matter to plan)
        d = root / "events" / "ftrace" / "kernel_stack"
        d.mkdir(parents=True)
        (d / "format").write_text("name: kernel_stack\nID: 4\nformat:\n")
    return root


def _plan(root: Path, **opts) -> None:
    Session(Tracefs(root), lambda m: None, name="ftslab_999999").plan(
        SessionOptions(**opts), child_pid=4194305)


def _library_cases(open200, kprobe_ds, tmp_path):
    """(call, the error's params, its line in the library, the line the CLI prints)"""
    keys = ", ".join(GROUP_KEYS)
    return [
        (lambda: build_report(open200, by=("nope",)), ("by",),
         f"unknown `by` key 'nope' (use one of {keys})",
         f"unknown --by key 'nope' (use one of {keys})"),
        (lambda: build_report(open200, by=("cache", "comm", "cache")), ("by",),
         "`by` key repeated: cache, comm, cache", "--by key repeated: cache, comm, cache"),
        (lambda: parse_interval("5x"), ("interval",),
         "`interval` '5x': give a duration such as 1s, 250ms or 100us",
         "--interval '5x': give a duration such as 1s, 250ms or 100us"),
        (lambda: parse_interval("0ms"), ("interval",),
         "`interval` '0ms': must be more than 0", "--interval '0ms': must be more than 0"),
        (lambda: group_allocations(open200, ("cache",), top=-1), ("top",),
         "`top` must be >= 0, not -1", "--top must be >= 0, not -1"),
        (lambda: build_report(open200, live=True, interval_ns=10**9), ("interval_ns", "live"),
         "`interval_ns` and `live`: the series has the outstanding bytes at the end of "
         "each interval already; give one of them",
         "--interval and --live: the series has the outstanding bytes at the end of each "
         "interval already; give one of them"),
        (lambda: build_report(kprobe_ds, live=True, source="kprobe"), ("live",),
         # the hint is a command to run: it names ftslab record's flag, as before
         "`live` pairs allocations with their frees by pointer, and kprobe events carry "
         "no pointer (record the kmem tracepoints (ftslab record without --kprobes only))",
         "--live pairs allocations with their frees by pointer, and kprobe events carry "
         "no pointer (record the kmem tracepoints (ftslab record without --kprobes only))"),
        (lambda: comm_filter("a_name_longer_than_15"), ("comm",),
         "`comm` 'a_name_longer_than_15' is longer than the kernel keeps (15 characters): "
         "use 'a_name_longer_t'",
         "--comm 'a_name_longer_than_15' is longer than the kernel keeps (15 characters): "
         "use 'a_name_longer_t'"),
        (lambda: comm_filter('a"b'), ("comm",),
         "invalid `comm` 'a\"b': only letters, digits and . : / - + * ? [ ] @ # % , = ^ ~ _ "
         "and spaces are allowed",
         "invalid --comm 'a\"b': only letters, digits and . : / - + * ? [ ] @ # % , = ^ ~ _ "
         "and spaces are allowed"),
        # a value that itself holds a parameter's name in backquotes stays as typed
        (lambda: cache_filter("`cache``by`"), ("cache",),
         "invalid `cache` '`cache``by`': only letters, digits and . : / - + * ? [ ] @ # % , "
         "= ^ ~ _ and spaces are allowed",
         "invalid --cache '`cache``by`': only letters, digits and . : / - + * ? [ ] @ # % , "
         "= ^ ~ _ and spaces are allowed"),
        (lambda: _plan(_fake(tmp_path / "k"), kprobes="bogus"), ("kprobes",),
         "`kprobes` 'bogus': expected auto, on, only or off",
         "--kprobes 'bogus': expected auto, on, only or off"),
        (lambda: _plan(_fake(tmp_path / "c"), kprobes="off", events=("kmem:kfree",),
                       cache="filp"), ("cache",),
         "`cache`: none of the events has a cache name field on this kernel (kmem:kfree)",
         "--cache: none of the events has a cache name field on this kernel (kmem:kfree)"),
        (lambda: _plan(_fake(tmp_path / "s"), kprobes="off", stacks=True), ("stacks",),
         "`stacks`: this kernel cannot record stacks (no events/ftrace/kernel_stack: "
         "CONFIG_STACKTRACE is off)",
         "--stacks: this kernel cannot record stacks (no events/ftrace/kernel_stack: "
         "CONFIG_STACKTRACE is off)"),
        (lambda: _plan(_fake(tmp_path / "t", kernel_stack=True), kprobes="off",
                       events=("kmem:kfree",), stacks=True), ("stacks",),
         "`stacks`: none of the recorded events is an allocation",
         "--stacks: none of the recorded events is an allocation"),
    ]


def test_library_errors_name_parameters_and_the_cli_their_flags(open200, kprobe_ds,
                                                                 tmp_path):
    for call, params, library, command_line in _library_cases(open200, kprobe_ds, tmp_path):
        with pytest.raises(UsageError) as ei:
            call()
        assert ei.value.params == params, library
        assert str(ei.value) == library
        assert not FLAG.search(ei.value.message), library  # a flag only in a command hint
        assert entry.in_flag_terms(ei.value) == command_line


def test_kprobes_on_without_kprobes_hint_names_the_parameter(tmp_path):
    root = _fake(tmp_path)
    with pytest.raises(Unsupported) as ei:
        _plan(root, kprobes="on")
    assert ei.value.hint == "use `kprobes` auto or off to record the kmem tracepoints only"
    # "no kprobes" in the message is not the parameter: only the hint's mention is a flag
    assert entry.in_flag_terms(ei.value) == (
        f"this kernel has no kprobes ({root}/kprobe_events is absent: "
        "CONFIG_KPROBES/CONFIG_KPROBE_EVENTS unset) (use --kprobes auto or off to record "
        "the kmem tracepoints only)")


def test_plot_without_matplotlib(monkeypatch):
    from ftslab.cli import plot
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    with pytest.raises(UsageError) as ei:
        plot.check_available()
    assert ei.value.message == "`plot` needs matplotlib, which is not installed"
    assert entry.in_flag_terms(ei.value).startswith("--plot needs matplotlib, which is not "
                                                  "installed (pip install")


@pytest.mark.parametrize("opts, refused, hint, command_line", [
    (dict(), "ftslab_999999/buffer_size_kb",
     "the kernel could not allocate that much: ask for less with `buffer_kb`",
     "the kernel could not allocate that much: ask for less with -b"),
    (dict(system_frees=True), "ftslab_999999_frees/buffer_size_kb",
     "the kernel could not allocate that much: ask for less with `buffer_kb`, or record "
     "the frees in one instance (`system_frees=False`)",
     "the kernel could not allocate that much: ask for less with -b, or record the frees "
     "in one instance (--frees traced)"),
    (dict(stacks=True), "ftslab_999999/events/kmem/kmalloc/trigger",
     "the kernel refused the stacktrace trigger: record without `stacks`",
     "the kernel refused the stacktrace trigger: record without --stacks"),
])
def test_a_refused_step_names_the_parameter_its_hint_is_about(tmp_path, monkeypatch, opts,
                                                              refused, hint, command_line):
    root = _fake(tmp_path, kernel_stack=True)

    def write(self, rel, text, append=True, instance=None, hint=None):
        if rel.endswith(refused):  # the kernel says no (as to a too large buffer)
            raise KernelWriteError(str(self.root / rel), text, "ENOMEM", None, hint)

    monkeypatch.setattr(Tracefs, "_write", write)
    s = Session(Tracefs(root), lambda m: None, name="ftslab_999999")
    steps = s.plan(SessionOptions(kprobes="off", **opts), child_pid=4194305)
    with pytest.raises(KernelWriteError) as ei:
        s.apply(steps)
    s.close()
    assert ei.value.hint == hint and refused in str(ei.value)
    assert not FLAG.search(str(ei.value))
    line = entry.in_flag_terms(ei.value)
    assert line == str(ei.value).replace(hint, command_line) and line.endswith(
        f"({command_line})")


def _one_error(capsys, args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("ftslab: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return code, lines[0].removeprefix("ftslab: error: ")


@pytest.mark.parametrize("args, line", [
    ([OPEN200, "--interval", "abc"],
     "--interval 'abc': give a duration such as 1s, 250ms or 100us"),
    ([OPEN200, "--interval", "0s"], "--interval '0s': must be more than 0"),
    ([OPEN200, "--interval", "1s", "--live"],
     "--interval and --live: the series has the outstanding bytes at the end of each "
     "interval already; give one of them"),
    ([KPROBES, "--live", "--source", "kprobe", "--format", "json"],
     "--live pairs allocations with their frees by pointer, and kprobe events carry no "
     "pointer (record the kmem tracepoints (ftslab record without --kprobes only))"),
    ([OPEN200, "--by", "cache", "--by", "comm", "--by", "cache"],
     "--by key repeated: cache, comm, cache"),
])
def test_report_says_the_flags_as_before(capsys, args, line):
    assert _one_error(capsys, ["report", *args]) == (2, line)


@pytest.mark.parametrize("args, kernel_stack, code, line", [
    (["--comm", "a_name_longer_than_15"], False, 2,
     "--comm 'a_name_longer_than_15' is longer than the kernel keeps (15 characters): "
     "use 'a_name_longer_t'"),
    (["--comm", 'a"b'], False, 2,
     "invalid --comm 'a\"b': only letters, digits and . : / - + * ? [ ] @ # % , = ^ ~ _ "
     "and spaces are allowed"),
    (["--cache", 'a"b'], False, 2,
     "invalid --cache 'a\"b': only letters, digits and . : / - + * ? [ ] @ # % , = ^ ~ _ "
     "and spaces are allowed"),
    (["-e", "kmem:kfree", "--cache", "x"], False, 2,
     "--cache: none of the events has a cache name field on this kernel (kmem:kfree)"),
    (["--stacks"], False, 2,
     "--stacks: this kernel cannot record stacks (no events/ftrace/kernel_stack: "
     "CONFIG_STACKTRACE is off)"),
    (["-e", "kmem:kfree", "--stacks"], True, 2,
     "--stacks: none of the recorded events is an allocation"),
])
def test_record_says_the_flags_as_before(capsys, tmp_path, args, kernel_stack, code, line):
    root = _fake(tmp_path, kernel_stack)
    got = _one_error(capsys, ["record", "--tracefs", root, "--dry-run", "--kprobes", "off",
                              *args])
    assert got == (code, line)


def test_record_kprobes_on_without_kprobes_says_the_flag(capsys, tmp_path):
    root = _fake(tmp_path)
    got = _one_error(capsys, ["record", "--tracefs", root, "--dry-run", "--kprobes", "on"])
    assert got == (8, f"this kernel has no kprobes ({root}/kprobe_events is absent: "
                      "CONFIG_KPROBES/CONFIG_KPROBE_EVENTS unset) (use --kprobes auto or off "
                      "to record the kmem tracepoints only)")


def test_report_plot_without_matplotlib_says_the_flag(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, line = _one_error(capsys, ["report", OPEN200, "--plot", tmp_path / "x.png"])
    assert (code, line) == (2, "--plot needs matplotlib, which is not installed (pip "
                               "install 'ftslab[plot]'  (or: pip install matplotlib))")


# ------------------------------------------------------------------ the whole package

def _error_calls(tree):
    """Every raise's exception, and every capture.Step (its hint is the error's when
    the kernel refuses the step)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and node.exc is not None:
            yield node.exc
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id == "Step"):
            yield node


def _texts(node) -> list[str]:
    """The literal text of a message expression (f-strings: their constant parts)."""
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant)
            and isinstance(n.value, str)]


#: library errors that still name a flag, and why
STILL_FLAGS = {
    # doctor puts plan_probes's refusals into its own report (str(exc)), which the CLI
    # prints as they are: their flags are the report's words
    ("kprobes.py", "--cache-name-offset "),
    ("kprobes.py", "record with --kprobes off (tracepoints only)"),
}


def test_no_library_error_names_a_flag_and_every_parameter_has_one():
    """Every literal text raised outside the command line (ftslab/cli/) names no flag, unless it is a command to
    run (``ftslab record ... --stacks``); every ``params`` name has a flag in FLAG_OF
    and is mentioned as `name` in the raise."""
    seen_params = set()
    for path in sorted(PKG.rglob("*.py")):
        if path.parent.name == "cli" and path.name != "plot.py":
            continue  # the command line speaks of flags; plot.py is a library of its own
        tree = ast.parse(path.read_text())
        for exc in _error_calls(tree):
            texts = _texts(exc)
            for t in texts:
                if FLAG.search(t) and "ftslab " not in t:
                    assert (path.name, t) in STILL_FLAGS, (path.name, exc.lineno, t)
            for kw in (exc.keywords if isinstance(exc, ast.Call) else ()):
                if kw.arg == "params" and isinstance(kw.value, ast.Tuple):
                    for el in kw.value.elts:
                        name = el.value
                        seen_params.add(name)
                        assert name in entry.FLAG_OF, (path.name, exc.lineno, name)
                        assert any(f"`{name}`" in t for t in texts), (path.name, exc.lineno)
    # the scan sees them (filters.string_literal passes its params through a variable)
    assert seen_params >= {"by", "interval", "top", "interval_ns", "live", "comm", "cache",
                           "kprobes", "stacks", "plot", "cache_name_offset", "buffer_kb",
                           "system_frees=False"}
