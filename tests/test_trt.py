"""TensorRT engines: everything that runs without a GPU, and the GPU tests (marked ``gpu``).

Without a GPU (every CI machine): profile parsing, chunking, the fp32 escalation
policy, inspector JSON parsing (TensorRT 10.x and 11.x schemas, hand-written
samples shaped as the docs show), the fusion report, the manifest's engine
section and its compatibility check, the refusal paths, and a grep that keeps
TensorRT 11's removed weak-typing API out of our source.

With a GPU and TensorRT: build an engine from the default model, parity,
batches inside and outside the profile, the CUDA-graph path, and the refusal of
an engine built for another TensorRT.
"""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vit_deploy import batch_profile
from vit_deploy.batch_profile import BatchProfile, Chunk, plan_chunks
from vit_deploy.errors import (
    BackendUnavailableError,
    ConfigError,
    EngineMismatchError,
    InputDTypeError,
    InputShapeError,
    ManifestError,
)
from vit_deploy.export.tensorrt import engine_info as trt_inspect
from vit_deploy.export.tensorrt import fp16 as trt_fp16
from vit_deploy.export.tensorrt import fusion_report as trt_fusion
from vit_deploy.export.tensorrt import graph as trt_graph
from vit_deploy.export.tensorrt import precision as trt_precision
from vit_deploy.export.tensorrt.artifact import engine_manifest_section
from vit_deploy.export.tensorrt.engine_info import parse_engine_information
from vit_deploy.export.tensorrt.fusion_report import fusion_report
from vit_deploy.export.tensorrt.graph import NodeInfo
from vit_deploy.export.tensorrt.precision import Fp32Keep, next_fp32_keep_list
from vit_deploy.runtime.tensorrt import env as trt_env
from vit_deploy.runtime.tensorrt.env import check_engine_compat

ROOT = Path(__file__).resolve().parents[1]
TRT_BUILD = ROOT / "vit_deploy" / "export" / "tensorrt" / "build.py"  # every TensorRT build call


def _trt_sources() -> list[Path]:
    """Every module that touches TensorRT: the build calls first, the backend, the other
    ``tensorrt`` packages' modules, and any other source that imports ``tensorrt``."""
    sources = [TRT_BUILD, ROOT / "vit_deploy" / "runtime" / "tensorrt" / "backend.py"]
    sources += sorted((ROOT / "vit_deploy" / "export" / "tensorrt").glob("*.py"))
    sources += sorted((ROOT / "vit_deploy" / "runtime" / "tensorrt").glob("*.py"))
    for path in sorted((ROOT / "vit_deploy").rglob("*.py")):
        if re.search(r"^\s*(import tensorrt|from tensorrt\b)", path.read_text(), re.MULTILINE):
            sources.append(path)
    return list(dict.fromkeys(sources))


TRT_SOURCES = _trt_sources()


def _tensorrt_importable() -> bool:
    try:
        importlib.import_module("tensorrt")
    except Exception:
        return False
    return True


HAS_TRT_GPU = torch.cuda.is_available() and _tensorrt_importable()
requires_trt = pytest.mark.skipif(
    not HAS_TRT_GPU, reason="needs a CUDA GPU and TensorRT >= 10.12; missing here"
)


# ------------------------------------------------------------------ profile parsing


def test_profile_parses_min_opt_max():
    p = BatchProfile.parse("1:8:32")
    assert (p.min, p.opt, p.max) == (1, 8, 32)
    assert str(p) == "1:8:32"
    assert p.shapes(3, 224) == ((1, 3, 224, 224), (8, 3, 224, 224), (32, 3, 224, 224))
    assert BatchProfile.parse(" 4:4:4 ").is_static


@pytest.mark.parametrize(
    "text, expected",
    [
        ("8:4:1", "1 <= MIN <= OPT <= MAX, got '8:4:1'"),
        ("0:1:2", "1 <= MIN <= OPT <= MAX, got '0:1:2'"),
        ("a:b:c", "three positive ints (e.g. 1:8:32), got 'a:b:c'"),
        ("1:2", "expected MIN:OPT:MAX"),
        ("1:2:3:4", "expected MIN:OPT:MAX"),
        ("", "expected MIN:OPT:MAX"),
    ],
)
def test_profile_errors_say_expected_and_got(text, expected):
    with pytest.raises(ConfigError) as err:
        BatchProfile.parse(text)
    assert expected in str(err.value)


def test_single_number_is_refused_with_both_meanings():
    # "4" could mean a static 4:4:4 or "up to 4" (1:4:4); we refuse to guess
    with pytest.raises(ConfigError) as err:
        BatchProfile.parse("4")
    msg = str(err.value)
    assert "expected MIN:OPT:MAX, got '4'" in msg
    assert "4:4:4" in msg and "1:4:4" in msg


def test_profile_from_the_onnx_export_options():
    from vit_deploy.export.options import BatchProfile as OnnxProfile

    assert batch_profile.as_profile(OnnxProfile(2, 4, 8)) == BatchProfile(2, 4, 8)
    assert batch_profile.as_profile("1:8:32") == BatchProfile(1, 8, 32)
    with pytest.raises(ConfigError):
        batch_profile.as_profile(8)


def test_profile_round_trips_through_dict():
    p = BatchProfile(2, 8, 16)
    assert BatchProfile.from_dict(p.to_dict()) == p
    with pytest.raises(ManifestError):
        BatchProfile.from_dict({"min": 1})


# ------------------------------------------------------------------ chunking


def test_batch_inside_profile_is_one_call():
    assert plan_chunks(8, BatchProfile(1, 8, 32)) == [Chunk(0, 8, 8)]
    assert plan_chunks(32, BatchProfile(1, 8, 32)) == [Chunk(0, 32, 32)]


def test_batch_above_max_is_split_in_chunks_of_max():
    chunks = plan_chunks(70, BatchProfile(1, 8, 32))
    assert chunks == [Chunk(0, 32, 32), Chunk(32, 64, 32), Chunk(64, 70, 6)]
    assert sum(c.stop - c.start for c in chunks) == 70


def test_chunks_below_min_are_padded():
    # remainder 2 < MIN 4: runs as 4 rows, 2 of them padding
    chunks = plan_chunks(10, BatchProfile(4, 8, 8))
    assert chunks == [Chunk(0, 8, 8), Chunk(8, 10, 4)]
    assert chunks[-1].pad == 2
    assert plan_chunks(1, BatchProfile(4, 4, 4)) == [Chunk(0, 1, 4)]
    with pytest.raises(ConfigError):
        plan_chunks(0, BatchProfile(1, 1, 1))


def test_precision_defaults_per_format():
    assert trt_precision.resolve_precision("trt", None) == "fp16"
    assert trt_precision.resolve_precision("onnx", None) == "fp32"
    assert trt_precision.resolve_precision("trt", "fp32") == "fp32"
    with pytest.raises(ConfigError, match="expected fp32 or fp16 for a TensorRT engine"):
        trt_precision.resolve_precision("trt", "int8")
    with pytest.raises(ConfigError, match="expected one of"):
        trt_precision.resolve_precision("trt", "bf8")


# ------------------------------------------------------------------ fp32 escalation


def test_escalation_policy_steps_then_gives_up():
    steps = [Fp32Keep()]
    while (nxt := next_fp32_keep_list(steps[-1])) is not None:
        steps.append(nxt)
    assert [s.level for s in steps] == [0, 1, 2, 3]
    assert [s.name for s in steps] == [
        "default fp32 ops",
        "default fp32 ops, attention matmuls",
        "default fp32 ops, attention matmuls, first/last blocks",
        "all-fp32",
    ]
    # the first attempt keeps exactly what the ONNX export keeps by default
    from vit_deploy.export.options import DEFAULT_FP32_OPS

    assert steps[0].op_types == tuple(DEFAULT_FP32_OPS)
    assert steps[1].attention_matmuls and not steps[1].edge_blocks
    assert steps[2].attention_matmuls and steps[2].edge_blocks
    assert steps[3].all_fp32
    assert next_fp32_keep_list(steps[3]) is None


def test_escalation_keeps_what_the_caller_added():
    start = Fp32Keep(op_types=("LayerNormalization", "Softmax", "Erf"))
    nxt = next_fp32_keep_list(start)
    assert nxt.op_types == start.op_types
    assert nxt.name == "LayerNormalization+Softmax+Erf, attention matmuls"
    assert Fp32Keep.from_dict(nxt.to_dict()) == nxt


# The two ways torch's exporters name nodes: TorchScript puts the module path in
# the name; dynamo names nodes "node_matmul_2" and records the path in metadata.
TS_NODES = [
    NodeInfo("/patch_embed/proj/Conv", "Conv", "/patch_embed/proj/Conv"),
    NodeInfo("/blocks.0/norm1/LayerNormalization", "LayerNormalization", ""),
    NodeInfo("/blocks.0/attn/qkv/MatMul", "MatMul", "/blocks.0/attn/qkv/MatMul"),
    NodeInfo("/blocks.0/attn/MatMul", "MatMul", "/blocks.0/attn/MatMul"),
    NodeInfo("/blocks.0/attn/Softmax", "Softmax", "/blocks.0/attn/Softmax"),
    NodeInfo("/blocks.0/attn/MatMul_1", "MatMul", "/blocks.0/attn/MatMul_1"),
    NodeInfo("/blocks.0/attn/proj/MatMul", "MatMul", "/blocks.0/attn/proj/MatMul"),
    NodeInfo("/blocks.1/attn/MatMul", "MatMul", "/blocks.1/attn/MatMul"),
    NodeInfo("/blocks.1/mlp/fc1/MatMul", "MatMul", "/blocks.1/mlp/fc1/MatMul"),
    NodeInfo("/blocks.2/attn/MatMul", "MatMul", "/blocks.2/attn/MatMul"),
    NodeInfo("/blocks.2/mlp/fc1/MatMul", "MatMul", "/blocks.2/mlp/fc1/MatMul"),
    NodeInfo("/head/Gemm", "Gemm", "/head/Gemm"),
]


def test_scopes_from_both_exporters():
    dynamo_meta = {"pkg.torch.onnx.name_scopes": "['', 'blocks.1', 'blocks.1.attn', 'matmul_2']"}
    scope = trt_graph.node_scope("node_matmul_2", dynamo_meta)
    assert scope == "blocks.1/blocks.1.attn/matmul_2"
    assert trt_graph.block_index(scope) == 1
    assert trt_graph.is_attention_matmul(NodeInfo("node_matmul_2", "MatMul", scope))
    qkv = trt_graph.node_scope(
        "node_MatMul_52",
        {"pkg.torch.onnx.name_scopes": "['', 'blocks.1', 'blocks.1.attn', 'blocks.1.attn.qkv']"},
    )
    assert not trt_graph.is_attention_matmul(NodeInfo("node_MatMul_52", "MatMul", qkv))
    assert trt_graph.node_scope("/blocks.11/attn/MatMul") == "/blocks.11/attn/MatMul"
    assert trt_graph.block_index("/blocks.11/attn/MatMul") == 11
    assert trt_graph.block_index("/head/Gemm") is None


def test_resolve_fp32_nodes_per_level():
    keep = Fp32Keep()
    assert trt_precision.resolve_fp32_nodes(keep, TS_NODES, depth=3) == []  # op types only
    keep = next_fp32_keep_list(keep)
    assert trt_precision.resolve_fp32_nodes(keep, TS_NODES, depth=3) == [
        "/blocks.0/attn/MatMul",
        "/blocks.0/attn/MatMul_1",
        "/blocks.1/attn/MatMul",
        "/blocks.2/attn/MatMul",
    ]
    keep = next_fp32_keep_list(keep)
    edge = trt_precision.resolve_fp32_nodes(keep, TS_NODES, depth=3)
    assert "/patch_embed/proj/Conv" in edge and "/head/Gemm" in edge  # outside the blocks
    assert "/blocks.0/attn/qkv/MatMul" in edge and "/blocks.2/mlp/fc1/MatMul" in edge
    assert "/blocks.1/mlp/fc1/MatMul" not in edge  # a middle block keeps fp16 there
    keep = next_fp32_keep_list(keep)
    assert len(trt_precision.resolve_fp32_nodes(keep, TS_NODES, depth=3)) == len(TS_NODES)


def test_onnx_node_infos_read_dynamo_metadata():
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    node = helper.make_node("MatMul", ["a", "b"], ["c"], name="node_matmul")
    entry = node.metadata_props.add()
    entry.key = "pkg.torch.onnx.name_scopes"
    entry.value = "['', 'blocks.0', 'blocks.0.attn', 'matmul']"
    sm = helper.make_node("Softmax", ["c"], ["d"], name="/blocks.0/attn/Softmax")
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 2]) for n in "abd"]
    model = helper.make_model(helper.make_graph([node, sm], "g", vi[:2], vi[2:]))
    onnx.checker.check_model(model)
    infos = trt_graph.onnx_node_infos(model)
    assert infos[0] == NodeInfo("node_matmul", "MatMul", "blocks.0/blocks.0.attn/matmul")
    assert trt_graph.attention_core_nodes(infos) == {"node_matmul": 0, "/blocks.0/attn/Softmax": 0}


def test_fp16_converter_falls_back_without_modelopt():
    expected = (
        "modelopt-autocast"
        if importlib.util.find_spec("modelopt") is not None
        else "onnxconverter-common"
    )
    assert trt_fp16.fp16_converter() == expected


# ------------------------------------------------------------------ inspector JSON
# Shapes follow NVIDIA's docs: 10.x lists "Bindings" as names and a
# "Format/Datatype" string per layer tensor; 11.x has "I/O Tensors" objects
# (Name, IOMode, DataType, Dimensions, Location, IsShapeInferenceIO, ProfileInfo)
# and separate "Format" / "DataType". These samples are hand-written: they check the
# parser's structure and the fusion rule, which reads the documented "[ONNX Layer: ...]"
# metadata (one layer implementing MatMul+Softmax+MatMul = fused). The kernel names in them
# ("_gemm_mha_v2", as quoted in NVIDIA/TensorRT issues) are unverified: the fused / unfused
# labels must not depend on them (see the kernel-name tests below), and
# test_real_inspector_json checks the markers once a real engine's JSON is captured.


def _layer10(name, layer_type, tactic, refs, dtype="Half"):
    fmt = f"Row major linear {'FP16' if dtype == 'Half' else 'FP32'} format"
    return {
        "Name": name,
        "LayerType": layer_type,
        "Inputs": [{"Name": "in", "Dimensions": [-1, 2, 65, 64], "Format/Datatype": fmt}],
        "Outputs": [{"Name": "out", "Dimensions": [-1, 2, 65, 64], "Format/Datatype": fmt}],
        "TacticName": tactic,
        "StreamId": 0,
        "Metadata": "".join(f"[ONNX Layer: {r}]" for r in refs),
    }


def _layer11(name, layer_type, tactic, refs, dtype="Half"):
    fmt = f"Row major linear {'FP16' if dtype == 'Half' else 'FP32'} format (kLINEAR)"
    tensor = {"Location": "Device", "Dimensions": [-1, 2, 65, 64], "Format": fmt, "DataType": dtype}
    return {
        "Name": name,
        "LayerType": layer_type,
        "Inputs": [dict(tensor, Name="in")],
        "Outputs": [dict(tensor, Name="out")],
        "TacticName": tactic,
        "StreamId": 0,
        "Metadata": "".join(f"[ONNX Layer: {r}]" for r in refs),
    }


def _fused_layers(make, depth=2, kernels=True):
    """``kernels=False``: the same structure with kernel names that carry no marker."""
    if not kernels:
        return [
            {**layer, "Name": f"layer_{i}", "TacticName": f"sm90_xmma_gemm_{i}"}
            for i, layer in enumerate(_fused_layers(make, depth))
        ]
    layers = [
        make(
            "/patch_embed/proj/Conv",
            "CaskConvolution",
            "sm90_xmma_fprop",
            ["/patch_embed/proj/Conv"],
            "Float",
        )
    ]
    for b in range(depth):
        layers.append(
            make(
                f"/blocks.{b}/attn/qkv/MatMul_myl0_{b}",
                "gemm",
                "sm90_xmma_gemm_f16f16_f16f32",
                [f"/blocks.{b}/attn/qkv/MatMul"],
            )
        )
        layers.append(
            make(
                f"_gemm_mha_v2_myl0_{b}",
                "kgen",
                "_gemm_mha_v2_0x957a2fe283f77dcf",
                [
                    f"/blocks.{b}/attn/MatMul",
                    f"/blocks.{b}/attn/Softmax",
                    f"/blocks.{b}/attn/MatMul_1",
                ],
            )
        )
    return layers


def _unfused_layers(make, depth=2, kernels=False):
    """``kernels=True``: separate layers whose kernel names look like fused MHA."""
    if kernels:
        return [
            {**layer, "TacticName": f"fmha_v2_flash_attention_fp16_{i}"}
            for i, layer in enumerate(_unfused_layers(make, depth))
        ]
    layers = []
    for b in range(depth):
        layers.append(
            make(f"__myl_gemm_{b}a", "gemm", "sm80_xmma_gemm_f16", [f"/blocks.{b}/attn/MatMul"])
        )
        layers.append(
            make(f"__myl_softmax_{b}", "kgen", "__myl_bb1_4_Softmax", [f"/blocks.{b}/attn/Softmax"])
        )
        layers.append(
            make(f"__myl_gemm_{b}b", "gemm", "sm80_xmma_gemm_f16", [f"/blocks.{b}/attn/MatMul_1"])
        )
    return layers


def sample_10x(layers):
    return json.dumps({"Layers": layers, "Bindings": ["pixels", "logits", "embedding"]})


def sample_11x(layers):
    def io(name, mode, dims):
        return {
            "Name": name,
            "IOMode": mode,
            "DataType": "Float",
            "Dimensions": dims,
            "Location": "Device",
            "IsShapeInferenceIO": False,
            "ProfileInfo": [
                {
                    "MinShape": [1, *dims[1:]],
                    "OptShape": [8, *dims[1:]],
                    "MaxShape": [32, *dims[1:]],
                    "Format": "Row major linear FP32 format (kLINEAR)",
                }
            ],
        }

    return json.dumps(
        {
            "Layers": layers,
            "I/O Tensors": [
                io("pixels", "Input", [-1, 3, 32, 32]),
                io("logits", "Output", [-1, 10]),
                io("embedding", "Output", [-1, 128]),
            ],
        }
    )


def test_parse_10x_schema():
    info = parse_engine_information(sample_10x(_fused_layers(_layer10)))
    assert info.schema == "10.x" and info.detailed
    assert [t.name for t in info.io_tensors] == ["pixels", "logits", "embedding"]
    assert {t.mode for t in info.io_tensors} == {"unknown"}  # 10.x lists names only
    conv = info.layers[0]
    assert conv.layer_type == "CaskConvolution"
    assert conv.inputs[0].dtype == "fp32" and conv.inputs[0].dims == (-1, 2, 65, 64)
    assert info.layers[2].outputs[0].dtype == "fp16"
    assert info.layers[2].onnx_refs == (
        "/blocks.0/attn/MatMul",
        "/blocks.0/attn/Softmax",
        "/blocks.0/attn/MatMul_1",
    )
    assert info.dtype_counts() == {"fp16": 4, "fp32": 1}


def test_parse_11x_schema():
    info = parse_engine_information(sample_11x(_fused_layers(_layer11)))
    assert info.schema == "11.x" and info.detailed
    pixels, logits, _ = info.io_tensors
    assert (pixels.name, pixels.mode, pixels.dtype) == ("pixels", "input", "fp32")
    assert pixels.profile == ((1, 3, 32, 32), (8, 3, 32, 32), (32, 3, 32, 32))
    assert logits.mode == "output" and logits.dims == (-1, 10)
    t = info.layers[2].inputs[0]
    assert t.dtype == "fp16" and t.format.startswith("Row major linear FP16")
    assert info.dtype_counts() == {"fp16": 4, "fp32": 1}


def test_parse_names_only_and_bad_json():
    info = parse_engine_information({"Layers": ["a + b", "c"], "Bindings": ["x"]})
    assert not info.detailed and [layer.name for layer in info.layers] == ["a + b", "c"]
    with pytest.raises(ManifestError, match="expected JSON"):
        parse_engine_information("{not json")
    with pytest.raises(ManifestError, match="expected a JSON object"):
        parse_engine_information("[1, 2]")


@pytest.mark.parametrize(
    "dtype_text, expected",
    [
        ("Half", "fp16"),
        ("Float", "fp32"),
        ("BF16", "bf16"),
        ("Int8", "int8"),
        ("Row major linear FP16 format", "fp16"),
        ("Thirty-two wide channel vectorized row major Int8 format.", "int8"),
        ("N/A due to dynamic shapes", "unknown"),
    ],
)
def test_parse_dtype(dtype_text, expected):
    assert trt_inspect.parse_dtype(dtype_text) == expected


# ------------------------------------------------------------------ fusion report


@pytest.mark.parametrize("make, sample", [(_layer10, sample_10x), (_layer11, sample_11x)])
def test_fusion_report_fused(make, sample):
    report = fusion_report(parse_engine_information(sample(_fused_layers(make))), depth=2)
    assert report.status == "fused" and report.all_fused and report.n_fused == 2
    assert [b.status for b in report.blocks] == ["fused", "fused"]
    assert report.fused_layers == ("_gemm_mha_v2_myl0_0", "_gemm_mha_v2_myl0_1")
    text = trt_fusion.format_fusion_report(report)
    assert "fused (2/2 blocks fused)" in text and "WARNING" not in text
    assert json.loads(json.dumps(report.to_dict()))["fused_blocks"] == 2


@pytest.mark.parametrize("make, sample", [(_layer10, sample_10x), (_layer11, sample_11x)])
def test_fusion_report_not_fused_warns_loudly(make, sample):
    report = fusion_report(parse_engine_information(sample(_unfused_layers(make))), depth=2)
    assert report.status == "not_fused" and report.n_fused == 0
    assert all(b.status == "not_fused" for b in report.blocks)
    assert "WARNING: attention is NOT fused" in trt_fusion.format_fusion_report(report)


@pytest.mark.parametrize("make, sample", [(_layer10, sample_10x), (_layer11, sample_11x)])
def test_fusion_status_comes_from_structure_not_kernel_names(make, sample):
    # one layer implementing the whole attention core is fused, whatever its kernel is called
    plain = fusion_report(parse_engine_information(sample(_fused_layers(make, kernels=False))), 2)
    assert plain.status == "fused" and plain.fused_layers == ("layer_2", "layer_4")
    assert [b.kernel_hint for b in plain.blocks] == [False, False]
    # separate layers are not fused, even when their kernels are named like fused MHA
    lookalike = fusion_report(
        parse_engine_information(sample(_unfused_layers(make, kernels=True))), 2
    )
    assert lookalike.status == "not_fused" and lookalike.fused_layers == ()
    assert [b.kernel_hint for b in lookalike.blocks] == [True, True]
    assert "unverified" in lookalike.to_dict()["kernel_hints"]


def test_kernel_names_alone_never_make_fused():
    # fused-looking kernels whose layers name no ONNX node: unknown, with the hint noted
    layers = [_layer10(f"_gemm_mha_v2_myl0_{b}", "kgen", "_gemm_mha_v2_0x1", []) for b in range(2)]
    report = fusion_report(parse_engine_information(sample_10x(layers)), depth=2)
    assert report.status == "unknown" and report.n_fused == 0
    assert "2 layers have fused-MHA-like kernel names" in report.reason
    assert trt_fusion.KERNEL_HINT_STATUS in report.reason


REAL_INSPECTOR_JSON = ROOT / "benchmarks" / "results" / "gpu" / "trt_inspector.json"


@pytest.mark.skipif(
    not REAL_INSPECTOR_JSON.is_file(),
    reason="no real engine's inspector JSON captured yet (scripts/gpu_check.sh saves one to "
    "benchmarks/results/gpu/trt_inspector.json): the kernel-name markers stay unverified",
)
def test_real_inspector_json():
    from vit_deploy.assets import load_default_model

    info = parse_engine_information(REAL_INSPECTOR_JSON.read_text())
    assert info.detailed and info.layers
    depth = load_default_model().config.depth
    report = fusion_report(info, depth)
    # where the structure says fused, do the kernel-name markers agree?
    for block in report.blocks:
        if block.status in ("fused", "not_fused"):
            assert block.kernel_hint == (block.status == "fused"), block


def test_fusion_report_partial():
    layers = _fused_layers(_layer10, depth=1) + [
        layer for layer in _unfused_layers(_layer10, depth=2) if "blocks.1" in layer["Metadata"]
    ]
    report = fusion_report(parse_engine_information(sample_10x(layers)), depth=2)
    assert report.status == "partial"
    assert [b.status for b in report.blocks] == ["fused", "not_fused"]
    assert "1 of 2 blocks not fused" in report.reason


def test_fusion_report_maps_dynamo_names_through_the_graph():
    # dynamo names carry no block; the ONNX graph's scopes say which block each is
    layers = [
        _layer10(
            "_gemm_mha_v2_myl0_3",
            "kgen",
            "_gemm_mha_v2_0xab",
            ["node_matmul", "node_softmax", "node_matmul_1"],
        ),
        _layer10("__myl_gemm", "gemm", "sm80_xmma_gemm", ["node_matmul_2"]),
        _layer10("__myl_sm", "kgen", "__myl_Softmax", ["node_softmax_1"]),
        _layer10("__myl_gemm2", "gemm", "sm80_xmma_gemm", ["node_matmul_3"]),
    ]
    core = {
        "node_matmul": 0,
        "node_softmax": 0,
        "node_matmul_1": 0,
        "node_matmul_2": 1,
        "node_softmax_1": 1,
        "node_matmul_3": 1,
    }
    info = parse_engine_information(sample_10x(layers))
    report = fusion_report(info, depth=2, core_nodes=core)
    assert [b.status for b in report.blocks] == ["fused", "not_fused"]
    # without the map the names say nothing: unknown, never "fused" by accident
    blind = fusion_report(info, depth=2)
    assert blind.blocks[1].status == "unknown"


def test_fusion_report_unknown_cases():
    names_only = fusion_report(parse_engine_information({"Layers": ["x"]}), depth=2)
    assert names_only.status == "unknown" and "DETAILED" in names_only.reason
    myelin = [
        _layer10(
            "{ForeignNode[/blocks.0/attn/MatMul.../head/Gemm]}",
            "Myelin",
            "",
            ["/blocks.0/attn/MatMul"],
        )
    ]
    report = fusion_report(parse_engine_information(sample_10x(myelin)), depth=1)
    assert report.blocks[0].status == "unknown" and "Myelin" in report.blocks[0].reason


def test_user_names_containing_mha_are_not_mistaken_for_kernels():
    # a model whose module is called "mha": its ONNX names must not count as fused kernels
    layer = trt_inspect.LayerInfo(
        name="/encoder/mha/attn/MatMul", layer_type="gemm", tactic="sm80_xmma_gemm"
    )
    assert not trt_fusion.is_fused_attention_layer(layer)
    assert trt_fusion.is_fused_attention_layer(
        trt_inspect.LayerInfo(name="x", tactic="fmha_v2_flash_attention_fp16")
    )
    assert trt_fusion.is_fused_attention_layer(
        trt_inspect.LayerInfo(name="_gemm_mha_v2_myl0_17", layer_type="kgen")
    )


# ------------------------------------------------------------------ manifest & compatibility

FAKE_ENV = trt_env.environment("10.13.0.35", "12.8", "NVIDIA H100 80GB HBM3", "9.0")


def _section(**over):
    kw = dict(
        env=FAKE_ENV,
        profile=BatchProfile(1, 8, 32),
        precision="fp16",
        fp32_keep=Fp32Keep(),
        engine_sha256="ab" * 32,
        onnx_file="model.fp16.onnx",
        onnx_sha256="cd" * 32,
        build={
            "model": "vit_small_patch16_224",
            "img_size": 224,
            "out": "artifacts/trt",
            "opt_level": 3,
            "workspace_gib": 4.0,
        },
    )
    kw.update(over)
    return engine_manifest_section(**kw)


def test_engine_section_from_fake_env():
    s = _section(attempts=[{"fp32_keep": "default fp32 ops", "passed": True}])
    assert s["format"] == trt_env.ENGINE_SECTION_FORMAT
    assert s["tensorrt_version"] == "10.13.0.35" and s["compute_capability"] == "9.0"
    assert s["gpu_name"] == "NVIDIA H100 80GB HBM3" and s["cuda_version"] == "12.8"
    assert s["profile"] == {"min": 1, "opt": 8, "max": 32}
    assert s["precision"] == "fp16" and "Softmax" in s["fp32_keep"]["op_types"]
    assert s["sha256"] == "ab" * 32 and s["file"] == "model.engine"
    assert json.loads(json.dumps(s)) == s  # JSON-ready
    trt_env.check_engine_section(s)


def test_all_fp32_escalation_is_recorded_as_fp32():
    keep = Fp32Keep(level=3, attention_matmuls=True, edge_blocks=True, all_fp32=True)
    s = _section(fp32_keep=keep)
    assert s["precision"] == "fp32" and s["requested_precision"] == "fp16"


def test_engine_section_checks():
    s = _section()
    for broken, msg in [
        ({**s, "format": "other/9"}, "expected format"),
        ({**s, "sha256": None, "gpu_name": ""}, "missing sha256, gpu_name"),
        ({**s, "profile": {"min": 1}}, "engine profile"),
    ]:
        with pytest.raises(ManifestError, match=msg):
            trt_env.check_engine_section(broken)


def test_compat_same_machine_has_no_differences():
    assert check_engine_compat(_section(), FAKE_ENV) == []


def test_compat_lists_every_difference():
    here = trt_env.environment("11.4.0.1", "13.0", "NVIDIA L4", "8.9")
    diffs = check_engine_compat(_section(), here)
    assert diffs == [
        "TensorRT version: built with 10.13.0.35, here 11.4.0.1",
        "GPU compute capability: built with 9.0, here 8.9",
        "GPU: built with NVIDIA H100 80GB HBM3, here NVIDIA L4",
    ]
    # CUDA alone differing is not a refusal
    assert check_engine_compat(_section(), dict(FAKE_ENV, cuda_version="13.0")) == []
    missing = check_engine_compat(_section(), trt_env.environment(None, None, None, None))
    assert "TensorRT version: built with 10.13.0.35, none here" in missing


def test_rebuild_command_is_exact():
    assert trt_env.rebuild_command(_section()) == (
        "vit-export --model vit_small_patch16_224 --img-size 224 --fmt trt --precision fp16 "
        "--batch 1:8:32 --opt-level 3 --workspace-gib 4.0 --out artifacts/trt"
    )


def test_engine_manifest_is_read_and_checked(tmp_path):
    from vit_deploy.config import ViTConfig
    from vit_deploy.manifest import write_manifest
    from vit_deploy.runtime.tensorrt.backend import read_engine_manifest

    (tmp_path / "model.engine").write_bytes(b"x")
    base = {
        "artifact": {"format": "onnx", "file": "model.engine", "sha256": "0", "size_bytes": 1},
        "model": ViTConfig().to_dict(),
        "inputs": [],
        "outputs": [],
    }
    write_manifest(tmp_path, base)
    with pytest.raises(ManifestError, match="expected a TensorRT artifact"):
        read_engine_manifest(tmp_path)
    base["artifact"]["format"] = "trt"
    write_manifest(tmp_path, {**base, "engine": {**_section(), "gpu_name": None}})
    with pytest.raises(ManifestError, match="missing gpu_name"):
        read_engine_manifest(tmp_path)
    write_manifest(tmp_path, {**base, "engine": _section()})
    assert read_engine_manifest(tmp_path)["engine"]["tensorrt_version"] == "10.13.0.35"


def test_mismatch_message_names_differences_and_command():
    from vit_deploy.runtime.tensorrt.backend import engine_mismatch_message

    diffs = ["TensorRT version: built with 10.13.0.35, here 11.4.0.1"]
    msg = engine_mismatch_message(Path("a/model.engine"), _section(), diffs)
    assert "a/model.engine was built for another machine" in msg
    assert "  - TensorRT version: built with 10.13.0.35, here 11.4.0.1" in msg
    assert msg.endswith(trt_env.rebuild_command(_section()))


# ------------------------------------------------------------------ refusal paths (no GPU)


def test_removed_tensorrt_11_api_is_not_used():
    # TensorRT 11 removed weak typing; these names must not appear in our TensorRT code
    removed = [
        r"BuilderFlag\.FP16",
        r"BuilderFlag\.INT8",
        r"BuilderFlag\.BF16",
        r"OBEY_PRECISION_CONSTRAINTS",
        r"PREFER_PRECISION_CONSTRAINTS",
        r"platform_has_fast_fp16",
        r"platform_has_fast_int8",
        r"int8_calibrator",
    ]
    for source in TRT_SOURCES:
        assert source.is_file(), f"expected {source}"
        text = source.read_text()
        for pattern in removed:
            assert not re.search(pattern, text), f"{source.name} uses removed API {pattern}"
    build = TRT_SOURCES[0].read_text()
    assert "NetworkDefinitionCreationFlag.STRONGLY_TYPED" in build


TRT_CALLS = {
    TRT_BUILD: (
        "NetworkFromOnnxPath",
        "CreateConfig",
        "EngineBytesFromNetwork",
        "create_optimization_profile",
        "add_optimization_profile",
        "create_timing_cache",
        "set_timing_cache",
        "get_timing_cache",
        "combine",
        "serialize",
        "deserialize_cuda_engine",
        "create_execution_context",
        "set_input_shape",
        "create_engine_inspector",
        "get_engine_information",
    ),
    TRT_SOURCES[1]: (  # the backend
        "deserialize_cuda_engine",
        "get_tensor_profile_shape",
        "device_memory_size_v2",
        "create_execution_context",
        "set_device_memory",
        "set_input_shape",
        "set_tensor_address",
        "execute_async_v3",
    ),
}


def _uses(tree, call: str) -> list:
    """The functions (innermost first) whose code names ``call`` (attribute or name)."""
    import ast

    found = []
    for func in ast.walk(tree):
        if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(func):
                if (isinstance(node, ast.Attribute) and node.attr == call) or (
                    isinstance(node, ast.Name) and node.id == call
                ):
                    found.append(func)
                    break
    return sorted(found, key=lambda f: f.end_lineno - f.lineno)


@pytest.mark.parametrize("source", list(TRT_CALLS), ids=lambda p: p.name)
def test_every_tensorrt_call_cites_its_doc_page(source):
    import ast

    text = source.read_text()
    tree = ast.parse(text)
    for call in TRT_CALLS[source]:
        functions = _uses(tree, call)
        assert functions, f"{source.name}: expected a call to {call}, found none"
        # the smallest function that makes the call cites the page it follows
        body = ast.get_source_segment(text, functions[0])
        assert re.search(r"https://(docs\.nvidia\.com/|github\.com/NVIDIA/)", body), (
            f"{source.name}: {call}: no doc URL in {functions[0].name}()"
        )
    # the 8.x archives describe another API (implicit batch, bindings): no links there
    assert "archives/tensorrt-8" not in text


@pytest.mark.skipif(HAS_TRT_GPU, reason="tests the refusal on machines without TensorRT/GPU")
def test_require_tensorrt_refuses_in_one_line():
    with pytest.raises(BackendUnavailableError) as err:
        trt_env.require_tensorrt()
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("vit-export --fmt trt needs TensorRT >= 10.12 and a CUDA GPU:")
    assert "vit-export --fmt onnx" in msg
    problems = trt_env.tensorrt_problems()
    assert problems and all(p in msg for p in problems)


def test_require_tensorrt_passes_when_nothing_is_missing(monkeypatch):
    monkeypatch.setattr(trt_env, "tensorrt_problems", lambda: [])
    trt_env.require_tensorrt()


def test_old_tensorrt_is_reported(monkeypatch):
    fake = type(sys)("tensorrt")
    fake.__version__ = "10.3.0"
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    assert any(
        "TensorRT 10.3.0 is too old (expected >= 10.12)" in p for p in trt_env.tensorrt_problems()
    )


def test_backend_module_imports_without_tensorrt():
    code = (
        "import sys; import vit_deploy.runtime.tensorrt.backend, vit_deploy.export.tensorrt.build, "
        "vit_deploy.export.tensorrt.export, vit_deploy.cli.export_trt; "
        "assert 'tensorrt' not in sys.modules; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.skipif(HAS_TRT_GPU, reason="tests the refusal on machines without TensorRT/GPU")
def test_backend_without_tensorrt_is_unavailable(tmp_path):
    from vit_deploy.runtime.tensorrt.backend import TensorRTBackend

    with pytest.raises(BackendUnavailableError) as err:
        TensorRTBackend(tmp_path)
    assert "\n" not in str(err.value) and "the TensorRT backend needs" in str(err.value)


@pytest.mark.skipif(HAS_TRT_GPU, reason="tests the refusal on machines without TensorRT/GPU")
def test_export_trt_refuses_before_writing_anything(tmp_path):
    from vit_deploy.export.tensorrt.export import export_trt

    out = tmp_path / "engine_out"
    with pytest.raises(BackendUnavailableError, match="--fmt onnx"):
        export_trt(None, out, batch="1:8:32")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(HAS_TRT_GPU, reason="tests the refusal on machines without TensorRT/GPU")
def test_vit_export_fmt_trt_refuses_in_one_line(tmp_path, monkeypatch, capsys):
    # the registry entry the CLI uses for --fmt trt (see the wiring in trt_cli's docs)
    from vit_deploy.cli import export as cli_export
    from vit_deploy.cli import formats as registry
    from vit_deploy.cli.export_trt import trt_unavailable_reason

    entry = registry.ExportFormat(
        "trt",
        "TensorRT engine",
        "vit_deploy.cli.export_trt:export_trt_from_args",
        trt_unavailable_reason,
    )
    monkeypatch.setitem(registry.FORMATS, "trt", entry)
    out = tmp_path / "engine"
    rc = cli_export.main(["--fmt", "trt", "--batch", "1:8:32", "--out", str(out), "-q"])
    err = capsys.readouterr().err.strip()
    assert rc != 0
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("vit-export: error: vit-export --fmt trt needs TensorRT")
    assert "vit-export --fmt onnx" in err
    assert list(tmp_path.iterdir()) == []


def test_build_options_are_checked():
    from vit_deploy.export.tensorrt.build import BuildOptions

    BuildOptions(BatchProfile(1, 8, 32))
    with pytest.raises(ConfigError) as err:
        BuildOptions(BatchProfile(1, 8, 32), opt_level=7, workspace_gib=0)
    assert "--opt-level: expected 0..5, got 7" in str(err.value)
    assert "--workspace-gib: expected a positive number, got 0" in str(err.value)


def test_trt_arguments_parse():
    import argparse

    from vit_deploy.cli.export_trt import add_trt_arguments

    p = argparse.ArgumentParser()
    add_trt_arguments(p)
    args = p.parse_args(
        [
            "--timing-cache",
            "t.cache",
            "--opt-level",
            "5",
            "--workspace-gib",
            "2.5",
            "--no-auto-repair",
        ]
    )
    assert (args.timing_cache, args.opt_level, args.workspace_gib) == ("t.cache", 5, 2.5)
    assert args.auto_repair is False
    defaults = p.parse_args([])
    assert (defaults.opt_level, defaults.workspace_gib, defaults.auto_repair) == (3, 4.0, True)
    with pytest.raises(SystemExit):
        p.parse_args(["--opt-level", "9"])


# ------------------------------------------------------------------ the export, TensorRT faked
# Everything export_trt does around TensorRT runs here for real (ONNX export, fp16
# conversion, ONNX Runtime parity, escalation, manifest, staging); only the three
# calls that need TensorRT are replaced: the build, the inspector, the engine's parity.


def _tiny_model():
    from vit_deploy import create_model

    return create_model(
        "vit_tiny_patch16_224",
        img_size=16,
        patch_size=8,
        depth=2,
        embed_dim=32,
        num_heads=2,
        num_classes=10,
    )


def _fake_inspector_json(depth=2):
    # dynamo's names for the attention core of block b (deterministic for this model)
    layers = []
    for b in range(depth):
        mm = f"node_matmul_{2 * b}" if b else "node_matmul"
        sm = f"node_softmax_{b}" if b else "node_softmax"
        layers.append(
            _layer11(
                f"_gemm_mha_v2_myl0_{b}",
                "kgen",
                "_gemm_mha_v2_0x1",
                [mm, sm, f"node_matmul_{2 * b + 1}"],
            )
        )
    return sample_11x(layers)


@pytest.fixture
def fake_tensorrt(monkeypatch):
    """TensorRT 'present', with a fake build and inspector; engine parity from ONNX Runtime
    on the same graph, failed on purpose for the attempts listed in ``state['fail']``."""
    from vit_deploy.export.tensorrt import build as trt_build
    from vit_deploy.export.tensorrt import export as trt_export
    from vit_deploy.export.verify import verify_artifact
    from vit_deploy.runtime.ort_backend import OrtBackend

    state = {"fail": set(), "calls": 0, "built": []}
    monkeypatch.setattr(trt_env, "tensorrt_problems", lambda: [])
    monkeypatch.setattr(trt_env, "capture_environment", lambda: FAKE_ENV)

    def build(onnx_path, options, **kw):
        state["built"].append(Path(onnx_path).read_bytes())
        return b"fake engine for " + str(options.profile).encode()

    def parity(staging, reference, inputs, ref_outputs, gate_precision, batch):
        state["calls"] += 1
        backend = OrtBackend.from_onnx(staging / "model.onnx", reference.config)
        if state["calls"] in state["fail"]:
            real = backend._run
            backend._run = lambda x: {k: v[::-1].copy() for k, v in real(x).items()}  # wrong rows
        return verify_artifact(
            backend,
            reference,
            gate_precision,
            inputs=inputs,
            reference=ref_outputs,
            batch=batch,
            raise_on_failure=False,
        )

    monkeypatch.setattr(trt_build, "build_engine", build)
    monkeypatch.setattr(trt_build, "inspect_engine", lambda *a, **k: _fake_inspector_json())
    monkeypatch.setattr(trt_export, "_engine_parity", parity)
    return state


def _small_onnx_options():
    from vit_deploy.export.options import OnnxExportOptions

    return OnnxExportOptions(verify_samples=6)


@pytest.mark.slow
def test_export_trt_writes_a_checked_artifact(tmp_path, fake_tensorrt):
    from vit_deploy.cli.export_trt import summary_lines
    from vit_deploy.export.tensorrt.export import export_trt
    from vit_deploy.manifest import read_manifest, verify_checksum

    out = tmp_path / "trt"
    result = export_trt(
        _tiny_model(),
        out,
        batch="1:2:4",
        onnx_options=_small_onnx_options(),
        converter="onnxconverter-common",
        source="preset vit_tiny_patch16_224 (random weights)",
    )
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.engine", "model.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trt"]  # no staging left
    m = read_manifest(out)
    verify_checksum(out, m)
    assert m["artifact"]["format"] == "trt" and m["artifact"]["file"] == "model.engine"
    assert [f["file"] for f in m["artifact"]["extra_files"]] == ["model.onnx"]
    e = m["engine"]
    trt_env.check_engine_section(e)
    assert e["precision"] == "fp16" and e["fp32_keep"]["name"] == "default fp32 ops"
    assert e["profile"] == {"min": 1, "opt": 2, "max": 4}
    assert e["fusion"]["status"] == "fused" and e["fusion"]["fused_blocks"] == 2
    assert [a["passed"] for a in e["attempts"]] == [True]
    assert m["parity"]["passed"] and m["parity"]["backend"] == "trt"
    assert m["onnx_parity"]["passed"]  # the fp16 graph on ONNX Runtime, CPU
    assert m["precision"]["mode"] == "fp16" and "Softmax" in m["precision"]["kept_fp32"]
    assert result.gate.passed
    # a model built in Python: no command line rebuilds it, and the manifest says so
    assert e["build"]["model_args"] is None and e["build"]["model_spec"]["kind"] == "object"
    assert "exported from a model built in Python" in trt_env.rebuild_command(e)
    assert any("attention fusion: fused (2/2 blocks)" in line for line in summary_lines(m))


@pytest.mark.slow
def test_export_trt_escalates_fp32_until_parity_passes(tmp_path, fake_tensorrt):
    from vit_deploy.export.tensorrt.export import export_trt

    fake_tensorrt["fail"] = {1, 2}  # the first two engines fail their gate
    out = tmp_path / "trt"
    result = export_trt(
        _tiny_model(),
        out,
        batch="1:2:4",
        onnx_options=_small_onnx_options(),
        converter="onnxconverter-common",
    )
    e = result.manifest["engine"]
    assert [a["fp32_keep"] for a in e["attempts"]] == [
        "default fp32 ops",
        "default fp32 ops, attention matmuls",
        "default fp32 ops, attention matmuls, first/last blocks",
    ]
    assert [a["passed"] for a in e["attempts"]] == [False, False, True]
    assert e["fp32_keep"]["level"] == 2 and e["fp32_keep"]["edge_blocks"]
    assert "node_matmul" in e["fp32_nodes"] and "node_matmul_3" in e["fp32_nodes"]
    assert result.manifest["precision"]["node_block_list"] == len(e["fp32_nodes"])
    # each rebuild really kept more in fp32: more Cast nodes around fp32 islands
    import onnx

    casts = [
        sum(n.op_type == "Cast" for n in onnx.load_from_string(b).graph.node)
        for b in fake_tensorrt["built"]
    ]
    assert casts[0] < casts[1] < casts[2]


@pytest.mark.slow
def test_export_trt_failure_leaves_nothing_behind(tmp_path, fake_tensorrt):
    from vit_deploy.errors import ParityError
    from vit_deploy.export.tensorrt.export import export_trt

    fake_tensorrt["fail"] = {1}
    with pytest.raises(ParityError, match="auto-repair is off"):
        export_trt(
            _tiny_model(),
            tmp_path / "trt",
            batch="1:2:4",
            onnx_options=_small_onnx_options(),
            converter="onnxconverter-common",
            auto_repair=False,
        )
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ GPU (TensorRT) tests


@pytest.fixture(scope="module")
def built_engine(tmp_path_factory):
    """The default model, exported to fp16 ONNX and built into an engine (1:4:8)."""
    from vit_deploy.export.tensorrt.export import export_trt

    out = tmp_path_factory.mktemp("trt") / "default_trt"
    manifest = export_trt(None, out, precision="fp16", batch="1:4:8").manifest
    return out, manifest


def _pixels(n, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g)


@pytest.mark.gpu
@requires_trt
def test_engine_builds_and_passes_parity(built_engine):
    out, manifest = built_engine
    engine = manifest["engine"]
    assert (out / engine["file"]).is_file() and (out / "manifest.json").is_file()
    assert engine["parity"]["passed"]
    assert engine["profile"] == {"min": 1, "opt": 4, "max": 8}
    assert engine["fusion"]["status"] in ("fused", "partial", "not_fused", "unknown")
    trt_env.check_engine_section(engine)


@pytest.mark.gpu
@requires_trt
@pytest.mark.parametrize("batch", [1, 4, 8, 19])  # 19 > MAX 8: chunks of 8, 8, 3
def test_engine_matches_pytorch_inside_and_outside_profile(built_engine, batch):
    from vit_deploy.assets import load_default_model
    from vit_deploy.runtime.tensorrt.backend import TensorRTBackend

    out, _ = built_engine
    backend = TensorRTBackend(out)
    model = load_default_model().cuda()
    x = _pixels(batch).cuda()
    with torch.no_grad():
        ref_logits, ref_emb = model.forward_all(x)
    got = backend.run_device(x)
    assert got["logits"].is_cuda and got["logits"].shape == ref_logits.shape
    assert torch.isfinite(got["logits"]).all()
    # fp16 engine vs fp32 PyTorch: same decisions, close values
    assert (got["logits"].argmax(-1) == ref_logits.argmax(-1)).float().mean() >= 0.9
    cos = torch.nn.functional.cosine_similarity(got["embedding"].float(), ref_emb, dim=-1)
    assert cos.min() > 0.99
    host = backend(x.cpu().numpy())
    assert isinstance(host["logits"], np.ndarray) and host["logits"].shape == (batch, 10)


@pytest.mark.gpu
@requires_trt
def test_cuda_graph_path_matches_eager(built_engine):
    from vit_deploy.runtime.tensorrt.backend import TensorRTBackend

    out, _ = built_engine
    eager = TensorRTBackend(out)
    graphed = TensorRTBackend(out, cuda_graphs=True)
    for batch in (3, 8, 11):
        x = _pixels(batch, seed=batch).cuda()
        a, b = eager.run_device(x), graphed.run_device(x)
        b2 = graphed.run_device(x)  # replay
        for name in eager.output_names:
            # same engine, same kernels: expected bitwise equal; the default fp32 tolerance
            # only absorbs a tactic whose reduction order is not deterministic
            torch.testing.assert_close(b[name], a[name])
            torch.testing.assert_close(b2[name], a[name])


@pytest.mark.gpu
@requires_trt
def test_wrong_shape_and_dtype_are_typed_errors(built_engine):
    from vit_deploy.runtime.tensorrt.backend import TensorRTBackend

    backend = TensorRTBackend(built_engine[0])
    with pytest.raises(InputShapeError, match=r"expected images of shape \(3, 32, 32\)"):
        backend.run_device(torch.zeros(2, 3, 64, 64, device="cuda"))
    with pytest.raises(InputShapeError, match="4-D"):
        backend.run_device(torch.zeros(3, 32, 32, device="cuda"))
    with pytest.raises(InputDTypeError, match="expected float32 pixels"):
        backend.run_device(torch.zeros(2, 3, 32, 32, device="cuda", dtype=torch.float64))
    with pytest.raises(InputDTypeError, match="expected float32 pixels"):
        backend(np.zeros((2, 3, 32, 32), np.float64))
    assert isinstance(backend.check_input(np.zeros((2, 3, 32, 32), np.float32)), np.ndarray)


@pytest.mark.gpu
@requires_trt
def test_run_device_is_ordered_with_the_callers_stream(built_engine):
    # our stream waits for the caller's and the caller's for ours: no host sync needed
    from vit_deploy.runtime.tensorrt.backend import TensorRTBackend

    for cuda_graphs in (False, True):
        backend = TensorRTBackend(built_engine[0], cuda_graphs=cuda_graphs)
        x = _pixels(8).cuda()
        ref = backend.run_device(x)["logits"].clone()
        torch.cuda.synchronize()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            torch.cuda._sleep(50_000_000)  # the input is written late on the caller's stream
            y = x * 1.0
            got = backend.run_device(y)["logits"] * 1.0  # read on the caller's stream at once
        torch.cuda.synchronize()
        torch.testing.assert_close(got, ref)


@pytest.mark.gpu
@requires_trt
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_a_tensor_on_another_gpu_is_refused(built_engine):
    from vit_deploy.errors import InputDeviceError
    from vit_deploy.runtime.tensorrt.backend import TensorRTBackend

    backend = TensorRTBackend(built_engine[0], device=0)
    with pytest.raises(InputDeviceError, match="expected a tensor on cuda:0"):
        backend.run_device(_pixels(2).to("cuda:1"))
    assert torch.cuda.current_device() == 0


@pytest.mark.gpu
@requires_trt
def test_engine_for_another_tensorrt_is_refused(built_engine, tmp_path):
    import shutil

    from vit_deploy.runtime.tensorrt.backend import TensorRTBackend

    src, _ = built_engine
    dst = tmp_path / "moved"
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["engine"]["tensorrt_version"] = "9.9.9"
    manifest["engine"]["compute_capability"] = "1.0"
    (dst / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EngineMismatchError) as err:
        TensorRTBackend(dst)
    msg = str(err.value)
    assert "TensorRT version: built with 9.9.9" in msg
    assert "GPU compute capability: built with 1.0" in msg
    assert "vit-export" in msg and "--fmt trt" in msg
