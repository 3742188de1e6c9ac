"""What a fresh process pays: ``import modelsync`` (which must compile nothing and import no
numba), and the latency of the first optimizer step, which loads numba and its kernels.

Each number is the best of N fresh interpreters. The first step is measured three ways:
with numba's on-disk cache empty (a first run after installing: the kernels compile), with
it filled (every later run) and with the NumPy path forced (``MODELSYNC_KERNELS=numpy``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

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


def seconds(value: float) -> str:
    return f"{value:.3f} s" if value >= 0.1 else f"{value * 1e3:.1f} ms"


def fresh(code: str, env: dict[str, str] | None = None) -> dict:
    """Run ``code`` in a new interpreter and return the JSON it prints."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, env={**os.environ, **(env or {})}, timeout=300)
    return json.loads(done.stdout.strip().splitlines()[-1])


def best(code: str, key: str, repeat: int, env: dict[str, str] | None = None) -> dict:
    runs = [fresh(code, env) for _ in range(repeat)]
    return min(runs, key=lambda r: r[key])


def first_step_rows(size: int, label: str, repeat: int) -> list[str]:
    code = FIRST_STEP.replace("{size}", str(size))
    with tempfile.TemporaryDirectory(prefix="modelsync-numba-cache-") as cache:
        env = {"NUMBA_CACHE_DIR": cache}
        cold = fresh(code, env)  # the only run with an empty cache
        warm = best(code, "first", repeat, env)
    numpy = best(code, "first", repeat, {"MODELSYNC_KERNELS": "numpy"})
    return [
        f"| first Adam step, {label}, numba cache empty (first run after install) | "
        f"{seconds(cold['first'])} | reported | {cold['backend']}; second step "
        f"{cold['second'] * 1e6:.0f} µs |",
        f"| first Adam step, {label}, numba cache filled (every later run) | "
        f"{seconds(warm['first'])} | reported | {warm['backend']}; second step "
        f"{warm['second'] * 1e6:.0f} µs |",
        f"| first Adam step, {label}, MODELSYNC_KERNELS=numpy | "
        f"{seconds(numpy['first'])} | reported | {numpy['backend']}; second step "
        f"{numpy['second'] * 1e6:.0f} µs |",
    ]


def run(repeat: int) -> list[str]:
    imported = best(IMPORT, "seconds", repeat)
    if imported["numba"] or imported["kernels"]:
        raise SystemExit("import modelsync imported numba: the kernels must load lazily")
    lines = [f"| import modelsync (fresh interpreter, best of {repeat}) | "
             f"{seconds(imported['seconds'])} | no compiling at import | numba imported: "
             f"{imported['numba']} |"]
    lines += first_step_rows(0, "demo MLP (serial loop)", repeat)
    lines += first_step_rows(10**6, "1e6 float32 in 4 arrays (parallel loop)", repeat)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print("| what | time | goal | details |")
    print("| --- | --- | --- | --- |")
    for line in run(args.repeat):
        print(line, flush=True)


if __name__ == "__main__":
    main()
