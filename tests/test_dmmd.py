"""D-MMD on toy problems where the laws are known: the generator's update direction, the auxiliary's fixed point,
and the whole step lowering the teacher-auxiliary gap."""

import pytest
import torch

from didi.config import RunConfig
from didi.diffusion import masked_log_probs
from didi.distill import DistillConfig, DMMDConfig
from didi.errors import DidiError
from didi.methods.dmmd import DMMD, aux_loss, generator_loss
from didi.trainer import Context, Dist, PartSpec, build_parts


def test_one_generator_update_moves_mass_toward_tokens_the_teacher_rates_above_the_auxiliary():
    gen = torch.Generator().manual_seed(0)
    V = 7
    teacher = torch.randn(V, generator=gen).log_softmax(-1)
    aux = teacher.roll(1)  # a permutation without fixed points: sum_c (log θ - log φ) = 0, so under a uniform
    student = torch.zeros(1, V, requires_grad=True)  # student the mean gap is 0 and each token moves by its own sign
    loss = generator_loss(student.log_softmax(-1), teacher[None], aux[None]).sum()
    loss.backward()
    with torch.no_grad():
        moved = (student - 1.0 * student.grad).softmax(-1)[0] - student.softmax(-1)[0]
    gap = teacher - aux
    assert torch.equal(moved > 0, gap > 0) and torch.equal(moved < 0, gap < 0)
    # the teacher and the auxiliary are targets: no gradient reaches them
    t, a = teacher.clone().requires_grad_(True), aux.clone().requires_grad_(True)
    generator_loss(student.log_softmax(-1), t[None], a[None]).sum().backward()
    assert t.grad is None and a.grad is None


class Factorized(torch.nn.Module):
    """A denoiser whose clean-token logits do not depend on its input: per-position logits [L, V+1]."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = torch.nn.Parameter(logits.clone())

    def forward(self, z, sigma, noise=None):
        return self.logits.expand(z.shape[0], -1, -1)


def test_auxiliary_trained_on_fixed_student_states_converges_to_their_law():
    gen = torch.Generator().manual_seed(1)
    L, V, n = 5, 6, 256
    mask = V
    full = masked_log_probs(torch.randn(L, V + 1, generator=gen), mask)  # the student's prediction (soft targets)
    law = full[:, :V]
    z_s = torch.multinomial(law.exp(), n, replacement=True, generator=gen).T  # [n, L] revealed tokens drawn from it
    z_s[torch.rand(n, L, generator=gen) < 0.5] = mask
    scored = z_s == mask
    target = full[None].expand(n, -1, -1)[scored]
    aux = Factorized(torch.zeros(L, V + 1))
    opt = torch.optim.Adam(aux.parameters(), lr=0.05)
    for _ in range(300):
        logp = masked_log_probs(aux(z_s, None)[scored], mask)
        loss = aux_loss(target, logp).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    learned = masked_log_probs(aux.logits.detach(), mask)[:, :V]
    kl = (law.exp() * (law - learned)).sum(-1)
    assert kl.max() < 1e-3


def _toy_method(states: str, weight: str):
    """A D-MMD method on a factorized teacher over L positions: the exact KL(student || teacher) of the student's
    clean-token law is known, and a perfect student is the teacher."""
    gen = torch.Generator().manual_seed(2)
    L, V = 6, 5
    teacher_logits = torch.cat([torch.randn(L, V, generator=gen) * 2, torch.zeros(L, 1)], 1)
    student_logits = torch.cat([torch.randn(L, V, generator=gen) * 2, torch.zeros(L, 1)], 1)
    cfg = RunConfig()
    dcfg = DistillConfig(method="dmmd", batch_size=64, dmmd=DMMDConfig(steps=2, states=states, weight=weight))
    teacher = Factorized(teacher_logits).requires_grad_(False)
    method = DMMD(cfg, dcfg, V, teacher)
    specs = {"student": PartSpec(Factorized(student_logits), lr=0.05, max_steps=1000, grad_clip=0),
             "auxiliary": PartSpec(Factorized(teacher_logits), lr=0.2, max_steps=1000, grad_clip=0)}
    parts = build_parts(specs, "cpu", Dist(), False)
    ctx = Context(parts, "cpu", Dist(), bf16=False, global_batch=64)
    return method, ctx, teacher_logits, L, V, gen


def _kl(student: torch.nn.Module, teacher_logits: torch.Tensor, V: int) -> float:
    lp = masked_log_probs(student.logits.detach(), V)[:, :V]
    lt = masked_log_probs(teacher_logits, V)[:, :V]
    return float((lp.exp() * (lp - lt)).sum())


@pytest.mark.parametrize("states,weight", [("data", "mean"), ("student", "elbo")])
def test_dmmd_steps_lower_the_teacher_auxiliary_gap_and_the_students_kl(states, weight):
    method, ctx, teacher_logits, L, V, gen = _toy_method(states, weight)
    student = ctx.parts["student"].module
    kl0 = _kl(student, teacher_logits, V)
    gaps = []
    for i in range(150):
        x = torch.multinomial(teacher_logits[:, :V].softmax(-1), 64, replacement=True, generator=gen).T
        m = method.step(x, torch.Generator().manual_seed(i), ctx)
        gaps.append(m["gap"])
    assert gaps[0] == pytest.approx(0.0, abs=1e-6)  # the auxiliary starts as the teacher
    peak = max(range(len(gaps)), key=gaps.__getitem__)
    late = sum(gaps[-20:]) / 20
    assert gaps[peak] > 0.05 and late < 0.5 * gaps[peak]  # it rises as φ learns the student, falls as η matches θ
    assert _kl(student, teacher_logits, V) < 0.3 * kl0


def test_dmmd_config_refuses_bad_values():
    for bad, match in ((dict(states="teacher"), "dmmd.states"), (dict(weight="sum"), "dmmd.weight"),
                       (dict(aux_updates=0), "aux_updates"), (dict(steps=0), "dmmd.steps"),
                       (dict(z_s="soft"), "dmmd.z_s"), (dict(aux_init="data"), "aux_init")):
        with pytest.raises(DidiError, match=match):
            DistillConfig(method="dmmd", dmmd=DMMDConfig(**bad)).validate()
    loaded = DistillConfig.from_dict({"method": "dmmd", "dmmd": {"steps": 8, "states": "student"}})
    assert loaded.dmmd == DMMDConfig(steps=8, states="student")
