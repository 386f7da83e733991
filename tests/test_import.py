"""Importing the package is cheap: no torch, transformers or datasets until a heavy name is used."""

from __future__ import annotations

import subprocess
import sys


def test_import_is_lean():
    script = (
        "import sys, optimum_blockprune as ob\n"
        "from optimum_blockprune import BlockRemovalConfig, cli\n"
        "BlockRemovalConfig(num_blocks_to_remove=2)\n"
        "heavy = [m for m in ('torch', 'transformers', 'datasets', 'accelerate') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert ob.Pruner.__name__ == 'Pruner' and 'torch' not in sys.modules\n"
        "import optimum_blockprune.distillation as d\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
        "d.distillation_loss\n"
        "assert 'transformers' not in sys.modules  # the pure loss needs torch only\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)


def test_public_names_resolve():
    import optimum_blockprune as ob

    for name in ob.__all__:
        assert getattr(ob, name) is not None, name


def test_progress_in_a_log_file_is_lines_with_rate_and_time_left(caplog):
    """Without a terminal a bar cannot redraw: the progress of long passes is logged every 5 %."""
    import logging

    from optimum_blockprune.utils import LoggedProgress, progress_bar

    ticks = iter(range(100))
    progress = LoggedProgress(40, desc="Fisher estimation", unit="sample", clock=lambda: float(next(ticks)))
    with caplog.at_level(logging.INFO, logger="optimum_blockprune.progress"):
        for _ in range(10):
            progress.update(4)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 10 and lines[0].startswith("Fisher estimation: 10% (4/40 samples)")
    assert (
        lines[-1].startswith("Fisher estimation: 100% (40/40 samples), 4 samples/s")
        and "ETA 0 s" in lines[-1]
    )
    assert "ETA 9 s" in lines[0]  # 36 samples left at 4 per second
    with caplog.at_level(logging.INFO, logger="optimum_blockprune.progress"):
        progress.update(0)  # at the end already: nothing new to say (a search's last stages)
    assert len(caplog.records) == 10
    # a slow pass (1 % per 40 s) still logs every 30 s, not only every 5 %
    caplog.clear()
    slow = LoggedProgress(100, desc="Pair removals", clock=iter(range(0, 4000, 40)).__next__)
    with caplog.at_level(logging.INFO, logger="optimum_blockprune.progress"):
        for _ in range(3):
            slow.update(1)
    assert [r.getMessage().split(",")[0] for r in caplog.records] == [
        f"Pair removals: {k}% ({k}/100 its)" for k in (1, 2, 3)
    ]
    # work done before the bar started is shown but not counted in the rate (a search after its prior)
    caplog.clear()
    resumed = LoggedProgress(
        100, desc="Guided search", unit="fe", initial=20, clock=iter(range(0, 1000, 10)).__next__
    )
    with caplog.at_level(logging.INFO, logger="optimum_blockprune.progress"):
        resumed.update(5)
    assert caplog.records[0].getMessage().startswith("Guided search: 25% (25/100 fes), 0.5 fes/s")
    assert "ETA 150 s" in caplog.records[0].getMessage()
    # a new phase is named in a line at once, with the whole display's progress and time left
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="optimum_blockprune.progress"):
        resumed.set_description("Guided search, round 2")
        resumed.set_description("Guided search, round 2")  # the same phase: no news
    assert [r.getMessage().split(",")[:2] for r in caplog.records] == [
        ["Guided search", " round 2: 25% (25/100 fes)"]
    ]
    assert isinstance(progress_bar(total=10, desc="x"), LoggedProgress)  # pytest's stderr is not a terminal
    assert not isinstance(progress_bar(total=10, desc="x", enabled=False), LoggedProgress)


def test_a_logged_display_repeats_its_line_while_one_pass_runs_long(caplog):
    """A pass longer than `every_s` (one batch of a big model) does not leave the log file silent: a heartbeat
    repeats the line until the display is closed or dropped."""
    import gc
    import logging
    import time

    from optimum_blockprune.utils import LoggedProgress

    with caplog.at_level(logging.INFO, logger="optimum_blockprune.progress"):
        display = LoggedProgress(10, desc="Guided search, single removals", every_s=0.1)
        display.update(1)
        time.sleep(0.5)
        beats = len(caplog.records)
        display.close()
        time.sleep(0.3)
        assert 3 <= beats == len(caplog.records)  # about every 0.1 s while open, nothing once closed
        assert all(
            r.getMessage().startswith("Guided search, single removals: 10% (1/10 its)")
            for r in caplog.records
        )
        caplog.clear()
        dropped = LoggedProgress(10, desc="Left open by an error", every_s=0.1)
        del dropped
        gc.collect()
        time.sleep(0.3)
        assert not caplog.records


def test_a_choice_display_gathers_every_pass_inside_it(caplog):
    """Inside `choice_display` a pass's bar is a phase of the one display: it names the phase and its count, moves
    the display by its share of the pass's work, and the cost record sets the position exactly; outside, a bar is
    a bar of its own again."""
    import logging

    from optimum_blockprune.utils import LoggedProgress, choice_display, current_display, progress_bar

    with caplog.at_level(logging.INFO, logger="optimum_blockprune.progress"):
        with choice_display("CBO", total=10, enabled=True, full_pass=100.0, start=1.0) as display:
            assert current_display() is display
            with progress_bar(total=4, desc="Pair removals (6 removals)", unit="sample", work=400.0) as bar:
                bar.update(2)  # half of a 4-forward pass
                assert display.position == 2.0 and display.bar.done == 2
            display.spent(4.5)  # the cost record: 3.5 forward-equivalents since the display opened
            assert display.bar.done == 3
            display.finish()
            assert display.bar.total == display.bar.done == 4
        assert current_display() is None
    assert isinstance(progress_bar(total=3, desc="x"), LoggedProgress)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("CBO, Pair removals (6 removals) 0/4 samples: 0% (0/10 fes)")
    assert any(
        line.startswith("CBO, Pair removals (6 removals) 2/4 samples: 20% (2/10 fes)") for line in lines
    )
    assert lines[-1].startswith("CBO, Pair removals (6 removals) 2/4 samples: 100% (4/4 fes)")
