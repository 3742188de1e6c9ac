"""Conversion and sync of a 1,000-Param model, as ratios to one flat copy of the same bytes.

The simulated device's memory is host memory, so on this machine a host->sim transfer is a
memory copy: the ratio says how close a conversion gets to the cost of moving its bytes.
"""

from __future__ import annotations

import argparse

import numpy as np
from common import best_time, flat_copy_time, row

import modelsync as ms
from modelsync import layers
from modelsync.transfers import copy_to


def model_of_1000_params(width: int):
    """500 Dense(width, width) layers: 1,000 Params (a weight and a bias each)."""
    return layers.Chain(*[layers.Dense(width, width, seed=i) for i in range(500)])


def build_another() -> None:
    """Build (and edit) an unrelated model: it must not slow the next sync of another."""
    other = layers.Chain(layers.Dense(4, 4, seed=0))
    other.layers.append(layers.Dense(4, 4, seed=1))


def door_time(nbytes: int, src: str, dst: str) -> float:
    """Seconds for one copy_to of a flat buffer of ``nbytes`` from ``src`` to ``dst``: what
    the bytes themselves cost through the transfer door (allocation included)."""
    flat = copy_to(np.ones(nbytes // 4, dtype=np.float32), ms.device(src), reason="bench")
    return best_time(lambda: copy_to(flat, ms.device(dst), reason="bench"), repeat=5)


def run(width: int) -> list[str]:
    host = model_of_1000_params(width)
    nbytes = sum(p.nbytes for p in ms.params(host))
    memcpy = flat_copy_time(nbytes)
    flat_host = ms.to_host(host)  # a flat host copy
    host_twin = ms.to_host(host)
    sim = ms.to_device(host, "sim:1")
    other = ms.to_device(host, "sim:2")
    label = f"1,000 Params, {nbytes / 2**20:.1f} MiB"
    cases = [
        ("to_host copy, flat host model", "host", "host", lambda: ms.to_host(flat_host)),
        ("to_host copy, host-built model", "host", "host", lambda: ms.to_host(host)),
        ("sync host -> host (flat, same graph)", "host", "host",
         lambda: ms.sync(host_twin, flat_host)),
        ("sync host-built -> host (per Param)", "host", "host", lambda: ms.sync(host_twin, host)),
        ("soft sync tau=0.05 host -> host (flat, fused)", "host", "host",
         lambda: ms.sync(host_twin, flat_host, tau=0.05)),
        ("soft sync tau=0.05 flat host -> host-built (per Param)", "host", "host",
         lambda: ms.sync(host, flat_host, tau=0.05)),
        ("sync host -> host (flat) after building another model", "host", "host",
         lambda: ms.sync(host_twin, flat_host), build_another),
        ("to_device copy, host-built -> sim:1", "host", "sim:1",
         lambda: ms.to_device(host, "sim:1")),
        ("to_host copy, flat sim:1 model", "sim:1", "host", lambda: ms.to_host(sim)),
        ("sync sim:1 -> sim:2 (flat, same graph)", "sim:1", "sim:2", lambda: ms.sync(other, sim)),
        ("sync sim:1 -> host (flat)", "sim:1", "host", lambda: ms.sync(host_twin, sim)),
    ]
    rows = []
    for name, src, dst, fn, *setup in cases:
        seconds = best_time(fn, repeat=5, setup=setup[0] if setup else None)
        door = door_time(nbytes, src, dst)
        rows.append(row(f"{name}, {label}", seconds / door, "≤ 1.3×",
                        f"{seconds / memcpy:.1f}× one memcpy"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--widths", type=int, nargs="+", default=[32, 160])
    args = parser.parse_args()
    print("| what | ratio to one flat copy_to of the same bytes | goal | vs memcpy |")
    print("| --- | --- | --- | --- |")
    for width in args.widths:
        for line in run(width):
            print(line)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
