"""Rebuild digits.npz from scikit-learn's bundled copy of the UCI digits (run by hand, once).

    python modelsync/data/build_digits.py path/to/sklearn/datasets/data/digits.csv.gz

Not imported by modelsync: the package ships the .npz and needs no scikit-learn.
The samples are stored already shuffled with numpy.random.default_rng(SEED).permutation,
so the fixed split is simply "first 1,437 train, last 360 test"; ``order`` keeps each
stored sample's row in the original CSV.
"""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np

SEED = 20170504  # the day the Flux.jl optimizers discussion opened
OUT = Path(__file__).with_name("digits.npz")


def main(csv_gz: str) -> None:
    with gzip.open(csv_gz, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.int64)
    if table.shape != (1797, 65):
        raise SystemExit(f"expected 1797 rows of 64 pixels + 1 label, got {table.shape}")
    order = np.random.default_rng(SEED).permutation(len(table))
    images = table[order, :64].reshape(-1, 8, 8).astype(np.uint8)
    labels = table[order, 64].astype(np.uint8)
    np.savez_compressed(OUT, images=images, labels=labels, order=order.astype(np.uint16))
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main(sys.argv[1])
