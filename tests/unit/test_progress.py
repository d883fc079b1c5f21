"""count's progress display: a bar in place on a terminal, occasional plain lines otherwise."""

from __future__ import annotations

import io

from count.progress import PLAIN_INTERVAL_S, Progress, bar


def test_bar_shows_done_of_total_percent_and_time():
    assert bar(0, 450, "ranges", 0.0, width=10) == "[..........]  0/450 ranges  0%  0 s"
    assert bar(225, 450, "ranges", 12.4, width=10) == "[#####.....]  225/450 ranges  50%  12 s"
    assert bar(500, 450, "ranges", 3, width=10) == "[##########]  450/450 ranges  100%  3 s"
    assert bar(7, 0, "points", 2.0) == "7 points  2 s"  # total unknown: no bar


def test_a_terminal_gets_one_line_redrawn_and_ended():
    out = io.StringIO()
    progress = Progress(out, "repair", "ranges", tty=True)
    progress.update(1, 4, 0.5)
    progress.update(3, 4, 1.0)
    progress.finish()
    text = out.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n") and text.count("\n") == 1
    assert "3/4 ranges  75%" in text.rsplit("\r", 1)[1]


def test_a_pipe_gets_a_line_at_most_every_interval_and_only_on_change():
    out = io.StringIO()
    progress = Progress(out, "repair", "ranges", tty=False)
    progress.update(1, 400, 0.5)
    progress.update(2, 400, 1.0)  # too soon
    progress.update(2, 400, 0.5 + PLAIN_INTERVAL_S)
    progress.update(2, 400, 0.5 + 3 * PLAIN_INTERVAL_S)  # nothing moved
    progress.finish()
    assert out.getvalue().splitlines() == [
        "repair: 1 of 400 ranges after 0 s", "repair: 2 of 400 ranges after 6 s"]
    assert "\r" not in out.getvalue()
