"""Conversion and sync of a 1,000-Param model (500 Dense(w, w)), as ratios to one flat copy
of the same bytes, each case timed in turns with that copy (medians of the per-turn ratios).

"One flat copy" is one ``copy_to`` of a single buffer of the same bytes between the same two
devices: what the bytes cost through the transfer door, allocation included. A memcpy into
an existing buffer is given as a reference row. "Flat" is a model made by ``to_host`` /
``to_device`` (its Params view one buffer); "host-built" is one built layer by layer.

The simulated device's memory is host memory, so a host->sim transfer is a memory copy and
the sim rows (for information) measure mostly the simulator's per-view checks.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    NO_FLATTEN,
    Row,
    Settings,
    compared,
    flat_copy,
    fmt_bytes,
    goal_of,
    in_turns,
    main,
    memcpy,
    na_row,
)

import modelsync as ms  # noqa: E402
from modelsync import layers  # noqa: E402


def model_of(width: int, count: int = 500):
    """``count`` Dense(width, width) layers: 2 * count Params (a weight and a bias each)."""
    return layers.Chain(*[layers.Dense(width, width, seed=i) for i in range(count)])


def layout(model) -> str:
    """How the model's Params are stored: "flat" (one store) or how many are loose."""
    params = ms.params(model)
    stores = {id(p.flat_store) for p in params if p.flat_store is not None}
    loose = sum(p.flat_store is None for p in params)
    if loose == 0 and len(stores) == 1:
        return "flat"
    return f"{loose} of {len(params)} Params loose, {len(stores)} flat store(s)"


def build_another() -> None:
    """Build (and edit) an unrelated model: it must not slow the next sync of another."""
    other = layers.Chain(layers.Dense(4, 4, seed=0))
    other.layers.append(layers.Dense(4, 4, seed=1))


def sizes(settings: Settings) -> list[tuple[int, int]]:
    """(width, layers): 2.0 MiB and 49.1 MiB in 1,000 Params; toy sizes for the smoke test."""
    return [(2, 5), (3, 5)] if settings.tiny else [(32, 500), (160, 500)]


def rows(settings: Settings) -> Iterator[Row]:
    for index, (width, count) in enumerate(sizes(settings)):
        yield from size_rows(width, count, index == 0, settings)


def size_rows(width: int, count: int, small: bool, settings: Settings) -> Iterator[Row]:
    """Every case at one size; ``small``: the 2 MiB model, where issue 11 set its goals."""
    host = model_of(width, count)
    nbytes = sum(p.nbytes for p in ms.params(host))
    label = f"{2 * count:,} Params, {fmt_bytes(nbytes)}"
    flat = ms.to_host(host)  # a flat host copy
    flat_dst = ms.to_host(host)
    sim = ms.to_device(host, "sim:1")
    sim_dst = ms.to_device(host, "sim:2")
    built = f"host-built model {layout(host)}"

    def case(what: str, fn, at_most: float | None, src: str = "host",
             dst: str = "host", details: str = "", setup=None) -> Row:
        timings = in_turns({"one flat copy": flat_copy(nbytes, src, dst),
                            "case": fn if setup is None else (fn, setup)}, settings)
        return compared(f"{what}, {label}", timings, "case", "one flat copy", at_most,
                        details)

    yield case("sync(flat, flat)", lambda: ms.sync(flat_dst, flat), 1.3)
    if small:
        yield case("memcpy into an existing buffer (reference)", memcpy(nbytes), None)
    yield case("sync(flat, host-built)", lambda: ms.sync(flat_dst, host),
               2.5 if small else 1.3, details=built)
    yield case("soft sync tau=0.05, sync(flat, flat)",
               lambda: ms.sync(flat_dst, flat, tau=0.05), 2.0 if small else None)
    yield case("soft sync tau=0.05, sync(flat, host-built) (per Param)",
               lambda: ms.sync(flat_dst, host, tau=0.05), None, details=built)
    yield case("soft sync tau=0.05, sync(host-built, flat) (into loose Params)",
               lambda: ms.sync(host, flat, tau=0.05), None, details=built)
    yield case("to_host(copy) of a host-built model", lambda: ms.to_host(host),
               5.0 if small else 1.3, details=built)
    yield case("to_host(copy) of a flat host model", lambda: ms.to_host(flat), 1.3)
    yield case("sync(flat, flat) after building another model",
               lambda: ms.sync(flat_dst, flat), 1.3, setup=build_another)
    yield flatten_row(width, count, nbytes, label, settings)
    yield case("to_device copy, host-built -> sim:1", lambda: ms.to_device(host, "sim:1"),
               None, "host", "sim:1")
    yield case("to_host copy of a flat sim:1 model", lambda: ms.to_host(sim), None,
               "sim:1", "host")
    yield case("sync sim:1 -> sim:2 (flat, same graph)", lambda: ms.sync(sim_dst, sim),
               None, "sim:1", "sim:2")
    yield case("sync sim:1 -> host (flat)", lambda: ms.sync(flat_dst, sim), None,
               "sim:1", "host")


def flatten_row(width: int, count: int, nbytes: int, label: str, settings: Settings) -> Row:
    """``ms.flatten`` of a freshly built model: the one-time price of the flat path (issue
    11 measured packing at about ten flat copies). Each call gets a new model, built
    untimed, since flattening is in place."""
    what = f"ms.flatten of a host-built model (one-time), {label}"
    if not hasattr(ms, "flatten"):
        return na_row(what, goal_of(None), NO_FLATTEN)
    fresh = []

    def build() -> None:
        fresh[:] = [model_of(width, count)]

    timings = in_turns({"one flat copy": flat_copy(nbytes),
                        "case": (lambda: ms.flatten(fresh[0]), build)}, settings)
    return compared(what, timings, "case", "one flat copy", None)


if __name__ == "__main__":
    main(rows, __doc__)
