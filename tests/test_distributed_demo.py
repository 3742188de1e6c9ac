"""The main job across processes: ``modelsync demo --ranks 2`` (which starts mpiexec itself)
trains one replica per process on shards of the data and reaches the same test accuracy as
one process on the same global batch (``modelsync demo --distributed`` without mpiexec)."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
from distributed_launch import run_command

from modelsync import demo
from modelsync.cli import main
from modelsync.distributed import init
from modelsync.distributed.demo import run, shards
from modelsync.distributed.errors import LaunchError
from modelsync.distributed.launch import (
    Library,
    find_mpiexec,
    launcher_family,
    launcher_flags,
    loaded_library,
)
from modelsync.errors import ArgumentError

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


def test_ranks_finds_the_mpiexec_of_the_loaded_mpi_or_says_how_to_get_it(monkeypatch, capsys):
    lib = loaded_library()
    assert Path(find_mpiexec(lib)).parent == Path(lib.path).resolve().parent.parent / "bin"
    monkeypatch.setattr(sys, "executable", "/nowhere/python")
    monkeypatch.setenv("PATH", "/nowhere")
    assert main([*ARGS, "--ranks", "2"]) == 1
    assert "pip install 'modelsync[mpi]'" in capsys.readouterr().err


def test_an_mpiexec_of_another_mpi_is_never_chosen(tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "mpiexec"  # a hydra (MPICH) launcher, asked for Open MPI's
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'HYDRA build details:'\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    monkeypatch.setenv("PATH", str(fake.parent))
    lib = Library("Open MPI", "Open MPI v5.0.11", str(tmp_path / "lib" / "libmpi.so.40"))
    with pytest.raises(ArgumentError, match=r"mpiexec of Open MPI v5\.0\.11.*of another MPI"):
        find_mpiexec(lib)
    assert find_mpiexec(Library("MPICH", "MPICH Version: 5.0.2", "")) == str(fake)


@pytest.mark.parametrize(("family", "root", "cores", "flags"), [
    ("Open MPI", True, 2, ["--allow-run-as-root", "--oversubscribe"]),
    ("Open MPI", False, 2, ["--oversubscribe"]),
    ("Open MPI", True, 4, ["--allow-run-as-root"]),
    ("Open MPI", False, 3, []),
    ("MPICH", True, 1, []), ("Intel MPI", True, 1, [])])
def test_open_mpi_is_told_to_run_as_root_and_oversubscribed_hydra_needs_nothing(
        family, root, cores, flags):
    assert launcher_flags(family, 3, root=root, cores=cores) == flags


def _other_launcher_env(lib):
    """What the launcher of the other MPI sets for a process it starts as one of 3."""
    if lib.family == "Open MPI":
        return {"PMI_SIZE": "3", "PMI_RANK": "1"}
    return {"OMPI_COMM_WORLD_SIZE": "3", "OMPI_COMM_WORLD_RANK": "1"}


def test_a_launcher_of_another_mpi_is_refused_naming_both(tmp_path):
    """A process that a launcher started as one of 3 but whose MPI sees a world of one (what
    the mpiexec of another MPI does) refuses to train, naming the launcher and the library."""
    lib = loaded_library()
    done = run_command([sys.executable, "-W", "ignore", "-m", "modelsync", *ARGS,
                        "--distributed"], timeout=120, env=_other_launcher_env(lib))
    assert done.returncode == 1, done.stdout + done.stderr
    other = "a PMI launcher" if lib.family == "Open MPI" else "Open MPI's mpiexec"
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith(f"modelsync: error: this process was started by {other}"), line
    assert "as one of 3" in line and f"the MPI that mpi4py loaded ({lib.family}" in line
    assert "each process would train a model of its own" in line
    assert "mode  test acc" not in done.stdout  # nothing trained
    # it waits before it exits: a launcher ends the job when its first process exits, and
    # every other process must have said the same by then
    assert done.seconds >= LaunchError.linger


@pytest.mark.skipif(not os.environ.get("MODELSYNC_OTHER_MPIEXEC"),
                    reason="MODELSYNC_OTHER_MPIEXEC (the mpiexec of a second MPI) is not set; "
                           ".ci/run sets it")
def test_the_mpiexec_of_the_other_mpi_is_refused_on_every_process():
    other = os.environ["MODELSYNC_OTHER_MPIEXEC"]
    flags = launcher_flags(launcher_family(other), 2, root=os.geteuid() == 0, cores=1)
    done = run_command([other, *flags, "-n", "2", sys.executable, "-W", "ignore", "-m",
                        "modelsync", *ARGS, "--distributed"], timeout=120,
                       env={"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"})
    assert done.returncode != 0
    refusals = [line for line in (done.stdout + done.stderr).splitlines()
                if "modelsync: error: this process was started by" in line]
    assert len(refusals) == 2, done.stdout + done.stderr  # every process, one line each
    assert "mode  test acc" not in done.stdout


def test_the_distributed_guide_runs_on_two_ranks(tmp_path):
    from distributed_launch import run_mpi
    from test_docs import python_blocks

    ((_, code),) = python_blocks("docs/distributed.md")
    script = tmp_path / "guide.py"
    script.write_text(code)
    done = run_mpi(2, [str(script)], timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "model.safetensors").exists()
