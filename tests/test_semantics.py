"""The semantics exploration: it writes the report, and what it measured is what the
contract promises (0 bytes per step, legality found by trying)."""

from __future__ import annotations

import builtins
import re

import pytest

import semantics
from modelsync.cli import main


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("docs") / "semantics.md"
    lines: list[str] = []
    path = semantics.run(out, device="sim:1", progress=False, log=lines.append, steps=6,
                         sync_every=3)
    return path, path.read_text(encoding="utf-8"), lines


def _row(text: str, first_cell: str) -> list[str]:
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no table row starting with {first_cell!r}")


def test_report_is_written_with_every_section(report):
    path, text, lines = report
    assert path.exists()
    assert lines[0].startswith("device: sim:1")
    for heading in ("## The questions, answered", "### Workflow 1: convert and train",
                    "### Workflow 2: save back to host", "### Workflow 3: keep two copies in step",
                    "## What stays legal afterwards", "## Bytes moved over a run", "## Method"):
        assert heading in text
    for question in ("Does training the converted model update the original?",
                     "Must we transfer weights every batch?", "How do we save a converted model?",
                     "only copies of one graph?", "Where does optimizer state live?"):
        assert question in text


def test_every_mode_moves_nothing_per_step_and_the_original_behaves_as_promised(report):
    _, text, _ = report
    expected = {"wrap": "updated", "copy": "unchanged", "move": "invalid: MovedError"}
    for mode, outcome in expected.items():
        cells = _row(text, mode)  # first table with mode rows: workflow 1
        assert cells[1] == "37.5 KiB"  # convert: the parameters, once
        assert cells[2] == "0 B"  # per training step
        assert cells[-1] == outcome
    assert "No, in every mode" in text


def test_legality_matrix_was_filled_by_trying(report):
    _, text, _ = report
    header = _row(text, "operation")
    assert header[1:] == ["wrap: original", "wrap: converted", "copy: original",
                          "copy: converted", "move: original", "move: converted"]
    call = _row(text, "call (`model(x)`)")
    assert call[1].startswith("ok, ")  # reading the wrapped original pulls
    assert call[2:5] == ["ok", "ok", "ok"] and call[5] == "MovedError" and call[6] == "ok"
    assert _row(text, "raw write (`ms.params(model)[0].value[0] = 0`)")[1] == "ValueError"
    assert _row(text, "to_device wrap (`ms.to_device(model, dev, mode='wrap')`)")[1] == (
        "CoherenceError")
    detach = _row(text, "detach (`ms.detach(model)`)")
    assert detach[2].startswith("ok") and detach[3] == "ArgumentError"
    move_original = [_row(text, line)[5] for line in (
        "params (`ms.params(model)`)", "save (`ms.save(model, path)`)")]
    assert move_original == ["MovedError", "MovedError"]


def test_graph_check_and_optimizer_state_are_reported(report):
    _, text, _ = report
    assert re.search(r"built separately \(same seed even\): GraphMismatchError", text)
    assert "state is now on sim:1" in text
    assert "beta1=1.5 is outside [0, 1)" in text


def test_plot_is_written_next_to_the_report(report):
    pytest.importorskip("matplotlib")
    path, text, _ = report
    png = path.with_name("semantics-bytes.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "](semantics-bytes.png)" in text


def test_without_matplotlib_the_report_says_so(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    out = semantics.run(tmp_path / "s.md", device="sim:1", progress=False, steps=2,
                        sync_every=1)
    text = out.read_text(encoding="utf-8")
    assert "*No plot: matplotlib is not installed" in text
    assert not list(tmp_path.glob("*.png"))
    assert _row(text, "copy")[2] == "0 B"


def test_explore_command_writes_the_report(capsys, tmp_path, monkeypatch):
    calls = {}

    def fake_run(out, **kwargs):
        calls.update(kwargs, out=out)
        return tmp_path / "r.md"

    monkeypatch.setattr(semantics, "run", fake_run)
    assert main(["explore", "--out", str(tmp_path / "r.md"), "--device", "host",
                 "--no-progress"]) == 0
    assert calls["out"] == str(tmp_path / "r.md") and calls["device"] == "host"
    assert calls["progress"] is False
    assert capsys.readouterr().out.strip().endswith(f"wrote {tmp_path / 'r.md'}")


def test_explore_bad_out_and_device_are_one_line_errors(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["explore", "--out", str(blocker / "sub" / "s.md"), "--device", "host"]) == 1
    assert "not a writable folder" in capsys.readouterr().err
    assert main(["explore", "--out", str(tmp_path / "s.md"), "--device", "sim:9"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sim:9" in err and not (tmp_path / "s.md").exists()


def test_explore_refuses_a_folder_and_the_host_before_any_work(capsys, tmp_path):
    assert main(["explore", "--out", str(tmp_path), "--device", "sim:1"]) == 1
    assert "is a folder" in capsys.readouterr().err
    assert main(["explore", "--out", str(tmp_path / "s.md"), "--device", "host"]) == 1
    assert "needs one" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_buffer_rows_are_measured(report):
    """Issue 18: what each mode and each sync does to BatchNorm's running statistics."""
    _, text, _ = report
    assert "## Running statistics (buffers)" in text
    assert _row(text, "wrap")[1] == "37.5 KiB"  # (workflow 1 comes first)
    section = text[text.index("## Running statistics (buffers)"):]
    modes = {m: _row(section, m) for m in ("wrap", "copy", "move")}
    assert all(cells[1] == "0 B" for cells in modes.values())  # per step
    assert modes["wrap"][2] == "5" and modes["wrap"][3] == "264 B" and modes["wrap"][4] == "0 B"
    assert modes["copy"][2] == "0"
    assert modes["move"][2] == "invalid: MovedError"
    hard = _row(section, "`ms.sync(dst, src)`")
    lerp = _row(section, '`ms.sync(dst, src, tau=0.5, buffers="lerp")`')
    keep = _row(section, '`ms.sync(dst, src, tau=0.5, buffers="keep")`')
    assert hard[2] == "src's (copied)" and float(hard[3]) == 0 and hard[4] == "5"
    assert float(lerp[3]) < 1e-6 and lerp[4] == "5"
    assert keep[2] == "dst's own (kept)" and float(keep[3]) == 0 and keep[4] == "1"
    assert float(_row(section, "`ms.update_bn(dst, 4 batches)`")[3]) < 1e-5
    for peer in ("PyTorch", "Flax (linen)", "Chainer", "stable-baselines3"):
        assert _row(section, peer)
