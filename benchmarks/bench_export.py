"""Serving the demo CNN: ONNX Runtime's inference latency on the exported graph against
modelsync's own forward on the host, for one sample and for a batch of 32 (information:
which to serve with; no goal).

    python benchmarks/bench_export.py
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from common import Row, Settings, compared, in_turns, main, na_row

import modelsync as ms
from modelsync import workloads


def rows(settings: Settings) -> Iterator[Row]:
    what = "demo CNN inference, ONNX Runtime (CPU, 2 threads) vs modelsync forward on the host"
    try:
        import onnxruntime as ort
    except ImportError:
        yield na_row(what, "—", "n/a (onnxruntime not installed: pip install "
                                "'modelsync[onnx]')")
        return
    model = workloads.build_cnn(0)
    x_train = workloads.digits_images()[0]
    ms.update_bn(model, [x_train[i:i + 32] for i in range(0, 256, 32)])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cnn.onnx"
        ms.export_onnx(model, path, example=x_train[:1])
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for batch in ((1, 32) if not settings.tiny else (1,)):
        x = np.ascontiguousarray(x_train[:batch])
        served = session.run(None, {"input": x})[0]
        diff = float(np.max(np.abs(served - model(x))))
        timings = in_turns({"modelsync": lambda x=x: model(x),
                            "onnxruntime": lambda x=x: session.run(None, {"input": x})},
                           settings)
        yield compared(f"{what}, batch {batch}", timings, "onnxruntime", "modelsync", None,
                       f"outputs differ by at most {diff:.1e}")


if __name__ == "__main__":
    main(rows, __doc__)
