"""Every bad input to the public Python API raises a typed error naming the argument, before any work.

One table: each row sends one bad input through one public entry point (the exports of
``flowctl`` and of its public submodules, every transition strategy included) and expects a
:class:`flowctl.FlowctlError` subclass whose ``argument`` names what was wrong. An entry point is a
call with good arguments, which a row overrides one at a time; :func:`test_every_entry_point_takes_its_good_arguments`
shows that the good call runs, so each row's error is its bad input's. Kinds of bad input: not a
tensor, None, complex, integer, bool and meta tensors, NaN and Inf, wrong shapes and batches,
devices this machine lacks, grids that do not descend to 0 (ascending, stopping short,
repeated, empty), resume points that do not fit their grid or noise, huge, negative and NaN
scalars, unknown names. Property tests cover the wide spaces (grids, scheduler settings,
dtypes and devices).
"""

from __future__ import annotations

import functools
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from flowctl import (
    BlendedDynamics,
    ControlInput,
    ControlledDynamics,
    CountedDynamics,
    FlowctlError,
    GaussianMixtureFlow,
    Grid,
    InvalidArgumentError,
    NFECounter,
    NonFiniteError,
    ResumePoint,
    ShapeError,
    SigmaGrid,
    Trajectory,
    UnknownNameError,
    integrate,
    metrics,
    resume,
    schedules,
)
from flowctl.cache import CacheEntry, CacheKey, CachedGenerator, CacheStore
from flowctl.jacobians import (
    BlendedJacobian,
    ColouredJacobian,
    DenseJacobian,
    DiagonalJacobian,
    JacobianEstimate,
    LowRankJacobian,
)
from flowctl.mpc import Linearisation, MPCConfig
from flowctl.cache import DiskStore
from flowctl.mpc import TimeInvariantModel
from flowctl.ocp import OptimalControlProblem, TorchShooting
from flowctl.sampling.grid import SIGMA_ROUNDING
from flowctl.systems import CartPole, DoubleIntegrator, LinearSystem, Pendulum, PromptedMixtureFlow
from flowctl.systems.gaussian_mixture import smooth_image_means
from flowctl.systems.prompted_mixture import PromptCondition
from flowctl.systems.shapes import Shape, captioned_shapes, render
from flowctl.text import HashingEncoder
from flowctl.transitions import (
    STRATEGY_NAMES,
    Blend,
    ClosedFormController,
    SecantCorrection,
    Shooting,
    ShootingMPC,
    TransitionRequest,
    make_strategy,
)

STEPS, K, COMPONENTS = 6, 2, 4
EVENT = (3, 4, 4)
NAN, INF = float("nan"), float("inf")


@dataclass
class World:
    """Good arguments: a tiny Gaussian-mixture flow, its grid, a run of prompt A, and what
    derives from them."""

    flow: GaussianMixtureFlow
    grid: SigmaGrid
    w_a: torch.Tensor
    w_b: torch.Tensor
    noise: torch.Tensor
    run: Trajectory
    point: ResumePoint
    encoder: HashingEncoder
    key: CacheKey


def build_world() -> World:
    gen = torch.Generator().manual_seed(0)
    flow = GaussianMixtureFlow(smooth_image_means(COMPONENTS, *EVENT[:2], gen), 0.5)
    w_a = torch.softmax(torch.randn(COMPONENTS, generator=gen, dtype=torch.float64), 0)
    w_b = torch.softmax(torch.randn(COMPONENTS, generator=gen, dtype=torch.float64), 0)
    grid = SigmaGrid.create(STEPS, 3.0)
    noise = torch.randn(2, *EVENT, generator=gen, dtype=torch.float64)
    run = integrate(flow, noise, grid, w_a)
    encoder = HashingEncoder(64)
    key = CacheKey.for_grid("gmm", grid, shape=tuple(noise.shape), dtype="float64", encoder=encoder.name)
    return World(flow, grid, w_a, w_b, noise, run, run.resume_point(K), encoder, key)


@pytest.fixture(scope="module")
def world() -> World:
    return build_world()


# ---- entry points: a good call each, whose keyword arguments a row overrides ---------------


def _request(w: World, **kw) -> TransitionRequest:
    return TransitionRequest(**({"model": w.flow, "point": w.point, "cond_a": w.w_a, "cond_b": w.w_b, "horizon": 2} | kw))


def _point(w: World, **kw) -> ResumePoint:
    p = w.point
    return ResumePoint(**(dict(state=p.state, step=p.step, grid=p.grid, method=p.method, noise=p.noise, velocity=p.velocity) | kw))


def _entry(w: World, **kw) -> CacheEntry:
    return CacheEntry(**(dict(key=w.key, prompt="a red circle", embedding=w.encoder.encode(["a red circle"])[0],
                              states={K: w.point.state}, noise=w.noise, velocities={K: w.point.velocity}) | kw))


def _key(w: World, **kw) -> CacheKey:
    return CacheKey(**(dict(model="gmm", steps=STEPS, shift=3.0, mu=None, guidance=0.0, method="euler", shape=(2, *EVENT), dtype="float64") | kw))


class _Prompted:
    """A prompt model over the Gaussian mixture, for the cached generator."""

    fingerprint = "gmm"

    def __init__(self, w: World):
        self.flow, self.w_a = w.flow, w.w_a

    def velocity(self, x, t, cond=None):
        return self.flow.velocity(x, t, cond)

    def condition(self, prompt):
        return self.w_a


def _generator(w: World, **kw) -> CachedGenerator:
    return CachedGenerator(**(dict(model=_Prompted(w), encoder=w.encoder, store=CacheStore(), grid=w.grid) | kw))


def _prompted(w: World, **kw) -> PromptedMixtureFlow:
    return PromptedMixtureFlow(**(dict(encoder=w.encoder, components=3, size=8) | kw))


@functools.cache
def _prompted_flow() -> PromptedMixtureFlow:
    return PromptedMixtureFlow(HashingEncoder(64), components=3, size=8)


def _prompted_velocity(w: World, **kw):
    flow = _prompted_flow()
    return flow.velocity(**(dict(x=torch.zeros(1, 3, 8, 8), t=0.5, cond=flow.condition("a red circle")) | kw))


def _strategy_run(name: str):
    """Run the strategy ``name`` on a request; a row overrides the request or one of its fields."""

    def run(w: World, **kw):
        return make_strategy(name, budget=2.0).run(kw["request"] if "request" in kw else _request(w, **kw))

    return run


def _lin(**kw) -> Linearisation:
    return Linearisation(**(dict(a=torch.eye(2).expand(3, 2, 2), b=torch.ones(3, 2, 1), c=torch.zeros(3, 2)) | kw))


def _ocp(w: World, **kw) -> OptimalControlProblem:
    return OptimalControlProblem(**(dict(dynamics=DoubleIntegrator(), grid=Grid.uniform(0.0, 1.0, 4), x0=torch.tensor([0.0, 1.0], dtype=torch.float64)) | kw))


def _jac(estimator, w: World, **kw):
    args = dict(f=lambda y: -y, x=torch.ones(3, 4, 4, dtype=torch.float64), counter=None) | kw
    return estimator.estimate(args["f"], args["x"], args["counter"])


ENTRY: dict[str, Callable[..., object]] = {
    # sampling
    "integrate": lambda w, **kw: integrate(**(dict(dynamics=w.flow, x0=w.noise, grid=w.grid, cond=w.w_a, keep="final") | kw)),
    "resume": lambda w, **kw: resume(**(dict(dynamics=w.flow, point=w.point, cond=w.w_b, keep="final") | kw)),
    "ResumePoint": lambda w, **kw: resume(w.flow, _point(w, **kw), w.w_b, keep="final"),
    "Trajectory": lambda w, **kw: Trajectory(**(dict(grid=w.grid, method="euler", start=0, states={0: w.noise, STEPS: w.run.final}, noise=w.noise) | kw)),
    "Trajectory.resume_point": lambda w, **kw: w.run.resume_point(**({"step": K} | kw)),
    "Grid": lambda w, **kw: Grid(**({"values": torch.tensor([0.0, 0.5, 1.0])} | kw)),
    "Grid.uniform": lambda w, **kw: Grid.uniform(**(dict(t0=0.0, t1=1.0, steps=4) | kw)),
    "SigmaGrid": lambda w, **kw: SigmaGrid(**({"values": torch.tensor([1.0, 0.5, 0.0])} | kw)),
    "SigmaGrid.create": lambda w, **kw: SigmaGrid.create(**({"steps": 4} | kw)),
    # dynamics
    "NFECounter": lambda w, **kw: NFECounter(**kw),
    "NFECounter.add": lambda w, **kw: NFECounter().add(**kw),
    "NFECounter.counting_as": lambda w, **kw: NFECounter().counting_as(**({"kind": "jvp"} | kw)).__enter__(),
    "CountedDynamics": lambda w, **kw: CountedDynamics(**({"dynamics": w.flow} | kw)),
    "BlendedDynamics": lambda w, **kw: BlendedDynamics(**(dict(dynamics=w.flow, schedule=schedules.LinearSchedule(2), grid=w.grid, switch_step=K) | kw)),
    "BlendedDynamics.velocity": lambda w, **kw: BlendedDynamics(w.flow, schedules.LinearSchedule(2), w.grid, K).velocity(**(dict(x=w.point.state, t=0.5, cond=(w.w_a, w.w_b)) | kw)),
    "ControlledDynamics": lambda w, **kw: ControlledDynamics(**({"dynamics": w.flow} | kw)),
    "ControlledDynamics.velocity": lambda w, **kw: ControlledDynamics(w.flow).velocity(**(dict(x=w.noise, t=0.5, cond=ControlInput(w.w_a, torch.zeros(*EVENT, dtype=torch.float64))) | kw)),
    # schedules
    "make_schedule": lambda w, name="linear", args=(3,): schedules.make_schedule(name, *args),
    "LinearSchedule": lambda w, **kw: schedules.LinearSchedule(**({"length": 3} | kw)),
    "CosineSchedule": lambda w, **kw: schedules.CosineSchedule(**({"length": 3} | kw)),
    "SigmoidSchedule": lambda w, **kw: schedules.SigmoidSchedule(**({"length": 3} | kw)),
    "StepSchedule": lambda w, **kw: schedules.StepSchedule(**kw),
    "adaptive_sigmoid": lambda w, **kw: schedules.adaptive_sigmoid(**({"similarity": 0.93} | kw)),
    "Schedule.__call__": lambda w, **kw: schedules.LinearSchedule(3)(**({"s": 1.5} | kw)),
    # metrics
    "psnr": lambda w, **kw: metrics.psnr(**(dict(x=w.run.final, ref=w.noise, data_range=2.0) | kw)),
    "ssim": lambda w, **kw: metrics.ssim(**(dict(x=w.run.final, ref=w.noise, data_range=2.0, window_size=3) | kw)),
    "velocity_angle": lambda w, **kw: metrics.velocity_angle(**(dict(v1=w.run.final, v2=w.noise) | kw)),
    "straightness": lambda w, **kw: metrics.straightness(**(dict(states=w.run.stacked(), sigmas=w.grid.sigmas) | kw)),
    # transitions
    "make_strategy": lambda w, **kw: make_strategy(**({"name": "shooting"} | kw)),
    "Blend": lambda w, **kw: Blend(**kw),
    "ClosedFormController": lambda w, **kw: ClosedFormController(**kw),
    "SecantCorrection": lambda w, **kw: SecantCorrection(**kw),
    "Shooting": lambda w, **kw: Shooting(**kw),
    "ShootingMPC": lambda w, **kw: ShootingMPC(**kw),
    "TransitionRequest": _request,
    **{f"run:{name}": _strategy_run(name) for name in STRATEGY_NAMES},
    # jacobians
    "DenseJacobian": lambda w, **kw: DenseJacobian(**kw),
    "DenseJacobian.estimate": lambda w, **kw: _jac(DenseJacobian(), w, **kw),
    "DiagonalJacobian": lambda w, **kw: DiagonalJacobian(**kw),
    "DiagonalJacobian.estimate": lambda w, **kw: _jac(DiagonalJacobian(radius=0), w, **kw),
    "ColouredJacobian": lambda w, **kw: ColouredJacobian(**kw),
    "ColouredJacobian.estimate": lambda w, **kw: _jac(ColouredJacobian(block=(2, 2)), w, **kw),
    "LowRankJacobian": lambda w, **kw: LowRankJacobian(**kw),
    "LowRankJacobian.estimate": lambda w, **kw: _jac(LowRankJacobian(rank=2), w, **kw),
    "BlendedJacobian": lambda w, **kw: BlendedJacobian(**({"estimator": DiagonalJacobian(radius=0)} | kw)),
    "BlendedJacobian.estimate": lambda w, **kw: BlendedJacobian(DiagonalJacobian(radius=0)).estimate(
        **(dict(f_a=lambda y: -y, f_b=lambda y: y, x=torch.ones(3, 4, 4, dtype=torch.float64), alpha=0.5, step=0) | kw)),
    "JacobianEstimate": lambda w, **kw: JacobianEstimate(**(dict(structure="diagonal", data=torch.ones(4), cost={}) | kw)),
    "JacobianEstimate.matvec": lambda w, **kw: JacobianEstimate("diagonal", torch.ones(4), {}).matvec(**({"v": torch.ones(4)} | kw)),
    # systems
    "GaussianMixtureFlow": lambda w, **kw: GaussianMixtureFlow(**(dict(means=w.flow.means, stds=0.5) | kw)),
    "GaussianMixtureFlow.velocity": lambda w, **kw: w.flow.velocity(**(dict(x=w.noise, t=0.5, cond=w.w_a) | kw)),
    "GaussianMixtureFlow.log_prob": lambda w, **kw: w.flow.log_prob(**(dict(x0=w.noise, weights=w.w_a) | kw)),
    "GaussianMixtureFlow.sample": lambda w, **kw: w.flow.sample(**(dict(n=2, weights=w.w_a) | kw)),
    "PromptedMixtureFlow": _prompted,
    "PromptedMixtureFlow.condition": lambda w, **kw: _prompted_flow().condition(**({"prompt": "a red circle"} | kw)),
    "PromptedMixtureFlow.condition_from_embedding": lambda w, **kw: _prompted_flow().condition_from_embedding(
        **({"embedding": w.encoder.encode(["a red circle"])[0]} | kw)),
    "PromptedMixtureFlow.velocity": _prompted_velocity,
    "ControlSystem.velocity": lambda w, **kw: DoubleIntegrator().velocity(**(dict(x=torch.zeros(3, 2), t=0.0, cond=torch.zeros(3, 1)) | kw)),
    "LinearSystem": lambda w, **kw: LinearSystem(**(dict(A=[[0.0, 1.0], [0.0, 0.0]], B=[[0.0], [1.0]]) | kw)),
    "Pendulum": lambda w, **kw: Pendulum(**kw),
    "CartPole": lambda w, **kw: CartPole(**kw),
    "render": lambda w, **kw: render(**(dict(background="white", shapes=(Shape("circle", "red", "small", ""),), size=8) | kw)),
    "Shape": lambda w, **kw: Shape(**(dict(kind="circle", colour="red", size="small", position="") | kw)),
    "captioned_shapes": lambda w, **kw: captioned_shapes(**(dict(count=2, size=8) | kw)),
    # cache
    "CacheKey": _key,
    "CacheKey.for_grid": lambda w, **kw: CacheKey.for_grid(**(dict(model="gmm", grid=w.grid, shape=(2, *EVENT), dtype="float64") | kw)),
    "CacheEntry": _entry,
    "CacheEntry.from_trajectory": lambda w, **kw: CacheEntry.from_trajectory(
        **(dict(trajectory=w.run, key=w.key, prompt="a red circle", embedding=w.encoder.encode(["a red circle"])[0], steps=[K]) | kw)),
    "CacheEntry.resume_point": lambda w, **kw: _entry(w).resume_point(**({"step": K} | kw)),
    "CacheEntry.sigma": lambda w, **kw: _entry(w).sigma(**({"step": K} | kw)),
    "CacheEntry.to": lambda w, **kw: _entry(w).to(**({"device": "cpu"} | kw)),
    "CacheStore": lambda w, **kw: CacheStore(**kw),
    "CacheStore.put": lambda w, **kw: CacheStore().put(**({"entry": _entry(w)} | kw)),
    "CacheStore.get": lambda w, **kw: _filled_store(w).get(**({"entry_id": "e1"} | kw)),
    "CacheStore.nearest": lambda w, **kw: CacheStore().nearest(**(dict(embedding=w.encoder.encode(["a"])[0], key=w.key) | kw)),
    "CacheStore.remove": lambda w, **kw: _filled_store(w).remove(**({"entry_id": "e1"} | kw)),
    "CachedGenerator": _generator,
    "CachedGenerator.generate": lambda w, **kw: _generator(w).generate(**(dict(prompt="a red circle", noise=w.noise) | kw)),
    "CachedGenerator.fill": lambda w, **kw: _generator(w).fill(**(dict(prompt="a red circle", noise=w.noise) | kw)),
    "CachedGenerator.lookup": lambda w, **kw: _generator(w).lookup(**(dict(prompt="a red circle", noise=w.noise) | kw)),
    # mpc / ocp problem descriptions
    "MPCConfig": lambda w, **kw: MPCConfig(**(dict(nx=2, nu=1, horizon=3) | kw)),
    "Linearisation": lambda w, **kw: _lin(**kw),
    "OptimalControlProblem": _ocp,
    "TorchShooting": lambda w, **kw: TorchShooting(**({"problem": _ocp(w)} | kw)),
    "TimeInvariantModel": lambda w, **kw: TimeInvariantModel(**(dict(a=torch.eye(2), b=torch.ones(2, 1), target=torch.zeros(2), horizon=3) | kw)),
    "DiskStore": lambda w, **kw: _disk_store(**kw),
}


def _disk_store(**kw) -> DiskStore:
    store = DiskStore(**({"directory": tempfile.mkdtemp(prefix="flowctl-test-")} | kw))
    store.close()
    return store


def _filled_store(w: World) -> CacheStore:
    store = CacheStore()
    store.put(_entry(w, entry_id="e1"))
    return store


# ---- the table ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    entry: str
    label: str
    overrides: Callable[[World], dict]
    error: type[FlowctlError]
    argument: str | None  # None: the error has no argument (not an InvalidArgumentError)

    @property
    def id(self) -> str:
        return f"{self.entry}-{self.label}"


ROWS: list[Row] = []


def bad(entry: str, arg: str, value, error: type[FlowctlError] = InvalidArgumentError, argument: str | None = "", label: str = ""):
    """A row passing ``value`` (or ``value(world)`` when callable) as ``arg``; the error must
    name ``argument`` (``arg`` by default)."""
    make = value if callable(value) and not isinstance(value, type) else (lambda w, v=value: v)
    ROWS.append(Row(entry, f"{arg}={label or _short(value)}", lambda w: {arg: make(w)}, error, arg if argument == "" else argument))


def _short(value) -> str:
    text = repr(value) if not callable(value) else "fn"
    return text if len(text) <= 24 else text[:21] + "..."


def _with(x: torch.Tensor, value: float) -> torch.Tensor:
    y = x.clone()
    y.view(-1)[0] = value
    return y


def bad_tensors(entry: str, arg: str, good: Callable[[World], torch.Tensor], *, argument: str = "", finite: bool = True,
                finite_argument: str = "", skip: tuple[str, ...] = ()):
    """Rows for each kind of bad tensor standing in for ``good(world)``: not a tensor (None, a
    string, a nested list), complex, integer, bool, meta, and with ``finite`` NaN and Inf (which
    may be reported under ``finite_argument``, where a later boundary checks values)."""
    variants = {
        "None": (lambda w: None, InvalidArgumentError),
        "str": (lambda w: "x", InvalidArgumentError),
        "list": (lambda w: good(w).tolist(), InvalidArgumentError),
        "complex64": (lambda w: good(w).to(torch.complex64), InvalidArgumentError),
        "int64": (lambda w: good(w).to(torch.int64), InvalidArgumentError),
        "bool": (lambda w: good(w).bool(), InvalidArgumentError),
        "meta": (lambda w: good(w).to("meta"), InvalidArgumentError),
    }
    if finite:
        variants |= {"nan": (lambda w: _with(good(w), NAN), NonFiniteError), "inf": (lambda w: _with(good(w), INF), NonFiniteError)}
    for label, (make, error) in variants.items():
        if label in skip:
            continue
        name = arg if argument == "" else argument
        if label in ("nan", "inf") and finite_argument != "":
            name = finite_argument
        ROWS.append(Row(entry, f"{arg}={label}", lambda w, make=make: {arg: make(w)}, error, name))


def bad_scalars(entry: str, arg: str, values, error: type[FlowctlError] = InvalidArgumentError):
    for v in values:
        bad(entry, arg, v, NonFiniteError if isinstance(v, float) and not math.isfinite(v) else error)


NOT_NUMBERS = (None, "3", True, [1.0], complex(1, 1), torch.ones(2))
BAD_DEVICES = ("cuda:99", "tpu", "meta", torch.device("meta"), 5, object(), "") + (() if torch.cuda.is_available() else ("cuda", "cuda:7"))
PLAIN = torch.tensor([1.0, 0.5, 0.0])


def _values(v):
    return lambda w: torch.tensor(v)


# sampling: integrate
bad_tensors("integrate", "x0", lambda w: w.noise)
bad("integrate", "x0", lambda w: w.noise[0], ShapeError, "x", label="unbatched")  # the model's check, at its first call
bad("integrate", "x0", lambda w: torch.zeros(2, 3, 5, 5, dtype=torch.float64), ShapeError, "x", label="wrong-event")
bad_tensors("integrate", "noise", lambda w: w.noise, skip=("None",))
bad("integrate", "noise", lambda w: torch.cat([w.noise, w.noise]), ShapeError, label="batch-4-vs-2")
bad("integrate", "noise", lambda w: w.noise[:1], ShapeError, label="batch-1-vs-2")
for v in (None, "grid", PLAIN, [1.0, 0.0]):
    bad("integrate", "grid", v)
for v in ("midpoint", None, 3, "EULER"):
    bad("integrate", "method", v, UnknownNameError)
for v in (-1, 1.5, "1", None, STEPS + 1, True, 10**12):
    bad("integrate", "start", v)
for v in ("some", [STEPS + 1], [-1], [1.5], 3, None, ["final"], torch.tensor(2)):
    bad("integrate", "keep", v)
for v in (None, object(), "flow", lambda w: (lambda x, t, c: x)):
    bad("integrate", "dynamics", v)
for v in (torch.zeros(3), "state", torch.zeros(3, dtype=torch.uint8).to("meta"), torch.zeros(2, 3, dtype=torch.uint8)):
    bad("integrate", "generator_state", v)
bad("integrate", "cond", lambda w: torch.ones(3, COMPONENTS, dtype=torch.float64) / COMPONENTS, ShapeError, label="batch-3-vs-2")
bad("integrate", "cond", lambda w: torch.ones(COMPONENTS + 1, dtype=torch.float64) / (COMPONENTS + 1), ShapeError, label="wrong-K")
# resume and ResumePoint
for v in (None, "point", object(), lambda w: w.run, lambda w: w.point.state):
    bad("resume", "point", v)
for v in ("some", [STEPS + 1], 3):
    bad("resume", "keep", v)
bad("resume", "dynamics", object())
bad("resume", "cond", lambda w: torch.ones(3, COMPONENTS, dtype=torch.float64) / COMPONENTS, ShapeError, label="batch-3-vs-2")
bad_tensors("ResumePoint", "state", lambda w: w.point.state, finite_argument="point.state")
bad_tensors("ResumePoint", "noise", lambda w: w.point.noise, finite_argument="point.noise", skip=("None",))
bad("ResumePoint", "noise", lambda w: torch.cat([w.noise, w.noise]), ShapeError, label="batch-4-vs-2")
bad("ResumePoint", "noise", lambda w: w.noise[0], ShapeError, label="unbatched")
bad_tensors("ResumePoint", "velocity", lambda w: w.point.velocity, finite=False, skip=("None",))
bad("ResumePoint", "velocity", lambda w: w.point.velocity[:1], ShapeError, label="batch-1-vs-2")
for v in (-1, STEPS + 1, 1.5, "2", None, True):
    bad("ResumePoint", "step", v)
for v in (None, PLAIN, "grid"):
    bad("ResumePoint", "grid", v)
bad("ResumePoint", "grid", lambda w: SigmaGrid.create(1), label="another-run's-shorter-grid", argument="step")
for v in ("midpoint", None):
    bad("ResumePoint", "method", v, UnknownNameError)
for v in (torch.zeros(3), "g"):
    bad("ResumePoint", "generator_state", v)
# Trajectory
for v in (None, PLAIN):
    bad("Trajectory", "grid", v)
bad("Trajectory", "method", "midpoint", UnknownNameError)
for v in (-1, STEPS + 1, "0"):
    bad("Trajectory", "start", v)
for v in (None, [1.0], {}, lambda w: {0: w.noise}, lambda w: {0: w.noise, STEPS + 1: w.noise, STEPS: w.noise}):
    bad("Trajectory", "states", v)
bad("Trajectory", "states", lambda w: {0: w.noise, STEPS: w.noise[:1]}, ShapeError, f"states[{STEPS}]", label="final-batch-1-vs-2")
bad("Trajectory", "states", lambda w: {0: w.noise, STEPS: "x"}, argument=f"states[{STEPS}]", label="final-str")
bad("Trajectory", "noise", lambda w: w.noise[:1], ShapeError)
bad("Trajectory", "velocities", "x")
for v in (-1, "1", None, STEPS + 1, 2.0):
    bad("Trajectory.resume_point", "step", v)
# Grid and SigmaGrid
bad_tensors("Grid", "values", lambda w: torch.tensor([0.0, 0.5, 1.0]))
for label, v in (("single", [1.0]), ("empty", []), ("repeated", [1.0, 0.5, 0.5, 0.0]), ("zigzag", [1.0, 0.5, 0.7, 0.0]), ("constant", [0.0, 0.0])):
    bad("Grid", "values", _values(v), label=label, error=ShapeError if label in ("single", "empty") else InvalidArgumentError)
bad("Grid", "values", torch.ones(2, 2), ShapeError, label="2-D")
bad("Grid", "values", torch.tensor(1.0), ShapeError, label="0-D")
for v in (0, -1, 1.5, "3", None, True, 10**12):
    bad("Grid.uniform", "steps", v)
for v in (NAN, INF, "a", None):
    bad("Grid.uniform", "t0", v, NonFiniteError if isinstance(v, float) else InvalidArgumentError)
bad("Grid.uniform", "t1", 0.0, label="equal-to-t0")
for v in (torch.int64, torch.complex64, "float64", None, torch.bool):
    bad("Grid.uniform", "dtype", v)
bad_tensors("SigmaGrid", "values", lambda w: torch.tensor([1.0, 0.5, 0.0]))
for label, v in (
    ("ascending", [0.0, 0.5, 1.0]), ("ending-at-0.5", [1.0, 0.75, 0.5]), ("ending-below-0", [1.0, 0.5, -0.5]),
    ("starting-above-1", [2.0, 1.0, 0.0]), ("starting-at-0", [0.0, 0.0]), ("repeated", [1.0, 0.5, 0.5, 0.0]),
    ("ascending-to-0", [-1.0, -0.5, 0.0]), ("ending-near-0", [1.0, 0.5, 1e-7]), ("just-above-1", [1.0 + 10 * SIGMA_ROUNDING, 0.0]),
):
    bad("SigmaGrid", "values", _values(v), label=label)
for label, v in (("single", [0.0]), ("empty", [])):
    bad("SigmaGrid", "values", _values(v), ShapeError, label=label)
for v in (0.0, -1.0, NAN, "3", None):
    bad("SigmaGrid", "shift", v, NonFiniteError if v != v else InvalidArgumentError)
for v in (NAN, "a"):
    bad("SigmaGrid", "mu", v, NonFiniteError if v != v else InvalidArgumentError)
bad("SigmaGrid", "time_shift", "cubic", UnknownNameError)
bad("SigmaGrid", "num_train_timesteps", 0)
for v in (0, -1, 1.5, "4", None, True, 10**12):
    bad("SigmaGrid.create", "steps", v)
bad_scalars("SigmaGrid.create", "shift", (0.0, -1.0, NAN, INF, -INF, 1e300, 1e-300, *NOT_NUMBERS))
bad_scalars("SigmaGrid.create", "mu", (1e6, -1e6, 800.0, NAN, INF, "1", True, complex(1, 0)))
ROWS.append(Row("SigmaGrid.create", "mu=-0.5-linear", lambda w: {"mu": -0.5, "time_shift": "linear"}, InvalidArgumentError, "mu"))
ROWS.append(Row("SigmaGrid.create", "mu=0-linear", lambda w: {"mu": 0.0, "time_shift": "linear"}, InvalidArgumentError, "mu"))
for v in ("cubic", None, 1):
    bad("SigmaGrid.create", "time_shift", v, UnknownNameError)
for v in (0, -5, 1.5, 10**12, "1000"):
    bad("SigmaGrid.create", "num_train_timesteps", v)
for v in BAD_DEVICES:
    bad("SigmaGrid.create", "device", v)

# dynamics
for v in (-1.0, NAN, INF, "a", True, complex(1, 1)):
    bad("NFECounter", "budget", v)
for v in ("x", {"jvp": 1.0}, {"forward": 0.0}, {"forward": NAN}, {"forward": "1"}, {"forward": 1.0, "jvp": -2.0}):
    bad("NFECounter", "cost", v)
for v in (-1, NAN, INF, "1", True, None):
    bad("NFECounter.add", "n", v)
for v in ("flops", 3, ""):
    bad("NFECounter.add", "kind", v, UnknownNameError)
for v in ("flops", None, 3):
    bad("NFECounter.counting_as", "kind", v, UnknownNameError)
for v in (None, object(), "flow"):
    bad("CountedDynamics", "dynamics", v)
bad("CountedDynamics", "counter", "x")
for v in (None, object()):
    bad("BlendedDynamics", "dynamics", v)
for v in (None, "linear", 3):
    bad("BlendedDynamics", "schedule", v)
for v in (None, PLAIN):
    bad("BlendedDynamics", "grid", v)
bad_scalars("BlendedDynamics", "switch_step", (-1, NAN, "2", None))
for v in (lambda w: w.w_a, (1,), None):
    bad("BlendedDynamics.velocity", "cond", v)
for v in (None, object()):
    bad("ControlledDynamics", "dynamics", v)
bad("ControlledDynamics.velocity", "cond", lambda w: w.w_a)
for label, u, err in (
    ("complex", lambda w: torch.zeros(*EVENT, dtype=torch.complex64), InvalidArgumentError),
    ("meta", lambda w: torch.zeros(*EVENT, device="meta"), InvalidArgumentError),
    ("nan", lambda w: torch.full(EVENT, NAN, dtype=torch.float64), NonFiniteError),
    ("batch-3-vs-2", lambda w: torch.zeros(3, *EVENT, dtype=torch.float64), ShapeError),
    ("wrong-event", lambda w: torch.zeros(5, dtype=torch.float64), ShapeError),
):
    bad("ControlledDynamics.velocity", "cond", lambda w, u=u: ControlInput(w.w_a, u(w)), err, "cond.u", label=f"u-{label}")

# schedules
for v in ("cubic", None, ["linear"], "LINEAR"):
    bad("make_schedule", "name", v, UnknownNameError)
ROWS.append(Row("make_schedule", "no-length", lambda w: {"name": "linear", "args": ()}, InvalidArgumentError, "args"))
for name in ("LinearSchedule", "CosineSchedule", "SigmoidSchedule"):
    bad_scalars(name, "length", (0, -1, NAN, INF, *NOT_NUMBERS))
bad_scalars("SigmoidSchedule", "steepness", (0.0, -1.0, NAN, "10"))
bad_scalars("StepSchedule", "length", (1.0, -1.0, NAN))
bad_scalars("adaptive_sigmoid", "similarity", (2.0, -1.5, NAN, "0.9", None))
for v in ("a", None, NAN, [1.0], complex(1, 1)):
    bad("Schedule.__call__", "s", v, NonFiniteError if v is NAN else InvalidArgumentError)

# metrics
for entry, (first, second) in {"psnr": ("x", "ref"), "ssim": ("x", "ref"), "velocity_angle": ("v1", "v2")}.items():
    bad_tensors(entry, first, lambda w: w.run.final)
    bad_tensors(entry, second, lambda w: w.noise)
    bad(entry, second, lambda w: w.noise[:1], ShapeError, label="batch-1-vs-2")
    bad(entry, second, lambda w: w.noise[..., :3], ShapeError, label="wrong-width")
    bad(entry, first, lambda w: w.noise.flatten()[:2], ShapeError, label="1-D")
for entry in ("psnr", "ssim"):
    bad_scalars(entry, "data_range", (0.0, -2.0, NAN, INF, *NOT_NUMBERS))
for v in (2, 0, -3, 1.5, "3", None, 5):
    bad("ssim", "window_size", v, ShapeError if v == 5 else InvalidArgumentError, "x" if v == 5 else "")
bad_scalars("ssim", "sigma", (0.0, -1.0, NAN, "1.5"))
ROWS.append(Row("ssim", "x,ref=2-D", lambda w: {"x": w.run.final.flatten(1), "ref": w.noise.flatten(1)}, ShapeError, "x"))
bad("velocity_angle", "v1", lambda w: torch.zeros_like(w.noise), label="zero-row")
bad_tensors("straightness", "states", lambda w: w.run.stacked())
bad_tensors("straightness", "sigmas", lambda w: w.grid.sigmas)
bad("straightness", "sigmas", lambda w: w.grid.sigmas[:-1], ShapeError, label="one-short")
bad("straightness", "sigmas", lambda w: w.grid.sigmas[None], ShapeError, label="2-D")
bad("straightness", "sigmas", lambda w: torch.tensor([1.0, 0.5, 0.5, 0.3, 0.2, 0.1, 0.0]), label="repeated")
ROWS.append(Row("straightness", "two-states", lambda w: {"states": w.run.stacked()[:2], "sigmas": w.grid.sigmas[:2]}, InvalidArgumentError, "states"))
bad("straightness", "states", lambda w: w.noise, ShapeError, "sigmas", label="not-a-path")

# transitions: the registry and each strategy's constructor
for v in ("dpm", None, 3, "Direct"):
    bad("make_strategy", "name", v, UnknownNameError, "strategy")
for v in (0, -1, "5", 2.5, None):
    bad("make_strategy", "shooting_iterations", v)
for v in (-1.0, NAN, INF, "1", None):
    bad("make_strategy", "budget", v)
for v in ("x", DenseJacobian(), ColouredJacobian(block=None)):
    bad("make_strategy", "mpc_jacobian", v)
for v in ("cubic", None, "step", "adaptive"):
    bad("Blend", "schedule", v, UnknownNameError)
bad_scalars("ClosedFormController", "eta", (-0.1, 1.5, NAN, "0.9", None))
for v in (0, -1, 1.5, "2"):
    bad("ClosedFormController", "window", v)
bad_scalars("SecantCorrection", "budget", (-1.0, NAN, INF, "1", None))
bad_scalars("SecantCorrection", "max_step", (0.0, -1.0, NAN, "1"))
bad_scalars("SecantCorrection", "min_reduction", (-0.1, 1.5, NAN))
for v in ("yes", 1, None):
    bad("SecantCorrection", "trial", v)
for arg, values in {"transcription": ("triple", None), "terminal": ("image", None), "schedule": ("cubic", "step", None), "model": ("guess", None)}.items():
    for v in values:
        bad("Shooting", arg, v, UnknownNameError)
for v in (0, -1, "16", 2.5):
    bad("Shooting", "segments", v)
for v in ("x", None, {"terminal": 1.0}):
    bad("Shooting", "weights", v)
for v in ("x", None):
    bad("Shooting", "solver", v)
bad_scalars("Shooting", "budget", (-1.0, NAN, INF, "1", None))
for v in ("x", None, SecantCorrection()):
    bad("ShootingMPC", "shooting", v)
for v in ("x", None, DenseJacobian(), ColouredJacobian(block=None)):
    bad("ShootingMPC", "jacobian", v)
for v in (0, -1, "2"):
    bad("ShootingMPC", "horizon", v)
bad_scalars("ShootingMPC", "tracking", (-1.0, NAN))
bad_scalars("ShootingMPC", "effort", (0.0, -1.0, NAN))
bad_scalars("ShootingMPC", "replan_tolerance", (0.0, NAN))
bad_scalars("ShootingMPC", "max_replans", (-1, 1.5))
# transitions: the request
for v in (None, object(), "flow"):
    bad("TransitionRequest", "model", v)
for v in (None, "point", lambda w: w.run, lambda w: w.point.state):
    bad("TransitionRequest", "point", v)
bad("TransitionRequest", "point", lambda w: ResumePoint(w.point.state, K, Grid(w.grid.values.double())), label="plain-grid")
bad("TransitionRequest", "point", lambda w: w.run.resume_point(STEPS), label="at-the-end")
bad("TransitionRequest", "point", lambda w: ResumePoint(w.point.state, K, Grid(w.grid.values.flip(0).double())), label="ascending-grid")
for v in (0, -1, "2", 1.5, None, True):
    bad("TransitionRequest", "horizon", v)
bad_scalars("TransitionRequest", "similarity", (1.5, -2.0, NAN, "0.9"))
for v in ("x", {"jvp": 1.0}, {"forward": -1.0}):
    bad("TransitionRequest", "cost", v)
for name in ("state", "noise", "velocity"):
    bad("TransitionRequest", "point", lambda w, name=name: _point(w, **{name: _with(getattr(w.point, name), NAN)}), NonFiniteError, f"point.{name}", label=f"nan-{name}")
bad("TransitionRequest", "point", lambda w: _point(w, state=w.point.state.flatten(), noise=None, velocity=None), ShapeError, "point.state", label="1-D-state")
bad("TransitionRequest", "point", lambda w: _point(w, state=w.point.state.sum(), noise=None, velocity=None), ShapeError, "point.state", label="0-D-state")
# transitions: each strategy's run
for name in STRATEGY_NAMES:
    entry = f"run:{name}"
    for v in (None, "request", object(), lambda w: w.point):
        bad(entry, "request", v)
    bad(entry, "cond_b", lambda w: torch.ones(3, COMPONENTS, dtype=torch.float64) / COMPONENTS, ShapeError, "cond", label="batch-3-vs-2")
    bad(entry, "cond_b", lambda w: torch.ones(COMPONENTS + 1, dtype=torch.float64) / (COMPONENTS + 1), ShapeError, "cond", label="wrong-K")
    bad(entry, "cond_b", None, argument="cond", label="none")
    bad(entry, "point", lambda w: _point(w, state=w.point.state[:, :2], noise=w.noise[:, :2], velocity=None), ShapeError, "x", label="wrong-event")
    bad(entry, "point", lambda w: _point(w, noise=torch.cat([w.noise, w.noise])), ShapeError, "noise", label="noise-batch-4-vs-2")
    bad(entry, "point", lambda w: _point(w, noise=w.noise[:1]), ShapeError, "noise", label="noise-batch-1-vs-2")
bad("run:closed-form", "point", lambda w: _point(w, noise=None), label="no-noise")
bad("run:secant", "point", lambda w: _point(w, method="heun"), label="heun-run")

# jacobians
for entry in ("DenseJacobian", "DiagonalJacobian", "ColouredJacobian", "LowRankJacobian"):
    for v in ("fwd", None):
        bad(entry, "mode", v, UnknownNameError)
    bad_scalars(entry, "fd_step", (0.0, -1e-3, NAN, "1e-3"))
    for v in (-1, "16", 1.5):
        bad(entry, "chunk_size", v)
for entry in ("DenseJacobian", "DiagonalJacobian"):
    for v in (0, "4096"):
        bad(entry, "max_size", v)
for arg, values in {"probes": (0, -1, "8"), "radius": (-1, 1.5), "seed": (-1, "0")}.items():
    for v in values:
        bad("DiagonalJacobian", arg, v)
ROWS.append(Row("DiagonalJacobian", "probes-and-radius", lambda w: {"probes": 4, "radius": 0}, InvalidArgumentError, "probes"))
for v in (-1, "1"):
    bad("ColouredJacobian", "radius", v)
for v in ((0, 1), "ab", (1, 2, 3), 2, (1.5, 2)):
    bad("ColouredJacobian", "block", v)
for arg in ("rank", "oversampling", "power_iterations", "seed"):
    for v in (-1, "2") + ((0,) if arg == "rank" else ()):
        bad("LowRankJacobian", arg, v)
for entry in ("DenseJacobian.estimate", "DiagonalJacobian.estimate", "ColouredJacobian.estimate", "LowRankJacobian.estimate"):
    bad_tensors(entry, "x", lambda w: torch.ones(3, 4, 4, dtype=torch.float64))
    for v in ("f", None):
        bad(entry, "f", v)
    bad(entry, "f", lambda w: (lambda y: y.sum()), ShapeError, label="scalar-output")
    bad(entry, "counter", "x")
bad("DiagonalJacobian.estimate", "x", torch.ones(4, dtype=torch.float64), ShapeError, label="not-an-image")
bad("ColouredJacobian.estimate", "x", torch.ones(3, 5, 4, dtype=torch.float64), ShapeError, label="blocks-do-not-tile")
bad("LowRankJacobian.estimate", "x", torch.ones(1, dtype=torch.float64), argument="rank", label="smaller-than-rank")
for entry in ("DenseJacobian.estimate", "DiagonalJacobian.estimate", "LowRankJacobian.estimate", "BlendedJacobian.estimate"):
    bad(entry, "x", torch.ones(0, dtype=torch.float64), ShapeError, label="empty")
bad("DenseJacobian.estimate", "x", torch.ones(5000, dtype=torch.float64), label="too-large")
for v in ("x", None):
    bad("BlendedJacobian", "estimator", v)
bad("BlendedJacobian", "reuse_steps", -1)
bad_scalars("BlendedJacobian.estimate", "alpha", (1.5, -0.5, NAN, "0.5"))
for v in (-1, "0", 1.5):
    bad("BlendedJacobian.estimate", "step", v)
for v in ("ab", ("a",), None):
    bad("BlendedJacobian.estimate", "keys", v)
bad("BlendedJacobian.estimate", "counter", "x")
bad_tensors("BlendedJacobian.estimate", "x", lambda w: torch.ones(3, 4, 4, dtype=torch.float64))
for v in ("banded", None):
    bad("JacobianEstimate", "structure", v, UnknownNameError)
for label, kw in (
    ("diagonal-2-D", {"data": torch.ones(2, 2)}),
    ("diagonal-str", {"data": "x"}),
    ("diagonal-complex", {"data": torch.ones(4, dtype=torch.complex64)}),
    ("dense-not-square", {"structure": "dense", "data": torch.ones(2, 3)}),
    ("block-2-D", {"structure": "block", "data": torch.ones(2, 2)}),
    ("block-not-square", {"structure": "block", "data": torch.ones(2, 2, 3)}),
    ("block-index", {"structure": "block", "data": torch.ones(2, 2, 2), "index": torch.arange(3)}),
    ("low-rank-single", {"structure": "low_rank", "data": torch.ones(4, 2)}),
    ("low-rank-mismatch", {"structure": "low_rank", "data": (torch.ones(4, 2), torch.ones(3, 2))}),
    ("sparse-dense-data", {"structure": "sparse", "data": torch.ones(4)}),
    ("cost", {"cost": "x"}),
):
    argument = "cost" if label == "cost" else ("index" if label == "block-index" else "data")
    ROWS.append(Row("JacobianEstimate", label, lambda w, kw=kw: kw, ShapeError if "2-D" in label or "square" in label or "mismatch" in label else InvalidArgumentError, argument))
bad_tensors("JacobianEstimate.matvec", "v", lambda w: torch.ones(4))
bad("JacobianEstimate.matvec", "v", torch.ones(5), ShapeError, label="wrong-length")

# systems: the Gaussian mixture
bad_tensors("GaussianMixtureFlow", "means", lambda w: w.flow.means)
bad("GaussianMixtureFlow", "means", torch.ones(4), ShapeError, label="1-D")
bad_scalars("GaussianMixtureFlow", "stds", (0.0, -0.5, NAN, INF, "0.5", None, True))
bad("GaussianMixtureFlow", "stds", torch.ones(COMPONENTS + 1), ShapeError, label="wrong-K")
bad("GaussianMixtureFlow", "stds", torch.ones(COMPONENTS, dtype=torch.complex64), label="complex")
bad("GaussianMixtureFlow", "stds", torch.ones(COMPONENTS, device="meta"), label="meta")
bad_tensors("GaussianMixtureFlow.velocity", "x", lambda w: w.noise)
bad("GaussianMixtureFlow.velocity", "x", lambda w: w.noise[0], ShapeError, label="unbatched")
bad_scalars("GaussianMixtureFlow.velocity", "t", (1.5, -0.1, NAN, INF, "0.5", None, torch.ones(2)))
bad_tensors("GaussianMixtureFlow.velocity", "cond", lambda w: w.w_a)
bad("GaussianMixtureFlow.velocity", "cond", lambda w: torch.ones(3, COMPONENTS, dtype=torch.float64) / COMPONENTS, ShapeError, label="batch-3-vs-2")
bad("GaussianMixtureFlow.velocity", "cond", lambda w: -w.w_a, label="negative")
bad("GaussianMixtureFlow.velocity", "cond", lambda w: 2 * w.w_a, label="sum-2")
bad_tensors("GaussianMixtureFlow.log_prob", "x0", lambda w: w.noise)
bad_tensors("GaussianMixtureFlow.log_prob", "weights", lambda w: w.w_a, argument="cond")
bad("GaussianMixtureFlow.log_prob", "weights", lambda w: torch.ones(3, COMPONENTS, dtype=torch.float64) / COMPONENTS, ShapeError, "cond", label="batch-3-vs-2")
for v in (0, -1, "2", 1.5, None):
    bad("GaussianMixtureFlow.sample", "n", v)
bad_tensors("GaussianMixtureFlow.sample", "weights", lambda w: w.w_a, argument="cond")
bad("GaussianMixtureFlow.sample", "weights", lambda w: torch.ones(2, COMPONENTS, dtype=torch.float64) / COMPONENTS, ShapeError, "cond", label="batched")
bad("GaussianMixtureFlow.sample", "generator", "seed")
# systems: the prompted mixture
for v in (None, "minilm", object()):
    bad("PromptedMixtureFlow", "encoder", v)
for arg, values in {"components": (0, -1, "3"), "size": (4, "8", 10**6), "seed": (-1, 1.5)}.items():
    for v in values:
        bad("PromptedMixtureFlow", arg, v)
bad_scalars("PromptedMixtureFlow", "std", (0.0, NAN, "0.5"))
bad_scalars("PromptedMixtureFlow", "temperature", (0.0, -1.0, INF))
bad_scalars("PromptedMixtureFlow", "pull", (-0.1, 1.5, NAN))
for v in (5, "", [], [""], None):
    bad("PromptedMixtureFlow.condition", "prompt", v, argument="prompts")
bad_tensors("PromptedMixtureFlow.condition_from_embedding", "embedding", lambda w: w.encoder.encode(["a"])[0])
bad("PromptedMixtureFlow.condition_from_embedding", "embedding", torch.zeros(64), label="zero")
bad("PromptedMixtureFlow.condition_from_embedding", "embedding", torch.ones(63), ShapeError, label="wrong-dim")
bad("PromptedMixtureFlow.condition_from_embedding", "embedding", torch.ones(1, 1, 64), ShapeError, label="3-D")
for v in (None, "a red circle", lambda w: w.w_a):
    bad("PromptedMixtureFlow.velocity", "cond", v)
bad("PromptedMixtureFlow.velocity", "cond", lambda w: PromptCondition(torch.ones(3) / 3, torch.zeros(2, 3, 8, 8)), ShapeError, "cond.offset", label="offset-batch-2-vs-1")
bad("PromptedMixtureFlow.velocity", "cond", lambda w: PromptCondition(torch.ones(2, 3) / 3, torch.zeros(2, 3, 8, 8)), ShapeError, "cond.offset", label="prompts-2-vs-batch-1")
bad("PromptedMixtureFlow.velocity", "cond", lambda w: PromptCondition(torch.ones(2, 3) / 3, torch.zeros(3, 8, 8)), ShapeError, "offset", label="weights-2-offset-1")
bad("PromptedMixtureFlow.velocity", "cond", lambda w: PromptCondition(torch.ones(3) / 3, torch.zeros(3, 4, 4)), ShapeError, "cond.offset", label="offset-wrong-event")
bad("PromptedMixtureFlow.velocity", "cond", lambda w: PromptCondition(torch.ones(3) / 3, torch.zeros(3, 8, 8, dtype=torch.complex64)), InvalidArgumentError, "offset", label="offset-complex")
bad("PromptedMixtureFlow.velocity", "cond", lambda w: PromptCondition(torch.ones(3) / 3, torch.full((3, 8, 8), NAN)), NonFiniteError, "offset", label="offset-nan")
bad("PromptedMixtureFlow.velocity", "cond", lambda w: PromptCondition("w", torch.zeros(3, 8, 8)), InvalidArgumentError, "weights", label="weights-str")
bad_tensors("PromptedMixtureFlow.velocity", "x", lambda w: torch.zeros(1, 3, 8, 8))
bad("PromptedMixtureFlow.velocity", "x", torch.zeros(1, 3, 4, 4), ShapeError, label="wrong-event")
bad("PromptedMixtureFlow.velocity", "x", torch.zeros(3, 8, 8), ShapeError, label="unbatched")
bad_scalars("PromptedMixtureFlow.velocity", "t", (1.5, NAN, "0.5"))
# systems: control systems
bad_tensors("ControlSystem.velocity", "x", lambda w: torch.zeros(3, 2))
bad("ControlSystem.velocity", "x", torch.zeros(3, 3), ShapeError, label="wrong-state-size")
bad_scalars("ControlSystem.velocity", "t", (NAN, "0", None))
bad_tensors("ControlSystem.velocity", "cond", lambda w: torch.zeros(3, 1), skip=("None",))
bad("ControlSystem.velocity", "cond", torch.zeros(4, 1), ShapeError, label="batch-4-vs-3")
bad("ControlSystem.velocity", "cond", torch.zeros(3, 2), ShapeError, label="wrong-control-size")
for v, error in (
    ("x", InvalidArgumentError), (None, InvalidArgumentError), ([[1.0, 0.0], [0.0]], InvalidArgumentError),
    (torch.eye(2, dtype=torch.complex64), InvalidArgumentError), (torch.eye(2, device="meta"), InvalidArgumentError),
    (torch.eye(2, dtype=torch.bool), InvalidArgumentError), ([[1.0, NAN], [0.0, 1.0]], NonFiniteError),
    ([[1.0, 2.0]], ShapeError), (torch.zeros(0, 0), ShapeError), (torch.eye(2)[None], ShapeError),
):
    bad("LinearSystem", "A", v, error)
for v, error in (("x", InvalidArgumentError), ([[1.0]], ShapeError), (torch.ones(2, 1, dtype=torch.complex64), InvalidArgumentError)):
    bad("LinearSystem", "B", v, error)
for arg in ("mass", "length", "gravity"):
    bad_scalars("Pendulum", arg, (0.0, -1.0, NAN, "1", None))
bad_scalars("Pendulum", "damping", (-1.0, NAN))
for arg in ("cart_mass", "pole_mass", "pole_length", "gravity"):
    bad_scalars("CartPole", arg, (0.0, NAN))
# systems: the shapes
for v in ("teal", None):
    bad("render", "background", v, UnknownNameError)
for v in (4, "8", 0, 10**6):
    bad("render", "size", v)
for v in (("circle",), "circle", None, (None,)):
    bad("render", "shapes", v)
for arg, v in (("kind", "blob"), ("colour", "teal"), ("size", "huge"), ("position", "nowhere"), ("kind", None)):
    bad("Shape", arg, v, UnknownNameError)
for arg, values in {"count": (0, -1, 10**9, "2"), "size": (4, None), "seed": (-1, 1.5)}.items():
    for v in values:
        bad("captioned_shapes", arg, v)

# cache: keys and entries
for arg, values in {
    "model": ("", "  ", None, 3), "steps": (0, "6", None), "shift": (0.0, NAN, "3"), "mu": (NAN, "1"), "guidance": (NAN, INF, "7"),
    "method": ("midpoint", None), "shape": ("2x3", (0, 3), (2.5,), None), "dtype": ("int64", "complex64", "float8", None, torch.int64),
    "time_shift": ("cubic",), "num_train_timesteps": (0, 10**12), "encoder": (None, 3),
    "sigmas": ((0.0, 0.5, 1.0), (1.0, 0.5), "x", (1.0,) * (STEPS + 1), tuple([2.0] + [1.0 - i / STEPS for i in range(1, STEPS + 1)])),
}.items():
    for v in values:
        error = UnknownNameError if arg in ("method", "time_shift") else (NonFiniteError if isinstance(v, float) and not math.isfinite(v) else InvalidArgumentError)
        bad("CacheKey", arg, v, ShapeError if arg == "shape" and not isinstance(v, tuple) else error)
for v in (lambda w: Grid(w.grid.values), None):
    bad("CacheKey.for_grid", "grid", v)
for v in ("half-precision", "int64", torch.complex64):
    bad("CacheKey.for_grid", "dtype", v)
bad("CacheKey.for_grid", "shape", "2x3", ShapeError)
for v in (None, "key", lambda w: w.key.to_json()):
    bad("CacheEntry", "key", v)
for v in ("", None, 3):
    bad("CacheEntry", "prompt", v)
bad_tensors("CacheEntry", "embedding", lambda w: w.encoder.encode(["a"])[0])
bad("CacheEntry", "embedding", torch.zeros(64), label="zero")
bad("CacheEntry", "embedding", torch.ones(2, 64), ShapeError, label="2-D")
for v in ({}, None, "x", lambda w: {STEPS: w.point.state}, lambda w: {-1: w.point.state}, lambda w: {"2": w.point.state}):
    bad("CacheEntry", "states", v)
bad("CacheEntry", "states", lambda w: {K: w.point.state[:1]}, ShapeError, "states[2]", label="batch-1-vs-key")
bad("CacheEntry", "states", lambda w: {K: w.point.state.float()}, InvalidArgumentError, "states[2]", label="dtype-vs-key")
bad("CacheEntry", "states", lambda w: {K: _with(w.point.state, NAN)}, NonFiniteError, "states[2]", label="nan")
bad("CacheEntry", "states", lambda w: {K: w.point.state.to(torch.complex128)}, InvalidArgumentError, "states[2]", label="complex")
bad_tensors("CacheEntry", "noise", lambda w: w.noise)
bad("CacheEntry", "noise", lambda w: w.noise[:1], ShapeError, label="batch-1-vs-key")
bad("CacheEntry", "velocities", "x")
bad("CacheEntry", "velocities", lambda w: {K + 1: w.point.velocity}, label="no-such-state")
bad("CacheEntry", "velocities", lambda w: {K: w.point.velocity[:1]}, ShapeError, "velocities[2]", label="batch-1-vs-key")
for v in (torch.zeros(3), "g", torch.zeros(2, 3, dtype=torch.uint8)):
    bad("CacheEntry", "generator_state", v)
for arg, values in {"namespace": ("", None, 3), "entry_id": ("a/b", "", "a.b", None), "created": (NAN, "now")}.items():
    for v in values:
        bad("CacheEntry", arg, v, NonFiniteError if v is NAN else InvalidArgumentError)
for v in (None, "run", lambda w: w.point):
    bad("CacheEntry.from_trajectory", "trajectory", v)
bad("CacheEntry.from_trajectory", "trajectory", lambda w: integrate(w.flow, w.point.state, w.grid, w.w_a, start=K), label="no-noise")
for v in (None, lambda w: _key(w, steps=STEPS + 1), lambda w: _key(w, method="heun")):
    bad("CacheEntry.from_trajectory", "key", v)
for v in ([STEPS + 1], [], ["2"], None, [-1]):
    bad("CacheEntry.from_trajectory", "steps", v)
for v in (-1, STEPS, "2", None, K + 1):
    bad("CacheEntry.resume_point", "step", v)
for v in (-1, STEPS + 1, "2"):
    bad("CacheEntry.sigma", "step", v)
for v in (*BAD_DEVICES, None):
    bad("CacheEntry.to", "device", v)
# cache: the store
for v in (*BAD_DEVICES, None):
    bad("CacheStore", "device", v)
for arg in ("device_bytes", "host_bytes"):
    for v in (-1, "1GB", 1.5, None):
        bad("CacheStore", arg, v)
for v in ("fifo", None):
    bad("CacheStore", "eviction", v, UnknownNameError)
for v in ("postgres://", object()):
    bad("CacheStore", "persistent", v)
for v in ("x", None, lambda w: w.point):
    bad("CacheStore.put", "entry", v)
for v in (None, 5, ""):
    bad("CacheStore.get", "entry_id", v)
for v in ("", None):
    bad("CacheStore.get", "namespace", v)
bad_tensors("CacheStore.nearest", "embedding", lambda w: w.encoder.encode(["a"])[0])
bad("CacheStore.nearest", "embedding", torch.zeros(64), label="zero")
for v in ("key", None, lambda w: w.key.to_json()):
    bad("CacheStore.nearest", "key", v)
for v in ("default", 3, [""], torch.tensor(1.0)):
    bad("CacheStore.nearest", "namespaces", v)
for v in (None, 5):
    bad("CacheStore.remove", "entry_id", v)
bad("CacheStore.remove", "namespace", "")
# cache: the generator
for v in (None, object(), lambda w: w.flow):
    bad("CachedGenerator", "model", v)
for v in (None, "hashing"):
    bad("CachedGenerator", "encoder", v)
for v in (None, "store", lambda w: {}):
    bad("CachedGenerator", "store", v)
for v in (None, lambda w: Grid(w.grid.values)):
    bad("CachedGenerator", "grid", v)
for v in ("seed", None):
    bad("CachedGenerator", "policy", v)
for v in ("direct", None, lambda w: make_strategy):
    bad("CachedGenerator", "strategy", v)
for v in ("", None):
    bad("CachedGenerator", "namespace", v)
bad_scalars("CachedGenerator", "guidance", (NAN, INF, "7"))
for entry in ("CachedGenerator.generate", "CachedGenerator.fill", "CachedGenerator.lookup"):
    for v in (5, "", None, ["a"]):
        bad(entry, "prompt", v, argument="prompts")
    bad_tensors(entry, "noise", lambda w: w.noise)
    bad(entry, "noise", lambda w: w.noise[0, 0, 0, 0], ShapeError, label="0-D")
for v in ([STEPS + 1], [-1], "all", [1.5]):
    bad("CachedGenerator.fill", "steps", v)

# mpc and ocp problem descriptions
for arg in ("nx", "nu", "horizon"):
    for v in (0, -1, "2", 1.5):
        bad("MPCConfig", arg, v)
bad("MPCConfig", "control_horizon", 5)
bad("MPCConfig", "control_horizon", 0)
for arg in ("q", "r", "s", "q_terminal"):
    for v in (-1.0, NAN, "1", torch.ones(2, dtype=torch.complex64), torch.ones(1, device="meta"), [1.0, "a"]) + ((None,) if arg != "q_terminal" else ()):
        bad("MPCConfig", arg, v)
    bad("MPCConfig", arg, torch.ones(3), ShapeError)
ROWS.append(Row("MPCConfig", "r=0,s=0", lambda w: {"r": 0.0, "s": 0.0}, InvalidArgumentError, "r"))
for arg in ("u_lower", "x_lower"):
    for v in ("a", NAN, torch.ones(5), torch.ones(1, dtype=torch.complex64)):
        bad("MPCConfig", arg, v, ShapeError if isinstance(v, torch.Tensor) and v.numel() == 5 else InvalidArgumentError)
ROWS.append(Row("MPCConfig", "u_lower>u_upper", lambda w: {"u_lower": 1.0, "u_upper": -1.0}, InvalidArgumentError, "u_lower"))
for arg, good in (("a", lambda w: torch.eye(2).expand(3, 2, 2)), ("b", lambda w: torch.ones(3, 2, 1)), ("c", lambda w: torch.zeros(3, 2))):
    bad_tensors("Linearisation", arg, good)
bad("Linearisation", "a", torch.ones(3, 2, 3), ShapeError, label="not-square")
bad("Linearisation", "b", torch.ones(4, 2, 1), ShapeError, label="horizon-4-vs-3")
bad("Linearisation", "structure", "sparse")
bad("Linearisation", "c", torch.zeros(3, 2, 1), ShapeError, label="3-D")
for v in ("x", None):
    bad("TorchShooting", "problem", v)
bad("TorchShooting", "transcription", "triple", UnknownNameError)
bad("TorchShooting", "options", "fast")
bad("TorchShooting", "counter", 3)
for arg, good in (("a", lambda w: torch.eye(2)), ("b", lambda w: torch.ones(2, 1)), ("target", lambda w: torch.zeros(2))):
    bad_tensors("TimeInvariantModel", arg, good, finite=False)
bad("TimeInvariantModel", "a", torch.eye(3), ShapeError, label="3x3")
bad("TimeInvariantModel", "b", torch.ones(3, 1), ShapeError, label="3x1")
bad("TimeInvariantModel", "c", torch.zeros(3), ShapeError, label="(3,)")
bad("TimeInvariantModel", "target", torch.zeros(2, 1), ShapeError, label="2-D")
for v in (0, -1, 1.5):
    bad("TimeInvariantModel", "horizon", v)
bad("TimeInvariantModel", "structure", "block")
for v in (5, None, ""):
    bad("DiskStore", "directory", v)
for v in (None, object()):
    bad("OptimalControlProblem", "dynamics", v)
for v in (None, PLAIN):
    bad("OptimalControlProblem", "grid", v)
bad_tensors("OptimalControlProblem", "x0", lambda w: torch.tensor([0.0, 1.0], dtype=torch.float64))
bad("OptimalControlProblem", "x0", torch.zeros(3, dtype=torch.float64), ShapeError, label="wrong-state-size")
for v in ("feedback", None):
    bad("OptimalControlProblem", "control", v)
for arg in ("terminal_weight", "control_weight", "control_rate_weight"):
    bad_scalars("OptimalControlProblem", arg, (-1.0, NAN, "1"))
bad("OptimalControlProblem", "method", "midpoint", UnknownNameError)
for v in (0, "1"):
    bad("OptimalControlProblem", "substeps", v)
for arg in ("u_lower", "x_lower"):
    for v in ("a", NAN, torch.ones(5), torch.ones(1, dtype=torch.complex64), torch.ones(1, device="meta")):
        bad("OptimalControlProblem", arg, v)
ROWS.append(Row("OptimalControlProblem", "u_lower>u_upper", lambda w: {"u_lower": 1.0, "u_upper": -1.0}, InvalidArgumentError, "u_lower"))


# ---- the tests --------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", sorted(ENTRY))
def test_every_entry_point_takes_its_good_arguments(world, entry):
    ENTRY[entry](world)


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input_raises_a_typed_error_naming_the_argument(world, row):
    with pytest.raises(FlowctlError) as err:
        ENTRY[row.entry](world, **row.overrides(world))
    assert isinstance(err.value, row.error), f"{type(err.value).__name__}: {err.value}"
    if row.argument is not None:
        assert err.value.argument == row.argument, str(err.value)
        assert str(err.value).startswith(f"{row.argument}: ")


def test_the_table_covers_every_entry_point_and_strategy():
    covered = {row.entry for row in ROWS}
    assert covered == set(ENTRY)
    assert {f"run:{name}" for name in STRATEGY_NAMES} <= covered


# ---- properties over the wide input spaces --------------------------------------------------


def _is_sigma_grid(values: torch.Tensor, steps: int | None = None) -> bool:
    v = values.double()
    return (
        v.dim() == 1 and (steps is None or v.numel() == steps + 1) and bool(torch.isfinite(v).all())
        and bool((v[1:] < v[:-1]).all()) and float(v[-1]) == 0.0 and 0.0 < float(v[0]) <= 1.0 + SIGMA_ROUNDING
    )


@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), max_size=6))
def test_a_sigma_grid_descends_to_zero_or_is_refused(values):
    try:
        grid = SigmaGrid(torch.tensor(values, dtype=torch.float32))
    except InvalidArgumentError as err:
        assert err.argument == "values"
    else:
        assert _is_sigma_grid(grid.values)


_any_float = st.floats(allow_nan=True, allow_infinity=True)


@given(
    steps=st.one_of(st.integers(-3, 60), st.sampled_from([10**7, 10**12])),
    shift=st.one_of(_any_float, st.floats(1e-3, 1e3)),
    mu=st.one_of(st.none(), _any_float, st.floats(-5.0, 5.0)),
    time_shift=st.sampled_from(["exponential", "linear", "cubic"]),
)
def test_sigma_grid_settings_give_a_sigma_grid_or_a_typed_error(steps, shift, mu, time_shift):
    try:
        grid = SigmaGrid.create(steps, shift, mu=mu, time_shift=time_shift)
    except InvalidArgumentError as err:
        assert err.argument in ("steps", "shift", "mu", "time_shift")
    else:
        assert _is_sigma_grid(grid.values, steps)


DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128, torch.int8, torch.int64, torch.uint8, torch.bool]


@given(dtype=st.sampled_from(DTYPES), meta=st.booleans(), batch=st.integers(1, 3), event=st.sampled_from([EVENT, (3, 4, 5), (4,), ()]),
       poison=st.sampled_from([None, NAN, INF, -INF]))
def test_states_of_any_dtype_device_and_shape_run_or_raise_typed(world, dtype, meta, batch, event, poison):
    x = torch.zeros(batch, *event, dtype=torch.float64)
    if poison is not None:
        x = _with(x, poison)
    x = x.to(dtype).to("meta" if meta else "cpu")
    good = dtype.is_floating_point and not meta and event == EVENT and poison is None
    for call in (
        lambda: integrate(world.flow, x, world.grid, world.w_a, keep="final"),
        lambda: make_strategy("direct").run(TransitionRequest(world.flow, ResumePoint(x, K, world.grid), world.w_a, world.w_b)),
    ):
        try:
            call()
        except InvalidArgumentError:
            assert not good
        else:
            assert good


def test_a_dtype_alias_keys_like_its_canonical_name(world):
    """A key spelled with torch's alias ("float") must equal the canonical one, or its entries
    would never be found."""
    assert _key(world, dtype="double") == _key(world, dtype=torch.float64) == _key(world)


# ---- the checks run once a call, not once a step ----------------------------------------------


def _host_conversions(monkeypatch) -> list[str]:
    seen: list[str] = []
    for name in ("__bool__", "__float__", "item", "tolist"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _o=original, _n=name: seen.append(_n) or _o(self, *a))
    return seen


class _Linear:
    def velocity(self, x, t, cond=None):
        return -x


def test_boundary_checks_synchronise_a_fixed_number_of_times(monkeypatch):
    """integrate with every state kept, resume, and a request continued by the direct switch make
    as many host conversions on a 40-step grid as on a 10-step one."""
    seen = _host_conversions(monkeypatch)
    x = torch.ones(2, 3, 4, 4, dtype=torch.float64)
    counts = []
    for steps in (10, 40):
        grid = SigmaGrid.create(steps)
        run = integrate(_Linear(), x, grid)
        point = run.resume_point(2)
        seen.clear()
        integrate(_Linear(), x, grid)
        resume(_Linear(), point)
        make_strategy("direct").run(TransitionRequest(_Linear(), point, None, None))
        counts.append(len(seen))
    assert counts[0] == counts[1]
