"""States predicted over the horizon from one step's QP numbers (:class:`flowctl.mpc.qp_layout.StepNumbers`):
the recursion ``x_{i+1} = A_i x_i + B_i u_i + c_i`` in numpy, or for small "dense" problems one
product with a precomputed prediction matrix."""

from __future__ import annotations

import numpy as np

from .qp_layout import QPLayout, StepNumbers

MAX_PREDICTION_ENTRIES = 1 << 17
"""The largest :func:`prediction_matrix` built (entries; 1 MiB of float64)."""


def prediction_matrix(layout: QPLayout, a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """For "dense" A_i, B_i: the matrix M with ``(x_1, .., x_Np) = M (x_0, u_0, .., u_{Nc-1},
    c_0, .., c_{Np-1})`` (flat), which makes :func:`predict` one matrix-vector product while
    A_i, B_i stay the same; None for the other structures, or where M would have more than
    ``MAX_PREDICTION_ENTRIES`` entries."""
    cfg = layout.config
    np_, nc, nx, nu = cfg.horizon, cfg.control_horizon, cfg.nx, cfg.nu
    k = nx + nc * nu + np_ * nx
    if layout.structure != "dense" or np_ * nx * k > MAX_PREDICTION_ENTRIES:
        return None
    m = np.zeros((np_, nx, k))
    prev = np.zeros((nx, k))
    prev[:, :nx] = np.eye(nx)
    cu = nx + nc * nu
    for i in range(np_):
        cur = m[i]
        np.matmul(a[i], prev, out=cur)
        j = min(i, nc - 1)
        cur[:, nx + j * nu : nx + (j + 1) * nu] += b[i]
        cur[:, cu + i * nx : cu + (i + 1) * nx] += np.eye(nx)
        prev = cur
    return m.reshape(np_ * nx, k)

def predict(layout: QPLayout, d: StepNumbers, controls: np.ndarray, matrix: np.ndarray | None = None) -> np.ndarray:
    """:func:`flowctl.mpc.problem.predict` in numpy: states (Np + 1, nx) under ``controls``
    (Nc, nu), the last held to Np (the same recursion, without torch's per-call overhead; or,
    given ``matrix = prediction_matrix(layout, d.a, d.b)``, one product with it: equal up to rounding)."""
    cfg = layout.config
    np_, nc, nx = cfg.horizon, controls.shape[0], cfg.nx
    if matrix is not None:
        xs = np.empty((np_ + 1, nx))
        xs[0] = d.x0
        np.dot(matrix, np.concatenate((d.x0, controls.reshape(-1), d.c.reshape(-1))), out=xs[1:].reshape(-1))
        return xs
    held = controls if nc == np_ else controls[np.minimum(np.arange(np_), nc - 1)]  # (Np, nu)
    if layout.structure == "diagonal":
        w = d.b * held
    elif layout.structure == "dense":
        w = np.matmul(d.b, held[:, :, None]).reshape(np_, nx)
    else:
        bs = layout.block_size
        w = np.matmul(d.b, held.reshape(np_, -1, bs, 1)).reshape(np_, nx)
    w += d.c
    xs = np.empty((np_ + 1, nx))
    xs[0] = x = d.x0
    # x_{i+1} = A_i x_i + w_i, one step at a time, written into xs in place
    if layout.structure == "diagonal":
        for ai, wi, xi in zip(d.a, w, xs[1:]):
            np.multiply(ai, x, out=xi)
            xi += wi
            x = xi
    elif layout.structure == "dense":
        for ai, wi, xi in zip(d.a, w, xs[1:]):
            np.dot(ai, x, out=xi)
            xi += wi
            x = xi
    else:
        for ai, wi, xi in zip(d.a, w, xs[1:]):
            np.matmul(ai, x.reshape(-1, bs, 1), out=xi.reshape(-1, bs, 1))
            xi += wi
            x = xi
    return xs
