import math

import torch

from didi.diffusion import LogLinearSchedule, mask_tokens, masked_log_probs, nelbo_terms, sample_times, subs_log_probs


def test_schedule_formulas():
    s = LogLinearSchedule(1e-3)
    t = torch.tensor([0.1, 0.5, 1.0])
    assert torch.allclose(s.alpha(t), 1 - 0.999 * t)
    assert torch.allclose(s.sigma(t), -torch.log(s.alpha(t)))
    assert torch.allclose(s.loss_weight(t), -1 / t, rtol=1e-5)


def test_antithetic_times_are_stratified():
    g = torch.Generator().manual_seed(0)
    t = sample_times(8, 1e-3, True, g)
    r = ((t - 1e-3) / (1 - 1e-3)).double()
    strata = torch.sort(torch.floor(r * 8)).values
    assert torch.equal(strata, torch.arange(8, dtype=torch.float64))
    assert t.min() >= 1e-3 and t.max() <= 1


def test_subs_never_puts_mass_on_the_mask_and_carries_over():
    torch.manual_seed(0)
    V1, mask = 11, 10
    logits = torch.randn(4, 7, V1) * 5
    logits[..., mask] = 100.0  # even a huge mask logit gets no mass
    z = torch.randint(0, V1, (4, 7))
    z[0] = mask
    logp = subs_log_probs(logits, z, mask)
    assert torch.all(logp[..., mask].exp() == 0)
    assert torch.allclose(logp.exp().sum(-1), torch.ones(4, 7))
    unmasked = z != mask
    assert torch.all(logp[unmasked].argmax(-1) == z[unmasked])
    assert torch.all(logp[unmasked].exp().max(-1).values == 1)
    assert torch.all(masked_log_probs(logits.view(-1, V1), mask)[:, mask].exp() == 0)


def test_mask_tokens_rate():
    x = torch.zeros(200, 100, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    z = mask_tokens(x, torch.full((200,), 0.3), 5, torch.rand(200, 100, generator=g))
    assert abs((z == 5).float().mean().item() - 0.7) < 0.01


def test_nelbo_only_masked_positions_and_matches_formula():
    torch.manual_seed(0)
    V1, mask = 9, 8
    logits_table = torch.randn(V1)

    def model(z, sigma):
        return logits_table.expand(*z.shape, V1)

    x = torch.randint(0, 8, (3, 5))
    t = torch.tensor([0.2, 0.5, 0.9])
    noise = torch.rand(3, 5)
    terms = nelbo_terms(model, x, t, noise, LogLinearSchedule(), mask)
    alpha = 1 - 0.999 * t
    masked = noise >= alpha[:, None]
    assert torch.all(terms[~masked] == 0)
    logp = torch.log_softmax(torch.cat([logits_table[:8], torch.tensor([-1e6])]), -1)
    expected = (-logp[x]) * 0.999 / (0.999 * t[:, None])
    assert torch.allclose(terms[masked], expected[masked], rtol=1e-4)
    assert math.isfinite(terms.sum().item())
