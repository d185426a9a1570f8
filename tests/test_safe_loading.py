"""No input can run code: checkpoints load with ``weights_only=True``, caches as plain arrays, policies as JSON.

A static scan of the source tree (AST, so comments and strings do not count) rejects every unsafe loader,
and real malicious files (pickles whose unpickling would write a marker file) are refused by the project's
own loaders without running anything.
"""

from __future__ import annotations

import ast
import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from search_spaces import PolicyError, load_policy
from trainers.engine import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("policy_search", "search_spaces", "trainers", "benchmarks")
BANNED_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"}
BANNED_CALLS = {  # dotted name -> why
    "yaml.load": "use yaml.safe_load", "yaml.unsafe_load": "use yaml.safe_load", "yaml.full_load": "use yaml.safe_load",
    "pd.read_pickle": "pickle", "pandas.read_pickle": "pickle", "torch.jit.load": "runs TorchScript",
    "eval": "runs code", "exec": "runs code",
}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def _keyword(call: ast.Call, name: str) -> object:
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else "<expression>"
    return "<missing>"


def unsafe_loads(path: Path) -> list[str]:
    """Every unsafe load in one Python file, as ``file:line: problem``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"{where}:{node.lineno}: imports {n}" for n in names if n.split(".")[0] in BANNED_MODULES]
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name in BANNED_CALLS:
                found.append(f"{where}:{node.lineno}: {name}() ({BANNED_CALLS[name]})")
            elif name == "torch.load" and _keyword(node, "weights_only") is not True:
                found.append(f"{where}:{node.lineno}: torch.load without weights_only=True")
            elif name in ("np.load", "numpy.load") and _keyword(node, "allow_pickle") is not False:
                found.append(f"{where}:{node.lineno}: np.load without allow_pickle=False")
    return found


def test_scanner_catches_unsafe_loads(tmp_path):
    bad = tmp_path / "unsafe_example.py"
    bad.write_text("import pickle\nimport yaml, torch, numpy as np\nyaml.load(s)\ntorch.load(p)\n"
                   "torch.load(p, weights_only=False)\nnp.load(p)\neval('1')\nmodel.eval()\n"
                   "torch.load(p, weights_only=True)\nnp.load(p, allow_pickle=False)\nyaml.safe_load(s)\n")
    problems = unsafe_loads(bad)
    assert [int(p.split(":")[1]) for p in problems] == [1, 3, 4, 5, 6, 7], problems


def test_source_tree_has_no_unsafe_loads():
    files = [p for d in SCANNED for p in sorted((ROOT / d).rglob("*.py"))]
    assert len(files) > 20
    problems = [msg for p in files for msg in unsafe_loads(p)]
    assert problems == []


class _Boom:
    """Unpickling this writes the marker file: proof that a loader ran code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path(self.marker).write_text, ("pwned",))


def test_a_pickled_policy_is_rejected_without_running(tmp_path):
    marker = tmp_path / "marker"
    payload = pickle.dumps(_Boom(str(marker)))
    for name in ("policy.json", "policy.pkl"):
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(PolicyError) as info:
            load_policy(tmp_path / name)
        assert "\n" not in str(info.value)
    assert not marker.exists()


def test_a_malicious_checkpoint_is_refused_without_running(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "ckpt.pt"
    torch.save({"model": _Boom(str(marker))}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(path)
    assert not marker.exists()


def test_a_pickled_array_in_an_npz_is_refused(tmp_path):
    marker = tmp_path / "marker"
    buffer = io.BytesIO()
    np.save(buffer, np.array([_Boom(str(marker))], dtype=object), allow_pickle=True)
    path = tmp_path / "data.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("images.npy", buffer.getvalue())
        zf.writestr("labels.npy", buffer.getvalue())
    from trainers.data import DataError, load_dataset

    with pytest.raises(DataError):
        load_dataset(str(path))
    assert not marker.exists() and os.listdir(tmp_path) == ["data.npz"]
