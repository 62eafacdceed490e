"""Lost events never hide: a run that overflows its buffer (-b 4: 4 KiB per CPU) shows
the loss in the live status line, the summary, the recording, every report format of
it, --strict, and in what a SIGKILLed session left behind (its spool)."""
from __future__ import annotations

import json
import os
import re
import sys
import threading

from robust_util import figure, run, spawn, spools_in, wait_paused

BURST = [sys.executable, "-c", "import os, time\nt = time.monotonic() + 2.5\n"
         "while time.monotonic() < t:\n    for i in range(200): "
         "os.close(os.open('/dev/null', 0))"]


def _lost(text: str) -> list[int]:
    return [int(n.replace(",", "")) for n in re.findall(r"lost ([\d,]+)", text)]


def test_loss_shows_everywhere(kernel, tmp_path):
    out = tmp_path / "lost.dat"
    master, slave = os.openpty()  # a terminal: the status line is redrawn every second
    chunks: list[bytes] = []

    def drain():
        while True:
            try:
                b = os.read(master, 65536)
            except OSError:
                return
            if not b:
                return
            chunks.append(b)

    t = threading.Thread(target=drain, daemon=True)
    t.start()
    try:
        p, _ = spawn(tmp_path, "record", "-b", "4", "-o", out, "--", *BURST, stderr=slave)
        os.close(slave)
        p.communicate(timeout=120)
    finally:
        t.join(timeout=10)
        os.close(master)
    tty = b"".join(chunks).decode(errors="replace")
    assert p.returncode == 0, tty
    status = [s for s in tty.split("\r") if "recording" in s]
    assert any(n > 0 for s in status for n in _lost(s)), status  # live, while recording
    summary = [l for l in tty.splitlines() if "recorded" in l][-1]
    assert _lost(summary)[0] > 0 and "WARNING" in tty, tty
    # the recording keeps it: every report says it first
    table = run(tmp_path, "report", out)
    assert table.returncode == 0
    assert table.stdout.splitlines()[0].startswith("WARNING") and "LOST" in table.stdout
    js = run(tmp_path, "report", out, "--format", "json")
    assert json.loads(js.stdout)["lost"] > 0 and "LOST" in js.stderr
    csv = run(tmp_path, "report", out, "--format", "csv")
    assert "LOST" in csv.stderr
    assert run(tmp_path, "report", out, "--strict").returncode == 10
    import ftslab
    ds = ftslab.load(out)
    assert ds.meta.total_lost > 0
    # the pages say when: every loss has its time window, and --live says which rows
    # the loss makes unsure
    assert all(loss.spans for loss in ds.meta.lost), ds.meta.lost
    live = json.loads(run(tmp_path, "report", out, "--live", "--format", "json").stdout)
    for t in live["tables"].values():
        assert re.search(r"CPU \d+ lost [\d,]+ events between [\d.]+ s and", t["note"]), t
        if any(c["name"] == "unsure" for c in t["columns"]):  # (not the slabinfo check)
            assert all(0 <= r["unsure"] <= r["live"] for r in t["rows"])
    figure("lost", what="record -b 4", lost=json.loads(js.stdout)["lost"])


def test_stream_says_what_it_lost(kernel, tmp_path):
    with open(tmp_path / "s.json", "w") as out:
        p, _ = spawn(tmp_path, "stream", "--format", "json", "-b", "4", "--", *BURST,
                     stdout=out)
        _o, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    summary = [l for l in err.splitlines() if "streamed" in l][-1]
    assert _lost(summary)[0] > 0 and "WARNING" in err, err
    figure("lost", what="stream -b 4", lost=_lost(summary)[0])


def test_a_killed_sessions_spool_still_shows_its_loss(kernel, tmp_path):
    """No end-of-session stats after a SIGKILL: the pages' own missed-events flags
    carry the loss into the report of the spool."""
    out = tmp_path / "k.dat"
    p, marker = spawn(tmp_path, "record", "-b", "4", "-o", out, "--", *BURST,
                      pause="flush")
    wait_paused(p, marker)
    p.kill()
    p.communicate()
    try:
        [spool] = spools_in(tmp_path)
        js = run(tmp_path, "report", spool, "--format", "json")
        assert js.returncode == 0, js.stderr
        rep = json.loads(js.stdout)
        assert rep["lost"] > 0 and rep["truncated"] is True, rep["warnings"]
        assert run(tmp_path, "report", spool, "--strict").returncode in (9, 10)
    finally:
        run(tmp_path, "reset")
    figure("lost", what="spool of a SIGKILLed record -b 4", lost=rep["lost"])
