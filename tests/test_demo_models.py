"""modelsync demo --model cnn|lm: the same workflow (modes, EMA copy, save, reload, sync) on
a CNN with BatchNorm and a tied-embedding transformer, 0 parameter bytes per step."""

from __future__ import annotations

import attrs
import numpy as np
import pytest

import modelsync as ms
from modelsync import demo, workloads
from modelsync.cli import main


def _smaller(monkeypatch, name, rows):
    """The workload ``name`` on its first ``rows`` training and test samples (a test's
    budget), everything else as the demo runs it."""
    work = workloads.WORKLOADS[name]
    x, y, xt, yt = work.data()
    monkeypatch.setitem(workloads.WORKLOADS, name, attrs.evolve(
        work, data=lambda: (x[:rows], y[:rows], xt[:64], yt[:64])))


def test_the_cnn_demo_reaches_97_percent_on_the_host():
    (row,) = demo.run_demo(dev="host", modes="copy", model="cnn", progress=False)
    assert row.accuracy >= 0.97 and row.ema_accuracy >= 0.95
    assert row.ema_bn_accuracy >= 0.95  # the EMA copy with statistics of its own weights
    assert row.bytes_per_step == 0 and row.synced and row.same_graph


@pytest.mark.parametrize("mode", ["wrap", "copy", "move"])
def test_the_cnn_demo_in_each_mode_on_sim(monkeypatch, tmp_path, mode):
    _smaller(monkeypatch, "cnn", 256)
    (row,) = demo.run_demo(dev="sim:1", modes=mode, model="cnn", epochs=1, out=tmp_path,
                           progress=False)
    assert row.bytes_per_step == 0 and row.phase_bytes["train"] == (0, 0, 0)
    assert row.synced and row.same_graph
    saved = ms.load(row.file)
    assert len(ms.buffers(saved)) == 6  # two BatchNorms: mean, var, counter each
    assert int(np.asarray(ms.named_buffers(saved)["layers.1.num_batches_tracked"].value)) == 8


@pytest.mark.parametrize("mode", ["wrap", "copy", "move"])
def test_the_lm_demo_in_each_mode_on_sim(monkeypatch, tmp_path, mode):
    _smaller(monkeypatch, "lm", 48)
    (row,) = demo.run_demo(dev="sim:1", modes=mode, model="lm", out=tmp_path, progress=False)
    assert row.metric == "val acc" and 0 <= row.accuracy <= 1 and np.isfinite(row.valid_loss)
    assert row.bytes_per_step == 0 and row.synced and row.same_graph
    assert row.sample.startswith("def ") and len(row.sample) == 4 + 80
    saved = ms.load(row.file)
    embed, unembed = saved.layers[0], saved.layers[-1]
    assert unembed.embedding.weight is embed.weight  # the tie survives the file


def test_the_lm_learns(monkeypatch):
    _smaller(monkeypatch, "lm", 512)
    (row,) = demo.run_demo(dev="host", modes="copy", model="lm", epochs=2, progress=False)
    assert row.valid_loss < np.log(len(workloads.VOCAB)) - 1.0  # well below chance
    assert row.final_loss < 3.5


def test_the_lm_table_shows_validation_loss_and_a_sample(monkeypatch, capsys):
    _smaller(monkeypatch, "lm", 16)
    assert main(["demo", "--model", "lm", "--mode", "copy", "--device", "host",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "val loss" in out and "sample (copy): 'def " in out and "Unembed tied" in out


def test_text_round_trips_through_the_vocabulary():
    text = "def f(x):\n    return x ** 2  # é"
    assert workloads.decode(workloads.encode(text)) == text.replace("é", "?")


def test_an_unknown_model_is_refused():
    with pytest.raises(ms.ArgumentError, match="model='rnn' is not a demo model"):
        demo.run_demo(dev="host", model="rnn")
    assert main(["demo", "--model", "lm", "--ranks", "2"]) == 1
