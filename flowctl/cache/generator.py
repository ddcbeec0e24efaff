"""Cached generation: look up a similar cached prompt, continue its state, or generate and fill.

The look-up embeds the prompt with the cache's :class:`flowctl.text.TextEncoder`, finds the most
similar entry of the same model and settings (:class:`CacheKey`) in the caller's namespace, and
asks the policy for a resume step and a transition length. A hit hands the cached state to a
transition strategy; a miss generates from the noise and stores the states the policy can
resume from. Only from-scratch runs fill the cache: a continuation's states are not its
prompt's own trajectory. Sigma runs from 1 (noise) to 0 (data).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from .._checks import check_dynamics, check_int, check_items, check_real, check_tensor
from ..dynamics import CountedDynamics
from ..errors import InvalidArgumentError
from ..sampling import SigmaGrid, integrate
from ..text import TextEncoder, check_prompts
from ..transitions import DirectSwitch, Strategy, TransitionRequest, TransitionResult
from .entry import CacheEntry, CacheKey, check_namespace
from .policy import SEED_POLICY, CachePolicy, Decision
from .store import CacheStore, Match


@runtime_checkable
class PromptModel(Protocol):
    """A flow model conditioned on prompts: a :class:`flowctl.Dynamics` plus how a prompt becomes
    its condition, and a fingerprint that names the model and its settings (the cache key's
    ``model``)."""

    fingerprint: str

    def velocity(self, x: torch.Tensor, t: float | torch.Tensor, cond: Any = None) -> torch.Tensor: ...

    def condition(self, prompt: str) -> Any: ...


@dataclass(frozen=True, eq=False)
class Lookup:
    """The answer to one look-up.

    Attributes:
        prompt: the new prompt.
        embedding: its similarity embedding (unit norm).
        match: the most similar entry under the same key and namespace, or None.
        decision: the policy's decision (a miss when nothing matched or too dissimilar).
        entry: the matched entry on the store's device, on a hit.
        seconds: wall time of encoding, search and fetching the entry.
    """

    prompt: str
    embedding: torch.Tensor
    match: Match | None
    decision: Decision
    entry: CacheEntry | None
    seconds: float

    @property
    def hit(self) -> bool:
        return self.entry is not None


@dataclass(frozen=True, eq=False)
class GenerationResult:
    """One cached generation.

    Attributes:
        final: the sample at sigma = 0.
        lookup: what the look-up found and decided (None for :meth:`CachedGenerator.fill`).
        transition: the strategy's result on a hit, None on a miss.
        entry_id: the stored entry's id on a miss, None on a hit.
        nfe: model evaluations by kind.
        timings: wall seconds: "lookup", then "planning" and "continuation" (hit) or
            "generation" and "store" (miss).
    """

    final: torch.Tensor
    lookup: Lookup | None
    transition: TransitionResult | None
    entry_id: str | None
    nfe: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def hit(self) -> bool:
        return self.transition is not None


class CachedGenerator:
    """Generate with a cross-prompt cache.

    Args:
        model: the prompt-conditioned flow model.
        encoder: text encoder of the similarity look-up.
        store: the cache store.
        grid: the sampler's grid (SD3's sigma grid); Euler steps.
        policy: similarity -> resume step and transition length.
        strategy: how a hit continues (default: direct switch).
        namespace: the tenant; look-ups and inserts stay inside it.
        guidance: classifier-free guidance scale (a finite number), part of the cache key.

    The model's conditions of the last prompts seen are kept (a hit needs the cached prompt's,
    which for SD3 means running the text encoders).
    """

    CONDITIONS_KEPT = 32

    def __init__(
        self,
        model: PromptModel,
        encoder: TextEncoder,
        store: CacheStore,
        grid: SigmaGrid,
        *,
        policy: CachePolicy = SEED_POLICY,
        strategy: Strategy = DirectSwitch(),
        namespace: str = "default",
        guidance: float = 0.0,
    ):
        check_dynamics("model", model)
        if not callable(getattr(model, "condition", None)) or not isinstance(getattr(model, "fingerprint", None), str):
            raise InvalidArgumentError("model", f"expected a PromptModel (velocity, condition and a fingerprint str), got {type(model).__name__}")
        for name, value, kind in (("encoder", encoder, TextEncoder), ("store", store, CacheStore), ("grid", grid, SigmaGrid),
                                  ("policy", policy, CachePolicy), ("strategy", strategy, Strategy)):
            if not isinstance(value, kind):
                raise InvalidArgumentError(name, f"expected a {kind.__name__}, got {type(value).__name__}")
        self.model, self.encoder, self.store, self.grid = model, encoder, store, grid
        self.policy, self.strategy = policy, strategy
        self.namespace, self.guidance = check_namespace("namespace", namespace), check_real("guidance", guidance)
        self._conditions: OrderedDict[str, Any] = OrderedDict()
        self._conditions_lock = threading.Lock()

    def condition(self, prompt: str) -> Any:
        """The model's condition of ``prompt``, memoised for the last few prompts."""
        with self._conditions_lock:
            if prompt in self._conditions:
                self._conditions.move_to_end(prompt)
                return self._conditions[prompt]
        cond = self.model.condition(prompt)
        with self._conditions_lock:
            self._conditions[prompt] = cond
            while len(self._conditions) > self.CONDITIONS_KEPT:
                self._conditions.popitem(last=False)
        return cond

    def key(self, noise: torch.Tensor) -> CacheKey:
        """The cache key of a run from ``noise`` with this model, these settings and this encoder."""
        return CacheKey.for_grid(
            self.model.fingerprint, self.grid, shape=tuple(noise.shape), dtype=str(noise.dtype).removeprefix("torch."),
            guidance=self.guidance, encoder=self.encoder.name,
        )

    def lookup(self, prompt: str, noise: torch.Tensor) -> Lookup:
        """Find the most similar cached prompt for a run shaped like ``noise``, and decide."""
        (prompt,) = check_prompts([prompt])
        noise = check_tensor("noise", noise, ndim_min=1)
        start = time.perf_counter()
        embedding = self.encoder.encode([prompt])[0]
        match = self.store.nearest(embedding, self.key(noise), namespace=self.namespace)
        decision = Decision(False, -1.0) if match is None else self.policy.decide(match.similarity, self.grid.steps)
        entry = None
        if decision.hit and decision.resume_step in match.steps:
            entry = self.store.get(match.entry_id, namespace=self.namespace)
        elif decision.hit:  # cached under another policy: its steps do not include this one
            decision = Decision(False, decision.similarity)
        return Lookup(prompt, embedding, match, decision, entry, time.perf_counter() - start)

    def request(self, lookup: Lookup, cond_b: Any) -> TransitionRequest:
        """The transition request of a hit (``cond_b``: the new prompt's condition)."""
        if not isinstance(lookup, Lookup) or not lookup.hit:
            raise InvalidArgumentError("lookup", f"expected the Lookup of a hit, got {lookup!r}")
        entry, d = lookup.entry, lookup.decision
        return TransitionRequest(
            self.model, entry.resume_point(d.resume_step), self.condition(entry.prompt), cond_b,
            horizon=d.transition_steps, similarity=max(-1.0, min(1.0, d.similarity)),
        )

    def generate(self, prompt: str, noise: torch.Tensor, *, generator_state: torch.Tensor | None = None, strategy: Strategy | None = None) -> GenerationResult:
        """Generate ``prompt``: continue a similar cached run on a hit, else from ``noise``
        (sigma = 1) and store the run (:meth:`fill`). ``generator_state``: the state of the
        generator that drew ``noise``, kept in the entry."""
        if strategy is not None and not isinstance(strategy, Strategy):
            raise InvalidArgumentError("strategy", f"expected a Strategy or None, got {type(strategy).__name__}")
        lookup = self.lookup(prompt, noise)
        if not lookup.hit:
            return self.fill(lookup.prompt, noise, generator_state=generator_state, embedding=lookup.embedding, lookup=lookup)
        result = (strategy or self.strategy).run(self.request(lookup, self.condition(lookup.prompt)))
        timings = {"lookup": lookup.seconds, **result.phases}
        return GenerationResult(result.final, lookup, result, None, dict(result.nfe), timings)

    def fill(
        self,
        prompt: str,
        noise: torch.Tensor,
        *,
        generator_state: torch.Tensor | None = None,
        steps: Iterable[int] | None = None,
        embedding: torch.Tensor | None = None,
        lookup: Lookup | None = None,
    ) -> GenerationResult:
        """Generate ``prompt`` from ``noise`` (sigma = 1) and store the run: its states at
        ``steps`` (grid steps below the last; default: the ones the policy resumes from), with its
        velocities there. ``embedding``: the prompt's, if already computed."""
        (prompt,) = check_prompts([prompt])
        noise = check_tensor("noise", noise, ndim_min=1)
        if steps is None:
            steps = self.policy.cached_steps(self.grid.steps)
        else:
            steps = sorted({check_int("steps", k, minimum=0, maximum=self.grid.steps - 1) for k in check_items("steps", steps, "grid step indices")})
        if not steps:
            raise InvalidArgumentError("steps", "expected at least one step to keep")
        model = CountedDynamics(self.model)
        start = time.perf_counter()
        run = integrate(model, noise, self.grid, self.condition(prompt), keep=steps, generator_state=generator_state)
        generated = time.perf_counter()
        embedding = self.encoder.encode([prompt])[0] if embedding is None else embedding
        entry = CacheEntry.from_trajectory(run, key=self.key(noise), prompt=prompt, embedding=embedding, steps=steps, namespace=self.namespace)
        entry_id = self.store.put(entry)
        timings = {"lookup": lookup.seconds} if lookup is not None else {}
        timings |= {"generation": generated - start, "store": time.perf_counter() - generated}
        return GenerationResult(run.final, lookup, None, entry_id, dict(model.counter.by_kind), timings)
