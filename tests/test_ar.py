"""Tests for the autoregressive baseline: causality, KV-cache equivalence, sampling constraints, loss."""

import pytest
import torch

from didi.config import ModelConfig
from didi.nn.ar import CausalTransformer, ar_loss, generate

V, BOS, MASK = 20, 0, 19


def tiny(**kw) -> CausalTransformer:
    torch.manual_seed(0)
    cfg = ModelConfig(**{**dict(arch="ar", vocab_size=V, hidden_dim=32, n_blocks=2, n_heads=2, length=10), **kw})
    return CausalTransformer(cfg).eval()


def test_shapes_and_sigma_ignored():
    model = tiny()
    x = torch.randint(0, V - 1, (3, 7))
    out = model(x)
    assert out.shape == (3, 7, V)
    assert torch.equal(out, model(x, torch.rand(3)))
    assert model.num_parameters() == sum(p.numel() for p in model.parameters())


def test_causality():
    model = tiny()
    x = torch.randint(0, V - 1, (2, 9))
    y = x.clone()
    y[:, 6] = (y[:, 6] + 1) % (V - 1)
    a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_forward_cached_matches_full_forward():
    model = tiny()
    x = torch.randint(0, V - 1, (2, 11))  # length + 1: BOS seed plus a full sequence
    full = model(x)
    # a 4-token chunk, then single tokens, then a 3-token chunk after cached keys (offset causal mask)
    logits, cache = model.forward_cached(x[:, :4], None, 0)
    parts = [logits]
    for t in range(4, 8):
        logits, cache = model.forward_cached(x[:, t:t + 1], cache, t)
        parts.append(logits)
    logits, cache = model.forward_cached(x[:, 8:], cache, 8)
    parts.append(logits)
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError):
        model.forward_cached(x[:, :1], cache, 11)  # past capacity


@pytest.mark.parametrize("top_p", [1.0, 0.8])
def test_cached_sampling_equals_uncached(top_p):
    model = tiny()
    kw = dict(bos_id=BOS, mask_id=MASK, temperature=0.9, top_p=top_p)
    a, na = generate(model, 4, 10, generator=torch.Generator().manual_seed(3), use_cache=True, **kw)
    b, nb = generate(model, 4, 10, generator=torch.Generator().manual_seed(3), use_cache=False, **kw)
    assert a.shape == (4, 10)
    assert torch.equal(a, b)
    assert na == nb == 10


def test_never_emits_mask():
    model = tiny()
    forward_cached = model.forward_cached

    def mask_favoured(*a, **k):  # make the mask token overwhelmingly likely: it must still never be drawn
        logits, cache = forward_cached(*a, **k)
        logits[..., MASK] += 100.0
        return logits, cache

    model.forward_cached = mask_favoured
    tokens, _ = generate(model, 8, 10, bos_id=BOS, mask_id=MASK, generator=torch.Generator().manual_seed(0))
    assert not (tokens == MASK).any()
    assert tokens.min() >= 0 and tokens.max() < V


def test_prefix_kept_and_call_count():
    model = tiny()
    prefix = torch.tensor([[5, 6, 7], [8, 9, 10]])
    for use_cache in (True, False):
        tokens, calls = generate(model, 2, 10, bos_id=BOS, mask_id=MASK, prefix=prefix, use_cache=use_cache,
                                 generator=torch.Generator().manual_seed(1))
        assert torch.equal(tokens[:, :3], prefix)
        assert calls == 10 - 3
    full, calls = generate(model, 2, 10, bos_id=BOS, mask_id=MASK, prefix=torch.randint(1, V - 1, (2, 10)))
    assert calls == 0 and full.shape == (2, 10)


def test_call_count_matches_actual_forward_calls():
    model = tiny()
    counts = {"full": 0, "cached": 0}
    forward, forward_cached = model.forward, model.forward_cached

    def counting_forward(*a, **k):
        counts["full"] += 1
        return forward(*a, **k)

    def counting_cached(*a, **k):
        counts["cached"] += 1
        return forward_cached(*a, **k)

    model.forward, model.forward_cached = counting_forward, counting_cached
    _, calls = generate(model, 2, 8, bos_id=BOS, mask_id=MASK, prefix=torch.tensor([3, 4]), use_cache=True)
    assert calls == counts["cached"] == 6 and counts["full"] == 0
    _, calls = generate(model, 2, 8, bos_id=BOS, mask_id=MASK, use_cache=False)
    assert calls == counts["full"] == 8


def test_ar_loss_decreases():
    model = tiny().train()
    x = torch.tensor([[1, 2, 3, 4] * 3, [5, 6, 7, 8] * 3])[:, :10]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = ar_loss(model, x, BOS).item()
    assert abs(first - torch.log(torch.tensor(float(V))).item()) < 0.5  # near-uniform at init
    for _ in range(50):
        loss = ar_loss(model, x, BOS)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert ar_loss(model, x, BOS).item() < 0.5 * first


def test_text_rows_padding_after_the_closing_eos_is_not_scored():
    """Rows are EOS, text, EOS, EOS padding: with end_id the loss scores the text and its closing EOS only (not the
    anchor, not the padding), so an AR model never learns EOS as a text's first word."""
    import torch.nn.functional as F

    model = tiny().eval()
    eos = BOS
    x = torch.tensor([[eos, 3, 4, 5, eos, eos, eos, eos], [eos, 6, 7, eos, eos, eos, eos, eos]])
    y = x.clone()
    y[0, 5:], y[1, 4:] = 9, 2  # other padding: not scored, so the same loss
    assert torch.allclose(ar_loss(model, x, BOS, end_id=eos), ar_loss(model, y, BOS, end_id=eos))
    inp = torch.cat([torch.full_like(x[:, :1], BOS), x[:, :-1]], 1)
    nll = F.cross_entropy(model(inp).float().transpose(1, 2), x, reduction="none")
    scored = torch.tensor([[0, 1, 1, 1, 1, 0, 0, 0], [0, 1, 1, 1, 0, 0, 0, 0]], dtype=torch.bool)  # not the anchor
    assert torch.allclose(ar_loss(model, x, BOS, end_id=eos), nll[scored].mean())
    assert not torch.allclose(ar_loss(model, x, BOS), nll[scored].mean())
