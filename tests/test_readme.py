"""The README's Python examples run as written: every ```python block, in order, in one namespace (a block
may use what an earlier one defined), in a scratch folder.

What the test supplies, because the README's own values would take hours on 2 cores:

- ``campaign.yaml``: the README's ``yaml`` config block (so it is checked too) with tiny sizes, the bundled
  sample and the name ``quickstart`` (later blocks read ``results/quickstart/best_policy.json``);
- the pipeline config classes (``TransferConfig``, ``DistillConfig``, ``SelfTrainConfig``) are replaced, for
  the blocks only, by subclasses that force tiny sizes and epochs over the block's own values: the blocks
  still import, build, run and index the results exactly as written.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import yaml

README = Path(__file__).resolve().parents[1] / "README.md"

CAMPAIGN = {"name": "quickstart", "dataset": "sample", "train_size": 300, "val_size": 150, "num_trials": 3,
            "max_concurrent": 2, "space_options": {"max_n": 2}, "density_k": 2,
            "target": {"model": "proxy", "width": 8, "depth": 1, "epochs": 3, "batch_size": 64, "lr": 0.2},
            "proxy": {"width": 8, "depth": 1, "epochs": 1, "batch_size": 64, "lr": 0.2}, "num_cpus": 2,
            "resources": {"cpu": 1, "gpu": 0}, "storage": None, "ray_address": None, "race": {"enabled": False}}
SIZES = {"train_size": 60, "val_size": 20, "test_size": 40}
PIPELINES = {  # module -> (config class, forced settings)
    "trainers.pipelines.transfer": ("TransferConfig", {**SIZES, "image_size": 32, "probe_epochs": 1,
                                                       "finetune_epochs": 1, "batch_size": 20}),
    "trainers.pipelines.distill": ("DistillConfig", {**SIZES, "teacher_kwargs": {"width": 4}, "teacher_epochs": 1,
                                                     "student_kwargs": {"width": 4}, "epochs": 1, "batch_size": 20}),
    "trainers.pipelines.self_train": ("SelfTrainConfig", {**SIZES, "dataset": "sample", "unlabeled_size": 100,
                                                          "teacher_kwargs": {"width": 4}, "teacher_epochs": 1,
                                                          "student_kwargs": {"width": 4}, "epochs": 1,
                                                          "iterations": 1, "batch_size": 20}),
}


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def _run(block: str, namespace: dict, index: int) -> None:
    exec(compile(block, f"README.md python block {index + 1}", "exec"), namespace)  # noqa: S102 - our README


def _tiny(cls: type, forced: dict) -> type:
    class Tiny(cls):  # the dataclass fields, validation and to_dict of cls; only the values are forced
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **{**kwargs, **forced})

    Tiny.__name__ = Tiny.__qualname__ = cls.__name__
    return Tiny


def test_readme_first_python_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _run(_blocks("python")[0], {}, 0)
    assert (tmp_path / "grid.png").stat().st_size > 1000


@pytest.mark.slow
def test_every_readme_python_block_runs_in_order(tmp_path, monkeypatch):
    blocks = _blocks("python")
    configs = [b for b in _blocks("yaml") if re.search(r"^num_trials:", b, flags=re.M)]
    assert len(blocks) >= 5 and len(configs) == 1
    monkeypatch.chdir(tmp_path)
    config = {**yaml.safe_load(configs[0]), **CAMPAIGN}
    (tmp_path / "campaign.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    for module, (name, forced) in PIPELINES.items():
        mod = importlib.import_module(module)
        monkeypatch.setattr(mod, name, _tiny(getattr(mod, name), forced))

    namespace: dict = {}
    for i, block in enumerate(blocks):
        _run(block, namespace, i)

    assert (tmp_path / "grid.png").is_file() and (tmp_path / "mine.json").is_file()
    assert (tmp_path / "results" / "quickstart" / "best_policy.json").is_file()
    assert namespace["x"].shape == (16, 3, 32, 32) and namespace["soft_labels"].shape == (16, 10)
    assert namespace["fit"].history and namespace["photos"].images.shape[1:] == (3, 32, 32)
    assert namespace["result"]["iterations"]  # the last block: self-training
    runs = sorted(p.name for p in (tmp_path / "results").iterdir())
    assert len(runs) == 4 and "quickstart" in runs  # the campaign and the three pipeline runs
