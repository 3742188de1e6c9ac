"""The main job across processes: ``modelsync demo --ranks 2`` (which starts mpiexec itself)
trains one replica per process on shards of the data and reaches the same test accuracy as
one process on the same global batch (``modelsync demo --distributed`` without mpiexec)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from distributed_launch import run_command

from modelsync import demo
from modelsync.cli import main
from modelsync.distributed import init
from modelsync.distributed.demo import run, shards
from modelsync.distributed.launch import find_mpiexec

pytest.importorskip("mpi4py", reason="the distributed tests need the test extra (mpi4py, mpich)")

ARGS = ["demo", "--mode", "copy", "--epochs", "2", "--device", "host", "--no-progress"]


def accuracy_of(output: str) -> str:
    match = re.search(r"^copy +([0-9.]+) ", output, re.M)
    assert match, output
    return match.group(1)


@pytest.fixture(scope="module")
def one_process():
    """``modelsync demo --distributed`` without mpiexec: one process, the global batch."""
    rows = run(init(), dev="host", modes="copy", epochs=2, progress=False)
    return "\n".join(demo.summary_lines(rows, kept=False))


def test_ranks_2_matches_one_process_on_the_global_batch(one_process, tmp_path):
    done = run_command([sys.executable, "-m", "modelsync", *ARGS, "--ranks", "2", "--out",
                        str(tmp_path)], timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.count("mode  test acc") == 1  # only rank 0 prints the table
    assert "across/step" in out and "global batch 32 (16 per rank)" in out
    assert re.search(r"^copy .* 37\.5 KiB$", out, re.M)  # one Allreduce of the gradients
    assert "bitwise equal to rank 0's" in out
    assert accuracy_of(out) == accuracy_of(one_process)
    assert [p.name for p in tmp_path.iterdir()] == ["digits-mlp-copy-2ranks.safetensors"]


def test_distributed_without_mpiexec_is_a_world_of_one(capsys):
    assert main([*ARGS, "--distributed"]) == 0
    out = capsys.readouterr().out
    assert "1 rank (one process each)" in out and re.search(r"^copy .* 0 B$", out, re.M)
    assert "1 ranks" not in out


def test_ranks_and_distributed_exclude_each_other(capsys):
    assert main([*ARGS, "--distributed", "--ranks", "2"]) == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_shards_are_equal_and_cover_whole_global_batches():
    per, mine = shards(100, 3, 1)
    assert per == 10 and mine[:2] == [(10, 20), (40, 50)] and len(mine) == 3
    assert shards(100, 1, 0) == (32, [(0, 32), (32, 64), (64, 96)])


def test_ranks_finds_mpiexec_next_to_python_or_says_how_to_get_it(monkeypatch, capsys):
    assert Path(find_mpiexec()).parent == Path(sys.executable).parent
    monkeypatch.setattr(sys, "executable", "/nowhere/python")
    monkeypatch.setenv("PATH", "/nowhere")
    assert main([*ARGS, "--ranks", "2"]) == 1
    assert "pip install 'modelsync[mpi]'" in capsys.readouterr().err


def test_the_distributed_guide_runs_on_two_ranks(tmp_path):
    from distributed_launch import run_mpi
    from test_docs import python_blocks

    ((_, code),) = python_blocks("docs/distributed.md")
    script = tmp_path / "guide.py"
    script.write_text(code)
    done = run_mpi(2, [str(script)], timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "model.safetensors").exists()
