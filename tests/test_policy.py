"""The policy format: presets, round trips, published definitions, and one-line validation errors."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from conftest import SHARED_REFERENCE  # tests/ is on sys.path under pytest
from torchvision.transforms import v2

from search_spaces import PRESETS, Magnitude, OpConfig, Policy, PolicyError, dumps, load_policy, loads, preset
from search_spaces.export import ExportError, to_timm
from search_spaces.magnitudes import RAND_AUGMENT_OPS, SPACES, TORCHVISION_NAMES, build_presets
from search_spaces.ops import OPS

REFERENCE_AA = SHARED_REFERENCE / "autoaugment-cifar10-policy.json"


@pytest.mark.parametrize("name", PRESETS)
def test_preset_files_equal_their_builders_and_round_trip(name, tmp_path):
    p = preset(name)
    assert p == build_presets()[name]
    text = dumps(p)
    assert (Path(__file__).parents[1] / "search_spaces" / "presets" / f"{name}.json").read_text() == text
    assert dumps(loads(text)) == text
    path = tmp_path / "p.json"
    path.write_text(text)
    assert dumps(load_policy(path)) == text


def _tv_value(space, name: str, bin_index: int, size: int = 32) -> float:
    values, _signed = space[name]
    v = float(values[bin_index]) if values.ndim else 0.0
    if name in ("Brightness", "Color", "Contrast", "Sharpness"):
        return 1.0 + v  # torchvision calls adjust_*(1.0 + magnitude)
    return v / size if name.startswith("Translate") else v


def test_autoaugment_cifar10_matches_torchvision_and_reference():
    aa = v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)
    space = aa._AUGMENTATION_SPACE
    tv_space = {k: (f(10, 32, 32), s) for k, (f, s) in space.items() if f is not None}
    ours = preset("autoaugment_cifar10").subpolicies
    published = aa._policies
    assert len(ours) == len(published) == 25
    if REFERENCE_AA.is_file():
        reference = [[tuple(e) for e in sp] for sp in json.loads(REFERENCE_AA.read_text())]
        assert reference == [[tuple(e) for e in sp] for sp in published]
    for sub, tv_sub in zip(ours, published, strict=True):
        for o, (name, prob, bin_index) in zip(sub, tv_sub, strict=True):
            assert o.op == TORCHVISION_NAMES[name] and o.prob == prob
            if o.magnitude is not None:
                assert o.magnitude.random_sign == space[name][1]
                assert o.magnitude.value == pytest.approx(_tv_value(tv_space, name, bin_index), abs=1e-6)


def test_randaugment_matches_torchvision_space():
    ra = v2.RandAugment(num_ops=2, magnitude=9)
    tv_space = {k: (f(31, 32, 32), s) for k, (f, s) in ra._AUGMENTATION_SPACE.items() if f is not None}
    p = preset("randaugment")
    assert p.num_ops == 2 and {o.op for o in p.ops} == set(RAND_AUGMENT_OPS)
    assert {TORCHVISION_NAMES[k] for k in ra._AUGMENTATION_SPACE} == set(RAND_AUGMENT_OPS)
    for o in p.ops:
        name = next(k for k, v in TORCHVISION_NAMES.items() if v == o.op)
        if o.magnitude is not None:
            assert o.magnitude.value == pytest.approx(_tv_value(tv_space, name, 9), abs=1e-6)


def test_trivialaugment_wide_ranges_match_torchvision():
    ta = v2.TrivialAugmentWide()
    p = preset("trivialaugment_wide")
    for name, (f, signed) in ta._AUGMENTATION_SPACE.items():
        values = f(31, 32, 32) if f is not None else None
        if values is None:
            continue
        values = values.float()
        o = next(o for o in p.ops if o.op == TORCHVISION_NAMES[name])
        lo, hi = float(values.min()), float(values.max())
        if name.startswith("Translate"):
            lo, hi = lo / 32, hi / 32
        if OPS[o.op].identity == 1.0 and signed:  # enhance ops: torchvision stores 1 + m
            lo, hi = lo + 1.0, hi + 1.0
        assert (o.magnitude.low, o.magnitude.high) == pytest.approx((lo, hi), abs=1e-6)
        assert o.magnitude.random_sign == signed
    assert SPACES["randaugment"].value("rotate", 9) == pytest.approx(9.0)


def _doc(**policy_overrides) -> dict:
    doc = json.loads(dumps(preset("randaugment")))
    doc["policy"].update(policy_overrides)
    return doc


BAD_DOCUMENTS = [
    ({"schema": "augpolicy/2.0", "policy": {}}, "schema"),
    ({"policy": {}}, "schema"),
    ([1, 2], "top level"),
    (_doc(ops=[{"op": "teleport", "prob": 0.5}]), "policy.ops[0].op"),
    (_doc(ops=[{"op": "rotate", "prob": 1.5, "magnitude": {"value": 3}}]), "policy.ops[0].prob"),
    (_doc(ops=[{"op": "rotate", "prob": 0.5, "magnitude": {"value": 400}}]), "policy.ops[0].magnitude.value"),
    (_doc(ops=[{"op": "rotate", "prob": 0.5}]), "policy.ops[0].magnitude"),
    (_doc(ops=[{"op": "invert", "magnitude": {"value": 1}}]), "policy.ops[0].magnitude"),
    (_doc(ops=[{"op": "rotate", "prob": "high", "magnitude": {"value": 3}}]), "policy.ops[0].prob"),
    (_doc(ops=[{"op": "rotate", "magnitude": {"value": True}}]), "policy.ops[0].magnitude.value"),
    (_doc(ops=[{"op": "posterize", "magnitude": {"value": 4.5}}]), "policy.ops[0].magnitude.value"),
    (_doc(ops=[{"op": "rotate", "magnitude": {"low": 10, "high": 5}}]), "policy.ops[0].magnitude"),
    (_doc(ops=[{"op": "rotate", "prb": 0.3, "magnitude": {"value": 1}}]), "policy.ops[0].prb"),
    (_doc(ops=[]), "policy.ops"),
    (_doc(num_ops="two"), "policy.num_ops"),
    (_doc(type="magic"), "policy.type"),
    ({**_doc(), "batch_ops": [{"op": "mixup", "prob": 0.7}, {"op": "cutmix", "prob": 0.7}]}, "batch_ops"),
    ({**_doc(), "defaults": {"interpolation": "cubic"}}, "defaults.interpolation"),
    ({**_doc(), "defaults": {"fill": [2, 0, 0]}}, "defaults.fill"),
    ({**_doc(), "input_contract": {"channels": [4]}}, "input_contract.channels"),
    ({"schema": "augpolicy/1.0", "policy": {"type": "subpolicy_choice", "subpolicies": [[]]}}, "subpolicies[0]"),
    ({"schema": "augpolicy/1.0", "policy": {"type": "subpolicy_choice", "subpolicies": [[{"op": "invert"}]],
                                            "weights": [1, 2]}}, "policy.weights"),
]


@pytest.mark.parametrize("doc,field", BAD_DOCUMENTS)
def test_invalid_documents_give_one_line_errors_naming_the_field(doc, field):
    with pytest.raises(PolicyError) as err:
        loads(json.dumps(doc))
    message = str(err.value)
    assert "\n" not in message and field in message


@pytest.mark.parametrize("text", ["", "{", '{"schema": NaN}', "[1, 2", b"\xff\xfe", "null"])
def test_non_json_is_rejected(text):
    with pytest.raises(PolicyError):
        loads(text)


def test_pickle_is_never_executed(tmp_path):
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('executed')",))

    path = tmp_path / "evil.json"
    path.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(PolicyError, match="evil.json"):
        load_policy(path)


def test_missing_file_and_unknown_preset():
    with pytest.raises(PolicyError, match="no such policy file or preset"):
        load_policy("does/not/exist.json")
    with pytest.raises(PolicyError, match="unknown preset"):
        preset("autoaugment_imagenet")


def test_vendor_keys_and_provenance_are_preserved():
    doc = {**json.loads(dumps(preset("crop_flip"))), "x-acme": {"owner": "me"}}
    p = loads(json.dumps(doc)).with_provenance(search_id="abc", score=0.81)
    again = loads(dumps(p))
    assert again.extras == {"x-acme": {"owner": "me"}} and again.provenance["score"] == 0.81
    assert dumps(again) == dumps(p)


def test_constructor_validates_too():
    with pytest.raises(PolicyError, match="outside rotate's range"):
        Policy("sequential", ops=(OpConfig("rotate", 1.0, Magnitude(200.0)),))


@pytest.mark.parametrize("ops", [
    [{"op": "teleport", "prob": 0.5}],
    [{"op": 7}],
    [{"op": "rotate", "prob": "high", "magnitude": {"value": 3}}],
    [{"op": "rotate", "prob": True, "magnitude": {"value": 3}}],
    [{"op": "rotate", "magnitude": {"value": True}}],
    [{"op": "rotate", "magnitude": {"value": 3, "random_sign": "yes"}}],
    [{"op": "invert", "weight": -1}],
    [{"op": "posterize", "magnitude": {"value": 4.5}}],
])
def test_json_and_constructor_share_one_validator(ops):
    """The same mistake gives the same one-line message whether the policy comes from JSON or from Python."""
    with pytest.raises(PolicyError) as from_json:
        loads(json.dumps(_doc(ops=ops)))
    built = [OpConfig(o["op"], o.get("prob", 1.0), None if "magnitude" not in o else Magnitude(
        o["magnitude"].get("value"), random_sign=o["magnitude"].get("random_sign", False)), o.get("weight", 1.0))
        for o in ops]
    with pytest.raises(PolicyError) as from_python:
        Policy("rand_augment", ops=tuple(built), num_ops=2)
    assert str(from_json.value) == str(from_python.value)


def test_numbers_are_stored_as_floats_whatever_their_type():
    """An int probability in Python equals the same policy read from JSON, and writes the same bytes."""
    built = Policy("sequential", ops=(OpConfig("hflip", 1), OpConfig("rotate", 1, Magnitude(10))), fill=[0, 1, 0])
    assert built.ops[0].prob == 1.0 and isinstance(built.ops[0].prob, float) and built.fill == (0.0, 1.0, 0.0)
    assert loads(dumps(built)) == built and dumps(loads(dumps(built))) == dumps(built)


def test_to_timm_and_fidelity():
    assert to_timm(preset("randaugment")) == "rand-m3-n2-p1-inc1"
    assert to_timm(preset("trivialaugment_wide")) == "rand-m10-mstd101-n1-p1-inc1"
    with pytest.raises(ExportError):
        to_timm(preset("autoaugment_cifar10"))
    report = preset("autoaugment_cifar10").fidelity()
    assert report["torchvision"]["fidelity"] == "exact" and report["timm"]["fidelity"] == "unsupported"
    assert preset("randaugment").fidelity()["timm"]["fidelity"] == "approximate"


def test_to_torchvision_replays_per_image(cifar_images):
    """The torchvision export takes one image (PIL or tensor), gives our Augmenter's pixels where the op is
    deterministic, and a seeded export replays its random draws exactly."""
    from PIL import Image

    from search_spaces import Augmenter

    t = preset("trivialaugment_wide").to_torchvision()
    assert isinstance(t, v2.Transform)
    img = Image.fromarray(cifar_images[0].permute(1, 2, 0).numpy())
    out = t(img)
    assert isinstance(out, Image.Image) and out.size == (32, 32)
    assert t(cifar_images[0]).shape == (3, 32, 32)
    # deterministic ops (probability 1, fixed magnitude): image by image, the export's pixels are the Augmenter's
    # (autocontrast within one uint8 level: torchvision's uint8 kernel truncates where ours rounds)
    for op, magnitude, levels in (("invert", None, 0), ("equalize", None, 0), ("posterize", 4.0, 0),
                                  ("autocontrast", None, 1)):
        policy = Policy("sequential", ops=(OpConfig(op, 1.0, None if magnitude is None else Magnitude(magnitude)),))
        exported, ours = policy.to_torchvision(), Augmenter(policy)
        for x in cifar_images[:4]:
            diff = exported(x).int() - ours(x[None], generator=torch.Generator().manual_seed(0))[0].int()
            assert int(diff.abs().max()) <= levels, op
    # random draws: the same seed replays per image, another seed draws differently
    images = list(cifar_images[:16])
    first, again = (preset("randaugment").to_torchvision(seed=3) for _ in range(2))
    draws = [first(x) for x in images]
    assert all(torch.equal(a, again(x)) for a, x in zip(draws, images, strict=True))
    other = preset("randaugment").to_torchvision(seed=4)
    assert any(not torch.equal(a, other(x)) for a, x in zip(draws, images, strict=True))
    pipeline = v2.Compose([preset("crop_flip").to_torchvision(seed=0), v2.ToDtype(torch.float32, scale=True)])
    assert pipeline(cifar_images[1]).dtype == torch.float32