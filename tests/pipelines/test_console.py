"""The logging set-up: medseg's lines through, other libraries' noise out unless --debug,
progress lines where no bar shows them, and checkpoints counted from epoch 1."""

from __future__ import annotations

import io
import logging
import warnings

import pytest

from medseg.pipelines import console
from medseg.pipelines.progress import progress_line


@pytest.fixture
def restore_logging(monkeypatch):
    """Undo what ``console.configure`` changes: the module's state, the environment keys
    it sets, the warning filters, the root logger's handlers and level."""
    root = logging.getLogger()
    level = root.level
    # Another test's command may have configured the console: its handlers would print
    # every line twice here.
    earlier = [h for h in root.handlers if any(isinstance(f, console._Audience) for f in h.filters)]
    for handler in earlier:
        root.removeHandler(handler)
    monkeypatch.setattr(console, "_current", None)
    monkeypatch.setattr(console, "_installed", [])
    for key in console._QUIET_ENVIRONMENT:
        monkeypatch.delenv(key, raising=False)
    with warnings.catch_warnings():
        yield
    for handler in console._installed:
        root.removeHandler(handler)
        handler.close()
    for handler in earlier:
        root.addHandler(handler)
    root.setLevel(level)


def emit_sample() -> None:
    logging.getLogger("medseg.pipelines.sample").info("medseg line")
    logging.getLogger("urllib3.connectionpool").warning("Retrying after connection broken")
    logging.getLogger("monai.data").error("library error")
    progress_line("case 1/2 done")


def test_plain_console_keeps_medseg_and_library_errors_only(restore_logging, capsys):
    console.configure(interactive=False)
    emit_sample()
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(maxsplit=3)[3] for line in lines] == [
        "medseg line",
        "library error",
        "case 1/2 done",
    ]


def test_debug_lets_library_records_and_warnings_through(restore_logging, capsys):
    console.configure(debug=True, interactive=False)
    emit_sample()
    assert "Retrying after connection broken" in capsys.readouterr().err
    with warnings.catch_warnings(record=True) as caught:
        warnings.warn("from a library", UserWarning, stacklevel=1)
    assert caught


def test_library_warnings_are_ignored_without_debug(restore_logging):
    console.configure(interactive=False)
    with warnings.catch_warnings(record=True) as caught:
        # catch_warnings keeps the filters configure set; record=True would show any warning
        warnings.warn("from a library", UserWarning, stacklevel=1)
    assert not caught


def test_terminal_drops_progress_lines_the_log_file_keeps(restore_logging, tmp_path, monkeypatch):
    from rich.console import Console

    screen = io.StringIO()
    monkeypatch.setattr(console, "_terminal", Console(file=screen, force_terminal=True))
    log_file = tmp_path / "logs" / "run.log"
    console.configure(interactive=True, quiet=False, log_file=log_file)
    emit_sample()
    assert "medseg line" in screen.getvalue()
    assert "case 1/2 done" not in screen.getvalue()
    written = log_file.read_text(encoding="utf-8")
    assert "medseg line" in written and "case 1/2 done" in written
    assert "Retrying" not in written


def test_quiet_console_still_logs_info_to_the_file(restore_logging, tmp_path, capsys):
    log_file = tmp_path / "run.log"
    console.configure(quiet=True, interactive=False, log_file=log_file)
    emit_sample()
    assert "medseg line" not in capsys.readouterr().err
    assert "medseg line" in log_file.read_text(encoding="utf-8")


def test_a_checkpoint_counted_from_zero_resumes_counted_from_one():
    from medseg.pipelines.training.trainer import counted_from_one

    old = {
        "epoch": 2,
        "best_epoch": 1,
        "history": [{"epoch": k, "train/loss": 1.0} for k in (0, 1, 2)],
    }
    converted = counted_from_one(old)
    assert converted["epoch"] == 3 and converted["best_epoch"] == 2
    assert [row["epoch"] for row in converted["history"]] == [1, 2, 3]
    assert counted_from_one(converted) == converted
