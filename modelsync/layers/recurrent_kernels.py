"""The arithmetic of GRU and LSTM over a whole sequence, forward and backpropagation through
time, as torch computes it (gate orders GRU r,z,n and LSTM i,f,g,o).

Everything here is time-major: ``x`` is ``(T, N, I)``, states ``(N, H)``. The input half of
every gate, ``x @ W_ih.T + b``, is one matmul over all steps before the loop; only
``h @ W_hh.T`` runs per step. Backward stacks the per-step gate gradients so each weight's
gradient is one matmul over all steps at the end. Each cell has an array-API version (sim,
CuPy: lists of steps, stacked) and a NumPy version (preallocated buffers, ``out=`` ufuncs).

``sigmoid(a)`` is computed as ``0.5 + 0.5 * tanh(a / 2)``: one transcendental, bounded, no
overflow for any ``a`` (equal to ``1 / (1 + exp(-a))`` to rounding). The NumPy version folds
the halving into copies of the weights and the precomputed input half (exact: a power of 2).
"""

from __future__ import annotations

from typing import Any

import numpy as np


class Grads:
    """What a backward pass gives: the stacked gate gradients (time-major, flattened to
    ``(T·N, G·H)``) for the input and hidden halves, ``dx`` (time-major) and the gradient of
    the initial state (``dh0``, and ``dc0`` for an LSTM)."""

    __slots__ = ("dgi", "dgh", "dx", "dstate")

    def __init__(self, dgi: Any, dgh: Any, dx: Any, dstate: Any) -> None:
        self.dgi, self.dgh, self.dx, self.dstate = dgi, dgh, dx, dstate


#: OpenBLAS runs a matmul on one thread when m·n·k is at most this (65536 × its default
#: GEMM_MULTITHREAD_THRESHOLD of 4). A step's ``h @ W_hh.T`` is a few times larger, and a
#: threaded call waits for every thread: on a busy machine a descheduled one costs
#: milliseconds, 64 times a sequence (measured: 4× slower with two threads on two loaded
#: cores). So the host loop cuts each step's matmul into column blocks under this size,
#: which any BLAS computes as fast serially; the big matmuls outside the loop stay threaded.
SERIAL_MATMUL = 65536 * 4


#: A product needing more blocks than this is big enough to gain from threads: one call.
MAX_BLOCKS = 8


def column_blocks(rows: int, inner: int, cols: int) -> list[slice]:
    """Equal column slices of a ``(rows, inner) @ (inner, cols)`` product, each at most
    `SERIAL_MATMUL` multiply-adds (one slice when the whole product is, or when it would
    take more than `MAX_BLOCKS`)."""
    widest = SERIAL_MATMUL // max(1, rows * inner)
    count = -(-cols // widest) if widest else MAX_BLOCKS + 1
    if count > MAX_BLOCKS:
        return [slice(0, cols)]
    width = -(-cols // count)
    return [slice(j, min(j + width, cols)) for j in range(0, cols, width)]


def _matmul_into(a: np.ndarray, b: np.ndarray, out: np.ndarray, blocks: list[slice]) -> None:
    """``out[...] = a @ b``, one serial-sized column block at a time."""
    if len(blocks) == 1:
        np.matmul(a, b, out=out)
        return
    for cols in blocks:
        np.matmul(a, b[:, cols], out=out[:, cols])


def _sigmoid(xp: Any, a: Any) -> Any:
    t = xp.tanh(a * 0.5)
    t *= 0.5
    t += 0.5
    return t


def _input_half(xp: Any, x: Any, w_ih: Any, bias: Any) -> Any:
    """``x @ W_ih.T + bias`` for every step at once: ``(T, N, G·H)``."""
    steps, batch, width = x.shape
    gi = xp.reshape(x, (steps * batch, width)) @ xp.matrix_transpose(w_ih)
    if bias is not None:
        gi += bias
    return xp.reshape(gi, (steps, batch, w_ih.shape[0]))


def _finish(xp: Any, dgi: Any, dgh: Any, w_ih: Any, steps: int, batch: int,
            dstate: Any) -> Grads:
    dgi2 = xp.reshape(dgi, (steps * batch, dgi.shape[-1]))
    dgh2 = xp.reshape(dgh, (steps * batch, dgh.shape[-1]))
    dx = xp.reshape(dgi2 @ w_ih, (steps, batch, w_ih.shape[1]))
    return Grads(dgi2, dgh2, dx, dstate)


# -- GRU -----------------------------------------------------------------------------------
def gru_forward(xp: Any, x: Any, h0: Any, w_ih: Any, w_hh: Any, b_ih: Any, b_hh: Any
                ) -> tuple[Any, Any]:
    """The hidden states ``(T + 1, N, H)`` (``[0]`` is ``h0``) and what backward needs."""
    if isinstance(x, np.ndarray):
        return _gru_forward_np(x, h0, w_ih, w_hh, b_ih, b_hh)
    hidden = w_hh.shape[1]
    bias = b_ih
    if b_hh is not None:  # b_hr, b_hz join the input half; b_hn stays inside r * (...)
        fold = xp.concat([b_hh[:2 * hidden], xp.zeros_like(b_hh[2 * hidden:])])
        bias = fold if bias is None else bias + fold
    gi = _input_half(xp, x, w_ih, bias)
    w_hh_t = xp.matrix_transpose(w_hh)
    h = h0
    hs, rzs, ns, hns = [h0], [], [], []
    for t in range(x.shape[0]):
        g = gi[t, ...]
        gh = h @ w_hh_t
        rz = _sigmoid(xp, g[:, :2 * hidden] + gh[:, :2 * hidden])
        hn = gh[:, 2 * hidden:]
        if b_hh is not None:
            hn = hn + b_hh[2 * hidden:]
        n = xp.tanh(g[:, 2 * hidden:] + rz[:, :hidden] * hn)
        h = n + rz[:, hidden:] * (h - n)
        hs.append(h)
        rzs.append(rz)
        ns.append(n)
        hns.append(hn)
    return xp.stack(hs), (rzs, ns, hns)


def gru_backward(xp: Any, dy: Any, hs: Any, cache: Any, w_ih: Any, w_hh: Any) -> Grads:
    """Backpropagation through time from ``dy`` (time-major ``(T, N, H)``)."""
    if isinstance(dy, np.ndarray):
        return _gru_backward_np(dy, hs, cache, w_ih, w_hh)
    rzs, ns, hns = cache
    steps, batch, hidden = dy.shape
    dh = None
    dghs, dans = [], []
    for t in range(steps - 1, -1, -1):
        dh = dy[t, ...] if dh is None else dh + dy[t, ...]
        rz, n = rzs[t], ns[t]
        dhz = dh * rz[:, hidden:]
        dan = (dh - dhz) * (1.0 - n * n)
        drz = xp.concat([dan * hns[t], dh * (hs[t, ...] - n)], axis=1)
        drz = drz * rz * (1.0 - rz)
        dgh = xp.concat([drz, dan * rz[:, :hidden]], axis=1)
        dghs.append(dgh)
        dans.append(dan)
        dh = dhz + dgh @ w_hh
    dgh = xp.stack(dghs[::-1])
    dgi = xp.concat([dgh[:, :, :2 * hidden], xp.stack(dans[::-1])], axis=2)
    return _finish(xp, dgi, dgh, w_ih, steps, batch, dh)


def _gru_forward_np(x: np.ndarray, h0: np.ndarray, w_ih: np.ndarray, w_hh: np.ndarray,
                    b_ih: Any, b_hh: Any) -> tuple[np.ndarray, Any]:
    steps, batch, _ = x.shape
    hidden = w_hh.shape[1]
    rz_cols = slice(0, 2 * hidden)
    gi = _input_half(np, x, w_ih, b_ih)
    if b_hh is not None:
        gi[:, :, rz_cols] += b_hh[rz_cols]
    gi[:, :, rz_cols] *= 0.5  # (sigmoid's halving, once for all steps)
    w = np.array(w_hh.T)
    w[:, rz_cols] *= 0.5
    b_hn = None if b_hh is None else b_hh[2 * hidden:]
    dtype = x.dtype
    hs = np.empty((steps + 1, batch, hidden), dtype)
    hs[0] = h0
    rzs = np.empty((steps, batch, 2 * hidden), dtype)
    ns = np.empty((steps, batch, hidden), dtype)
    hns = np.empty((steps, batch, hidden), dtype)
    gh = np.empty((batch, 3 * hidden), dtype)
    tmp = np.empty((batch, hidden), dtype)
    blocks = column_blocks(batch, hidden, 3 * hidden)
    for t in range(steps):
        h, rz, n, hn, g = hs[t], rzs[t], ns[t], hns[t], gi[t]
        _matmul_into(h, w, gh, blocks)
        np.add(g[:, rz_cols], gh[:, rz_cols], out=rz)
        np.tanh(rz, out=rz)
        rz *= 0.5
        rz += 0.5
        if b_hn is None:
            hn[...] = gh[:, 2 * hidden:]
        else:
            np.add(gh[:, 2 * hidden:], b_hn, out=hn)
        np.multiply(rz[:, :hidden], hn, out=n)
        n += g[:, 2 * hidden:]
        np.tanh(n, out=n)
        np.subtract(h, n, out=tmp)
        tmp *= rz[:, hidden:]
        np.add(n, tmp, out=hs[t + 1])
    return hs, (rzs, ns, hns)


def _gru_backward_np(dy: np.ndarray, hs: np.ndarray, cache: Any, w_ih: np.ndarray,
                     w_hh: np.ndarray) -> Grads:
    rzs, ns, hns = cache
    steps, batch, hidden = dy.shape
    dtype = hs.dtype
    dgh = np.empty((steps, batch, 3 * hidden), dtype)
    dgi = np.empty((steps, batch, 3 * hidden), dtype)
    dh = np.zeros((batch, hidden), dtype)
    dhz = np.empty_like(dh)
    tmp = np.empty_like(dh)
    buf = np.empty((batch, 2 * hidden), dtype)
    blocks = column_blocks(batch, 3 * hidden, hidden)
    for t in range(steps - 1, -1, -1):
        dh += dy[t]
        rz, n, d, di = rzs[t], ns[t], dgh[t], dgi[t]
        np.multiply(dh, rz[:, hidden:], out=dhz)
        dan = di[:, 2 * hidden:]
        np.multiply(n, n, out=dan)
        np.subtract(1.0, dan, out=dan)
        np.subtract(dh, dhz, out=tmp)
        dan *= tmp
        np.multiply(dan, rz[:, :hidden], out=d[:, 2 * hidden:])
        np.multiply(dan, hns[t], out=d[:, :hidden])
        dz = d[:, hidden:2 * hidden]
        np.subtract(hs[t], n, out=dz)
        dz *= dh
        drz = d[:, :2 * hidden]
        drz *= rz
        np.subtract(1.0, rz, out=buf)
        drz *= buf
        di[:, :2 * hidden] = drz
        _matmul_into(d, w_hh, dh, blocks)
        dh += dhz
    return _finish(np, dgi, dgh, w_ih, steps, batch, dh)


# -- LSTM ----------------------------------------------------------------------------------
def lstm_forward(xp: Any, x: Any, h0: Any, c0: Any, w_ih: Any, w_hh: Any, b_ih: Any,
                 b_hh: Any) -> tuple[Any, Any]:
    """The hidden states ``(T + 1, N, H)`` (``[0]`` is ``h0``) and what backward needs."""
    if isinstance(x, np.ndarray):
        return _lstm_forward_np(x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    hidden = w_hh.shape[1]
    bias = b_ih if b_hh is None else (b_hh if b_ih is None else b_ih + b_hh)
    gi = _input_half(xp, x, w_ih, bias)
    w_hh_t = xp.matrix_transpose(w_hh)
    h, c = h0, c0
    hs, cs, acts, tcs = [h0], [c0], [], []
    for t in range(x.shape[0]):
        a = gi[t, ...] + h @ w_hh_t
        sif = _sigmoid(xp, a[:, :2 * hidden])
        g = xp.tanh(a[:, 2 * hidden:3 * hidden])
        o = _sigmoid(xp, a[:, 3 * hidden:])
        c = sif[:, hidden:] * c + sif[:, :hidden] * g
        tc = xp.tanh(c)
        h = o * tc
        hs.append(h)
        cs.append(c)
        acts.append((sif, g, o))
        tcs.append(tc)
    return xp.stack(hs), (cs, acts, tcs)


def lstm_backward(xp: Any, dy: Any, hs: Any, cache: Any, w_ih: Any, w_hh: Any) -> Grads:
    """Backpropagation through time from ``dy`` (time-major ``(T, N, H)``)."""
    if isinstance(dy, np.ndarray):
        return _lstm_backward_np(dy, hs, cache, w_ih, w_hh)
    cs, acts, tcs = cache
    steps, batch, hidden = dy.shape
    dh = dc = None
    dgs = []
    for t in range(steps - 1, -1, -1):
        dh = dy[t, ...] if dh is None else dh + dy[t, ...]
        sif, g, o = acts[t]
        tc = tcs[t]
        dcc = dh * o * (1.0 - tc * tc)
        if dc is not None:
            dcc = dcc + dc
        dif = xp.concat([dcc * g, dcc * cs[t]], axis=1) * sif * (1.0 - sif)
        dg = dcc * sif[:, :hidden] * (1.0 - g * g)
        do = dh * tc * o * (1.0 - o)
        dc = dcc * sif[:, hidden:]
        dgate = xp.concat([dif, dg, do], axis=1)
        dgs.append(dgate)
        dh = dgate @ w_hh
    dgate = xp.stack(dgs[::-1])
    return _finish(xp, dgate, dgate, w_ih, steps, batch, (dh, dc))


def _lstm_scales(hidden: int, dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per gate column: the pre-activation scale (½ for sigmoid gates i, f, o, 1 for g) and
    the output affine ``s·tanh + b`` that makes them sigmoids (g: tanh itself)."""
    scale = np.full(4 * hidden, 0.5, dtype)
    scale[2 * hidden:3 * hidden] = 1.0
    offset = np.full(4 * hidden, 0.5, dtype)
    offset[2 * hidden:3 * hidden] = 0.0
    return scale, offset


def _lstm_forward_np(x: np.ndarray, h0: np.ndarray, c0: np.ndarray, w_ih: np.ndarray,
                     w_hh: np.ndarray, b_ih: Any, b_hh: Any) -> tuple[np.ndarray, Any]:
    steps, batch, _ = x.shape
    hidden = w_hh.shape[1]
    dtype = x.dtype
    gi = _input_half(np, x, w_ih, b_ih)
    if b_hh is not None:
        gi += b_hh
    scale, offset = _lstm_scales(hidden, dtype)
    gi *= scale
    w = w_hh.T * scale
    hs = np.empty((steps + 1, batch, hidden), dtype)
    cs = np.empty((steps + 1, batch, hidden), dtype)
    hs[0], cs[0] = h0, c0
    acts = np.empty((steps, batch, 4 * hidden), dtype)
    tcs = np.empty((steps, batch, hidden), dtype)
    tmp = np.empty((batch, hidden), dtype)
    blocks = column_blocks(batch, hidden, 4 * hidden)
    for t in range(steps):
        a, c, tc = acts[t], cs[t + 1], tcs[t]
        _matmul_into(hs[t], w, a, blocks)
        a += gi[t]
        np.tanh(a, out=a)
        a *= scale
        a += offset
        np.multiply(a[:, hidden:2 * hidden], cs[t], out=c)
        np.multiply(a[:, :hidden], a[:, 2 * hidden:3 * hidden], out=tmp)
        c += tmp
        np.tanh(c, out=tc)
        np.multiply(a[:, 3 * hidden:], tc, out=hs[t + 1])
    return hs, (cs, acts, tcs)


def _lstm_backward_np(dy: np.ndarray, hs: np.ndarray, cache: Any, w_ih: np.ndarray,
                      w_hh: np.ndarray) -> Grads:
    cs, acts, tcs = cache
    steps, batch, hidden = dy.shape
    dtype = hs.dtype
    # d act / d pre-activation = a * (alpha - a) + beta: s(1 - s) for sigmoids, 1 - g² for g
    alpha = np.ones(4 * hidden, dtype)
    alpha[2 * hidden:3 * hidden] = 0.0
    beta = 1.0 - alpha
    dgate = np.empty((steps, batch, 4 * hidden), dtype)
    dh = np.zeros((batch, hidden), dtype)
    dc = np.zeros_like(dh)
    tmp = np.empty_like(dh)
    buf = np.empty((batch, 4 * hidden), dtype)
    blocks = column_blocks(batch, 4 * hidden, hidden)
    for t in range(steps - 1, -1, -1):
        dh += dy[t]
        a, tc, d = acts[t], tcs[t], dgate[t]
        np.multiply(dh, tc, out=d[:, 3 * hidden:])
        np.multiply(tc, tc, out=tmp)
        np.subtract(1.0, tmp, out=tmp)
        tmp *= a[:, 3 * hidden:]
        tmp *= dh
        dc += tmp
        np.multiply(dc, a[:, 2 * hidden:3 * hidden], out=d[:, :hidden])
        np.multiply(dc, cs[t], out=d[:, hidden:2 * hidden])
        np.multiply(dc, a[:, :hidden], out=d[:, 2 * hidden:3 * hidden])
        dc *= a[:, hidden:2 * hidden]
        np.subtract(alpha, a, out=buf)
        buf *= a
        buf += beta
        d *= buf
        _matmul_into(d, w_hh, dh, blocks)
    return _finish(np, dgate, dgate, w_ih, steps, batch, (dh, dc))
