"""The option reference (docs/options.md), generated from the config dataclasses and presets so it cannot drift.

    python -m didi.options_doc > docs/options.md

Each table lists a section's fields with their type, default and the comment on the field's own line in the
source; the longer notes above or below a field stay in the source file named under the table.
"""

from __future__ import annotations

import dataclasses
import inspect
import re

from .config import PRESETS, DataConfig, DiffusionConfig, ModelConfig, TrainConfig
from .distill import DISTILL_PRESETS, PRESET_RUN_OVERRIDES, DistillConfig
from .methods.didi_instruct import DiDiInstructConfig
from .methods.dmmd import DMMDConfig
from .methods.latent import LatentConfig
from .methods.sdtt import SDTTConfig

SECTIONS = [("model", ModelConfig, "`didi train --set model.KEY=VALUE`"),
            ("diffusion", DiffusionConfig, "`--set diffusion.KEY=VALUE`"),
            ("data", DataConfig, "`--set data.KEY=VALUE`"),
            ("train", TrainConfig, "`--set train.KEY=VALUE`"),
            ("distill", DistillConfig, "`didi distill --set distill.KEY=VALUE`"),
            ("distill.didi", DiDiInstructConfig, "`didi distill --set distill.didi.KEY=VALUE` (method didi-instruct)"),
            ("distill.sdtt", SDTTConfig, "`didi distill --method sdtt --set distill.sdtt.KEY=VALUE`"),
            ("distill.latent", LatentConfig, "`didi distill --method latent --set distill.latent.KEY=VALUE`"),
            ("distill.dmmd", DMMDConfig, "`didi distill --method dmmd --set distill.dmmd.KEY=VALUE`")]
EXPERIMENTAL = "# ---- beyond the paper"  # a section's options after this line are marked experimental

_FIELD = re.compile(r"^\s+(\w+)\s*:[^=]*=[^#]*?(?:#\s?(.*))?$")


def _line_comments(cls) -> tuple[dict[str, str], str | None]:
    """field name -> the comment on its own source line; and the first field after the EXPERIMENTAL line."""
    out, first_experimental, marked = {}, None, False
    for line in inspect.getsource(cls).splitlines():
        marked = marked or line.strip().startswith(EXPERIMENTAL)
        m = _FIELD.match(line)
        if m and marked and first_experimental is None:
            first_experimental = m.group(1)
        if m and m.group(2):
            out.setdefault(m.group(1), m.group(2).strip())
    return out, first_experimental


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return repr(f.default)
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
        return "(section below)" if dataclasses.is_dataclass(value) else repr(value)
    return ""


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def section_table(name: str, cls, how: str) -> str:
    notes, first_experimental = _line_comments(cls)
    doc = cls.__doc__ or ""
    doc = "" if doc.startswith(cls.__name__ + "(") else inspect.cleandoc(doc) + "\n\n"  # dataclass's own stand-in
    source = f"{inspect.getmodule(cls).__name__}.{cls.__name__}"
    lines = [f"## `{name}`", "", doc + f"Set with {how}. Source: `{source}`.", "",
             "| option | type | default | note |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        if f.name == first_experimental:
            lines.append("| **beyond the paper: experimental** | | | measured in docs/reference-log.md |")
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        lines.append(f"| `{f.name}` | `{_cell(str(kind))}` | `{_cell(_default(f))}` | {_cell(notes.get(f.name, ''))} |")
    return "\n".join(lines) + "\n"


def presets_table(title: str, presets: dict[str, dict], extra: dict[str, list[str]] | None = None) -> str:
    lines = [f"## {title}", "", "| preset | settings |", "|---|---|"]
    for name, values in presets.items():
        items = []
        for k, v in values.items():
            if isinstance(v, dict):
                items += [f"{k}.{kk}={vv!r}" for kk, vv in v.items()]
            else:
                items.append(f"{k}={v!r}")
        items += (extra or {}).get(name, [])
        lines.append(f"| `{name}` | {_cell(', '.join(items))} |")
    return "\n".join(lines) + "\n"


def render() -> str:
    parts = ["# Options", "",
             "Generated from the config dataclasses by `python -m didi.options_doc > docs/options.md` (a test checks "
             "that this file matches the code). Every run saves its whole config as `config.json` beside its "
             "weights; a preset fills in values, `--set` overrides them.", ""]
    parts += [section_table(*s) for s in SECTIONS]
    parts.append(presets_table("Training presets (`didi train --preset NAME`)", PRESETS))
    parts.append(presets_table("Distillation presets (`didi distill --preset NAME`; run settings they add after "
                               "the values)", DISTILL_PRESETS, PRESET_RUN_OVERRIDES))
    return "\n".join(parts)


if __name__ == "__main__":
    print(render(), end="")
