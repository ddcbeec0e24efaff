"""Toy systems: control systems ``dx/dt = f(x, u, t)`` written once for torch and CasADi, and
the exact Gaussian-mixture rectified flow."""

from .base import ControlSystem
from .gaussian_mixture import GaussianMixtureFlow
from .linear import DoubleIntegrator, LinearSystem
from .mechanical import CartPole, Pendulum
from .prompted_mixture import PromptedMixtureFlow
from .vanderpol import VanDerPol

__all__ = ["CartPole", "ControlSystem", "DoubleIntegrator", "GaussianMixtureFlow", "LinearSystem", "Pendulum", "PromptedMixtureFlow", "VanDerPol"]
