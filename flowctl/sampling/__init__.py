"""Sigma grids, one-step integrators, and integration with a resumable record."""

from .grid import Grid, SigmaGrid
from .integrators import STEPPERS, euler_step, get_stepper, heun_step, rk4_step
from .trajectory import ResumePoint, Trajectory, integrate, resume

__all__ = [
    "Grid",
    "SigmaGrid",
    "STEPPERS",
    "euler_step",
    "heun_step",
    "rk4_step",
    "get_stepper",
    "ResumePoint",
    "Trajectory",
    "integrate",
    "resume",
]
