"""The cross-prompt caching benchmark (its protocol: docs/cache.md) on a prompt-conditioned flow.

For every shipped prompt pair (A, B) and a batch of seeds: A is generated from scratch and
stored in the cache; B's reference is B from scratch from the same noise. B is then looked up;
the policy picks the resume step k and transition length H, and every method continues the
matched entry from there. Beside the methods: A's image as is (the no-op floor) and B from
scratch with fewer steps at the same NFE-equivalent budget. A sweep over resume steps on the
most similar pairs gives the speedup-vs-PSNR fronts.

Figures: PSNR (data range 2) and SSIM to B's reference, prompt adherence
``log p_B(x) - log p_A(x)`` (nats; positive: the image is likelier under B), model evaluations
by kind and in NFE-equivalents (JVP and VJP weighted by their measured cost on the model),
wall time (median of repeats), and speedup = from-scratch time / (look-up + planning +
continuation time). Sigma runs from 1 (noise) to 0 (data).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .. import metrics
from .._checks import check_int, check_real
from ..cache import CacheEntry, CachedGenerator, CacheStore, PersistentStore, PromptModel, get_policy
from ..dynamics import check_budget, derivative_mode
from ..errors import InvalidArgumentError
from ..jacobians import ColouredJacobian, DiagonalJacobian
from ..sampling import SigmaGrid, integrate
from ..systems.prompted_mixture import PromptedMixtureFlow
from ..text import MiniLMEncoder, TextEncoder
from ..transitions import STRATEGY_NAMES, DirectSwitch, Strategy, TransitionRequest, make_strategy
from .pairs import BUCKET_NAMES, PROMPT_PAIRS, PromptPair

DATA_RANGE = 2.0  # images live in [-1, 1]
SSIM_WINDOW = 7
NOOP = "A as is (no-op floor)"
FEWER = "fewer steps (same NFE)"
MISS = "miss: B from scratch"


@dataclass(frozen=True)
class BenchConfig:
    """What the benchmark runs.

    Attributes:
        steps: sampler steps N (SD3's sigma grid).
        shift: the grid's shift (SD3: 3.0).
        seeds: noise samples per pair (one batch).
        seed: seed of the noise.
        policy: "seed" or "nirvana" (:mod:`flowctl.cache.policy`).
        pairs_per_bucket: shipped pairs used per similarity bucket (None: all).
        sweep: resume fractions of the speedup-vs-PSNR sweep (at 28 steps: k = 6, 10, 14, 18,
            20, 22, 24).
        sweep_pairs: pairs of the most similar bucket swept.
        repeats: timing repeats of the methods and baselines (median); planners that
            differentiate the model (shooting on the exact model) run once.
        shooting_iterations: Levenberg-Marquardt iterations of every shooting plan at most.
        budget: NFE-equivalents every planner may spend beyond its continuation (hard cap).
        components, size: the default model's captioned images (K of 3 x size x size).
        strategies: the strategies run, by name (:data:`flowctl.transitions.STRATEGY_NAMES`).
        sweep_strategies: the strategies also run at the sweep's points, if in ``strategies``
            (None: all of them).
    """

    steps: int = 28
    shift: float = 3.0
    seeds: int = 4
    seed: int = 0
    policy: str = "seed"
    pairs_per_bucket: int | None = 3
    sweep: tuple[float, ...] = (0.2, 0.35, 0.5, 0.65, 0.72, 0.79, 0.86)
    sweep_pairs: int = 2
    repeats: int = 5
    shooting_iterations: int = 5
    budget: float = 1.0
    components: int = 96
    size: int = 32
    strategies: tuple[str, ...] = STRATEGY_NAMES
    sweep_strategies: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        check_int("steps", self.steps, minimum=4)
        check_real("shift", self.shift, positive=True)
        check_int("seeds", self.seeds, minimum=1)
        check_int("seed", self.seed, minimum=0)
        get_policy(self.policy)
        if self.pairs_per_bucket is not None:
            check_int("pairs_per_bucket", self.pairs_per_bucket, minimum=1)
        for f in self.sweep:
            check_real("sweep", f, low=0.0, high=1.0)
        check_int("sweep_pairs", self.sweep_pairs, minimum=0)
        check_int("repeats", self.repeats, minimum=1)
        check_int("shooting_iterations", self.shooting_iterations, minimum=1)
        check_budget("budget", self.budget)
        check_int("components", self.components, minimum=2)
        check_int("size", self.size, minimum=8)
        if not self.strategies:
            raise InvalidArgumentError("strategies", "expected at least one strategy")
        for name in self.strategies:
            make_strategy(name)
        for name in self.sweep_strategies or ():
            make_strategy(name)

    def methods(self, mpc_jacobian: DiagonalJacobian | ColouredJacobian | None = None) -> tuple[Strategy, ...]:
        """The strategies measured (``strategies``), cheapest first; ``mpc_jacobian``: the MPC's
        Jacobian estimator (the model's choice)."""
        return tuple(make_strategy(n, shooting_iterations=self.shooting_iterations, mpc_jacobian=mpc_jacobian, budget=self.budget)
                     for n in self.strategies)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


@dataclass(frozen=True, eq=False)
class BenchModel:
    """What the protocol runs on: a prompt-conditioned flow model and how to score its outputs.

    Attributes:
        model: a :class:`flowctl.cache.PromptModel` (``velocity``, ``condition``, ``fingerprint``;
            ``derivatives()`` where it is differentiated in a context of its own:
            :func:`flowctl.dynamics.derivative_mode`).
        noise: the starting noise at sigma = 1, one sample per seed (the batch).
        grid_for: the sampler's grid for a number of steps (B from scratch in fewer steps too).
        to_image: the model's output -> images in [-1, 1] (a VAE decode for a latent model).
        adherence: ``(x, prompt_a, prompt_b) -> (batch,)``, how well each output shows prompt
            B (the mixture: log p_B(x) - log p_A(x)); None where the model has no such measure.
        adherence_note: what ``adherence`` measures, in its units (for the report).
        guidance: classifier-free guidance scale, part of the cache key.
        mpc_jacobian: the Jacobian estimator shooting + MPC uses on this model (None: the
            coloured diagonal; patch blocks for a patch transformer).
    """

    model: PromptModel
    noise: torch.Tensor
    grid_for: Callable[[int], SigmaGrid]
    to_image: Callable[[torch.Tensor], torch.Tensor] = _identity
    adherence: Callable[[torch.Tensor, str, str], torch.Tensor] | None = None
    adherence_note: str = ""
    guidance: float = 0.0
    mpc_jacobian: DiagonalJacobian | ColouredJacobian | None = None


def mixture_model(config: BenchConfig, encoder: TextEncoder) -> BenchModel:
    """The embedded default: the prompted mixture flow (``config.components`` images of
    ``config.size``), ``config.seeds`` noise samples, SD3's grid with ``config.shift``."""
    model = PromptedMixtureFlow(encoder, components=config.components, size=config.size)
    noise = torch.randn((config.seeds, *model.event_shape), generator=torch.Generator().manual_seed(config.seed))
    adherence = lambda x, a, b: model.log_prob(x, model.condition(b)) - model.log_prob(x, model.condition(a))  # noqa: E731
    return BenchModel(model, noise, lambda steps: SigmaGrid.create(steps, config.shift), adherence=adherence,
                      adherence_note="adherence = log p_B(x) - log p_A(x) in nats")


@dataclass(frozen=True)
class Run:
    """One method (or baseline) on one pair at one resume step; figures are means over seeds.

    Attributes:
        method: the strategy's or baseline's name.
        pair: index into the pairs used; bucket, similarity: the pair's bucket and A-B cosine.
        lookup_similarity: similarity of the entry the look-up returned.
        sweep: True for a sweep point, False for the policy's choice.
        resume_step, horizon: k and H (H is None for from-scratch baselines, whose k is the step
            of the methods they are compared with).
        psnr, ssim, adherence: to / under B's reference (see the module doc).
        nfe: model evaluations by kind; nfe_equivalents: weighted by the measured cost.
        seconds: wall time of the continuation (median of repeats); planning: its planning phase;
            lookup: the look-up's time; scratch: B from scratch with all steps.
        status: the planner's status ("solved" where none ran, "budget" where it stopped at
            its budget).
        fewer_steps_psnr: B from scratch in as many steps as this run's NFE-equivalents (inf when
            that is all N steps: the reference itself).
        direct_psnr: the direct switch from the same entry and step.
        equal_cost_psnr: the direct switch at this run's NFE-equivalents: resumed earlier, at the
            fractional step ``N - NFE-eq.``, PSNR interpolated linearly between the two grid
            steps around it (None where that is before step 1).
        fallbacks: samples on which the planner's safeguard fell back to the direct switch.
    """

    method: str
    pair: int
    bucket: str
    similarity: float
    lookup_similarity: float
    sweep: bool
    resume_step: int | None
    horizon: int | None
    psnr: float
    ssim: float
    adherence: float
    nfe: dict[str, float]
    nfe_equivalents: float
    seconds: float
    planning: float
    lookup: float
    scratch: float
    status: str = "solved"
    fewer_steps_psnr: float | None = None
    direct_psnr: float | None = None
    equal_cost_psnr: float | None = None
    fallbacks: int = 0

    @property
    def speedup(self) -> float:
        """From-scratch time over look-up + planning + continuation time."""
        return self.scratch / (self.lookup + self.seconds) if self.seconds > 0 else float("inf")

    def speedup_nfe(self, steps: int) -> float:
        """Full-run NFE over this run's NFE-equivalents."""
        return steps / self.nfe_equivalents if self.nfe_equivalents > 0 else float("inf")


@dataclass(frozen=True, eq=False)
class BenchResult:
    """Everything the benchmark measured.

    Attributes:
        config: the settings.
        encoder: the text encoder's name (similarities and buckets depend on it).
        model: the model's fingerprint.
        pairs: the pairs used.
        cost: seconds per model call by kind, and relative to a forward call ("relative").
        runs: every measured run.
        images: per bucket, (row labels, images (3, S, S)) of seed 0 of its first pair.
        seconds: the benchmark's own wall time.
        adherence_note: what the adherence figures measure (the model's).
    """

    config: BenchConfig
    encoder: str
    model: str
    pairs: tuple[PromptPair, ...]
    cost: dict[str, dict[str, float]]
    runs: tuple[Run, ...]
    images: dict[str, tuple[tuple[str, ...], torch.Tensor]] = field(default_factory=dict)
    seconds: float = 0.0
    adherence_note: str = ""


def run_benchmark(
    config: BenchConfig = BenchConfig(),
    *,
    model: BenchModel | None = None,
    encoder: TextEncoder | None = None,
    pairs: Sequence[PromptPair] | None = None,
    progress: Callable[[str], None] | None = None,
    persistent: PersistentStore | None = None,
) -> BenchResult:
    """Run the protocol on ``model`` (default: the embedded prompted mixture flow, built from
    ``config``) with ``encoder`` for the look-up (default: MiniLM). The cached runs of the
    prompts A live in memory, and also in ``persistent`` if given (namespace "flowctl-bench"),
    whose look-ups are then the ones timed."""
    started = time.perf_counter()
    say = progress or (lambda _: None)
    encoder = encoder or MiniLMEncoder()
    pairs = tuple(_select(pairs or PROMPT_PAIRS, config.pairs_per_bucket))
    if not pairs:
        raise InvalidArgumentError("pairs", "no prompt pairs to run")
    model = model or mixture_model(config, encoder)
    grid = model.grid_for(config.steps)
    policy = get_policy(config.policy)
    store = CacheStore(device=model.noise.device, device_bytes=1 << 40, host_bytes=0, persistent=persistent)
    generator = CachedGenerator(model.model, encoder, store, grid, policy=policy, guidance=model.guidance, namespace="flowctl-bench")
    bench = _Bench(config, model, grid, generator)
    say(f"cost of a model call by kind: {bench.cost}")

    sweep_steps = {min(max(round(f * grid.steps), 1), grid.steps - 1) for f in config.sweep}
    kept = set(range(1, grid.steps))  # every step: the direct switch at equal cost resumes anywhere
    for a in dict.fromkeys(p.a for p in pairs):
        bench.store_a(a, kept)
    runs: list[Run] = []
    images: dict[str, tuple[tuple[str, ...], torch.Tensor]] = {}
    swept = 0
    for index, pair in enumerate(pairs):
        say(f"pair {index + 1}/{len(pairs)} [{pair.bucket}]: {pair.a!r} -> {pair.b!r}")
        steps = [(None, False)]
        if pair.bucket == BUCKET_NAMES[0] and swept < config.sweep_pairs:
            steps += [(k, True) for k in sorted(sweep_steps)]
            swept += 1
        for step, sweep in steps:
            pair_runs, finals = bench.pair(index, pair, step, sweep)
            runs += pair_runs
            if not sweep and pair.bucket not in images and finals:
                shown = torch.stack([model.to_image(f[:1])[0] for f in finals.values()])
                images[pair.bucket] = (tuple(finals), shown.float().cpu())
    fingerprint = model.model.fingerprint
    return BenchResult(config, encoder.name, fingerprint, pairs, bench.cost, tuple(runs), images, time.perf_counter() - started,
                       model.adherence_note)


def _select(pairs: Sequence[PromptPair], per_bucket: int | None) -> list[PromptPair]:
    counts: dict[str, int] = {}
    out = []
    for p in pairs:
        if per_bucket is None or counts.get(p.bucket, 0) < per_bucket:
            counts[p.bucket] = counts.get(p.bucket, 0) + 1
            out.append(p)
    return out


def _median_time(fn: Callable[[], object], repeats: int) -> tuple[object, float]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


class _Bench:
    """The per-pair measurements, sharing the model, grid, noise and cache."""

    def __init__(self, config: BenchConfig, bench: BenchModel, grid: SigmaGrid, generator: CachedGenerator):
        self.config, self.bench, self.grid, self.generator = config, bench, grid, generator
        self.model, self.noise = bench.model, bench.noise
        self.methods = config.methods(bench.mpc_jacobian)
        swept = config.strategies if config.sweep_strategies is None else config.sweep_strategies
        self.sweep_methods = tuple(m for name, m in zip(config.strategies, self.methods) if name in swept)
        with derivative_mode(self.model):
            self.cost = _call_costs(self.model, self.noise, self.model.condition("a shape"))
        self._fewer: dict[tuple[str, int], torch.Tensor] = {}
        self._direct: dict[tuple[str, str, int], float] = {}

    def store_a(self, prompt: str, kept: set[int]) -> None:
        """Generate A from scratch and cache the states the policy and the sweep resume from."""
        self.generator.fill(prompt, self.noise, steps=kept)

    def scratch(self, prompt: str, steps: int) -> torch.Tensor:
        """``prompt`` from scratch in ``steps`` steps, from the benchmark's noise."""
        return integrate(self.model, self.noise, self.bench.grid_for(steps), self.model.condition(prompt), keep="final").final

    def scratch_memo(self, prompt: str, steps: int) -> torch.Tensor:
        if (prompt, steps) not in self._fewer:
            self._fewer[prompt, steps] = self.scratch(prompt, steps)
        return self._fewer[prompt, steps]

    def pair(self, index: int, pair: PromptPair, step: int | None, sweep: bool) -> tuple[list[Run], dict[str, torch.Tensor]]:
        """Every method on one pair, at the policy's resume step (``step`` None) or at ``step``."""
        c, g, n = self.config, self.generator, self.grid.steps
        cond_b = self.model.condition(pair.b)
        e = g.encoder.encode([pair.a, pair.b])
        similarity = float(e[0] @ e[1])
        reference = self.scratch_memo(pair.b, n)
        _, scratch = _median_time(lambda: self.scratch(pair.b, n), c.repeats)
        lookup, lookup_time = _median_time(lambda: g.lookup(pair.b, self.noise), c.repeats)
        score = _Scorer(self.bench, reference, pair)
        base = dict(pair=index, bucket=pair.bucket, similarity=similarity, sweep=sweep, scratch=scratch, lookup=lookup_time)
        if not lookup.hit:
            return [Run(MISS, lookup_similarity=lookup.decision.similarity, resume_step=None, horizon=None,
                        nfe={"forward": n}, nfe_equivalents=n, seconds=scratch, planning=0.0, **score(reference), **base)], {}
        request = g.request(lookup, cond_b)
        request = TransitionRequest(request.model, lookup.entry.resume_point(request.step if step is None else step), request.cond_a,
                                    cond_b, request.horizon, request.similarity, self.cost["relative"])
        base |= dict(lookup_similarity=lookup.match.similarity, resume_step=request.step, horizon=request.horizon)
        a_final = self.scratch_memo(lookup.entry.prompt, n)
        runs = [Run(NOOP, nfe={}, nfe_equivalents=0.0, seconds=0.0, planning=0.0, **score(a_final), **base)]
        finals = {"A (cached prompt)": a_final, "B reference": reference}
        direct_psnr = None
        for method in self.sweep_methods if sweep else self.methods:
            cheap = not getattr(method, "differentiates", False)
            result, seconds = _median_time(lambda: method.run(request), c.repeats if cheap else 1)
            equivalents = result.nfe_equivalents(self.cost["relative"])
            budget = min(n, max(1, round(equivalents)))
            fewer = score(self.scratch_memo(pair.b, budget))["psnr"] if budget < n else float("inf")
            figures = score(result.final)
            if isinstance(method, DirectSwitch):  # also the equal-cost baseline at this step: no second run
                direct_psnr = self._direct[lookup.entry.prompt, pair.b, request.step] = figures["psnr"]
            runs.append(Run(
                method.name, nfe=dict(result.nfe), nfe_equivalents=equivalents, seconds=seconds,
                planning=result.phases.get("planning", 0.0), status=result.status.value,
                fewer_steps_psnr=fewer, direct_psnr=direct_psnr, equal_cost_psnr=self.equal_cost(request, lookup.entry, score, equivalents),
                fallbacks=result.fallbacks, **figures, **base,
            ))
            finals[method.name] = result.final
        budget = n - request.step
        fewer, fewer_time = _median_time(lambda: self.scratch(pair.b, budget), c.repeats)
        runs.append(Run(f"{FEWER}: {budget} steps", nfe={"forward": budget}, nfe_equivalents=budget, seconds=fewer_time,
                        planning=0.0, **(base | {"lookup": 0.0, "horizon": None}), **score(fewer)))
        return runs, finals


    def equal_cost(self, request: TransitionRequest, entry: CacheEntry, score: _Scorer, equivalents: float) -> float | None:
        """PSNR of the direct switch spending ``equivalents`` (see :attr:`Run.equal_cost_psnr`)."""
        n = self.grid.steps
        at = n - equivalents
        if at < 1:
            return None
        low, high = math.floor(at), min(math.ceil(at), n - 1)
        psnr = [self.direct_psnr(request, entry, score, k) for k in (low, high)]
        return psnr[0] if high == low else psnr[0] + (at - low) * (psnr[1] - psnr[0])

    def direct_psnr(self, request: TransitionRequest, entry: CacheEntry, score: _Scorer, step: int) -> float:
        key = (entry.prompt, score.pair.b, step)
        if key not in self._direct:
            moved = TransitionRequest(request.model, entry.resume_point(step), request.cond_a, request.cond_b, request.horizon)
            self._direct[key] = score(DirectSwitch().run(moved).final)["psnr"]
        return self._direct[key]


class _Scorer:
    """PSNR and SSIM of the images to the reference's, and adherence, means over the seeds."""

    def __init__(self, bench: BenchModel, reference: torch.Tensor, pair: PromptPair):
        self.bench, self.pair = bench, pair
        self.reference = bench.to_image(reference).float()

    def __call__(self, x: torch.Tensor) -> dict[str, float]:
        image = self.bench.to_image(x).float()
        window = min(SSIM_WINDOW, *image.shape[-2:])
        adherence = math.nan if self.bench.adherence is None else float(self.bench.adherence(x, self.pair.a, self.pair.b).mean())
        return {
            "psnr": float(metrics.psnr(image, self.reference, data_range=DATA_RANGE).mean()),
            "ssim": float(metrics.ssim(image, self.reference, data_range=DATA_RANGE, window_size=window).mean()),
            "adherence": adherence,
        }


def _call_costs(model: PromptModel, noise: torch.Tensor, cond: object, repeats: int = 20) -> dict[str, dict[str, float]]:
    """Median seconds of a forward call, a JVP and a VJP of the model on the benchmark's batch."""
    x, v, sigma = noise, torch.randn_like(noise), 0.5
    f = lambda y: model.velocity(y, sigma, cond)  # noqa: E731
    calls = {
        "forward": lambda: f(x),
        "jvp": lambda: torch.func.jvp(f, (x,), (v,)),
        "vjp": lambda: torch.func.vjp(f, x)[1](v),
    }
    seconds = {kind: _median_time(call, repeats)[1] for kind, call in calls.items()}
    return {"seconds": seconds, "relative": {kind: s / seconds["forward"] for kind, s in seconds.items()}}
