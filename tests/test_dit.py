import torch

from didi.config import ModelConfig
from didi.nn.dit import DIT


def tiny(**kw):
    return ModelConfig(**{**dict(vocab_size=50, hidden_dim=32, cond_dim=16, n_blocks=2, n_heads=2, length=12), **kw})


def test_official_parameter_names_and_shapes():
    cfg = tiny()
    sd = DIT(cfg).state_dict()
    H, C, V = 32, 16, 50
    expect = {
        "vocab_embed.embedding": (V, H), "sigma_map.mlp.0.weight": (C, 256), "sigma_map.mlp.0.bias": (C,),
        "sigma_map.mlp.2.weight": (C, C), "rotary_emb.inv_freq": (H // 2 // 2,),
        "blocks.1.norm1.weight": (H,), "blocks.1.norm2.weight": (H,), "blocks.1.attn_qkv.weight": (3 * H, H),
        "blocks.1.attn_out.weight": (H, H), "blocks.1.mlp.0.weight": (4 * H, H), "blocks.1.mlp.0.bias": (4 * H,),
        "blocks.1.mlp.2.weight": (H, 4 * H), "blocks.1.adaLN_modulation.weight": (6 * H, C),
        "output_layer.norm_final.weight": (H,), "output_layer.adaLN_modulation.weight": (2 * H, C),
        "output_layer.linear.weight": (V, H), "output_layer.linear.bias": (V,),
    }
    for k, shape in expect.items():
        assert tuple(sd[k].shape) == shape, k
    assert not any("attn_qkv.bias" in k or "attn_out.bias" in k for k in sd)


def test_small_preset_has_169m_parameters():
    from didi.config import preset

    cfg = preset("small")
    cfg.model.vocab_size = 50258
    with torch.device("meta"):
        n = DIT(cfg.model).num_parameters()
    assert 165e6 < n < 175e6, n


def test_forward_shapes_soft_input_and_time_conditioning():
    torch.manual_seed(0)
    model = DIT(tiny()).eval()
    for p in model.parameters():  # zero-initialized layers would make every check trivial
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randint(0, 50, (3, 12))
    sigma = torch.rand(3)
    out = model(x, sigma)
    assert out.shape == (3, 12, 50)
    soft = torch.nn.functional.one_hot(x, 50).float()
    assert torch.allclose(model(soft, sigma), out, atol=1e-5)
    # not time-conditioned: sigma is ignored
    assert torch.allclose(model(x, torch.zeros(3)), out)
    tc = DIT(tiny(time_conditioning=True)).eval()
    tc.load_state_dict(model.state_dict())
    assert not torch.allclose(tc(x, torch.zeros(3)), tc(x, torch.ones(3)))


def test_attention_is_bidirectional():
    torch.manual_seed(0)
    model = DIT(tiny()).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randint(0, 50, (1, 12))
    y = x.clone()
    y[0, -1] = (y[0, -1] + 1) % 50
    assert not torch.allclose(model(x, torch.zeros(1))[0, 0], model(y, torch.zeros(1))[0, 0])
