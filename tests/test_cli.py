"""The command line as a new user meets it: help, notes, progress in logs."""

from __future__ import annotations

import io

import pytest
from helpers import HRO_NODATA, HRO_PLAIN, cli

from isprs_seg.cli.progress import BatchProgress, duration


@pytest.mark.parametrize("command", ["predict", "features"])
def test_help_shows_every_default_and_real_examples(command):
    from typer.main import get_command

    from isprs_seg.cli import app

    group = get_command(app)
    ctx = group.make_context("isprs-seg", [command, "--help"], resilient_parsing=True)
    sub = group.commands[command]
    sub_ctx = sub.make_context(command, [], parent=ctx, resilient_parsing=True)
    options = [p for p in sub.params if p.param_type_name == "option" and p.name != "help"]
    assert len(options) > 20
    for option in options:
        record = option.get_help_record(sub_ctx)
        assert "default:" in record[1], f"{record[0]} shows no default"
    text = cli(command, "--help").stdout
    flat = " ".join(text.split())
    assert "<bool>" not in text and "[default: $ISPRS_SEG_MODEL, else https://tfhub.dev/google/HRNet/" in flat
    examples = text.split("Examples:")[1].strip().splitlines()
    assert len(examples) >= 2 and all(f"isprs-seg {command} " in line for line in examples[:2])
    assert "sample_data/colorado_springs_15cm.tif" in text


def test_a_batch_in_a_log_gives_plain_lines_with_the_files_left(tmp_path, small_dir):
    result = cli("predict", str(HRO_PLAIN), str(HRO_NODATA), "--out-dir", str(tmp_path), "--model", str(small_dir),
                 "--tile", "128", "--overlap", "64")
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == f"isprs-seg: running the model on CPU ({small_dir})"
    assert any(line.startswith(f"isprs-seg: [1/2] {HRO_PLAIN.name} done in ") and "1 input left, about" in line
               for line in lines)
    assert any(line.startswith(f"isprs-seg: [2/2] {HRO_NODATA.name} done in ") for line in lines)


def test_progress_lines_of_one_input_come_now_and_then():
    stream = io.StringIO()
    progress = BatchProgress(["a.tif", "b.tif"], quiet=False, stream=stream, interactive=False, every=0.0)
    with progress.bar(0)(10) as bar:
        for _ in range(10):
            bar.update(1)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("isprs-seg: [1/2] a.tif: 1/10 patches (10 %), about ")
    assert len(lines) == 9, "no line once every patch is done"
    quiet = io.StringIO()
    with BatchProgress(["a.tif"], quiet=True, stream=quiet, interactive=False, every=0.0).bar(0)(3) as bar:
        bar.update(3)
    assert quiet.getvalue() == ""
    assert [duration(s) for s in (5, 75, 600, 5400, 7200)] == ["5 s", "1 min 15 s", "10 min", "1 h 30 min", "2 h"]
