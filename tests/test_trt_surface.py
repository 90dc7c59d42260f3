"""Our TensorRT code against the real TensorRT API of 10.12, 10.16 and 11.4, without TensorRT.

``trt_standin`` builds a strict ``tensorrt`` module from each release's dumped API surface
(tests/data/trt_api; regenerate with ../shared/tools/trt-api-surface/gen_surface.sh and
tests/data/trt_api/trim.py): unknown names raise AttributeError, calls that fit no signature
raise TypeError, read-only properties cannot be set. Nothing here behaves like TensorRT:
return values come from hooks, and CUDA is a CPU stand-in that records streams, waits,
captures and allocations. What runs for real: our build path (``export.tensorrt.build``,
Polygraphy's loaders included) and our backend (construction, shapes, binding, chunking, the
CUDA-graph path), each against all three surfaces.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import trt_standin

from vit_deploy import storage
from vit_deploy.batch_profile import BatchProfile
from vit_deploy.config import ViTConfig
from vit_deploy.errors import (
    ArtifactError,
    ExportError,
    InputDeviceError,
    InputDTypeError,
    InputShapeError,
)
from vit_deploy.export.tensorrt import build as trt_build
from vit_deploy.export.tensorrt.artifact import engine_manifest_section
from vit_deploy.export.tensorrt.precision import Fp32Keep
from vit_deploy.manifest import file_entry, write_manifest
from vit_deploy.runtime.tensorrt import backend as trt_backend
from vit_deploy.runtime.tensorrt import env as trt_env

VERSIONS, load_surface = trt_standin.VERSIONS, trt_standin.load_surface
tensorrt_standin = trt_standin.tensorrt_standin  # the fixture: tensorrt_standin(version)
ROOT = Path(__file__).resolve().parents[1]
V10, V11 = [v for v in VERSIONS if v.startswith("10.")], [v for v in VERSIONS if v >= "11"]
OLDEST_10, NEWEST_10, NEWEST = V10[0], V10[-1], V11[-1]
TRT_SOURCES = sorted((ROOT / "vit_deploy" / "export" / "tensorrt").glob("*.py")) + sorted(
    (ROOT / "vit_deploy" / "runtime" / "tensorrt").glob("*.py")
)


# ------------------------------------------------------------------ the stand-in is strict


@pytest.mark.parametrize("version", V11)
def test_11x_rejects_the_weak_typing_flags(tensorrt_standin, version):
    trt = tensorrt_standin(version).module
    with pytest.raises(AttributeError, match="FP16"):
        _ = trt.BuilderFlag.FP16
    assert not hasattr(trt.BuilderFlag, "INT8")
    assert trt.BuilderFlag.TF32  # what 11.x kept is there


@pytest.mark.parametrize("version", V10)
def test_10x_still_has_the_weak_typing_flags(tensorrt_standin, version):
    trt = tensorrt_standin(version).module
    assert int(trt.BuilderFlag.FP16) != int(trt.BuilderFlag.TF32)


@pytest.mark.parametrize("version", VERSIONS)
def test_execute_async_v2_is_gone(tensorrt_standin, version):
    # removed in 10.0 (execute_async_v3 replaced it); the guard holds on 11.x as well
    standin = tensorrt_standin(version)
    context = standin.new("IExecutionContext")
    with pytest.raises(AttributeError, match="execute_async_v2"):
        context.execute_async_v2([], 0)
    assert context.execute_async_v3(0) is True
    assert "IExecutionContext.execute_async_v2" in standin.missing


@pytest.mark.parametrize("version", VERSIONS)
def test_unknown_names_wrong_calls_and_read_only_properties(tensorrt_standin, version):
    standin = tensorrt_standin(version)
    trt = standin.module
    with pytest.raises(AttributeError):
        _ = trt.NoSuchClass
    with pytest.raises(AttributeError):
        _ = trt.Builder.no_such_method
    config = standin.new("IBuilderConfig")
    with pytest.raises(AttributeError):
        _ = config.no_such_attribute
    with pytest.raises(AttributeError):
        config.no_such_attribute = 1  # pybind11 objects take no new attributes
    cache = standin.new("ITimingCache")
    with pytest.raises(TypeError):
        config.set_timing_cache(cache)  # ignore_mismatch has no default
    with pytest.raises(TypeError):
        config.set_timing_cache(cache, False, True)
    with pytest.raises(TypeError):
        config.set_timing_cache(cache, mismatch=False)  # no such keyword
    with pytest.raises(TypeError):
        config.set_memory_pool_limit(0, 1)  # an int is not a MemoryPoolType
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1)
    config.builder_optimization_level = 3  # writable
    assert config.builder_optimization_level == 3
    engine = standin.new("ICudaEngine")
    with pytest.raises(AttributeError):
        engine.num_io_tensors = 3  # read-only
    # calls return objects of the declared class
    assert type(trt.Builder(trt.Logger()).create_builder_config()).__name__ == "IBuilderConfig"


def test_trt_extras_pin_the_releases_the_surfaces_cover():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    from packaging.requirements import Requirement

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    reqs = {k: {Requirement(r).name: Requirement(r) for r in extras[k]} for k in extras}
    cu12, cu13 = reqs["trt-cu12"]["tensorrt-cu12"], reqs["trt-cu13"]["tensorrt-cu13"]
    # the oldest and newest 10.x and the newest 11.x the surfaces hold are installable ones
    assert cu12.specifier.contains(OLDEST_10) and cu12.specifier.contains(NEWEST_10)
    assert not cu12.specifier.contains(NEWEST) and cu13.specifier.contains(NEWEST)
    assert ".".join(map(str, trt_env.MIN_TENSORRT)) == ".".join(OLDEST_10.split(".")[:2])
    # cuda-python follows the same CUDA major as the TensorRT wheel
    assert reqs["trt-cu12"]["cuda-python"].specifier.contains("12.9.0")
    assert not reqs["trt-cu12"]["cuda-python"].specifier.contains("13.0.0")
    assert reqs["trt-cu13"]["cuda-python"].specifier.contains("13.0.0")
    assert not reqs["trt-cu13"]["cuda-python"].specifier.contains("12.9.0")


def _qualified(surface: dict) -> set[str]:
    """Every "Owner.name" (class attributes, enum members by the enum's last name) and
    every module-level name."""
    names = set(surface["module"])
    for owner, cls in surface["classes"].items():
        names |= {f"{owner}.{a}" for a in cls["attrs"]}
    for owner, enum in surface["enums"].items():
        names |= {f"{owner.rsplit('.', 1)[-1]}.{m}" for m in enum["members"]}
    return names


def test_no_name_that_11x_removed_is_used():
    # what the newest 10.x has and 11.x lost: "BuilderFlag.INT8" qualified (INT8 lives on as
    # a DataType), and bare ".name" for names 11.x has nowhere (e.g. device_memory_size)
    old, new = _qualified(load_surface(NEWEST_10)), _qualified(load_surface(NEWEST))
    removed = old - new
    gone = {n.rsplit(".", 1)[-1] for n in removed} - {n.rsplit(".", 1)[-1] for n in new}
    assert {"BuilderFlag.FP16", "BuilderFlag.INT8", "IBuilderConfig.int8_calibrator"} <= removed
    assert {"device_memory_size", "create_execution_context_without_device_memory"} <= gone
    patterns = [rf"\b{re.escape(n)}\b" for n in removed if "." in n]
    # one-word lowercase names (precision, tactic, strides) are our own attributes too: those
    # are left to the runs against the stand-in, which refuse them on 11.x at the call
    patterns += [rf"\.{re.escape(n)}\b" for n in gone if "_" in n or not n.islower()]
    for source in TRT_SOURCES:
        code = "\n".join(line.split("#")[0] for line in source.read_text().splitlines())
        used = [p for p in patterns if re.search(p, code)]
        assert not used, f"{source.name} uses names TensorRT 11 removed: {used}"


# ------------------------------------------------------------------ the build path


def _shapes():
    return BatchProfile(1, 4, 8).shapes(3, 16)


def _build(tmp_path, **options):
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"not parsed by the stand-in")
    opts = trt_build.BuildOptions(BatchProfile(1, 4, 8), **options)
    return trt_build.build_engine(onnx, opts, input_name="pixels", in_chans=3, img_size=16)


def _engine_bytes(standin, data=b"serialized engine"):
    standin.set_return("Builder.build_serialized_network", standin.new("IHostMemory", data))


@pytest.mark.parametrize("version", VERSIONS)
def test_build_runs_through_polygraphy_on_each_surface(tensorrt_standin, tmp_path, version):
    standin = tensorrt_standin(version)
    trt = standin.module
    _engine_bytes(standin)
    standin.set_return("IBuilderConfig.add_optimization_profile", 0)
    assert _build(tmp_path, opt_level=5, workspace_gib=2.0) == b"serialized engine"

    (flags,) = [
        kw.get("flags", a[0] if a else 0) for a, kw in standin.calls_to("Builder.create_network")
    ]
    assert flags & (1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    assert standin.calls_to("OnnxParser.parse_from_file")[0][0] == (str(tmp_path / "model.onnx"),)
    assert standin.calls_to("IBuilderConfig.set_memory_pool_limit") == [
        ((trt.MemoryPoolType.WORKSPACE, 2 * 2**30), {})
    ]
    assert standin.calls_to("IBuilderConfig.builder_optimization_level=") == [((5,), {})]
    assert standin.calls_to("IBuilderConfig.profiling_verbosity=") == [
        ((trt.ProfilingVerbosity.DETAILED,), {})
    ]
    assert ((trt.BuilderFlag.TF32,), {}) in standin.calls_to("IBuilderConfig.clear_flag")
    assert standin.calls_to("IOptimizationProfile.set_shape") == [(("pixels", *_shapes()), {})]
    assert len(standin.calls_to("IBuilderConfig.add_optimization_profile")) == 1
    assert len(standin.calls_to("Builder.build_serialized_network")) == 1
    assert not any(c[0].startswith("BuilderFlag.") for c in standin.calls)  # nothing weak


@pytest.mark.parametrize("version", VERSIONS)
def test_a_refused_profile_stops_the_build(tensorrt_standin, tmp_path, version):
    standin = tensorrt_standin(version)
    _engine_bytes(standin)
    standin.set_return("IBuilderConfig.add_optimization_profile", -1)
    with pytest.raises(ExportError, match="expected a profile index >= 0, got -1"):
        _build(tmp_path)
    assert not standin.calls_to("Builder.build_serialized_network")


@pytest.mark.parametrize("version", [OLDEST_10, NEWEST])
def test_parse_and_build_failures_are_export_errors(tensorrt_standin, tmp_path, version):
    standin = tensorrt_standin(version)
    standin.set_return("IBuilderConfig.add_optimization_profile", 0)
    standin.set_return("OnnxParser.parse_from_file", False)
    with pytest.raises(ExportError, match="could not parse"):
        _build(tmp_path)
    standin.set_return("OnnxParser.parse_from_file", True)
    standin.set_return("Builder.build_serialized_network", None)
    with pytest.raises(ExportError, match="could not build an engine"):
        _build(tmp_path)


class _Caches:
    """Timing caches as blobs: create_timing_cache(blob) -> a cache holding it; set and
    combine refuse caches whose blob starts with b'other'; serialize checks the lock."""

    def __init__(self, standin, path: Path, built: bytes = b"fresh timings"):
        self.standin, self.path, self.built = standin, path, built
        self.blob: dict[int, bytes] = {}
        self.locked_at_serialize = None
        standin.set_return("IBuilderConfig.create_timing_cache", self.create)
        standin.set_return("IBuilderConfig.set_timing_cache", self.accept)
        standin.set_return(
            "IBuilderConfig.get_timing_cache", lambda config: self.create(config, built)
        )
        standin.set_return("ITimingCache.combine", self.combine)
        standin.set_return("ITimingCache.serialize", self.serialize)

    def create(self, config, blob):
        cache = self.standin.new("ITimingCache")
        self.blob[id(cache)] = bytes(blob)
        return cache

    def accept(self, config, cache, ignore_mismatch):
        return ignore_mismatch or not self.blob[id(cache)].startswith(b"other")

    def combine(self, cache, previous, ignore_mismatch):
        if self.blob[id(previous)].startswith(b"other") and not ignore_mismatch:
            return False
        self.blob[id(cache)] += b"+" + self.blob[id(previous)]
        return True

    def serialize(self, cache):
        self.locked_at_serialize = storage._key(self.path) in storage._HELD
        return self.standin.new("IHostMemory", self.blob[id(cache)])

    def set_blobs(self):
        """What each set_timing_cache after Polygraphy's got (CreateConfig always sets an
        empty cache first, and ignores what set_timing_cache returns)."""
        calls = self.standin.calls_to("IBuilderConfig.set_timing_cache")
        assert self.blob[id(calls[0][0][0])] == b""
        return [self.blob[id(args[0])] for args, _ in calls[1:]]


@pytest.mark.parametrize("version", VERSIONS)
def test_timing_cache_is_created_then_merged_under_the_lock(tensorrt_standin, tmp_path, version):
    standin = tensorrt_standin(version)
    _engine_bytes(standin)
    standin.set_return("IBuilderConfig.add_optimization_profile", 0)
    path = tmp_path / "caches" / "timing.cache"
    caches = _Caches(standin, path)
    _build(tmp_path, timing_cache=str(path))
    assert path.read_bytes() == b"fresh timings" and caches.locked_at_serialize
    assert caches.set_blobs() == [b""]  # no file yet: an empty cache
    standin.calls.clear()
    _build(tmp_path, timing_cache=str(path))  # the second build loads and merges it
    assert path.read_bytes() == b"fresh timings+fresh timings"
    assert caches.set_blobs() == [b"fresh timings"]


@pytest.mark.parametrize("version", VERSIONS)
def test_a_cache_from_another_device_is_not_ignored_silently(
    tensorrt_standin, tmp_path, caplog, version
):
    standin = tensorrt_standin(version)
    _engine_bytes(standin)
    standin.set_return("IBuilderConfig.add_optimization_profile", 0)
    path = tmp_path / "timing.cache"
    path.write_bytes(b"other GPU's timings")
    caches = _Caches(standin, path)
    with caplog.at_level(logging.WARNING, logger="vit_deploy.export.trt"):
        assert _build(tmp_path, timing_cache=str(path)) == b"serialized engine"
    # refused (set_timing_cache -> False): the build got an empty cache instead, and the
    # other device's file was neither merged (ignore_mismatch) nor overwritten
    assert caches.set_blobs() == [b"other GPU's timings", b""]
    assert path.read_bytes() == b"other GPU's timings"
    assert "TensorRT refused it" in caplog.text and "not updated" in caplog.text


@pytest.mark.parametrize("version", [OLDEST_10, NEWEST])
def test_no_timing_cache_after_the_build_is_not_a_crash(
    tensorrt_standin, tmp_path, caplog, version
):
    standin = tensorrt_standin(version)
    _engine_bytes(standin)
    standin.set_return("IBuilderConfig.add_optimization_profile", 0)
    path = tmp_path / "timing.cache"
    _Caches(standin, path)
    standin.set_return("IBuilderConfig.get_timing_cache", None)
    with caplog.at_level(logging.WARNING, logger="vit_deploy.export.trt"):
        _build(tmp_path, timing_cache=str(path))
    assert not path.exists() and "returned no timing cache" in caplog.text


@pytest.mark.parametrize("version", VERSIONS)
def test_inspect_engine_on_each_surface(tensorrt_standin, version):
    standin = tensorrt_standin(version)
    trt = standin.module
    standin.set_return("EngineInspector.get_engine_information", '{"Layers": []}')
    assert trt_build.inspect_engine(b"engine", "pixels", (4, 3, 16, 16)) == '{"Layers": []}'
    assert standin.calls_to("IExecutionContext.set_input_shape") == [
        (("pixels", (4, 3, 16, 16)), {})
    ]
    assert standin.calls_to("EngineInspector.get_engine_information") == [
        ((trt.LayerInformationFormat.JSON,), {})
    ]
    standin.set_return("IExecutionContext.set_input_shape", False)
    with pytest.raises(ExportError, match="refused input shape"):
        trt_build.inspect_engine(b"engine", "pixels", (4, 3, 16, 16))
    standin.set_return("Runtime.deserialize_cuda_engine", None)
    with pytest.raises(ExportError, match="Could not deserialize"):
        trt_build.inspect_engine(b"engine", "pixels", (4, 3, 16, 16))


# ------------------------------------------------------------------ the backend, CUDA on the CPU


class FakeStream:
    _next = 1000

    def __init__(self, cuda, name):
        FakeStream._next += 1
        self.cuda_stream, self.name, self.log = FakeStream._next, name, cuda.log

    def wait_stream(self, other):
        self.log.append(("wait", self.name, other.name))

    def __repr__(self):
        return f"<stream {self.name}>"


class FakeGraph:
    def __init__(self):
        self.ops = []

    def replay(self):
        for op in self.ops:
            op()


class CpuCuda:
    """TorchCuda's interface on the CPU: tensors on the CPU, streams that log their waits, a
    device guard that counts, CUDA graphs that record what was issued while capturing."""

    instances: list = []

    def __init__(self, torch_module, index):
        self.device = torch.device("cpu")
        self.index, self.log, self.allocations, self.guarded = index, [], [], 0
        self.caller = FakeStream(self, "caller")
        self.streams = [self.caller]  # the current stream is the last
        self.capturing = None
        CpuCuda.instances.append(self)

    @contextlib.contextmanager
    def guard(self):
        self.guarded += 1
        try:
            yield
        finally:
            self.guarded -= 1

    def new_stream(self):
        return FakeStream(self, f"stream{len(self.log)}")

    def current_stream(self):
        return self.streams[-1]

    @contextlib.contextmanager
    def use_stream(self, stream):
        self.streams.append(stream)
        try:
            yield
        finally:
            self.streams.pop()

    def empty(self, shape, dtype):
        self.allocations.append((tuple(shape), dtype))
        return torch.full(shape, 7, dtype=dtype)  # not zero: padding must be written

    def new_graph(self):
        return FakeGraph()

    @contextlib.contextmanager
    def capture(self, graph, stream):
        self.log.append(("capture", stream.name))
        self.capturing = (graph, stream)
        try:
            yield
        finally:
            self.capturing = None

    def record(self, tensor, stream):
        self.log.append(("record", tuple(tensor.shape), stream.name))


NUM_CLASSES, EMBED = 10, 12


def _view(ptr: int, shape) -> np.ndarray:
    n = int(np.prod(shape))
    return np.ctypeslib.as_array((ctypes.c_float * n).from_address(ptr)).reshape(shape)


def fake_model(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the fake engine computes: per row, a function of that row only."""
    flat = x.reshape(len(x), -1)
    logits = flat[:, :1] + np.arange(NUM_CLASSES, dtype=np.float32)
    return logits, flat[:, :EMBED] * 2


class FakeEngine:
    """Hooks that make the stand-in's ICudaEngine / IExecutionContext act like an engine
    with one input and two outputs: shapes per context, addresses bound by name, and an
    execution that reads and writes the bound (host) pointers."""

    def __init__(self, standin, profile=None, size=16, memory=4096):
        profile = profile or BatchProfile(1, 4, 8)
        self.standin, self.trt = standin, standin.module
        self.names = ["pixels", "logits", "embedding"]
        self.shapes: dict[int, tuple] = {}
        self.addresses: dict[int, dict] = {}
        self.memory: dict[int, tuple] = {}
        self.executed: list[tuple] = []
        trt = self.trt
        hooks = {
            "ICudaEngine.num_io_tensors": lambda e: 3,
            "ICudaEngine.get_tensor_name": lambda e, i: self.names[i],
            "ICudaEngine.get_tensor_mode": lambda e, n: (
                trt.TensorIOMode.INPUT if n == "pixels" else trt.TensorIOMode.OUTPUT
            ),
            "ICudaEngine.get_tensor_dtype": lambda e, n: trt.DataType.FLOAT,
            "ICudaEngine.get_tensor_profile_shape": lambda e, n, i: [
                standin.new("Dims", s) for s in profile.shapes(3, size)
            ],
            "ICudaEngine.device_memory_size_v2": lambda e: memory,
            "IExecutionContext.set_device_memory": self.set_memory,
            "IExecutionContext.set_input_shape": self.set_shape,
            "IExecutionContext.get_tensor_shape": self.tensor_shape,
            "IExecutionContext.set_tensor_address": self.bind,
            "IExecutionContext.execute_async_v3": self.execute,
        }
        for name, hook in hooks.items():
            standin.set_return(name, hook)
        self.cuda = None

    def set_memory(self, ctx, ptr, size):
        self.memory[id(ctx)] = (ptr, size)

    def set_shape(self, ctx, name, shape):
        assert name == "pixels"
        self.shapes[id(ctx)] = tuple(shape)
        return True

    def tensor_shape(self, ctx, name):
        rows = self.shapes[id(ctx)][0]
        return self.standin.new("Dims", (rows, NUM_CLASSES if name == "logits" else EMBED))

    def bind(self, ctx, name, ptr):
        self.addresses.setdefault(id(ctx), {})[name] = ptr
        return True

    def execute(self, ctx, handle):
        guarded = [c for c in CpuCuda.instances if c.guarded]
        assert guarded, "execute_async_v3 outside the device guard"
        cuda = guarded[0]
        assert id(ctx) in self.memory, "a USER_MANAGED context ran without its device memory"
        shape, addr = self.shapes[id(ctx)], dict(self.addresses[id(ctx)])

        def run():
            logits, emb = fake_model(_view(addr["pixels"], shape))
            _view(addr["logits"], logits.shape)[:] = logits
            _view(addr["embedding"], emb.shape)[:] = emb

        if cuda.capturing:
            graph, stream = cuda.capturing
            self.executed.append(("capture", handle, stream.cuda_stream))
            graph.ops.append(run)
        else:
            self.executed.append(("run", handle, shape[0]))
            run()
        return True


@pytest.fixture
def engine_dir(tmp_path, monkeypatch):
    """An artifact directory whose manifest is checked for real; TensorRT's environment
    (version, GPU) faked to match it, CUDA replaced by CpuCuda."""
    env = trt_env.environment("10.16.1.11", "12.9", "NVIDIA H200", "9.0")
    monkeypatch.setattr(trt_env, "tensorrt_problems", lambda: [])
    monkeypatch.setattr(trt_env, "capture_environment", lambda: env)
    monkeypatch.setattr(trt_backend, "TorchCuda", CpuCuda)
    CpuCuda.instances.clear()
    (tmp_path / "model.engine").write_bytes(b"engine bytes")
    cfg = ViTConfig(img_size=16, patch_size=8, depth=1, embed_dim=EMBED, num_heads=2,
                    num_classes=NUM_CLASSES)  # fmt: skip
    section = engine_manifest_section(
        env=env,
        profile=BatchProfile(1, 4, 8),
        precision="fp32",
        fp32_keep=Fp32Keep(all_fp32=True, level=3),
        engine_sha256=file_entry(tmp_path, "model.engine")["sha256"],
        onnx_file="model.onnx",
        onnx_sha256="0" * 64,
        build={},
    )
    write_manifest(
        tmp_path,
        {
            "artifact": {"format": "trt", **file_entry(tmp_path, "model.engine")},
            "model": cfg.to_dict(),
            "inputs": [],
            "outputs": [],
            "engine": section,
        },
    )
    return tmp_path


def _pixels(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, 16, 16), dtype=np.float32)


@pytest.mark.parametrize("version", VERSIONS)
def test_backend_construction_on_each_surface(tensorrt_standin, engine_dir, version, monkeypatch):
    def process_wide(*args):
        raise AssertionError("torch.cuda.set_device: the device is set process-wide")

    monkeypatch.setattr(torch.cuda, "set_device", process_wide)
    standin = tensorrt_standin(version)
    trt = standin.module
    fake = FakeEngine(standin)
    backend = trt_backend.TensorRTBackend(engine_dir)
    cuda = CpuCuda.instances[-1]
    assert backend.thread_safe is False
    assert backend.output_names == ["logits", "embedding"] and backend.input_name == "pixels"
    assert standin.calls_to("Runtime.deserialize_cuda_engine")[0][0] == (b"engine bytes",)
    strategy = trt.ExecutionContextAllocationStrategy.USER_MANAGED
    assert standin.calls_to("ICudaEngine.create_execution_context") == [((strategy,), {})]
    assert list(fake.memory.values()) == [(backend._memory.data_ptr(), 4096)]
    assert cuda.allocations == [((4096,), torch.uint8)]  # the one activation buffer


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("batch", [1, 3, 8, 19])  # 19 > MAX 8: chunks 8, 8, 3
def test_backend_numpy_in_numpy_out_on_each_surface(tensorrt_standin, engine_dir, version, batch):
    fake = FakeEngine(tensorrt_standin(version))
    backend = trt_backend.TensorRTBackend(engine_dir)
    pixels = _pixels(batch)
    checked = backend.check_input(pixels)
    assert isinstance(checked, np.ndarray) and checked.dtype == np.float32
    out = backend(pixels)
    assert all(isinstance(v, np.ndarray) for v in out.values())
    logits, emb = fake_model(pixels)
    np.testing.assert_array_equal(out["logits"], logits)
    np.testing.assert_array_equal(out["embedding"], emb)
    assert [e[2] for e in fake.executed] == [8] * (batch // 8) + ([batch % 8] if batch % 8 else [])


@pytest.mark.parametrize("version", [OLDEST_10, NEWEST])
def test_backend_pads_below_min(tensorrt_standin, engine_dir, version, monkeypatch):
    fake = FakeEngine(tensorrt_standin(version), profile=BatchProfile(4, 4, 8))
    section = json.loads((engine_dir / "manifest.json").read_text())
    section["engine"]["profile"] = {"min": 4, "opt": 4, "max": 8}
    write_manifest(engine_dir, section)
    backend = trt_backend.TensorRTBackend(engine_dir)
    pixels = _pixels(2)
    out = backend(pixels)
    assert [e[2] for e in fake.executed] == [4]  # 2 rows padded to MIN 4
    np.testing.assert_array_equal(out["logits"], fake_model(pixels)[0])


@pytest.mark.parametrize("version", [OLDEST_10, NEWEST])
def test_backend_runs_on_its_own_stream_ordered_with_the_callers(
    tensorrt_standin, engine_dir, version
):
    fake = FakeEngine(tensorrt_standin(version))
    backend = trt_backend.TensorRTBackend(engine_dir)
    cuda = CpuCuda.instances[-1]
    own = backend._stream
    cuda.log.clear()
    backend.run_device(torch.from_numpy(_pixels(3)))
    # not on the caller's (legacy default) stream: execute_async_v3 got our stream
    assert [e[1] for e in fake.executed] == [own.cuda_stream] != [cuda.caller.cuda_stream]
    waits = [e for e in cuda.log if e[0] == "wait"]
    assert waits == [("wait", own.name, "caller"), ("wait", "caller", own.name)]
    records = [e for e in cuda.log if e[0] == "record"]
    assert ("record", (3, 3, 16, 16), own.name) in records  # the input, used on our stream
    assert ("record", (3, NUM_CLASSES), "caller") in records  # outputs, used on the caller's


@pytest.mark.parametrize("version", [OLDEST_10, NEWEST])
def test_cuda_graphs_capture_on_the_warmup_stream_and_share_one_buffer(
    tensorrt_standin, engine_dir, version
):
    standin = tensorrt_standin(version)
    fake = FakeEngine(standin)
    eager = trt_backend.TensorRTBackend(engine_dir)
    graphed = trt_backend.TensorRTBackend(engine_dir, cuda_graphs=True)
    cuda = CpuCuda.instances[-1]
    for batch in (3, 8, 11, 3):  # 11: chunks 8 + 3; the last 3 replays the first graph
        pixels = _pixels(batch, seed=batch)
        for name, value in graphed(pixels).items():
            np.testing.assert_array_equal(value, eager(pixels)[name])
    own = graphed._stream.cuda_stream
    captures = [e for e in fake.executed if e[0] == "capture"]
    assert len(captures) == 2  # one graph per run size: 3 and 8
    assert all(handle == stream == own for _, handle, stream in captures)
    assert [e for e in cuda.log if e[0] == "capture"] == [("capture", graphed._stream.name)] * 2
    # every context (eager + one per graph) got the same buffer; it was allocated once
    buffers = {fake.memory[k] for k in fake.memory}
    assert len(fake.memory) == 2 + 2 and len(buffers) == 2  # two backends, one buffer each
    assert sum(a == ((4096,), torch.uint8) for a in cuda.allocations) == 1


@pytest.mark.parametrize("version", [NEWEST])
def test_device_tensors_are_checked(tensorrt_standin, engine_dir, version):
    FakeEngine(tensorrt_standin(version))
    backend = trt_backend.TensorRTBackend(engine_dir)
    with pytest.raises(InputDeviceError, match=r"expected a tensor on cpu .* got one on meta"):
        backend.run_device(torch.empty(2, 3, 16, 16, device="meta"))
    with pytest.raises(InputDTypeError, match="expected float32 pixels .* got float16"):
        backend.run_device(torch.zeros(2, 3, 16, 16, dtype=torch.float16))
    with pytest.raises(InputShapeError, match=r"expected images of shape \(3, 16, 16\)"):
        backend.run_device(torch.zeros(2, 3, 32, 32))
    with pytest.raises(InputShapeError, match=r"expected shape \('B', 3, 16, 16\)"):
        backend(np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(InputDTypeError, match="expected float32 pixels"):
        backend(np.zeros((2, 3, 16, 16), np.float64))


@pytest.mark.parametrize("version", [OLDEST_10, NEWEST])
def test_an_engine_that_does_not_deserialize_is_an_artifact_error(
    tensorrt_standin, engine_dir, version
):
    standin = tensorrt_standin(version)
    FakeEngine(standin)
    standin.set_return("Runtime.deserialize_cuda_engine", None)
    with pytest.raises(ArtifactError, match="Could not deserialize engine"):
        trt_backend.TensorRTBackend(engine_dir)
