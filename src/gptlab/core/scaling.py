"""Scaling laws: L(N, D) = E + A/N^α + B/D^β fitted to the final losses of a grid of runs, and what it predicts.

N is the number of non-embedding parameters, D the number of training tokens (Kaplan et al. 2020). The fit is
Hoffmann et al. 2022's approach 3 as Besiroglu et al. 2024 replicate it: minimise the Huber loss (δ = 1e-3)
between the predicted and the observed *log* loss, with the prediction written in log space,

    log L̂ = logsumexp(e, a − α·log N, b − β·log D),   E = exp(e), A = exp(a), B = exp(b),

by L-BFGS-B from the best points of a grid of initialisations (a single start lands in local minima: the
objective is not convex). Intervals come from a bootstrap over runs. numpy and scipy only.

The fit refuses what it cannot do: fewer than three distinct sizes or budgets (with two, E, A and α are not
separately determined), or a grid spanning less than :data:`MIN_SPAN` in N or D. Every forecast carries how
far beyond the fitted grid it reaches, so an extrapolation is never silent.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.optimize import brentq, minimize

from gptlab.errors import GptlabError

HUBER_DELTA = 1e-3  # Hoffmann et al. 2022, §D.2
MIN_DISTINCT = 3  # sizes and budgets: the fewest that determine (E, A, α) and (E, B, β) at all
MIN_SPAN = 3.0  # max/min of N and of D: a narrower grid fits noise, not a power law
# Hoffmann et al.'s grid of initialisations (§D.2): α, β ∈ {0, 0.5, …, 2}, e ∈ {−1, −0.5, …, 1}, a, b ∈ {0, 5, …, 25}
GRID = {"e": np.arange(-1.0, 1.01, 0.5), "a": np.arange(0.0, 25.1, 5.0), "alpha": np.arange(0.0, 2.01, 0.5),
        "b": np.arange(0.0, 25.1, 5.0), "beta": np.arange(0.0, 2.01, 0.5)}
STARTS = 4  # L-BFGS-B runs from the best grid points
EXPONENT_BOUNDS = (0.0, 4.0)


class ScalingError(GptlabError, ValueError):
    """A grid of runs the law cannot be fitted to (or trusted on); the message says what to add."""


def non_embedding_params(*, n_layer: int, n_embd: int, bias: bool) -> int:
    """Parameters of the transformer blocks and the final LayerNorm: gptlab's GPT without token and position
    embeddings (the tied lm_head is the token embedding). Per block: 12·d² in the matmuls, 2·d of LayerNorm
    gains, and 11·d of biases when ``bias`` (LayerNorms 2·d, attention 3·d + d, MLP 4·d + d)."""
    per_block = 12 * n_embd * n_embd + 2 * n_embd + (11 * n_embd if bias else 0)
    return n_layer * per_block + n_embd * (2 if bias else 1)


@dataclass(frozen=True)
class Law:
    """L(N, D) = E + A/N^α + B/D^β in nats per token."""

    E: float
    A: float
    alpha: float
    B: float
    beta: float

    def loss(self, N: float | np.ndarray, D: float | np.ndarray) -> float | np.ndarray:
        return self.E + self.A / np.power(N, self.alpha) + self.B / np.power(D, self.beta)

    def tokens_for(self, loss: float, N: float) -> float:
        """Training tokens a model of N non-embedding parameters needs to reach ``loss``; inf when even infinite
        data cannot (its floor E + A/N^α is at or above ``loss``)."""
        gap = loss - self.E - self.A / N**self.alpha
        return math.inf if gap <= 0 else (self.B / gap) ** (1.0 / self.beta)

    def compute_optimal(self, flops: float) -> tuple[float, float]:
        """(N, D) of least loss for ``flops`` = 6ND (Hoffmann et al. 2022, eq. 4)."""
        a, b = self.alpha, self.beta
        G = (a * self.A / (b * self.B)) ** (1.0 / (a + b))
        return G * (flops / 6.0) ** (b / (a + b)), (flops / 6.0) ** (a / (a + b)) / G

    def optimal_for_loss(self, loss: float) -> tuple[float, float, float]:
        """The compute-optimal (N, D, FLOPs = 6ND) that reaches ``loss``; all inf when ``loss`` ≤ E."""
        if loss <= self.E:
            return math.inf, math.inf, math.inf

        def excess(log_c: float) -> float:
            return float(self.loss(*self.compute_optimal(math.exp(log_c)))) - loss

        lo, hi = math.log(1e3), math.log(1e40)
        if excess(lo) < 0:  # reached with almost no compute
            lo = math.log(1e-6)
        if excess(hi) > 0:
            return math.inf, math.inf, math.inf
        log_c = brentq(excess, lo, hi, xtol=1e-10)
        N, D = self.compute_optimal(math.exp(log_c))
        return N, D, 6.0 * N * D

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class Point:
    """One finished run: its non-embedding parameters, training tokens and final loss (and a label)."""

    N: float
    D: float
    loss: float
    label: str = ""


@dataclass
class Fit:
    law: Law
    points: list[Point]
    residuals: list[float]
    """log(observed) − log(fitted) per point: a relative error (0.01 ≈ the law is 1% below the run)."""
    objective: float
    starts: int
    bootstrap: list[Law] = field(default_factory=list)
    bootstrap_skipped: int = 0
    """Resamples left out because they held fewer than MIN_DISTINCT sizes or budgets."""

    @property
    def rms_residual(self) -> float:
        return float(np.sqrt(np.mean(np.square(self.residuals))))

    @property
    def n_range(self) -> tuple[float, float]:
        return min(p.N for p in self.points), max(p.N for p in self.points)

    @property
    def d_range(self) -> tuple[float, float]:
        return min(p.D for p in self.points), max(p.D for p in self.points)

    def beyond(self, *, N: float | None = None, D: float | None = None) -> float:
        """How far (N, D) lies outside the fitted grid: 1 inside it, 10 for ten times past its edge."""
        factor = 1.0
        for value, (lo, hi) in ((N, self.n_range), (D, self.d_range)):
            if value is not None and math.isfinite(value) and value > 0:
                factor = max(factor, value / hi, lo / value)
        return factor

    def interval(self, fn, level: float = 0.95) -> tuple[float, float] | None:
        """The bootstrap interval of ``fn(law)`` (None without bootstrap fits); inf values count as inf."""
        if not self.bootstrap:
            return None
        values = np.array([fn(law) for law in self.bootstrap], dtype=float)
        values = np.where(np.isnan(values), np.inf, values)
        # No interpolation between order statistics: an inf ("never reached") among them would make a nan.
        lo = np.percentile(values, 50 * (1 - level), method="lower")
        hi = np.percentile(values, 50 * (1 + level), method="higher")
        return float(lo), float(hi)

    def parameter_intervals(self) -> dict[str, tuple[float, float] | None]:
        return {name: self.interval(lambda law, n=name: getattr(law, n)) for name in Law.__dataclass_fields__}


def check_grid(points: Sequence[Point]) -> None:
    """Raise :class:`ScalingError` when the runs cannot determine the law: too few, too few distinct sizes or
    budgets, or too narrow a range of either."""
    problems = []
    bad = [p.label or f"N={p.N:g}, D={p.D:g}" for p in points
           if not (p.N > 0 and p.D > 0 and math.isfinite(p.loss) and p.loss > 0)]
    if bad:
        problems.append(f"runs with a non-positive size or budget or a non-finite loss: {', '.join(bad)}")
    sizes, budgets = sorted({p.N for p in points}), sorted({p.D for p in points})
    if len(points) <= 5:
        problems.append(f"{len(points)} run(s) for 5 parameters (E, A, α, B, β): need at least 6")
    for what, values, key in (("model sizes", sizes, "scaling.sizes"), ("token budgets", budgets, "scaling.max_iters")):
        if len(values) < MIN_DISTINCT:
            problems.append(f"{len(values)} distinct {what} ({', '.join(f'{v:.3g}' for v in values)}): need at least "
                            f"{MIN_DISTINCT}; add to {key}")
        elif values[-1] / values[0] < MIN_SPAN:
            problems.append(f"{what} span only {values[-1] / values[0]:.2f}× ({values[0]:.3g} to {values[-1]:.3g}): "
                            f"need at least {MIN_SPAN:g}×; widen {key}")
    if problems:
        raise ScalingError("cannot fit L(N, D) = E + A/N^α + B/D^β to these runs:\n"
                           + "\n".join(f"  - {p}" for p in problems))


def _lse(terms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """logsumexp over axis 0 and its softmax weights (plain numpy: scipy's is ~10× slower on a few points, and
    the objective runs thousands of times per fit)."""
    top = terms.max(axis=0)
    exp = np.exp(terms - top)
    total = exp.sum(axis=0)
    return top + np.log(total), exp / total


def _arrays(points: Sequence[Point]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (np.log([p.N for p in points]), np.log([p.D for p in points]), np.log([p.loss for p in points]))


def _predict(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray) -> np.ndarray:
    e, a, alpha, b, beta = theta
    terms = np.stack([np.full_like(log_n, e), a - alpha * log_n, b - beta * log_d])  # (3, points)
    return _lse(terms)[0]


def _objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray) -> tuple[float, np.ndarray]:
    """Sum of Huber losses of the log-loss residuals, over δ² so that L-BFGS-B's tolerances see O(1) values;
    and its gradient."""
    e, a, alpha, b, beta = theta
    terms = np.stack([np.full_like(log_n, e), a - alpha * log_n, b - beta * log_d])  # (3, points)
    pred, w = _lse(terms)  # w: d logsumexp / d term
    r = pred - log_l
    small = np.abs(r) <= HUBER_DELTA
    value = np.where(small, 0.5 * r**2, HUBER_DELTA * (np.abs(r) - 0.5 * HUBER_DELTA)).sum() / HUBER_DELTA**2
    dr = np.where(small, r, HUBER_DELTA * np.sign(r)) / HUBER_DELTA**2  # d value / d r
    grad = np.array([(dr * w[0]).sum(), (dr * w[1]).sum(), -(dr * w[1] * log_n).sum(),
                     (dr * w[2]).sum(), -(dr * w[2] * log_d).sum()])
    return float(value), grad


def _grid_starts(log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray, count: int) -> list[np.ndarray]:
    """The ``count`` grid points with the lowest objective (evaluated all at once)."""
    grid = np.array(list(itertools.product(*GRID.values())))  # (4500, 5)
    e, a, alpha, b, beta = (grid[:, i : i + 1] for i in range(5))
    terms = np.stack([np.broadcast_to(e, (len(grid), len(log_n))), a - alpha * log_n, b - beta * log_d])
    r = np.abs(_lse(terms)[0] - log_l)
    huber = np.where(r <= HUBER_DELTA, 0.5 * r**2, HUBER_DELTA * (r - 0.5 * HUBER_DELTA)).sum(axis=1)
    return [grid[i] for i in np.argsort(huber)[:count]]


def _minimise(starts: list[np.ndarray], log_n: np.ndarray, log_d: np.ndarray,
              log_l: np.ndarray) -> tuple[np.ndarray, float]:
    bounds = [(None, None), (None, None), EXPONENT_BOUNDS, (None, None), EXPONENT_BOUNDS]
    best, best_value = None, math.inf
    for start in starts:
        result = minimize(_objective, start, args=(log_n, log_d, log_l), jac=True, method="L-BFGS-B",
                          bounds=bounds, options={"maxiter": 2000, "ftol": 1e-12, "gtol": 1e-9})
        if result.fun < best_value:
            best, best_value = result.x, float(result.fun)
    assert best is not None
    return best, best_value


def _law(theta: np.ndarray) -> Law:
    e, a, alpha, b, beta = (float(v) for v in theta)
    return Law(E=math.exp(e), A=math.exp(a), alpha=alpha, B=math.exp(b), beta=beta)


def fit(points: Sequence[Point], *, bootstrap: int = 0, seed: int = 0) -> Fit:
    """Fit the law to ``points`` (see the module docstring); ``bootstrap`` resamples of the runs, with
    replacement, refit for intervals. Raises :class:`ScalingError` for a grid that cannot determine it."""
    points = list(points)
    check_grid(points)
    log_n, log_d, log_l = _arrays(points)
    starts = _grid_starts(log_n, log_d, log_l, STARTS)
    theta, value = _minimise(starts, log_n, log_d, log_l)
    residuals = (log_l - _predict(theta, log_n, log_d)).tolist()
    result = Fit(_law(theta), points, residuals, value / len(points), len(starts))
    rng = np.random.default_rng(seed)
    for _ in range(bootstrap):
        pick = rng.integers(0, len(points), len(points))
        sample = [points[i] for i in pick]
        if len({p.N for p in sample}) < MIN_DISTINCT or len({p.D for p in sample}) < MIN_DISTINCT:
            result.bootstrap_skipped += 1
            continue
        n, d, l_ = _arrays(sample)
        boot, _ = _minimise([theta], n, d, l_)  # from the full fit: a resample's optimum lies near it
        result.bootstrap.append(_law(boot))
    return result
