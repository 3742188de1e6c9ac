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


def model_of_1000_params(width: int):
    """500 Dense(width, width) layers: 1,000 Params (a weight and a bias each)."""
    return layers.Chain(*[layers.Dense(width, width, seed=i) for i in range(500)])


def run(width: int) -> list[str]:
    host = model_of_1000_params(width)
    nbytes = sum(p.nbytes for p in ms.params(host))
    flat = flat_copy_time(nbytes)
    sim = ms.to_device(host, "sim:1")
    other = ms.to_device(host, "sim:2")
    back = ms.to_host(sim)
    label = f"{nbytes / 2**20:.1f} MiB"
    timings = {
        "to_device copy, host-built model -> sim:1": lambda: ms.to_device(host, "sim:1"),
        "to_host copy, flat sim:1 model": lambda: ms.to_host(sim),
        "to_device copy, flat sim:1 -> sim:2": lambda: ms.to_device(sim, "sim:2"),
        "sync sim:1 -> sim:2 (flat, same graph)": lambda: ms.sync(other, sim),
        "sync sim:1 -> host (flat)": lambda: ms.sync(back, sim),
        "sync host-built -> sim:1 (per Param)": lambda: ms.sync(sim, host),
    }
    return [row(f"{name}, 1,000 Params, {label}", best_time(fn, repeat=5) / flat, "≤ 1.3×")
            for name, fn in timings.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--widths", type=int, nargs="+", default=[32, 160])
    args = parser.parse_args()
    print("| what | ratio to one flat copy | goal | |")
    print("| --- | --- | --- | --- |")
    for width in args.widths:
        for line in run(width):
            print(line)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
