"""What the backends that solve the assembled sparse QP (OSQP, CasADi) share: their checked
set-up arguments (:class:`SparseQPBackend`) and the solution they return (:func:`make_solution`)."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import FlowctlError, InvalidArgumentError
from ..status import SolveStatus
from .problem import MPCConfig, MPCSolution
from .qp_layout import QPLayout, StepNumbers, all_finite, check_pattern, check_structure
from .qp_prediction import predict


def make_solution(
    layout: QPLayout, d: StepNumbers, z: np.ndarray, status: SolveStatus, message: str, iterations: int, solve_time: float,
    prediction: np.ndarray | None = None,
) -> MPCSolution:
    """The :class:`MPCSolution` of primal solution ``z``: controls from z, states by
    :func:`flowctl.mpc.qp_prediction.predict` (with ``prediction``, :func:`flowctl.mpc.qp_prediction.prediction_matrix` of the
    step's A_i, B_i) (the cost is computed when asked for). A "solved" z holding NaN or Inf is
    reported FAILED."""
    if z.shape != (layout.n,):
        raise FlowctlError(f"the QP solver returned a primal solution of shape {z.shape}, expected ({layout.n},)")
    if status is SolveStatus.SOLVED and not all_finite(z):
        status, message = SolveStatus.FAILED, f"{message}; but its primal solution contains NaN or Inf"
    u = layout.controls(z)
    controls = torch.from_numpy(u)
    states = torch.from_numpy(predict(layout, d, u, prediction))
    reference, u_prev = torch.from_numpy(d.reference), torch.from_numpy(d.u_prev)
    return MPCSolution(status, controls, states, int(iterations), float(solve_time), message, layout.config, reference, u_prev)


class SparseQPBackend:
    """What the backends solving the assembled sparse QP share: checked set-up arguments.

    Subclasses set ``options_type``; ``options=None`` means its defaults.
    """

    options_type: type

    def __init__(
        self, config: MPCConfig, structure: str = "dense", *, block_size: int | None = None,
        options: object | None = None, pattern: tuple[torch.Tensor, torch.Tensor] | None = None,
    ):
        if not isinstance(config, MPCConfig):
            raise InvalidArgumentError("config", f"expected an MPCConfig, got {type(config).__name__}")
        options = self.options_type() if options is None else options
        if not isinstance(options, self.options_type):
            raise InvalidArgumentError("options", f"expected {self.options_type.__name__}, got {type(options).__name__}")
        self.config = config
        self.structure = structure
        self.options = options
        self.block_size = check_structure(config, structure, block_size)
        check_pattern(config, structure, pattern)
        self.pattern = pattern
        self.layout: QPLayout | None = None
        self.build_time: float | None = None
