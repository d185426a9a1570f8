"""Native exports: each exported file runs in a fresh interpreter where policy-search cannot be imported, on real
images; in-memory objects equal the files; seeded transforms give DataLoader workers their own streams; bad input
is one line naming the op."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2
from typer.testing import CliRunner

from policy_search.cli import app
from policy_search.export import export_campaign
from search_spaces import Magnitude, OpConfig, Policy, preset, save_policy
from search_spaces.export import (
    ExportError,
    PolicyTransform,
    albumentations_json,
    kornia_source,
    to_albumentations,
    to_kornia,
    to_timm,
    to_torchvision,
    torchvision_source,
)
from trainers.data import load_dataset

warnings.filterwarnings("ignore", category=UserWarning)

#: Prepended to every child script: importing our packages fails, on purpose.
BLOCK = textwrap.dedent('''
    import sys
    class _BlockPolicySearch:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("policy_search", "search_spaces", "trainers"):
                raise ImportError(f"{name} is blocked: an export must not need policy-search")
            return None
    sys.meta_path.insert(0, _BlockPolicySearch())
    for pkg in ("search_spaces", "policy_search", "trainers"):
        try:
            __import__(pkg)
        except ImportError:
            pass
        else:
            raise SystemExit(f"{pkg} was importable")
''')


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return load_dataset("sample").images[:16]


def run_blocked(script: str | list[str], *args: str | Path, cwd: Path) -> str:
    parts = [script] if isinstance(script, str) else script
    code = BLOCK + "".join(textwrap.dedent(part) for part in parts)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


LOAD_MODULE = '''
    import importlib.util
    spec = importlib.util.spec_from_file_location("exported", sys.argv[1])
    exported = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(exported)
    print("modules:", sorted(m for m in sys.modules if m.split(".")[0] in ("search_spaces", "policy_search")))
'''


@pytest.fixture()
def campaign(tmp_path) -> Path:
    """A campaign folder holding ranked policies (what `policy-search export` reads)."""
    folder = tmp_path / "camp"
    save_policy(preset("autoaugment_cifar10").with_provenance(score=0.81), folder / "top_k" / "rank1.json")
    save_policy(preset("crop_flip_cutout").with_provenance(score=0.79), folder / "top_k" / "rank2.json")
    (folder / "config.yaml").write_text("name: camp\n")
    return folder


def test_torchvision_file_runs_without_policy_search_and_equals_the_in_memory_transform(campaign, images, tmp_path):
    result = CliRunner().invoke(app, ["export", str(campaign), "--format", "torchvision", "--top", "2",
                                      "--out", str(tmp_path / "tv")])
    assert result.exit_code == 0, result.output
    files = sorted((tmp_path / "tv").iterdir())
    assert [f.name for f in files] == ["rank1.py", "rank2.py"]  # one self-contained file per policy
    text = files[0].read_text()
    assert "score=0.81" in text.splitlines()[1] and "Fidelity against policy-search's Augmenter: exact" in text
    imports = {ln.split()[1].split(".")[0] for ln in text.splitlines() if ln.startswith(("import ", "from "))}
    assert imports == {"__future__", "math", "torch", "torchvision"}
    torch.save(images, tmp_path / "images.pt")
    for f, name in zip(files, ["autoaugment_cifar10", "crop_flip_cutout"], strict=True):
        out = run_blocked([LOAD_MODULE, '''
            import torch
            x = torch.load(sys.argv[2])
            t = exported.build_transform(seed=0)
            torch.save(torch.stack([t(img) for img in x]), sys.argv[3])
        '''], f, tmp_path / "images.pt", tmp_path / "out.pt", cwd=tmp_path)
        assert "modules: []" in out
        theirs = torch.load(tmp_path / "out.pt")
        t = to_torchvision(preset(name), seed=0)
        assert torch.equal(theirs, torch.stack([t(img) for img in images]))
        assert theirs.shape == images.shape and theirs.dtype == torch.uint8 and not torch.equal(theirs, images)


def test_torchvision_export_is_torchvisions_own_transforms():
    t = to_torchvision(preset("autoaugment_cifar10"))
    assert isinstance(t, v2.RandomChoice) and len(t.transforms) == 25
    first = t.transforms[0]
    assert isinstance(first, v2.Compose)
    assert isinstance(first.transforms[0], v2.RandomApply) and first.transforms[0].p == 0.1
    assert isinstance(first.transforms[0].transforms[0], v2.RandomInvert)
    ra = to_torchvision(preset("randaugment"))
    assert isinstance(ra, v2.Compose) and all(isinstance(s, v2.RandomChoice) for s in ra.transforms)


def test_kornia_file_runs_without_policy_search_on_batches(images, tmp_path):
    path = tmp_path / "k.py"
    path.write_text(kornia_source(preset("randaugment")))
    torch.save(images, tmp_path / "images.pt")
    out = run_blocked([LOAD_MODULE, '''
        import torch
        import kornia.augmentation
        augment = exported.build_augmentation(seed=0)
        assert any(isinstance(m, kornia.augmentation.RandomAffine) for m in augment.modules())
        torch.save(augment(torch.load(sys.argv[2])), sys.argv[3])
    '''], path, tmp_path / "images.pt", tmp_path / "out.pt", cwd=tmp_path)
    assert "modules: []" in out
    theirs = torch.load(tmp_path / "out.pt")
    assert torch.equal(theirs, to_kornia(preset("randaugment"), seed=0)(images))
    assert theirs.dtype == torch.uint8 and not torch.equal(theirs, images)


def test_kornia_module_draws_per_sample_and_runs_on_float_batches(images):
    aug = to_kornia(preset("trivialaugment_wide"), seed=1)
    ops, _ = aug.sample(256)
    assert len(set(ops[0].tolist())) > 8  # one op per sample, not one per batch
    out = aug(images.float() / 255.0)
    assert out.dtype == torch.float32 and out.shape == images.shape and 0.0 <= out.min() and out.max() <= 1.0


def test_albumentations_json_loads_with_albumentations_alone(images, tmp_path, campaign):
    policy = Policy("sequential", ops=(
        OpConfig("pad_crop", 1.0, Magnitude(0.125)), OpConfig("hflip", 0.5),
        OpConfig("rotate", 0.7, Magnitude(9.0, random_sign=True)), OpConfig("equalize", 0.3)))
    save_policy(policy, campaign / "top_k" / "rank1.json")
    written = export_campaign(campaign, top=1, fmt="albumentations", out=tmp_path / "alb")
    assert [p.name for p in written] == ["rank1.json"]
    np.save(tmp_path / "images.npy", images.permute(0, 2, 3, 1).numpy())
    out = run_blocked('''
        import albumentations as A
        import numpy as np
        t = A.load(sys.argv[1])
        t.set_random_seed(0)
        x = np.load(sys.argv[2])
        np.save(sys.argv[3], np.stack([t(image=img)["image"] for img in x]))
        print("classes:", sorted({type(c).__name__ for c in t.transforms}))
    ''', written[0], tmp_path / "images.npy", tmp_path / "out.npy", cwd=tmp_path)
    assert "Affine" in out and "HorizontalFlip" in out and "OneOf" in out
    theirs = np.load(tmp_path / "out.npy")
    import albumentations as A

    t = A.from_dict(json.loads(albumentations_json(policy)))
    t.set_random_seed(0)
    assert np.array_equal(theirs, np.stack([t(image=img)["image"] for img in images.permute(0, 2, 3, 1).numpy()]))


def test_albumentations_maps_oneof_and_probabilities():
    first_sub = (OpConfig("invert", 0.1), OpConfig("rotate", 0.7, Magnitude(6.0, random_sign=True)))
    doc = to_albumentations(Policy("subpolicy_choice", subpolicies=(first_sub, (OpConfig("equalize", 0.9),)),
                                   weights=(3.0, 1.0)))
    (choice,) = doc["transform"]["transforms"]
    assert choice["__class_fullname__"] == "OneOf" and choice["p"] == 1.0
    first, second = choice["transforms"]
    assert first["__class_fullname__"] == "Sequential" and first["p"] == 0.75 and second["p"] == 0.25
    invert, rotate = first["transforms"]
    assert invert == {"__class_fullname__": "InvertImg", "p": 0.1}
    assert rotate["__class_fullname__"] == "OneOf" and rotate["p"] == 0.7  # the sign: one of +6 / -6 degrees
    assert [c["rotate"] for c in rotate["transforms"]] == [[6.0, 6.0], [-6.0, -6.0]]


def test_timm_string_builds_timms_transform(images):
    from PIL import Image
    from timm.data import create_transform
    from timm.data.auto_augment import RandAugment

    config = to_timm(preset("randaugment"))
    t = create_transform(32, is_training=True, auto_augment=config)
    ra = next(s for s in t.transforms if isinstance(s, RandAugment))
    assert ra.num_layers == 2 and all(op.prob == 1.0 and op.magnitude == 3 for op in ra.ops)
    out = t(Image.fromarray(images[0].permute(1, 2, 0).numpy()))
    assert out.shape == (3, 32, 32)


class _Repeat(Dataset):
    def __init__(self, image: torch.Tensor, transform) -> None:
        self.image, self.transform = image, transform

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int):
        return self.transform(self.image), torch.utils.data.get_worker_info().id


def _per_worker(transform, image, seed: int) -> dict[int, list[torch.Tensor]]:
    loader = DataLoader(_Repeat(image, transform), batch_size=None, num_workers=2,
                        generator=torch.Generator().manual_seed(seed))
    out: dict[int, list[torch.Tensor]] = {0: [], 1: []}
    for x, wid in loader:
        out[int(wid)].append(x)
    return out


@pytest.mark.parametrize("make", [lambda: to_torchvision(preset("trivialaugment_wide"), seed=3),
                                  lambda: PolicyTransform(preset("trivialaugment_wide"), seed=3)],
                         ids=["torchvision-export", "PolicyTransform"])
def test_seeded_transform_gives_each_dataloader_worker_its_own_reproducible_stream(images, make):
    first = _per_worker(make(), images[0], seed=0)
    assert len(first[0]) == len(first[1]) == 4
    assert not all(torch.equal(a, b) for a, b in zip(first[0], first[1], strict=True))  # workers differ
    again = _per_worker(make(), images[0], seed=0)
    assert all(torch.equal(a, b) for w in (0, 1) for a, b in zip(first[w], again[w], strict=True))  # reproducible
    other = _per_worker(make(), images[0], seed=1)  # next epoch / other loader seed: new draws
    assert not all(torch.equal(a, b) for a, b in zip(first[0], other[0], strict=True))


def test_seeded_transform_in_the_main_process_is_reproducible_and_leaves_global_rng(images):
    state = torch.get_rng_state()
    a = [to_torchvision(preset("randaugment"), seed=5)(images[0]) for _ in range(1)]
    t1, t2 = to_torchvision(preset("randaugment"), seed=5), to_torchvision(preset("randaugment"), seed=5)
    assert all(torch.equal(t1(img), t2(img)) for img in images)
    assert torch.equal(torch.get_rng_state(), state) and a


@pytest.mark.parametrize(("export", "policy", "message"), [
    (to_kornia, Policy("sequential", ops=(OpConfig("solarize_add", 1.0, Magnitude(0.2)),)),
     "kornia: no kornia.augmentation op for 'solarize_add'"),
    (to_albumentations, Policy("sequential", ops=(OpConfig("solarize_add", 1.0, Magnitude(0.2)),)),
     "albumentations: no albumentations transform for op 'solarize_add'"),
    (to_albumentations, Policy("sequential", ops=(OpConfig("sharpness", 1.0, Magnitude(0.5)),)),
     "albumentations: op 'sharpness' with a factor below 1"),
    (to_albumentations, Policy("sequential", ops=(OpConfig("rotate", 1.0, Magnitude(5.0, std=2.0)),)),
     "albumentations: op 'rotate' has a normal magnitude"),
    (to_albumentations, Policy("sequential", ops=(OpConfig("posterize", 1.0, Magnitude(0)),)),
     "albumentations: op 'posterize' to 0 bits"),
    (to_timm, preset("autoaugment_cifar10"), "timm strings cannot express a subpolicy_choice policy"),
    (kornia_source, Policy("sequential", ops=(OpConfig("hflip", 1.0),), batch_ops=(
        __import__("search_spaces").BatchOp("mixup", 0.5),)), "kornia: batch op 'mixup' is not exported"),
])
def test_inexpressible_policies_are_refused_in_one_line_naming_the_op(export, policy, message):
    with pytest.raises(ExportError) as info:
        export(policy)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_cli_export_refusal_is_one_line(campaign, tmp_path):
    save_policy(Policy("sequential", ops=(OpConfig("hflip", 0.5), OpConfig("solarize_add", 1.0, Magnitude(0.2)))),
                campaign / "top_k" / "rank2.json")
    result = CliRunner().invoke(app, ["export", str(campaign), "--format", "kornia", "--out", str(tmp_path / "k")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith("error: rank2: kornia: no kornia.augmentation op for "
                                                             "'solarize_add'")
    assert not (tmp_path / "k").exists()  # nothing half-written


def test_no_export_drops_an_op():
    policy = preset("crop_flip_cutout")
    meta: list = []
    to_albumentations(policy, meta=meta)
    assert [m[0] for m in meta] == [o.op for o in policy.all_ops()]
    tv = torchvision_source(policy)
    assert all(f"'op': '{o.op}'" in tv for o in policy.all_ops())
    assert len(to_kornia(policy).instances) == len(policy.all_ops())
