"""Progress lines: how far, how fast, how long is left, what failed."""

import logging

from clipflow.progress import Progress, duration


def test_a_line_says_how_far_how_fast_and_what_failed(caplog):
    caplog.set_level(logging.INFO, logger="clipflow.progress")
    progress = Progress("shard 00000007", 200, "rows", every=0)
    progress.started -= 10  # as if 10 s had passed
    progress.add(50, {"http 404": 3, "timeout": 3, "truncated image": 1})
    line = caplog.records[-1].getMessage()
    assert line.startswith("shard 00000007: 50 of 200 rows (25%), 5.0 rows/s, ~30s left")
    assert line.endswith("7 failed (http 404 3, timeout 3, truncated image 1)")  # most first, ties by name
    progress.add(150)
    assert progress.finish() == (
        "shard 00000007: 200 of 200 rows (100%), 20.0 rows/s, done in 10s, 7 failed (http 404 3, timeout 3, "
        "truncated image 1)"
    )


def test_lines_come_at_most_every_so_often(caplog):
    caplog.set_level(logging.INFO, logger="clipflow.progress")
    progress = Progress("chunk", None, "samples", every=3600)
    for _ in range(100):
        progress.add(1)
    assert caplog.records == []
    assert progress.line().startswith("chunk: 100 samples, ")


def test_durations_read_as_people_write_them():
    assert [duration(s) for s in (4.4, 59.6, 61, 3599, 3600, 90061)] == [
        "4s", "1m00s", "1m01s", "59m59s", "1h00m", "25h01m"
    ]  # fmt: skip
