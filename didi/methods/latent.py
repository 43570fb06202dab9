"""A latent-variable student (distill method "latent"; beyond the paper): the structural fix for parallel steps.

A few-step sampler draws the tokens of one step independently given the state, so a student can make them
agree only by sharpening what they share (the template collapse the reference language shows). A student
with a per-sequence noise input xi (`DIT.add_noise_input`) can make them agree through xi instead, but the
policy gradient never taught it to (docs/reference-log.md, E11-E14). This method teaches it directly, as a variational
autoencoder whose decoder is the student:

    loss = NELBO(x0 | xi) / tokens + beta * KL(q(xi | x0) || N(0, I)) / tokens,   xi ~ q(xi | x0)

on the teacher's training data, with the student starting as a copy of the teacher and the encoder
(`nn.encoder.SequenceEncoder`) reading the clean text. NELBO(x0 | xi) is the MDLM loss with xi as
the student's extra input. beta = 1 is the ELBO; beta < 1 makes xi carry more of the text (a plan the
parallel steps can share) at the price of a prior that covers the codes less tightly. At sampling time xi ~
N(0, I), as in DiDi-Instruct rollouts, so the result starts a DiDi run (`distill.student_init`) as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import check_fields
from ..diffusion import Kept, nelbo_to_ppl
from ..errors import DidiError
from ..nn.encoder import gaussian_kl
from .mdlm import MDLM


@dataclass
class LatentConfig:
    """The latent student's own settings (`distill.latent.*`): the student as the decoder of a VAE over its code
    input (distill.student_noise_dim dimensions), trained on the data with loss NELBO(x0 | xi) + beta * KL(q(xi | x0)
    || N(0, I)) (per token); the encoder is the teacher's embedding and first encoder_blocks blocks."""

    beta: float = 1.0
    encoder_blocks: int = 2
    # the training times: t = eps + (1 - eps) u^(1/p) for the (antithetic) uniform u, a density rising as p t^(p-1):
    # p > 1 trains more where few tokens are visible and the code must carry the text (1: MDLM's times)
    time_power: float = 1.0

    def validate(self, d) -> None:
        check_fields(self, "distill.latent.", ranges=[("beta", self.beta >= 0, ">= 0"),
                                                      ("encoder_blocks", self.encoder_blocks >= 1, ">= 1"),
                                                      ("time_power", self.time_power > 0, "> 0")])
        if not d.student_noise_dim:
            raise DidiError("distill: method 'latent' needs student_noise_dim > 0 (the code's dimensions; preset "
                            "latent-lang sets 16)")
        if d.student_init:
            raise DidiError("distill.student_init: the latent student starts from its teacher (a DiDi-Instruct and "
                            "D-MMD option)")


def latent_times(t: torch.Tensor, eps: float, power: float) -> torch.Tensor:
    """MDLM's times t = eps + (1 - eps) u moved to eps + (1 - eps) u^(1/power): density rising as t^(power-1), so
    power > 1 trains more where few tokens are visible and the code must carry the text
    (`distill.latent.time_power`)."""
    if power == 1.0:
        return t
    return eps + (1 - eps) * ((t - eps) / (1 - eps)).clamp(0, 1) ** (1.0 / power)


class LatentMDLM:
    name = "latent"
    eval_part = "student"
    progress_keys = ("loss", "nelbo", "kl")

    @classmethod
    def build(cls, s):
        """The method, the parts it trains (the student and its encoder) and its banner, from a StudentSetup."""
        from ..nn.encoder import SequenceEncoder

        d = s.dcfg
        if d.latent.encoder_blocks > len(s.teacher_model.blocks):
            raise DidiError(f"distill.latent.encoder_blocks = {d.latent.encoder_blocks}: the teacher has only "
                            f"{len(s.teacher_model.blocks)} blocks")
        encoder = SequenceEncoder(s.teacher_model, d.student_noise_dim, d.latent.encoder_blocks)
        torch.manual_seed(s.cfg.train.seed + s.rank)
        n_enc = sum(p.numel() for p in encoder.parameters()) / 1e6
        banner = (f"didi: latent student from {s.teacher} ({s.n_student:.2f} M parameters, a {d.student_noise_dim}-"
                  f"dimensional latent, encoder {n_enc:.2f} M), beta {d.latent.beta}, {s.where()}")
        return cls(s.cfg, d, s.tok.mask_id, s.keep), {"student": s.student_spec,
                                                      "encoder": s.part(encoder, d.student_lr)}, banner

    def __init__(self, cfg, dcfg, mask_id: int, kept: Kept | None = None):
        self.cfg, self.dcfg = cfg, dcfg
        self.mdlm = MDLM(cfg, mask_id, kept)

    def _draw(self, n: int, length: int, generator: torch.Generator, rank: int, world: int, device):
        """MDLM's times and masking noise for the global batch, then the latent's eps, each sliced to this rank."""
        t, noise = self.mdlm.draw(n, length, generator, rank, world, device)
        per = n // world
        eps = torch.randn(n, self.dcfg.student_noise_dim, generator=generator)
        return t, noise, eps[rank * per:(rank + 1) * per].to(device)

    def _terms(self, student, x, t, noise, xi):
        """MDLM's per-token NELBO terms (kept positions unscored) with xi as the student's extra input."""
        return self.mdlm.terms(lambda z, s: student(z, s, xi), x, t, noise)

    def step(self, x: torch.Tensor, generator: torch.Generator, ctx) -> dict:
        B, L = x.shape
        device = x.device
        # global draws: a DDP step equals one process
        t, noise, eps = self._draw(ctx.global_batch, L, generator, ctx.dist.rank, ctx.dist.world, device)
        t = latent_times(t, self.cfg.diffusion.eps, self.dcfg.latent.time_power)  # (validation keeps MDLM's)
        student, encoder = ctx.parts["student"], ctx.parts["encoder"]
        with ctx.autocast():
            mu, logvar = encoder.wrapped(x)
            xi = mu + (0.5 * logvar).exp() * eps
            terms, count = self._terms(student.wrapped, x, t, noise, xi)
        kl = gaussian_kl(mu.float(), logvar.float())  # [B] nats per text
        per_row = max(count, 1) / B
        nelbo = terms.sum() / max(count, 1)
        loss = nelbo + self.dcfg.latent.beta * kl.mean() / per_row
        grad_norm = ctx.update(("student", "encoder"), loss)
        metrics = {"loss": loss.detach(), "nelbo": nelbo.detach(), "kl": kl.mean().detach(),
                   "xi_std": (0.5 * logvar).exp().mean().detach(), "mu_rms": mu.float().square().mean().sqrt().detach(),
                   "grad_norm": torch.tensor(grad_norm, device=device)}
        return {k: float(ctx.all_mean(torch.as_tensor(v, device=device).float())) for k, v in metrics.items()}

    @torch.no_grad()
    def validate(self, model, batches, seed: int) -> dict:
        """The student's NELBO per token on held-out data with xi drawn from the prior N(0, I): what the student
        knows without the encoder (the bound is not the latent model's likelihood, which needs q)."""
        gen = torch.Generator().manual_seed(seed)
        total, count = 0.0, 0
        for x in batches:
            t, noise, xi = self._draw(x.shape[0], x.shape[1], gen, 0, 1, x.device)
            terms, n = self._terms(model, x, t, noise, xi)
            total += float(terms.double().sum())
            count += n
        nelbo = total / max(count, 1)
        return {"val_nelbo_prior_xi": nelbo, "val_ppl_bound": nelbo_to_ppl(nelbo)}

    def exports(self) -> dict:
        from .. import runs

        return {runs.WEIGHTS: ("student", lambda m: m.state_dict()),
                "encoder.safetensors": ("encoder", lambda m: m.state_dict())}
