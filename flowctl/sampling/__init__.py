"""Sigma grids, one-step integrators, and integration with a resumable record."""

from .grid import Grid, SigmaGrid
from .integrators import EULER, HEUN, RK4, TABLEAUS, StagePoint, Tableau, get_tableau, rk_step
from .trajectory import ResumePoint, Trajectory, integrate, resume

__all__ = [
    "Grid",
    "SigmaGrid",
    "Tableau",
    "EULER",
    "HEUN",
    "RK4",
    "TABLEAUS",
    "StagePoint",
    "get_tableau",
    "rk_step",
    "ResumePoint",
    "Trajectory",
    "integrate",
    "resume",
]
