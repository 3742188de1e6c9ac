"""BatchNorm exports to ONNX in evaluation mode (issue 18 with issue 23's exporter): the
running statistics are initializers, and ONNX Runtime agrees with the model on (N, C),
(N, C, L) and (N, C, H, W), with and without affine Params or running statistics."""

from __future__ import annotations

import numpy as np
import pytest

import modelsync as ms
from modelsync import layers

onnx = pytest.importorskip("onnx", reason="export needs the onnx extra")
ort = pytest.importorskip("onnxruntime", reason="the export tests run ONNX Runtime")

RTOL, ATOL = 1e-5, 1e-5  # float32 through two runtimes


def _run(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


@pytest.mark.parametrize("shape", [(6, 3), (5, 3, 4), (4, 3, 5, 2)])
@pytest.mark.parametrize("affine, tracking", [(True, True), (False, True), (True, False)])
def test_batchnorm_exports_its_running_statistics(shape, affine, tracking, tmp_path):
    rng = np.random.default_rng(0)
    bn = layers.BatchNorm(3, affine=affine, track_running_stats=tracking)
    if affine:
        bn.weight.assign(rng.normal(size=3).astype(np.float32))
        bn.bias.assign(rng.normal(size=3).astype(np.float32))
    for _ in range(3):
        bn(rng.normal(size=shape).astype(np.float32) * 2 + 1, train=True)
    model = layers.Chain(bn, layers.ReLU())
    x = rng.normal(size=shape).astype(np.float32)
    ms.export_onnx(model, tmp_path / "bn.onnx", example=x[:2])
    np.testing.assert_allclose(_run(tmp_path / "bn.onnx", x), model(x), rtol=RTOL, atol=ATOL)
    if tracking:
        names = {i.name for i in onnx.load(str(tmp_path / "bn.onnx")).graph.initializer}
        assert {"layers.0.running_mean", "layers.0.running_var"} <= names
