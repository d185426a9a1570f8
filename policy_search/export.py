"""Export a campaign's top policies (policy JSON, or native torchvision/kornia/albumentations/timm forms) and
render preview grids."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

import torch

from search_spaces import Augmenter, Policy, Schedule, load_policy, load_policy_or_schedule, save_policy
from search_spaces.export import ExportError, albumentations_json, kornia_source, to_timm, torchvision_source
from trainers.plotting import pyplot

__all__ = ["export_campaign", "preview_policy", "ranked_policies", "ExportError", "FORMATS",
           "measure_export_fidelity"]

FORMATS = ("json", "torchvision", "kornia", "albumentations", "timm")
#: File suffix per format.
SUFFIX = {"json": ".json", "torchvision": ".py", "kornia": ".py", "albumentations": ".json", "timm": ".txt"}


def ranked_policies(folder: str | os.PathLike, top: int | None = None) -> list[Path]:
    """The ranked policy files of a campaign (``top_k/rank1.json`` first)."""
    folder = Path(folder)
    if not (folder / "summary.json").is_file() and not (folder / "top_k").is_dir():
        raise FileNotFoundError(f"{folder}: no campaign results here (run or resume the campaign first)")
    files = sorted((folder / "top_k").glob("rank*.json"), key=lambda p: int(p.stem[4:]))
    return files[:top] if top else files


def export_campaign(folder: str | os.PathLike, top: int = 3,
                    fmt: Literal["json", "torchvision", "kornia", "albumentations", "timm"] = "json",
                    out: str | os.PathLike | None = None) -> list[Path]:
    """Write the top ``top`` policies of a campaign to ``out`` (default ``<folder>/export/<fmt>``), one file each.

    json: the policy files; torchvision: ``rank<i>.py``, self-contained (imports only torch and torchvision,
    the policy embedded, provenance and fidelity in its header); kornia: ``rank<i>.py`` (torch + kornia only);
    albumentations: ``rank<i>.json`` for ``albumentations.load``; timm: ``rank<i>.txt`` with the
    ``auto_augment`` string. Raises ExportError (one line, ``rank<i>: ...``) when a policy has no form in the
    target. A pbt campaign ranks schedules (``augschedule/1.0``), which export as json only.
    """
    if fmt not in FORMATS:
        raise ExportError(f"format: must be one of {', '.join(FORMATS)}, got {fmt!r}")
    folder = Path(folder)
    out_dir = Path(out) if out is not None else folder / "export" / fmt
    sources = ranked_policies(folder, top)
    policies = []
    for i, src in enumerate(sources, start=1):
        policy = load_policy_or_schedule(src)
        if isinstance(policy, Schedule) and fmt != "json":
            raise ExportError(f"rank{i}: a schedule (pbt campaign) exports as json only, not {fmt} "
                              "(replay it with trainers.proxy.build_augment or search_spaces.ScheduledAugmenter)")
        policies.append(policy)
    texts = []
    for i, policy in enumerate(policies, start=1):  # every policy checked before anything is written
        if fmt == "json":
            texts.append(None)
            continue
        try:
            texts.append(_render(policy, fmt, folder.name, i))
        except ExportError as exc:
            raise ExportError(f"rank{i}: {str(exc).splitlines()[0]}") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for i, (policy, text) in enumerate(zip(policies, texts, strict=True), start=1):
        path = out_dir / f"rank{i}{SUFFIX[fmt]}"
        written.append(save_policy(policy, path) if text is None else _write(path, text))
    return written


def _render(policy: Policy, fmt: str, campaign: str, rank: int) -> str:
    prov = {"campaign": policy.provenance.get("campaign", campaign), "rank": rank,
            "score": policy.provenance.get("score"), **{k: v for k, v in policy.provenance.items()
                                                       if k not in ("campaign", "score")}}
    if fmt == "torchvision":
        return torchvision_source(policy, prov)
    if fmt == "kornia":
        return kornia_source(policy, prov)
    if fmt == "albumentations":
        return albumentations_json(policy)
    return to_timm(policy) + "\n"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def preview_policy(policy: Policy | str | os.PathLike, images: torch.Tensor, out_png: str | os.PathLike,
                   n: int = 8, seed: int = 0, title: str | None = None) -> Path:
    """Save a grid: row 0 the first ``n`` originals, rows 1..3 three augmented draws of them."""
    plt = pyplot()

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


def measure_export_fidelity(out: str | os.PathLike | None = None, num_images: int = 32) -> dict:
    """Measure every export's per-op fidelity on the bundled CIFAR-10 sample and write ``op_fidelity.json``
    (default: the copy shipped in ``search_spaces/exports``). Returns the document."""
    from search_spaces.exports.fidelity import EXACT_AGREEMENT, TARGETS, measure_ops
    from trainers.data import load_dataset

    images = load_dataset("sample").images[:num_images]
    doc = {"images": f"bundled CIFAR-10 sample (trainers/sample), first {num_images} images, uint8 32x32",
           "exact_agreement": EXACT_AGREEMENT, "targets": measure_ops(images, TARGETS)}
    shipped = Path(__file__).parents[1] / "search_spaces" / "exports" / "op_fidelity.json"
    path = Path(out) if out is not None else shipped
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return doc
