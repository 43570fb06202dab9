"""A latent-variable student (distill method "latent"; beyond the paper): the structural fix for parallel steps.

A few-step sampler draws the tokens of one step independently given the state, so a student can make them
agree only by sharpening what they share (the template collapse the reference language shows). A student
with a per-sequence noise input xi (`DIT.add_noise_input`) can make them agree through xi instead, but the
policy gradient never taught it to (README, E11-E14). This method teaches it directly, as a variational
autoencoder whose decoder is the student:

    loss = NELBO(x0 | xi) / tokens + beta * KL(q(xi | x0) || N(0, I)) / tokens,   xi ~ q(xi | x0)

on the teacher's training data, with the student starting as a copy of the teacher and the encoder
(`nn.encoder.SequenceEncoder`) reading the clean text. NELBO(x0 | xi) is the MDLM loss of spec §1 with xi as
the student's extra input. beta = 1 is the ELBO; beta < 1 makes xi carry more of the text (a plan the
parallel steps can share) at the price of a prior that covers the codes less tightly. At sampling time xi ~
N(0, I), as in DiDi-Instruct rollouts, so the result starts a DiDi run (`distill.student_init`) as it is.
"""

from __future__ import annotations

import torch

from ..diffusion import Kept, LogLinearSchedule, nelbo_terms, nelbo_to_ppl, sample_times
from ..nn.encoder import gaussian_kl


class LatentMDLM:
    name = "latent"
    eval_part = "student"
    progress_keys = ("loss", "nelbo", "kl")

    def __init__(self, cfg, dcfg, mask_id: int, kept: Kept | None = None):
        self.cfg, self.dcfg, self.mask_id = cfg, dcfg, mask_id
        self.kept = kept or Kept()
        self.schedule = LogLinearSchedule(cfg.diffusion.eps)

    def _draw(self, n: int, length: int, generator: torch.Generator):
        t = sample_times(n, self.cfg.diffusion.eps, self.cfg.diffusion.antithetic, generator)
        return t, torch.rand(n, length, generator=generator), torch.randn(n, self.dcfg.student_noise_dim,
                                                                           generator=generator)

    def _terms(self, student, x, t, noise, xi):
        if self.kept:
            keep = self.kept(x)
            noise = noise.masked_fill(keep, 0.0)  # noise 0 < alpha_t: the token stays
            count = int((~keep).sum())
        else:
            count = x.numel()
        terms = nelbo_terms(lambda z, s: student(z, s, xi), x, t, noise, self.schedule, self.mask_id)
        return terms, count

    def step(self, x: torch.Tensor, generator: torch.Generator, ctx) -> dict:
        B, L = x.shape
        device, rank = x.device, ctx.dist.rank
        t, noise, eps = self._draw(ctx.global_batch, L, generator)  # global draws: a DDP step equals one process
        sl = slice(rank * B, (rank + 1) * B)
        t, noise, eps = t[sl].to(device), noise[sl].to(device), eps[sl].to(device)
        student, encoder = ctx.parts["student"], ctx.parts["encoder"]
        with ctx.autocast():
            mu, logvar = encoder.wrapped(x)
            xi = mu + (0.5 * logvar).exp() * eps
            terms, count = self._terms(student.wrapped, x, t, noise, xi)
        kl = gaussian_kl(mu.float(), logvar.float())  # [B] nats per text
        per_row = max(count, 1) / B
        nelbo = terms.sum() / max(count, 1)
        loss = nelbo + self.dcfg.latent_beta * kl.mean() / per_row
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
            t, noise, xi = self._draw(x.shape[0], x.shape[1], gen)
            terms, n = self._terms(model, x, t.to(x.device), noise.to(x.device), xi.to(x.device))
            total += float(terms.double().sum())
            count += n
        nelbo = total / max(count, 1)
        return {"val_nelbo_prior_xi": nelbo, "val_ppl_bound": nelbo_to_ppl(nelbo)}

    def exports(self) -> dict:
        from .. import runs

        return {runs.WEIGHTS: ("student", lambda m: m.state_dict()),
                "encoder.safetensors": ("encoder", lambda m: m.state_dict())}
