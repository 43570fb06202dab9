import itertools

import pytest
import torch

import didi.sampling as sampling
from didi.sampling import ancestral_sample, nucleus_probs, sample_categorical

V1, MASK, L = 13, 12, 16


def random_denoiser(seed=0, record=None):
    """A denoiser whose logits depend on the input (so caching matters), recording what it is given."""
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(V1, V1, generator=g) * 2

    def f(z, sigma):
        if record is not None:
            record.append(z.clone())
        return table[z] + table[z.roll(1, 1)]
    return f


def test_draws_are_float64(monkeypatch):
    dtypes = []
    real_rand = torch.rand

    def spy(*args, **kw):
        dtypes.append(kw.get("dtype"))
        return real_rand(*args, **kw)

    monkeypatch.setattr(sampling.torch, "rand", spy)
    ancestral_sample(random_denoiser(), 2, L, 8, MASK, generator=torch.Generator().manual_seed(0))
    assert dtypes and all(d == torch.float64 for d in dtypes)
    assert nucleus_probs(torch.log_softmax(torch.randn(3, 5), -1)).dtype == torch.float64


def test_sample_categorical_matches_probabilities():
    p = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    draws = sample_categorical(p.expand(200_000, 4), g)
    freq = torch.bincount(draws, minlength=4).double() / 200_000
    assert torch.allclose(freq, p, atol=0.005)


def test_nucleus_keeps_top_mass():
    logp = torch.log(torch.tensor([[0.6, 0.25, 0.1, 0.05]]))
    probs = nucleus_probs(logp, top_p=0.8)
    assert torch.allclose(probs, torch.tensor([[0.6 / 0.85, 0.25 / 0.85, 0, 0]], dtype=torch.float64))
    hot = nucleus_probs(logp, temperature=0.5)
    assert hot[0, 0] > 0.6


def test_no_masks_left_and_carried_over_tokens_never_change():
    record = []
    out = ancestral_sample(random_denoiser(record=record), 3, L, 10, MASK, cache=False,
                           generator=torch.Generator().manual_seed(1))
    assert not (out.tokens == MASK).any()
    # each recorded input is a subset of rows; with cache=False and no finished rows early, rows line up
    full = [z for z in record if z.shape[0] == 3]
    for a, b in zip(full, full[1:]):
        keep = a != MASK
        assert torch.equal(b[keep], a[keep])
    keep = full[-1] != MASK
    assert torch.equal(out.tokens[keep], full[-1][keep])


def test_nfe_counts_are_exact():
    calls = torch.zeros(1, dtype=torch.long)

    def counting(z, sigma):
        calls[0] += z.shape[0]  # one evaluation per row passed in
        return random_denoiser()(z, sigma)

    for cache in (False, True):
        calls.zero_()
        out = ancestral_sample(counting, 4, L, 32, MASK, cache=cache, generator=torch.Generator().manual_seed(2))
        assert int(out.nfe.sum()) == int(calls[0])
        assert int(out.nfe.max()) <= 32 + 1
    # without caching, one step means exactly one evaluation (plus possibly the final noise removal)
    out = ancestral_sample(counting, 4, L, 1, MASK, cache=False, generator=torch.Generator().manual_seed(2))
    assert set(out.nfe.tolist()) <= {1, 2}


def test_cache_bounds_nfe_by_length_and_keeps_samples_identical():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    cached = ancestral_sample(random_denoiser(), 4, L, 1024, MASK, cache=True, generator=g1)
    plain = ancestral_sample(random_denoiser(), 4, L, 1024, MASK, cache=False, generator=g2)
    assert torch.equal(cached.tokens, plain.tokens)  # a time-agnostic denoiser: caching changes nothing
    assert int(cached.nfe.max()) <= L + 1
    assert int(plain.nfe.min()) > L + 1


def test_clamped_tokens_stay():
    clamp = torch.full((2, L), -1)
    clamp[:, :3] = torch.tensor([1, 2, 3])
    clamp[:, -2:] = torch.tensor([4, 5])
    clamp[:, 8] = 7
    out = ancestral_sample(random_denoiser(), 2, L, 8, MASK, clamp=clamp, generator=torch.Generator().manual_seed(0))
    given = clamp >= 0
    assert torch.equal(out.tokens[given], clamp[given])


def test_seeds_reproduce_and_differ():
    a = ancestral_sample(random_denoiser(), 2, L, 8, MASK, generator=torch.Generator().manual_seed(5))
    b = ancestral_sample(random_denoiser(), 2, L, 8, MASK, generator=torch.Generator().manual_seed(5))
    c = ancestral_sample(random_denoiser(), 2, L, 8, MASK, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, c.tokens)


def test_two_stage_unmask_step_has_the_law_of_the_full_step_distribution():
    from didi.sampling import step_probs, unmask_step

    g = torch.Generator().manual_seed(0)
    V, mask_id = 5, 5
    logp = torch.log_softmax(torch.tensor([[1.0, 0.5, -1.0, 2.0, 0.0, float("-inf")]]), -1).double()
    a_t, a_s = 0.3, 0.6
    n = 200_000
    draws = unmask_step(logp.expand(n, V + 1), a_t, a_s, mask_id, generator=g)
    freq = torch.bincount(draws, minlength=V + 1).double() / n
    q = step_probs(logp, a_t, a_s, mask_id)[0]
    assert torch.allclose(freq, q / q.sum(), atol=4e-3)
    with_top_p = unmask_step(logp.expand(n, V + 1), a_t, a_s, mask_id, top_p=0.5, generator=g)
    assert set(with_top_p.unique().tolist()) == {3, mask_id}  # token 3 alone holds half the mass


def test_time_grid_power():
    assert torch.equal(sampling.time_grid(8, 1e-5), torch.linspace(1.0, 1e-5, 9, dtype=torch.float64))
    g = sampling.time_grid(4, 1e-3, 3.0)
    assert g.dtype == torch.float64 and g[0] == 1.0 and abs(float(g[-1]) - 1e-3) < 1e-15
    assert (g[1:] < g[:-1]).all()
    # expected share revealed by the first step: 1 - t_1 (log-linear, alpha = 1 - t): (1/4)^3 of the tokens
    assert abs((1 - float(g[1])) / (1 - 1e-3) - 1 / 64) < 1e-12
    with pytest.raises(ValueError, match="grid power"):
        sampling.time_grid(4, 1e-3, 0.0)


def test_grid_power_moves_reveals_to_the_last_steps():
    """With p = 3, 4 steps reveal 1/64, 7/64, 19/64, 37/64 of the tokens in expectation; p = 1 a quarter each."""
    seen = {}
    for p in (1.0, 3.0):
        record = []
        ancestral_sample(random_denoiser(record=record), 64, L, 4, MASK, cache=False, grid_power=p,
                         generator=torch.Generator().manual_seed(3))
        masked = [float((z == MASK).float().mean()) for z in record]  # share masked before each step
        seen[p] = masked[1] if len(masked) > 1 else 0.0
    assert abs(seen[1.0] - 0.75) < 0.05 and abs(seen[3.0] - (1 - 1 / 64)) < 0.02


def test_draw_tokens_has_the_law_of_the_exponential_race_and_never_draws_the_mask():
    from didi.diffusion import masked_log_probs
    from didi.sampling import draw_tokens

    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([[2.0, 0.5, -1.0, 3.0, 0.0, -30.0]])  # column 3 is the mask: excluded however large
    n = 400_000
    for temperature, top_p, method in ((1.0, 1.0, "inverse_cdf"), (0.7, 1.0, "inverse_cdf"), (1.0, 0.8, "inverse_cdf"),
                                       (0.7, 1.0, "race"), (1.0, 0.8, "race")):
        want = nucleus_probs(masked_log_probs(logits, 3), temperature, top_p)[0]
        draws = draw_tokens(logits.expand(n, 6), 3, temperature, top_p, g, method)
        freq = torch.bincount(draws, minlength=6).double() / n
        assert freq[3] == 0 and (freq[want == 0] == 0).all()
        assert torch.allclose(freq, want, atol=0.004), (temperature, top_p, method, freq, want)
    # a token of probability 0 is never drawn, even at the ends of the row
    zero_ends = torch.tensor([[-1e6, 0.0, 0.0, -1e6]]).expand(10_000, 4)
    assert set(draw_tokens(zero_ends, None, generator=g).tolist()) == {1, 2}
    # the input is not modified, float64 inputs included
    x = torch.randn(5, 7, dtype=torch.float64)
    y = x.clone()
    draw_tokens(x, 2, 0.5, generator=g)
    assert torch.equal(x, y)


def test_sampling_builds_no_autograd_graph():
    seen = []
    base = random_denoiser()

    def f(z, sigma):
        seen.append(torch.is_grad_enabled())
        return base(z, sigma)
    ancestral_sample(f, 2, L, 4, MASK, generator=torch.Generator().manual_seed(0))
    assert seen and not any(seen)


def test_sampled_tokens_are_ordinary_tensors_usable_in_autograd():
    out = ancestral_sample(random_denoiser(), 2, L, 4, MASK, generator=torch.Generator().manual_seed(0))
    assert not out.tokens.is_inference() and not out.nfe.is_inference()
    emb = torch.nn.Embedding(V1, 3)
    emb(out.tokens).sum().backward()  # an inference tensor could not be saved for backward here
    assert emb.weight.grad is not None


def test_a_model_sampled_first_still_trains():
    """Sampling runs under inference_mode; what a module caches there (the rotary tables) must not be an inference
    tensor, or the next training forward fails to save it for backward."""
    from didi.config import RunConfig
    from didi.nn.dit import DIT

    cfg = RunConfig().model
    cfg.vocab_size, cfg.length, cfg.hidden_dim, cfg.n_heads, cfg.n_blocks, cfg.cond_dim = V1, L, 32, 2, 1, 16
    model = DIT(cfg)
    ancestral_sample(lambda z, s: model(z, s), 2, L, 4, MASK, generator=torch.Generator().manual_seed(0))
    model(torch.zeros(2, L, dtype=torch.long), torch.zeros(2)).sum().backward()
    assert model.vocab_embed.embedding.grad is not None


def random_dit(seed=0, time_conditioning=False):
    """A small DiT with every weight random (the output layer is zero at init, which would hide any error)."""
    from didi.config import RunConfig
    from didi.nn.dit import DIT

    cfg = RunConfig().model
    cfg.vocab_size, cfg.length, cfg.hidden_dim, cfg.n_heads, cfg.n_blocks, cfg.cond_dim = V1, L, 32, 2, 1, 16
    cfg.time_conditioning = time_conditioning
    torch.manual_seed(seed)
    model = DIT(cfg)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return model.eval()


@pytest.mark.parametrize("time_conditioning", [False, True])
def test_split_denoiser_gives_the_same_samples_and_runs_the_output_layer_once_per_position(time_conditioning):
    model = random_dit(time_conditioning=time_conditioning)  # time-conditioned: each row has its own c
    split = sampling.SplitDenoiser(model)
    z = torch.randint(0, V1, (3, L))
    sigma = torch.rand(3)
    with torch.no_grad():
        assert torch.allclose(split(z, sigma), model(z, sigma), atol=1e-6)
        h, c = split.features(z, sigma)  # the head on chosen positions equals the full output there
        assert time_conditioning == bool((c[0] != c[1]).any())
        where = torch.rand(3, L) < 0.3
        assert torch.allclose(split.head(h[where], c[where.nonzero(as_tuple=True)[0]]), model(z, sigma)[where],
                              atol=1e-5)
    heads = []
    head = split.head
    split.head = lambda h, c: heads.append(h.shape[0]) or head(h, c)
    clamp = torch.full((4, L), -1)
    clamp[:, :3] = 5  # a prefix: never drawn, so never sent through the output layer
    for steps, final in ((4, "argmax"), (64, "sample")):  # 64 steps: rows change on different steps (partial updates)
        kw = dict(clamp=clamp, final_step=final, grid_power=2.0, cache=not time_conditioning)
        full = ancestral_sample(lambda z, s: model(z, s), 4, L, steps, MASK, generator=torch.Generator().manual_seed(1),
                                **kw)
        heads.clear()
        out = ancestral_sample(split, 4, L, steps, MASK, generator=torch.Generator().manual_seed(1), **kw)
        assert torch.equal(out.tokens, full.tokens) and torch.equal(out.nfe, full.nfe)
        assert sum(heads) == 4 * (L - 3)  # each free position: one output-layer row, when it is drawn
        assert (out.tokens != MASK).all() and (out.tokens[:, :3] == 5).all()


def test_split_denoiser_never_draws_a_blocked_token():
    split = sampling.SplitDenoiser(random_dit(1), blocked=[2, 7])
    out = ancestral_sample(split, 8, L, 4, MASK, final_step="sample", generator=torch.Generator().manual_seed(0))
    assert not torch.isin(out.tokens, torch.tensor([2, 7, MASK])).any()


def test_blocked_draws_equal_one_inverse_cdf_over_the_whole_matrix(monkeypatch):
    """draw_tokens searches each block of rows while it is in cache; with the same generator it must draw what one
    `inverse_cdf` over the whole float64 matrix draws, rows that need a shift (logits beyond +-700) included."""
    from didi.diffusion import masked_log_probs
    from didi.sampling import draw_tokens, inverse_cdf

    far = torch.randn(50, 9) * 3
    far[7] += 900.0  # exp would overflow: shifted
    far[8] -= 900.0  # exp would underflow the whole row: shifted
    half = torch.randn(50, 9) * 3
    half[9] += 500.0  # in range at temperature 1, not at 0.5
    half[10] -= 500.0
    for block_rows, temperature, logits in itertools.product((1, 3, 50), (1.0, 0.5), (far, half)):
        monkeypatch.setattr(sampling, "DRAW_BLOCK_BYTES", 8 * 9 * block_rows)
        got = draw_tokens(logits, 4, temperature, generator=torch.Generator().manual_seed(3))
        p = masked_log_probs(logits.double() / temperature, 4).exp()
        want = inverse_cdf(p, torch.Generator().manual_seed(3))
        assert torch.equal(got, want), (block_rows, temperature)
        assert not (got == 4).any()
