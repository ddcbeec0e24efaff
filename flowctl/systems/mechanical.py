"""Mechanical toy systems: a torque-driven pendulum and the frictionless cart-pole (SI units)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from .._checks import check_real
from .base import ControlSystem
from .ops import Vector, cos, sin, split, stack


@dataclass(frozen=True)
class Pendulum(ControlSystem):
    """A point mass on a rigid massless rod, driven by a torque at the pivot.

    State ``(theta, omega)``: angle in rad, ``theta = 0`` hanging straight down, and angular
    velocity in rad/s; input ``torque`` in N m::

        theta' = omega
        omega' = -(g / l) sin(theta) - damping / (m l^2) omega + torque / (m l^2)

    Args:
        mass: bob mass ``m`` in kg, > 0.
        length: rod length ``l`` in m, > 0.
        gravity: ``g`` in m/s^2, > 0.
        damping: viscous friction at the pivot in N m s/rad, >= 0.
    """

    mass: float = 1.0
    length: float = 1.0
    gravity: float = 9.81
    damping: float = 0.0

    state_names = ("theta", "omega")
    control_names = ("torque",)

    def __post_init__(self) -> None:
        for name in ("mass", "length", "gravity"):
            object.__setattr__(self, name, check_real(name, getattr(self, name), positive=True))
        object.__setattr__(self, "damping", check_real("damping", self.damping, nonnegative=True))

    def f(self, x: Vector, u: Vector, t: float) -> Vector:
        theta, omega = split(x)
        (torque,) = split(u)
        inertia = self.mass * self.length**2
        alpha = (
            -(self.gravity / self.length) * sin(theta)
            - (self.damping / inertia) * omega
            + torque / inertia
        )
        return stack([omega, alpha])


@dataclass(frozen=True)
class CartPole(ControlSystem):
    """A uniform pole hinged on a cart that a horizontal force pushes; no friction.

    State ``(position, velocity, angle, angular_velocity)`` in m, m/s, rad, rad/s; ``angle = 0``
    is upright and a positive angle tilts the pole towards positive ``position``. Input
    ``force`` in N on the cart. The equations are Barto, Sutton & Anderson (1983) without
    friction, as corrected by R. V. Florian and used by Gym's CartPole.

    Args:
        cart_mass: cart mass in kg, > 0.
        pole_mass: pole mass in kg, > 0.
        pole_length: half the pole's length (pivot to centre of mass) in m, > 0, as in Gym.
        gravity: ``g`` in m/s^2, > 0.
    """

    cart_mass: float = 1.0
    pole_mass: float = 0.1
    pole_length: float = 0.5
    gravity: float = 9.81

    state_names = ("position", "velocity", "angle", "angular_velocity")
    control_names = ("force",)

    def __post_init__(self) -> None:
        for field in fields(self):
            object.__setattr__(
                self, field.name, check_real(field.name, getattr(self, field.name), positive=True)
            )

    def f(self, x: Vector, u: Vector, t: float) -> Vector:
        _, velocity, angle, angular_velocity = split(x)
        (force,) = split(u)
        total_mass = self.cart_mass + self.pole_mass
        l, m = self.pole_length, self.pole_mass
        s, c = sin(angle), cos(angle)
        temp = (force + m * l * angular_velocity**2 * s) / total_mass
        angular_acc = (self.gravity * s - c * temp) / (l * (4.0 / 3.0 - m * c**2 / total_mass))
        acc = temp - m * l * angular_acc * c / total_mass
        return stack([velocity, acc, angular_velocity, angular_acc])
