"""The command line and the demo behind it: exit codes, output, one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import modelsync as ms
from modelsync import demo
from modelsync.cli import main
from modelsync.datasets import load_digits
from modelsync.devices import cuda_status
from modelsync.io import load

ROOT = Path(__file__).resolve().parents[1]


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("modelsync: error: "), err
    assert "Traceback" not in err
    return lines[0]


# -- the demo's rows ------------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["host", "sim:1"])
def test_demo_rows_for_every_mode_move_nothing_per_step(spec):
    rows = demo.run_demo(dev=spec, modes="all", epochs=1, progress=False, seed=0)
    assert [r.mode for r in rows] == ["wrap", "copy", "move"]
    for row in rows:
        assert row.device == spec
        assert row.bytes_per_step == 0
        assert row.steps == 45  # 1,437 images in batches of 32
        assert row.synced and row.same_graph
        assert row.accuracy == pytest.approx(row.device_accuracy, abs=1 / 360)
        assert row.accuracy > 0.8  # one epoch already learns most digits
        assert row.file_bytes > row.param_bytes
        if spec == "host":
            assert row.h2d_bytes == row.d2h_bytes == 0
        else:  # the parameters go over once, and come back once per save and per sync
            assert row.phase_bytes["convert"] == (row.param_bytes, 0, 0)
            assert row.phase_bytes["train"] == (0, 0, 0)
            assert row.phase_bytes["save"] == (0, row.param_bytes, 0)
            assert row.phase_bytes["sync"] == (0, row.param_bytes, 0)


def test_demo_reaches_95_percent_with_the_default_epochs():
    (row,) = demo.run_demo(dev="host", modes="copy", progress=False)
    assert row.accuracy >= 0.95


def test_demo_keeps_files_in_out(tmp_path):
    rows = demo.run_demo(dev="host", modes=["move"], epochs=1, out=tmp_path / "new",
                         progress=False)
    saved = tmp_path / "new" / "digits-mlp-move.safetensors"
    assert rows[0].file == str(saved) and saved.stat().st_size == rows[0].file_bytes
    _, _, x_test, y_test = load_digits()
    assert demo.accuracy(load(saved), x_test, y_test) == rows[0].accuracy


@pytest.mark.parametrize("kwargs, match", [
    ({"modes": "teleport"}, "mode='teleport'"),
    ({"modes": []}, "modes is empty"),
    ({"epochs": 0}, "epochs=0"),
    ({"seed": "1"}, "seed='1'"),
])
def test_demo_rejects_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        demo.run_demo(dev="host", progress=False, **kwargs)


def test_format_bytes():
    assert [demo.format_bytes(n) for n in (0, 512, 38440, 3 * 2**20)] == [
        "0 B", "512 B", "37.5 KiB", "3.0 MiB"]


# -- the command line -------------------------------------------------------------------------
@pytest.mark.parametrize("argv, words", [
    (["--help"], ["demo", "explore", "inspect"]),
    (["demo", "--help"], ["--device", "--mode", "--epochs", "--out", "--no-progress", "--seed"]),
    (["explore", "--help"], ["--device", "--out", "--no-progress"]),
    (["inspect", "--help"], ["FILE", "--device"]),
])
def test_help_on_every_command(capsys, argv, words):
    assert main(argv) == 0
    out = capsys.readouterr().out
    for word in words:
        assert word in out


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) != 0
    assert "demo" in capsys.readouterr().out


@pytest.mark.parametrize("spec", ["host", "sim:1"])
def test_demo_command_prints_the_table(capsys, tmp_path, spec):
    status = main(["demo", "--device", spec, "--epochs", "1", "--out", str(tmp_path)])
    captured = capsys.readouterr()
    assert status == 0
    assert captured.err == ""  # not a terminal: no progress bar
    lines = captured.out.splitlines()
    assert lines[0] == f"device: {spec}"
    header = next(i for i, line in enumerate(lines) if line.startswith("mode "))
    table = lines[header + 2: header + 5]
    assert [line.split()[0] for line in table] == ["wrap", "copy", "move"]
    for line in table:
        assert line.split()[-4:-2] == ["0", "B"]  # per step: 0 B
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "digits-mlp-copy.safetensors", "digits-mlp-move.safetensors",
        "digits-mlp-wrap.safetensors"]


def test_demo_auto_says_which_device_and_why(capsys):
    assert main(["demo", "--mode", "copy", "--epochs", "1", "--no-progress"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith(f"device: {ms.device('auto')}")
    if cuda_status()[0] == 0:
        assert "simulated" in first and "no usable GPU" in first


@pytest.mark.skipif(cuda_status()[0] > 0, reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_one_line_saying_why(capsys):
    assert main(["demo", "--device", "cuda", "--no-progress"]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "cuda" in line and cuda_status()[1].split(" (")[0] in line
    assert "Available: host, sim:1, sim:2" in line


@pytest.mark.parametrize("argv, expect", [
    (["demo", "--device", "tpu:0"], "not a device spec"),
    (["demo", "--mode", "teleport"], "invalid choice: 'teleport'"),
    (["demo", "--epochs", "0"], "0 is outside [1, ∞)"),
    (["demo", "--epochs", "many"], "'many' is not an integer"),
    (["teleport"], "invalid choice: 'teleport'"),
    (["inspect"], "FILE"),
])
def test_bad_arguments_are_one_line(capsys, argv, expect):
    assert main(argv) != 0
    captured = capsys.readouterr()
    assert expect in one_error_line(captured.err)
    assert captured.out == ""


def test_unwritable_out_fails_before_training(capsys, tmp_path, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("training started despite a bad --out")

    monkeypatch.setattr(demo, "run_mode", no_training)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["demo", "--device", "host", "--out", str(blocker / "sub")]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "--out" in line and "not a writable folder" in line and str(blocker) in line


def test_read_only_out_fails(capsys, tmp_path, monkeypatch):
    # A folder that refuses writes (root ignores chmod, so the refusal is simulated at the
    # point where the probe file is created).
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", kwargs.get("dir"))

    monkeypatch.setattr(demo.tempfile, "mkstemp", refuse)
    assert main(["demo", "--device", "host", "--out", str(tmp_path)]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "Permission denied" in line and "not a writable folder" in line


def test_inspect_prints_the_saved_model(capsys, tmp_path):
    pytest.importorskip("modelsync.inspect_file")
    (row,) = demo.run_demo(dev="host", modes="copy", epochs=1, out=tmp_path, progress=False)
    assert main(["inspect", row.file, "--device", "sim:1"]) == 0
    out = capsys.readouterr().out
    assert ms.graph_id(load(row.file)) in out
    assert "layers.0.weight" in out and "(128, 64)" in out
    assert out.rstrip().splitlines()[-1] == "loads on sim:1: 4 params, 37.5 KiB moved to get there"


def test_inspect_errors_are_one_line(capsys, tmp_path):
    pytest.importorskip("modelsync.inspect_file")
    assert main(["inspect", str(tmp_path / "missing.safetensors")]) == 1
    one_error_line(capsys.readouterr().err)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 3)
    assert main(["inspect", str(junk)]) == 1
    one_error_line(capsys.readouterr().err)


def test_the_module_entry_points_exit_with_the_status():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    bad = subprocess.run([sys.executable, "-m", "modelsync", "demo", "--device", "nowhere"],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert bad.returncode == 1 and bad.stdout == ""
    one_error_line(bad.stderr)
    helped = subprocess.run([sys.executable, "-m", "semantics", "--help"],
                            capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert helped.returncode == 0 and "--out" in helped.stdout


def test_inspect_escapes_control_characters_in_a_files_metadata(capsys, tmp_path):
    path = tmp_path / "m.safetensors"
    ms.save(ms.layers.Dense(2, 2, seed=0), path, metadata={"note": "a\nb \x1b[31mRED"})
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "a\\nb \\x1b[31mRED" in out


def test_inspect_refuses_a_file_that_is_not_regular(capsys, tmp_path):
    import os

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert main(["inspect", str(fifo)]) == 1
    assert "not a regular file" in one_error_line(capsys.readouterr().err)


def test_inspect_checks_the_device_before_printing(capsys, tmp_path):
    path = tmp_path / "m.safetensors"
    ms.save(ms.layers.Dense(2, 2, seed=0), path)
    assert main(["inspect", str(path), "--device", "sim:9"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "sim:9" in one_error_line(captured.err)


def test_a_negative_seed_is_a_usage_error(capsys):
    assert main(["demo", "--seed", "-1"]) == 2
    assert "outside [0, ∞)" in one_error_line(capsys.readouterr().err)
