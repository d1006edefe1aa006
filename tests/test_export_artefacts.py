"""Issue 11 item 5: every file the README promises, for models that used to lose `subnet.py` or the ONNX file —
tensors read directly in forward (class token, positional table, nested LayerScale), nn.MultiheadAttention,
float16/bfloat16 weights, keyword inputs, and aten-level graphs from the torch.export capture. The generated source
is rebuilt in a fresh Python process without otov3 and must give the sub-network's outputs bit for bit."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

from never_silent_nets import TOKENS, AttnNet, DictNet, TokenNet, X, tiny
from otov3 import OTO
from subnet_equivalence import zero_groups_

SCALE = torch.rand(4, 8, generator=torch.Generator().manual_seed(2))
CASES = {
    "tokens": (TokenNet, TOKENS, None, "fx"),
    "attention": (AttnNet, TOKENS, None, "fx"),
    "tokens_fp16": (TokenNet, TOKENS, torch.float16, "fx"),
    "attention_bf16": (AttnNet, TOKENS, torch.bfloat16, "fx"),
    "keywords": (DictNet, {"x": X, "scale": SCALE}, None, "fx"),
    "tokens_export": (TokenNet, TOKENS, None, "export"),
    "tiny_export": (lambda: tiny(), X, None, "export"),
}

_REBUILD = textwrap.dedent('''
    import importlib.util, sys
    import torch
    root = sys.argv[1]
    for case in sys.argv[2:]:
        spec = importlib.util.spec_from_file_location("subnet_" + case, f"{root}/{case}/subnet.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        model = module.SubNet()
        model.load_state_dict(torch.load(f"{root}/{case}/state_dict.pt", weights_only=True))
        model.eval()
        args, kwargs = torch.load(f"{root}/{case}.inputs.pt", weights_only=True)
        with torch.no_grad():
            torch.save(model(*args, **kwargs), f"{root}/{case}.rebuilt.pt")
    assert not any(name.startswith("otov3") for name in sys.modules), "the generated source imported otov3"
''')


def _build(case: str, root):
    make, dummy, dtype, capture = CASES[case]
    torch.manual_seed(0)
    model = make()
    if dtype is not None:
        model = model.to(dtype)
        dummy = dummy.to(dtype)
    oto = OTO(model, dummy, capture=capture)
    zero_groups_([oto.groups[-1]])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a skipped file warns: not allowed here
        subnet = oto.construct_subnet(root / case)
    args, kwargs = ((), dummy) if isinstance(dummy, dict) else ((dummy,), {})
    torch.save((args, kwargs), root / f"{case}.inputs.pt")
    subnet.eval()
    with torch.no_grad():
        expected = subnet(*args, **kwargs)
    return model, subnet, expected


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory):
    root = tmp_path_factory.mktemp("artefacts")
    built = {case: _build(case, root) for case in CASES}
    subprocess.run([sys.executable, "-c", _REBUILD, str(root), *CASES], check=True, timeout=300,
                   env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"})
    return root, built


@pytest.mark.parametrize("case", list(CASES))
def test_every_promised_file_is_written_and_the_source_rebuilds_in_a_fresh_process(case, rebuilt):
    root, built = rebuilt
    _, subnet, expected = built[case]
    out = root / case
    assert sorted(p.name for p in out.iterdir()) == ["state_dict.pt", "subnet.onnx", "subnet.py", "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped"] == {} and summary["otov3_export"] == 1
    got = torch.load(root / f"{case}.rebuilt.pt", weights_only=True)
    if isinstance(expected, dict):
        assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected)
    else:
        assert got.dtype == expected.dtype and torch.equal(got, expected)


def test_low_precision_sources_convert_each_layer_to_its_dtype(rebuilt):
    root, _ = rebuilt
    assert ".to(torch.float16)" in (root / "tokens_fp16" / "subnet.py").read_text()
    source = (root / "attention_bf16" / "subnet.py").read_text()
    assert "nn.MultiheadAttention(embed_dim=8, num_heads=2" in source and ".to(torch.bfloat16)" in source


def test_tensors_read_in_forward_become_parameters_at_their_dotted_paths(rebuilt):
    root, built = rebuilt
    source = (root / "tokens" / "subnet.py").read_text()
    assert "self.register_parameter('cls_token', nn.Parameter(torch.empty((1, 1, 8)" in source
    assert "self.get_submodule('pos').register_parameter('table'" in source
    assert "self.get_submodule('blocks.0.ls').register_parameter('gamma'" in source
    aten = (root / "tokens_export" / "subnet.py").read_text()
    assert "torch.ops.aten.linear.default" in aten and "pytree.treespec_loads(" in aten


def test_keyword_inputs_reach_the_onnx_file_by_name(rebuilt):
    ort = pytest.importorskip("onnxruntime")
    root, built = rebuilt
    session = ort.InferenceSession(str(root / "keywords" / "subnet.onnx"))
    assert [i.name for i in session.get_inputs()] == ["x", "scale"]
    logits, features = session.run(None, {"x": X.numpy(), "scale": SCALE.numpy()})
    expected = built["keywords"][2]
    assert abs(logits - expected["logits"].numpy()).max() <= 1e-5
    assert abs(features - expected["features"].numpy()).max() <= 1e-5


def test_a_file_that_cannot_be_produced_is_named_in_a_warning_and_the_summary(tmp_path, monkeypatch):
    import otov3.subnet.export as export_module

    def no_onnx(*args, **kwargs):
        raise RuntimeError("Exporting the operator 'aten::frobnicate' to ONNX is not supported\nmore lines")

    monkeypatch.setattr(export_module.torch.onnx, "export", no_onnx)
    model = tiny()
    oto = OTO(model, X)
    zero_groups_([oto.group("a")])
    with pytest.warns(UserWarning, match=r"subnet\.onnx' was not written: the ONNX exporter failed: RuntimeError: "
                                         r"Exporting the operator 'aten::frobnicate'"):
        oto.construct_subnet(tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert list(summary["skipped"]) == ["subnet.onnx"] and "onnx" not in summary["files"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["state_dict.pt", "subnet.py", "summary.json"]
