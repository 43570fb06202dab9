import math

import pytest
import torch

from didi.errors import DidiError
from didi.prior import NoisePrior, fit_mixture, fit_prior, load_prior


def test_mixture_fit_recovers_two_separated_clusters():
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(300, 2, generator=gen, dtype=torch.float64) * 0.5 - 4,
                   torch.randn(100, 2, generator=gen, dtype=torch.float64) * 0.5 + 4])
    means, var, logw, loglik = fit_mixture(x, 2, 30, torch.Generator().manual_seed(1))
    order = means[:, 0].argsort()
    assert torch.allclose(means[order], torch.tensor([[-4.0, -4.0], [4.0, 4.0]], dtype=torch.float64), atol=0.2)
    assert torch.allclose(logw[order].exp(), torch.tensor([0.75, 0.25], dtype=torch.float64), atol=0.02)
    assert torch.allclose(var, torch.full_like(var, 0.25), atol=0.06)
    # two unit-variance-0.25 Gaussians in 2-D: log-likelihood about -2 * 0.5 * (1 + log(2 pi 0.25)) + sum w log w
    want = -(1 + math.log(2 * math.pi * 0.25)) + (0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert loglik == pytest.approx(want, abs=0.1)
    with pytest.raises(DidiError, match="needs at least 5 points"):
        fit_mixture(x[:3], 5)


def test_prior_draws_follow_the_weights_and_components_and_one_component_is_a_gaussian(tmp_path):
    means = torch.tensor([[-10.0, 0.0], [10.0, 5.0]], dtype=torch.float64)
    prior = NoisePrior(means, torch.tensor([[0.01, 0.01], [4.0, 0.25]], dtype=torch.float64),
                       torch.tensor([0.2, 0.8], dtype=torch.float64).log(), {"kind": "test"})
    x = prior.sample(20000, torch.Generator().manual_seed(0))
    assert x.dtype == torch.float32 and x.shape == (20000, 2)
    left = x[:, 0] < 0
    assert left.double().mean().item() == pytest.approx(0.2, abs=0.01)
    assert torch.allclose(x[~left].double().var(0), torch.tensor([4.0, 0.25], dtype=torch.float64), rtol=0.05)
    assert torch.allclose(x[left].double().mean(0), means[0], atol=0.01)
    # same generator state, same draws
    a, b = (prior.sample(5, torch.Generator().manual_seed(3)) for _ in range(2))
    assert torch.equal(a, b)
    # save / load keeps every tensor and the description
    prior.info |= {"components": 2, "fit_loglik": -1.5, "encoder": "123"}
    prior.save(tmp_path)
    back = load_prior(tmp_path)
    assert back.info == {"kind": "test", "components": 2, "fit_loglik": -1.5, "encoder": "123"}
    assert torch.allclose(back.means.double(), means) and torch.allclose(back.log_weights.double(), prior.log_weights)
    assert load_prior(tmp_path / "nothing") is None


def test_fit_prior_exemplar_is_the_aggregate_posterior_and_em_fits_the_codes():
    gen = torch.Generator().manual_seed(0)
    mu = torch.cat([torch.full((50, 2), -3.0), torch.full((50, 2), 3.0)]) + 0.1 * torch.randn(100, 2, generator=gen)
    logvar = torch.full((100, 2), math.log(0.04))
    ex = fit_prior(mu, logvar, 0)
    assert ex.means.shape == (100, 2) and torch.allclose(ex.variances, torch.full((100, 2), 0.04, dtype=torch.float64))
    draws = ex.sample(4000, torch.Generator().manual_seed(0))  # the aggregate posterior: half the codes near each mode
    assert (draws[:, 0] < 0).double().mean().item() == pytest.approx(0.5, abs=0.03)
    em = fit_prior(mu, logvar, 2, seed=1)
    assert sorted(round(v) for v in em.means[:, 0].tolist()) == [-3, 3]
    assert em.info["components"] == 2 and em.info["texts"] == 100 and "fit_loglik" in em.info
    with pytest.raises(DidiError, match=">= 0"):
        fit_prior(mu, logvar, -1)
