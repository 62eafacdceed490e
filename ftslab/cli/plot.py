"""Presentation: a time series table (series.interval_series) as a PNG, with matplotlib.

matplotlib is an optional extra (``pip install 'ftslab[plot]'``): nothing else in ftslab
needs it, and it is imported only here, only when a plot is asked for.  Pure in the
sense of the render layer: it draws the rows it is given and writes the one file named.
"""
from __future__ import annotations

from ftslab.analysis.tables import Table
from ftslab.errors import UsageError


__all__ = ["check_available", "plot_series"]


def check_available() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("`plot` needs matplotlib, which is not installed",
                         hint="pip install 'ftslab[plot]'  (or: pip install matplotlib)",
                         params=("plot",))


def plot_series(t: Table, path: str, title: str = "") -> None:
    """Two panels sharing the time axis: bytes allocated per second, and bytes
    outstanding (allocated in the recording, not yet freed), one line per key."""
    check_available()
    import matplotlib
    matplotlib.use("Agg")  # files only: never a window, never a display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    from ftslab.cli.render import human_bytes

    keys = [c.name for c in t.columns if c.unit == "" and c.name != "t_s"]
    series: dict[str, tuple[list, list, list]] = {}
    objs: dict[str, tuple[list, list]] = {}  # traced outstanding vs the kernel's active
    kernel = any(c.name == "kernel_delta_active" for c in t.columns)
    for r in t.rows:
        label = " / ".join(str(r[k]) for k in keys)
        xs, rate, held = series.setdefault(label, ([], [], []))
        xs.append(r["t_s"])
        rate.append(r["bytes_per_s"])
        held.append(r["outstanding"])
        if kernel:
            o = objs.setdefault(label, ([], []))
            o[0].append(r["outstanding_objs"])
            o[1].append(r["kernel_delta_active"])
    fig, axes = plt.subplots(3 if kernel else 2, 1, sharex=True,
                             figsize=(10, 10 if kernel else 7), dpi=100)
    top, bottom = axes[0], axes[1]
    fmt = FuncFormatter(lambda v, _pos: human_bytes(int(v)))
    for label, (xs, rate, held) in series.items():
        line, = top.plot(xs, rate, drawstyle="steps-post", label=label)
        if all(h is not None for h in held):
            bottom.plot(xs, held, drawstyle="steps-post", label=label)
        if kernel:
            traced, active = objs[label]
            if all(v is not None for v in traced):
                axes[2].plot(xs, traced, drawstyle="steps-post", color=line.get_color())
            pts = [(x, v) for x, v in zip(xs, active) if v is not None]
            if pts:
                axes[2].plot(*zip(*pts), drawstyle="steps-post", linestyle="--",
                             color=line.get_color())
    if kernel:
        axes[2].set_ylabel("objects: traced outstanding (solid),\n"
                           "kernel active since start (dashed)")
        axes[2].grid(True, alpha=0.3)
    top.set_ylabel("allocated per second")
    bottom.set_ylabel("outstanding (not freed)")
    axes[-1].set_xlabel("seconds from the first event")
    for ax in (top, bottom):
        ax.yaxis.set_major_formatter(fmt)
        ax.grid(True, alpha=0.3)
    if series:
        top.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(f"{t.title}{' - ' + title if title else ''}")
    fig.tight_layout()
    try:
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
