"""The scaling-law fit on synthetic runs drawn from a known L(N, D), its refusals, and the forecasts' algebra."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gptlab.core.scaling import Law, Point, ScalingError, check_grid, fit, non_embedding_params

# Hoffmann et al. 2022's fitted law (their eq. 10): the truth the synthetic runs are drawn from.
CHINCHILLA = Law(E=1.69, A=406.4, alpha=0.34, B=410.7, beta=0.28)


def grid(law: Law, *, sizes: int = 4, budgets: int = 4, noise: float = 0.0, seed: int = 0) -> list[Point]:
    rng = np.random.default_rng(seed)
    return [Point(N, D, float(law.loss(N, D)) * math.exp(rng.normal(0.0, noise) if noise else 0.0))
            for N in np.geomspace(1e6, 1e9, sizes) for D in np.geomspace(1e8, 1e11, budgets)]


def test_the_fit_recovers_the_law_its_runs_were_drawn_from():
    result = fit(grid(CHINCHILLA))
    for name, true in CHINCHILLA.to_dict().items():
        assert getattr(result.law, name) == pytest.approx(true, rel=1e-4), name
    assert result.rms_residual < 1e-6


def test_with_noisy_runs_the_fit_stays_close_and_its_intervals_cover_the_truth():
    """0.2% log-normal noise per run, as seed-to-seed variation of a final loss: exponents within 0.01,
    the irreducible loss within 2%, and the bootstrap's 95% intervals hold the true exponents."""
    result = fit(grid(CHINCHILLA, noise=0.002, seed=3), bootstrap=16, seed=0)
    assert result.law.alpha == pytest.approx(CHINCHILLA.alpha, abs=0.01)
    assert result.law.beta == pytest.approx(CHINCHILLA.beta, abs=0.01)
    assert result.law.E == pytest.approx(CHINCHILLA.E, rel=0.02)
    assert 0.0005 < result.rms_residual < 0.005  # the noise shows in the residuals: it is not fitted away
    intervals = result.parameter_intervals()
    assert len(result.bootstrap) + result.bootstrap_skipped == 16
    for name in ("alpha", "beta"):
        lo, hi = intervals[name]
        assert lo <= getattr(CHINCHILLA, name) <= hi, (name, lo, hi)


def test_one_model_size_is_refused_with_what_to_add():
    points = [Point(1e6, D, float(CHINCHILLA.loss(1e6, D))) for D in np.geomspace(1e8, 1e11, 6)]
    with pytest.raises(ScalingError, match=r"1 distinct model sizes .* need at least 3; add to scaling.sizes"):
        fit(points)


def test_a_narrow_grid_and_too_few_runs_are_refused():
    narrow = [Point(N, D, float(CHINCHILLA.loss(N, D))) for N in (1e6, 1.5e6, 2e6) for D in (1e8, 1e9, 1e10)]
    with pytest.raises(ScalingError, match=r"model sizes span only 2.00×"):
        check_grid(narrow)
    with pytest.raises(ScalingError, match=r"4 run\(s\) for 5 parameters"):
        check_grid(grid(CHINCHILLA, sizes=2, budgets=2))


def test_forecasts_invert_the_law():
    N = 1e9
    D = CHINCHILLA.tokens_for(2.2, N)
    assert float(CHINCHILLA.loss(N, D)) == pytest.approx(2.2, rel=1e-9)
    floor = CHINCHILLA.E + CHINCHILLA.A / N**CHINCHILLA.alpha
    assert CHINCHILLA.tokens_for(floor - 1e-3, N) == math.inf  # no amount of data gets this model there
    n_opt, d_opt, flops = CHINCHILLA.optimal_for_loss(2.2)
    assert float(CHINCHILLA.loss(n_opt, d_opt)) == pytest.approx(2.2, rel=1e-6)
    assert flops == pytest.approx(6 * n_opt * d_opt)
    # Compute-optimal: on the iso-FLOP line, moving N either way costs loss.
    for factor in (0.7, 1.4):
        assert CHINCHILLA.loss(n_opt * factor, d_opt / factor) > CHINCHILLA.loss(n_opt, d_opt)
    assert CHINCHILLA.optimal_for_loss(CHINCHILLA.E) == (math.inf, math.inf, math.inf)


@pytest.mark.parametrize("bias", [False, True])
def test_non_embedding_params_count_the_models_blocks(bias):
    from gptlab.core.model import GPT
    from gptlab.settings import ModelConfig

    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=50304, dropout=0.0, bias=bias)
    model = GPT(cfg)
    expected = model.num_params(non_embedding=True) - model.transformer.wte.weight.numel()
    assert non_embedding_params(n_layer=2, n_embd=16, bias=bias) == expected
