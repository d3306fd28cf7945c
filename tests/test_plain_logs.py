"""Progress in a log (stderr not a terminal): plain lines, at most one per interval and one as each task ends, no
blank lines or escape codes; DPOREF_QUIET still silences it."""

import io
import re
import subprocess
import sys

import pytest
from rich.console import Console

from dpo_ref import ui


@pytest.fixture
def log(monkeypatch) -> io.StringIO:
    """The console writing to a file, as under `dporef ... > log 2>&1`; what it wrote."""
    text = io.StringIO()
    monkeypatch.setattr(ui, "console", Console(file=text, force_terminal=False, soft_wrap=True))
    monkeypatch.delenv("DPOREF_QUIET", raising=False)
    return text


def test_a_line_per_interval_and_one_as_the_task_ends(log):
    now = [0.0]
    with ui.LogProgress(every=10, clock=lambda: now[0]) as bar:
        task = bar.add_task("training dpo-b0.1", total=30)
        for step in range(1, 31):
            now[0] = float(step)
            bar.update(task, completed=step)
    assert log.getvalue() == (
        "training dpo-b0.1: 10/30 (10s, eta 20s)\n"
        "training dpo-b0.1: 20/30 (20s, eta 10s)\n"
        "training dpo-b0.1: 30/30 in 30.0s\n"
    )


def test_an_unfinished_task_says_where_it_stopped(log):
    now = [0.0]
    bar = ui.LogProgress(every=10, clock=lambda: now[0])
    bar.start()
    task = bar.add_task("training", total=100)
    now[0] = 4.0
    bar.advance(task, 40)
    bar.stop()  # e.g. training stopped early
    assert log.getvalue() == "training: 40/100 in 4.0s\n"


def test_progress_on_a_non_terminal_console_writes_plain_lines(log, monkeypatch):
    monkeypatch.setenv("DPOREF_LOG_EVERY", "3600")  # only the final line of each task
    for desc in ("scoring", "sampling policy"):
        with ui.progress() as bar:
            task = bar.add_task(desc, total=4)
            bar.advance(task, 2)
            bar.advance(task, 2)
    text = log.getvalue()
    assert re.fullmatch(r"scoring: 4/4 in \d+\.\ds\nsampling policy: 4/4 in \d+\.\ds\n", text), repr(text)
    assert "\x1b" not in text


def test_dporef_quiet_silences_progress(log, monkeypatch):
    monkeypatch.setenv("DPOREF_QUIET", "1")
    with ui.progress() as bar:
        task = bar.add_task("scoring", total=4)
        bar.advance(task, 4)
    assert log.getvalue() == ""


def test_a_long_message_to_a_log_stays_one_line():
    say = "from dpo_ref.ui import console; console.print('word ' * 40 + 'end')"
    err = subprocess.run([sys.executable, "-c", say], capture_output=True, text=True, check=True).stderr
    assert err == "word " * 40 + "end\n"


@pytest.mark.parametrize("value", ["soon", "-1", "nan"])
def test_a_log_interval_that_is_no_number_of_seconds_is_said_once_and_the_default_used(log, monkeypatch, value):
    monkeypatch.setenv("DPOREF_LOG_EVERY", value)
    assert ui.log_interval() == 10.0 and ui.log_interval() == 10.0
    assert log.getvalue() == f"DPOREF_LOG_EVERY={value}: not a number of seconds >= 0; a line every 10s\n"
