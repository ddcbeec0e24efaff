"""Linearising model predictive control: one QP, several backends, a closed-loop controller."""

from .problem import Linearisation, MPCConfig, MPCSolution, objective, predict

__all__ = ["MPCConfig", "Linearisation", "MPCSolution", "objective", "predict"]
