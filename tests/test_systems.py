"""Toy control systems: torch and CasADi agree, batching, physics in closed form, errors."""

from __future__ import annotations

import math

import casadi
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flowctl.dynamics import Dynamics
from flowctl.errors import InvalidArgumentError, NonFiniteError, ShapeError
from flowctl.systems import (
    CartPole,
    ControlSystem,
    DoubleIntegrator,
    LinearSystem,
    Pendulum,
    VanDerPol,
)

A3 = [[0.0, 1.0, 0.0], [-2.0, -0.3, 1.5], [0.5, 0.0, -1.0]]
B3 = [[0.0, 1.0], [1.0, 0.0], [0.3, -2.0]]

SYSTEMS = {
    "linear": LinearSystem(A3, B3),
    "autonomous": LinearSystem(A3),
    "double_integrator": DoubleIntegrator(),
    "vanderpol": VanDerPol(),
    "pendulum": Pendulum(mass=0.7, length=1.3, gravity=9.81, damping=0.2),
    "cartpole": CartPole(),
}
CASADI_FUNCTIONS = {name: system.casadi_function() for name, system in SYSTEMS.items()}

FAST = settings(max_examples=25, deadline=None)
real = st.floats(-4.0, 4.0, allow_nan=False)


def vec(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def draw(data: st.DataObject, n: int) -> torch.Tensor:
    return torch.tensor(data.draw(st.lists(real, min_size=n, max_size=n)), dtype=torch.float64)


def random_state(system: ControlSystem, *batch: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*batch, system.n_state, generator=gen, dtype=torch.float64)


def random_input(system: ControlSystem, *batch: int, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*batch, system.n_control, generator=gen, dtype=torch.float64)


def close(actual, expected, tol: float) -> None:
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol)


# --- torch and CasADi are the same f ---------------------------------------------------------


@pytest.mark.parametrize("name", SYSTEMS)
@FAST
@given(data=st.data())
def test_torch_matches_casadi_function(name, data):
    system = SYSTEMS[name]
    x, u = draw(data, system.n_state), draw(data, system.n_control)
    expected = CASADI_FUNCTIONS[name](x.numpy(), u.numpy()).full().ravel()
    close(system.velocity(x, 0.0, u), torch.from_numpy(expected), 1e-12)


@pytest.mark.parametrize("name", SYSTEMS)
@pytest.mark.parametrize("kind", [casadi.SX, casadi.MX])
def test_f_accepts_casadi_symbols_and_numbers(name, kind):
    system = SYSTEMS[name]
    x, u = random_state(system), random_input(system)
    xs, us = kind.sym("x", system.n_state), kind.sym("u", system.n_control)
    symbolic = casadi.Function("g", [xs, us], [system.f(xs, us, 0.0)])
    numeric = system.f(casadi.DM(x.numpy()), casadi.DM(u.numpy()), 0.0)
    assert isinstance(numeric, casadi.DM) and numeric.shape == (system.n_state, 1)
    torch_value = system.velocity(x, 0.0, u)
    close(torch.from_numpy(numeric.full().ravel()), torch_value, 1e-12)
    close(torch.from_numpy(symbolic(x.numpy(), u.numpy()).full().ravel()), torch_value, 1e-12)


@pytest.mark.parametrize("name", SYSTEMS)
def test_names_and_protocol(name):
    system = SYSTEMS[name]
    assert isinstance(system, Dynamics)
    assert len(system.state_names) == system.n_state
    assert len(system.control_names) == system.n_control
    assert all(isinstance(s, str) for s in system.state_names + system.control_names)
    function = CASADI_FUNCTIONS[name]
    assert function.size1_in(0) == system.n_state and function.size1_in(1) == system.n_control


# --- batching ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SYSTEMS)
def test_batch_equals_stacked_single_evaluations(name):
    system = SYSTEMS[name]
    x, u = random_state(system, 5), random_input(system, 5)
    batched = system.velocity(x, 0.0, u)
    single = torch.stack([system.velocity(x[i], 0.0, u[i]) for i in range(5)])
    close(batched, single, 1e-14)


@pytest.mark.parametrize("name", SYSTEMS)
def test_leading_axes_and_input_broadcast(name):
    system = SYSTEMS[name]
    x, u = random_state(system, 2, 3), random_input(system, 3)
    out = system.velocity(x, 0.0, u)
    assert out.shape == (2, 3, system.n_state)
    close(out, system.velocity(x, 0.0, u.expand(2, 3, system.n_control)), 0.0)
    close(out[1, 2], system.velocity(x[1, 2], 0.0, u[2]), 1e-14)
    shared = random_input(system)
    close(
        system.velocity(x, 0.0, shared),
        system.velocity(x, 0.0, shared.expand(2, 3, system.n_control)),
        0.0,
    )


@pytest.mark.parametrize("name", SYSTEMS)
def test_no_input_means_zero_input(name):
    system = SYSTEMS[name]
    x = random_state(system, 4)
    close(system.velocity(x, 0.0), system.velocity(x, 0.0, x.new_zeros(system.n_control)), 0.0)


def test_float32_input_is_cast_to_state_dtype():
    system = SYSTEMS["linear"]
    x = random_state(system, 3).float()
    out = system.velocity(x, 0.0, random_input(system, 3))
    assert out.dtype == torch.float32 and out.shape == x.shape


# --- physics in closed form --------------------------------------------------------------------


@FAST
@given(data=st.data())
def test_linear_is_ax_plus_bu(data):
    system = SYSTEMS["linear"]
    x, u = draw(data, 3), draw(data, 2)
    expected = torch.tensor(A3, dtype=torch.float64) @ x + torch.tensor(B3, dtype=torch.float64) @ u
    close(system.velocity(x, 0.0, u), expected, 1e-12)
    assert system.n_control == 2 and SYSTEMS["autonomous"].n_control == 0
    close(SYSTEMS["autonomous"].velocity(x, 0.0), torch.tensor(A3, dtype=torch.float64) @ x, 1e-12)


@FAST
@given(position=real, velocity=real, force=real)
def test_double_integrator(position, velocity, force):
    system = DoubleIntegrator()
    assert system.state_names == ("position", "velocity") and system.control_names == ("force",)
    out = system.velocity(vec(position, velocity), 0.0, vec(force))
    assert out.tolist() == [velocity, force]


@FAST
@given(x1=real, x2=real, u=real)
def test_van_der_pol_formula(x1, x2, u):
    out = VanDerPol().velocity(vec(x1, x2), 0.0, vec(u))
    close(out, vec((1 - x2**2) * x1 - x2 + u, x1), 1e-12)


def energy_rate(energy, system: ControlSystem, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``grad E(x) . f(x, u)`` by autograd."""
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(energy(x), x)
    return grad @ system.velocity(x.detach(), 0.0, u)


@FAST
@given(
    data=st.data(),
    mass=st.floats(0.1, 5.0),
    length=st.floats(0.1, 5.0),
    damping=st.floats(0.0, 2.0),
)
def test_pendulum_energy_balance(data, mass, length, damping):
    system = Pendulum(mass=mass, length=length, gravity=9.81, damping=damping)
    x, u = draw(data, 2), draw(data, 1)

    def energy(x):
        theta, omega = x
        return 0.5 * mass * length**2 * omega**2 + mass * 9.81 * length * (1 - torch.cos(theta))

    omega, torque = x[1], u[0]
    close(energy_rate(energy, system, x, u), torque * omega - damping * omega**2, 1e-12)
    undamped = Pendulum(mass=mass, length=length, gravity=9.81)
    close(energy_rate(energy, undamped, x, vec(0.0)), vec(0.0)[0], 1e-12)


def test_pendulum_hangs_at_rest_and_balances_upright():
    system = Pendulum()
    for theta in (0.0, math.pi):
        close(system.velocity(vec(theta, 0.0), 0.0), vec(0.0, 0.0), 1e-14)
    small = system.velocity(vec(1e-3, 0.0), 0.0)
    assert small[1] < 0  # gravity pulls back towards theta = 0


def cart_pole_energy(system: CartPole):
    total = system.cart_mass + system.pole_mass
    m, l, g = system.pole_mass, system.pole_length, system.gravity

    def energy(x):
        _, v, angle, w = x
        return (
            0.5 * total * v**2
            + m * l * v * w * torch.cos(angle)
            + (2.0 / 3.0) * m * l**2 * w**2
            + m * g * l * torch.cos(angle)
        )

    return energy


@FAST
@given(
    data=st.data(),
    cart_mass=st.floats(0.1, 5.0),
    pole_mass=st.floats(0.01, 2.0),
    pole_length=st.floats(0.1, 2.0),
)
def test_cart_pole_energy_and_momentum(data, cart_mass, pole_mass, pole_length):
    """Work done by the force is ``force * velocity``; horizontal momentum grows by ``force``."""
    system = CartPole(cart_mass=cart_mass, pole_mass=pole_mass, pole_length=pole_length)
    x, u = draw(data, 4), draw(data, 1)
    _, v, angle, w = x
    close(energy_rate(cart_pole_energy(system), system, x, u), u[0] * v, 1e-10)
    _, acc, _, angular_acc = system.velocity(x, 0.0, u)
    momentum_rate = (
        (cart_mass + pole_mass) * acc
        + pole_mass * pole_length * (angular_acc * torch.cos(angle) - w**2 * torch.sin(angle))
    )
    close(momentum_rate, u[0], 1e-10)


def test_cart_pole_equilibria():
    system = CartPole()
    zero = torch.zeros(4, dtype=torch.float64)
    close(system.velocity(vec(0.7, 0.0, 0.0, 0.0), 0.0), zero, 0.0)
    close(system.velocity(vec(-0.3, 0.0, math.pi, 0.0), 0.0), zero, 1e-12)
    pushed = system.velocity(zero, 0.0, vec(1.0))
    assert pushed[1] > 0 and pushed[3] < 0  # the cart accelerates, the pole tips back


# --- gradients ---------------------------------------------------------------------------------


def finite_difference_jacobian(fn, x: torch.Tensor, h: float = 1e-6) -> torch.Tensor:
    columns = [(fn(x + h * e) - fn(x - h * e)) / (2 * h) for e in torch.eye(len(x), dtype=x.dtype)]
    return torch.stack(columns, dim=-1)


@pytest.mark.parametrize("name", SYSTEMS)
def test_jacobian_matches_finite_differences(name):
    system = SYSTEMS[name]
    x, u = random_state(system, seed=3), random_input(system, seed=4)
    jac_x = torch.autograd.functional.jacobian(lambda x: system.velocity(x, 0.0, u), x)
    close(jac_x, finite_difference_jacobian(lambda x: system.velocity(x, 0.0, u), x), 1e-6)
    if system.n_control:
        jac_u = torch.autograd.functional.jacobian(lambda u: system.velocity(x, 0.0, u), u)
        close(jac_u, finite_difference_jacobian(lambda u: system.velocity(x, 0.0, u), u), 1e-6)


def test_linear_jacobian_is_a():
    system = SYSTEMS["linear"]
    x, u = random_state(system), random_input(system)
    jac = torch.autograd.functional.jacobian(lambda x: system.velocity(x, 0.0, u), x)
    close(jac, torch.tensor(A3, dtype=torch.float64), 1e-12)


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SYSTEMS)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_state_or_input(name, bad):
    system = SYSTEMS[name]
    x, u = random_state(system, 3), random_input(system, 3)
    x[1, 0] = bad
    with pytest.raises(NonFiniteError) as info:
        system.velocity(x, 0.0, u)
    assert info.value.argument == "x"
    if system.n_control:
        x, u = random_state(system, 3), random_input(system, 3)
        u[2, 0] = bad
        with pytest.raises(NonFiniteError) as info:
            system.velocity(x, 0.0, u)
        assert info.value.argument == "cond"
    with pytest.raises(NonFiniteError) as info:
        system.velocity(random_state(system), bad)
    assert info.value.argument == "t"


@pytest.mark.parametrize("name", SYSTEMS)
def test_wrong_shapes(name):
    system = SYSTEMS[name]
    with pytest.raises(ShapeError) as info:
        system.velocity(torch.zeros(3, system.n_state + 1, dtype=torch.float64), 0.0)
    assert info.value.argument == "x"
    with pytest.raises(ShapeError) as info:
        system.velocity(torch.tensor(0.0, dtype=torch.float64), 0.0)
    assert info.value.argument == "x"
    x = random_state(system, 3)
    for u in (torch.zeros(3, system.n_control + 1), torch.zeros(4, system.n_control)):
        with pytest.raises(ShapeError) as info:
            system.velocity(x, 0.0, u.double())
        assert info.value.argument == "cond"
    with pytest.raises(ShapeError) as info:  # u may not add batch axes that x lacks
        system.velocity(x[0], 0.0, torch.zeros(3, system.n_control, dtype=torch.float64))
    assert info.value.argument == "cond"


def test_wrong_argument_types():
    with pytest.raises(InvalidArgumentError) as info:
        VanDerPol().velocity([0.0, 1.0], 0.0)
    assert info.value.argument == "x"
    with pytest.raises(InvalidArgumentError) as info:
        VanDerPol().velocity(torch.zeros(2), 0.0, torch.zeros(1, dtype=torch.int64))
    assert info.value.argument == "cond"


@pytest.mark.parametrize(
    ("make", "argument", "error"),
    [
        (lambda: Pendulum(length=0), "length", InvalidArgumentError),
        (lambda: Pendulum(mass=-1.0), "mass", InvalidArgumentError),
        (lambda: Pendulum(gravity=math.nan), "gravity", NonFiniteError),
        (lambda: Pendulum(damping=-0.1), "damping", InvalidArgumentError),
        (lambda: Pendulum(mass="1"), "mass", InvalidArgumentError),
        (lambda: CartPole(cart_mass=0.0), "cart_mass", InvalidArgumentError),
        (lambda: CartPole(pole_mass=-0.1), "pole_mass", InvalidArgumentError),
        (lambda: CartPole(pole_length=math.inf), "pole_length", NonFiniteError),
        (lambda: CartPole(gravity=0.0), "gravity", InvalidArgumentError),
        (lambda: LinearSystem([[1.0, 2.0]]), "A", ShapeError),
        (lambda: LinearSystem([1.0, 2.0]), "A", ShapeError),
        (lambda: LinearSystem(np.zeros((0, 0))), "A", ShapeError),
        (lambda: LinearSystem([[math.nan]]), "A", NonFiniteError),
        (lambda: LinearSystem("A"), "A", InvalidArgumentError),
        (lambda: LinearSystem(np.eye(2), np.ones((3, 1))), "B", ShapeError),
        (lambda: LinearSystem(np.eye(2), np.ones(2)), "B", ShapeError),
        (lambda: LinearSystem(np.eye(2), [[math.inf], [0.0]]), "B", NonFiniteError),
    ],
)
def test_bad_constructor_arguments(make, argument, error):
    with pytest.raises(error) as info:
        make()
    assert info.value.argument == argument


def test_parameters_are_frozen_floats():
    pendulum = Pendulum(mass=2)
    assert isinstance(pendulum.mass, float)
    with pytest.raises(AttributeError):
        pendulum.mass = 3.0  # type: ignore[misc]
    system = LinearSystem(np.eye(2, dtype=np.float32), torch.ones(2, 1))
    assert system.A.dtype == torch.float64 and system.B.dtype == torch.float64
