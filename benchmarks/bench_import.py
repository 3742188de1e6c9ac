"""What a fresh process pays: ``import modelsync`` (which must compile nothing and import no
numba), and the latency of the first optimizer step, which loads numba and its kernels.

Every number comes from fresh interpreters: the import as a ratio to ``import numpy`` (run
in turns with it), the first step in seconds (a one-time latency, reported), measured three
ways: with numba's on-disk cache empty (a first run after installing: the kernels compile),
with it filled (every later run) and with the NumPy path forced (``MODELSYNC_KERNELS=numpy``).
With ``--tiny`` (the smoke test) the children's code runs in this process, once, at toy
sizes: every line of it runs, in a fraction of a second, and no number means anything.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Row, Settings, main  # noqa: E402

IMPORT = """
import sys, time
start = time.perf_counter()
import modelsync
seconds = time.perf_counter() - start
import json
print(json.dumps({"seconds": seconds, "numba": "numba" in sys.modules,
                  "kernels": "modelsync.kernels._numba" in sys.modules}))
"""

FIRST_STEP = """
import json, time
import numpy as np
import modelsync as ms
from modelsync import demo, kernels, optim
SIZE = {size}
if SIZE:  # four float32 arrays of SIZE // 4: the parallel loop
    model = ms.layers.Chain(*[ms.layers.Dense(SIZE // 4, 1, bias=False, seed=i)
                              for i in range(4)])
    model = ms.to_device(model, "host")
else:
    model = ms.to_device(demo.build_model(0), "host")
ps = ms.params(model)
opt = optim.Adam(ps, lr=demo.LEARNING_RATE)
for p in ps:
    p.grad = np.full(p.shape, 1e-3, dtype=np.float32)
start = time.perf_counter()
opt.step()
first = time.perf_counter() - start
start = time.perf_counter()
opt.step()
second = time.perf_counter() - start
print(json.dumps({"first": first, "second": second, "backend": kernels.backend()}))
"""


BARE = """
import sys, time
start = time.perf_counter()
import numpy
seconds = time.perf_counter() - start
import json
print(json.dumps({"seconds": seconds}))
"""


def fresh(code: str, env: dict[str, str] | None = None, *, inline: bool = False) -> dict:
    """Run ``code`` in a new interpreter and return the JSON it prints. ``inline`` (toy runs:
    the smoke test) runs it in this process instead: every line of it still runs, but
    nothing it measures means anything."""
    if inline:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(code, {"__name__": "bench_child"})
        return json.loads(out.getvalue().strip().splitlines()[-1])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, env={**os.environ, **(env or {})}, timeout=300)
    return json.loads(done.stdout.strip().splitlines()[-1])


def median_run(code: str, key: str, repeat: int, env: dict[str, str] | None = None, *,
               inline: bool = False) -> dict:
    """The run whose ``key`` is the median of ``repeat`` fresh interpreters (the lower
    middle one for an even count)."""
    runs = sorted((fresh(code, env, inline=inline) for _ in range(repeat)),
                  key=lambda r: r[key])
    return runs[(len(runs) - 1) // 2]


def import_row(repeat: int, inline: bool) -> Row:
    """``import modelsync`` against ``import numpy`` (which it needs anyway), fresh
    interpreters in turns: the ratio is what modelsync adds; the goal is that it compiles
    nothing (numba is imported by the first step, not by the import)."""
    ours, bare, numba = [], [], False
    for _ in range(repeat):
        bare.append(fresh(BARE, inline=inline)["seconds"])
        run = fresh(IMPORT, inline=inline)
        ours.append(run["seconds"])
        numba = numba or run["numba"] or run["kernels"]
    ratio = statistics.median(o / b for o, b in zip(ours, bare, strict=True))
    return Row(f"import modelsync (fresh interpreters, median of {repeat}) vs import numpy",
               ratio, "×", "no compiling at import", "NO" if numba else "yes",
               f"{statistics.median(ours):.3f} s vs {statistics.median(bare):.3f} s; "
               f"numba imported: {numba}")


def first_step_rows(size: int, label: str, repeat: int, inline: bool) -> Iterator[Row]:
    code = FIRST_STEP.replace("{size}", str(size))
    with tempfile.TemporaryDirectory(prefix="modelsync-numba-cache-") as cache:
        env = {"NUMBA_CACHE_DIR": cache}
        cold = fresh(code, env, inline=inline)  # the only run with an empty cache
        warm = median_run(code, "first", repeat, env, inline=inline)
    numpy = median_run(code, "first", repeat, {"MODELSYNC_KERNELS": "numpy"}, inline=inline)
    for run, how in ((cold, "numba cache empty (first run after install)"),
                     (warm, f"numba cache filled (every later run), median of {repeat}"),
                     (numpy, f"MODELSYNC_KERNELS=numpy, median of {repeat}")):
        yield Row(f"first Adam step, {label}, {how}", run["first"], "s", "reported", "—",
                  f"{run['backend']}; second step {run['second'] * 1e6:.0f} µs")


def rows(settings: Settings) -> Iterator[Row]:
    repeat, inline = (1, True) if settings.tiny else (5, False)
    yield import_row(repeat, inline)
    yield from first_step_rows(0, "demo MLP (serial loop)", repeat, inline)
    size = 4000 if settings.tiny else 10**6
    yield from first_step_rows(size, f"{size:.0e} float32 in 4 arrays (parallel loop)".replace(
        "e+0", "e"), repeat, inline)


if __name__ == "__main__":
    main(rows, __doc__)
