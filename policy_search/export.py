"""Export a campaign's top policies (JSON, torchvision snippet, timm string) and render preview grids."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

import torch

from search_spaces import Augmenter, Policy, Schedule, load_policy, load_policy_or_schedule, save_policy
from search_spaces.export import ExportError

__all__ = ["export_campaign", "preview_policy", "ranked_policies", "ExportError", "FORMATS"]

FORMATS = ("json", "torchvision", "timm")

_SNIPPET = '''"""Torchvision transform for policy {name!r} (campaign {campaign!r}, rank {rank}, score {score}).

Usage: ``from {module} import transform`` then ``transform(image_tensor)``. Needs the policy-search package.
"""

from pathlib import Path

from search_spaces import load_policy

POLICY_FILE = Path(__file__).with_name({json_name!r})


def build_transform(seed=None):
    """The policy as a ``torchvision.transforms.v2`` transform (loads the JSON next to this file)."""
    return load_policy(POLICY_FILE).to_torchvision(seed)


transform = build_transform()
'''


def ranked_policies(folder: str | os.PathLike, top: int | None = None) -> list[Path]:
    """The ranked policy files of a campaign (``top_k/rank1.json`` first)."""
    folder = Path(folder)
    if not (folder / "summary.json").is_file() and not (folder / "top_k").is_dir():
        raise FileNotFoundError(f"{folder}: no campaign results here (run or resume the campaign first)")
    files = sorted((folder / "top_k").glob("rank*.json"), key=lambda p: int(p.stem[4:]))
    return files[:top] if top else files


def export_campaign(folder: str | os.PathLike, top: int = 3,
                    fmt: Literal["json", "torchvision", "timm"] = "json",
                    out: str | os.PathLike | None = None) -> list[Path]:
    """Write the top ``top`` policies of a campaign to ``out`` (default ``<folder>/export/<fmt>``).

    json: the policy files; torchvision: ``rank<i>.py`` loading ``rank<i>.json`` (no pickles); timm: ``rank<i>.txt``
    with the ``auto_augment`` string. Raises ExportError (one line) when a policy has no timm form. A pbt
    campaign ranks schedules (``augschedule/1.0``), which export as json only.
    """
    if fmt not in FORMATS:
        raise ExportError(f"format: must be one of {', '.join(FORMATS)}, got {fmt!r}")
    folder = Path(folder)
    out_dir = Path(out) if out is not None else folder / "export" / fmt
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for i, src in enumerate(ranked_policies(folder, top), start=1):
        policy = load_policy_or_schedule(src)
        stem = f"rank{i}"
        if isinstance(policy, Schedule) and fmt != "json":
            raise ExportError(f"{stem}: a schedule (pbt campaign) exports as json only, not {fmt} "
                              "(replay it with trainers.proxy.build_augment or search_spaces.ScheduledAugmenter)")
        if fmt == "timm":
            try:
                text = policy.to_timm()
            except ExportError as exc:
                raise ExportError(f"{stem}: {str(exc).splitlines()[0]}") from None
            written.append(_write(out_dir / f"{stem}.txt", text + "\n"))
            continue
        written.append(save_policy(policy, out_dir / f"{stem}.json"))
        if fmt == "torchvision":
            prov = policy.provenance
            code = _SNIPPET.format(name=policy.name, campaign=prov.get("campaign"), rank=i, score=prov.get("score"),
                                   module=stem, json_name=f"{stem}.json")
            written.append(_write(out_dir / f"{stem}.py", code))
    return written


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def preview_policy(policy: Policy | str | os.PathLike, images: torch.Tensor, out_png: str | os.PathLike,
                   n: int = 8, seed: int = 0, title: str | None = None) -> Path:
    """Save a grid: row 0 the first ``n`` originals, rows 1..3 three augmented draws of them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policy = load_policy(policy)
    x = images[:n]
    augmenter = Augmenter(policy)
    generator = torch.Generator().manual_seed(seed)
    rows = [x.float() / 255.0 if x.dtype == torch.uint8 else x]
    rows += [_unit(augmenter(x, generator=generator)) for _ in range(3)]
    fig, axes = plt.subplots(len(rows), len(x), figsize=(1.2 * len(x), 1.25 * len(rows)), squeeze=False)
    for r, batch in enumerate(rows):
        for c in range(len(x)):
            img = batch[c].clamp(0, 1).permute(1, 2, 0).squeeze(-1).cpu().numpy()
            axes[r][c].imshow(img, cmap="gray" if img.ndim == 2 else None)
            axes[r][c].axis("off")
    fig.suptitle(title or f"{policy.name or 'policy'}: originals (top), augmented draws", fontsize=8)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 255.0 if x.dtype == torch.uint8 else x


def policy_summary(path: str | os.PathLike) -> str:
    """One-line JSON of a policy's provenance (for status views)."""
    return json.dumps(load_policy(path).provenance, sort_keys=True)
