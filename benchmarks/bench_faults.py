"""What issue 20's fault handling costs, as ratios measured in one run.

- Holding Ctrl-C through an optimizer step (`modelsync.interrupts`: two ``signal.signal``
  calls): a flat Adam step through ``opt.step()`` against the same step's prepare-and-commit
  called bare, on a small model (4 × ``Dense(64, 64)``, 16,640 floats), where a fixed cost
  shows most.
- The per-tensor CRC-32 a save writes (and a load verifies) against the atomic write of the
  same file (flushed and fsync'ed), for a 12.6 MB checkpoint (3 × ``Dense(1024, 1024)``).
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from common import Row, Settings, compared, in_turns, main  # noqa: E402

import modelsync as ms  # noqa: E402
from modelsync import layers, optim  # noqa: E402
from modelsync.io.atomic import atomic_write  # noqa: E402
from modelsync.io.files import checksum  # noqa: E402


def rows(settings: Settings) -> Iterator[Row]:
    yield hold_row(settings)
    yield checksum_row(settings)


def hold_row(settings: Settings) -> Row:
    size = 8 if settings.tiny else 64
    model = ms.to_host(layers.Chain(*[layers.Dense(size, size, seed=i) for i in range(4)]))
    ps = ms.params(model)
    for p in ps:
        p.grad = np.full(p.shape, 1e-3, dtype=p.dtype)
    opt = optim.Adam(ps, lr=1e-6)
    opt.step()
    timings = in_turns({"bare": lambda: opt._prepare_step()(), "held": opt.step}, settings)
    return compared(f"flat Adam step on 4 × Dense({size}, {size}) with Ctrl-C held through "
                    "it, vs the same step bare", timings, "held", "bare", 1.1)


def checksum_row(settings: Settings) -> Row:
    size = 32 if settings.tiny else 1024
    model = layers.Chain(*[layers.Dense(size, size, seed=i) for i in range(3)])
    tensors = [np.ascontiguousarray(p.value) for p in ms.params(model)]
    blob = b"".join(t.tobytes() for t in tensors)
    folder = Path(tempfile.mkdtemp(prefix="bench_faults."))
    path = folder / "m.safetensors"

    def write() -> None:
        atomic_write(path, lambda fh: fh.write(blob))

    try:
        timings = in_turns({"atomic write": write,
                            "crc32": lambda: [checksum(t) for t in tensors]}, settings)
    finally:
        path.unlink(missing_ok=True)
        folder.rmdir()
    return compared(f"CRC-32 of every tensor of a {len(blob) / 1e6:.1f} MB checkpoint, vs its "
                    "atomic write (fsync'ed)", timings, "crc32", "atomic write", 0.5)


if __name__ == "__main__":
    main(rows, __doc__)
