"""vit-serve, tested as a client sees it: the real server process on a free loopback port,
talked to over HTTP. Every answer is compared with ``Embedder`` on the same image files."""

from __future__ import annotations

import base64
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from embed_helpers import png_bytes, random_image, tiny_artifact
from PIL import Image

from vit_deploy.embed.embedder import Embedder

STARTUP_S = 60


class Server:
    """``vit-serve`` in its own process; ``url`` once it printed its address."""

    def __init__(self, artifact, *flags: str):
        cmd = [sys.executable, "-m", "vit_deploy.cli.serve", "--artifact", str(artifact)]
        cmd += ["--port", "0", "--name", "tiny", "--threads", "1", "--decode-threads", "2"]
        self.proc = subprocess.Popen(
            [*cmd, *flags], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        line = _readline(self.proc, STARTUP_S)
        match = re.search(r"on (http://\S+)$", line.strip())
        assert match, f"no address line, got {line!r}; stderr: {self.proc.stderr.read()}"
        self.url = match.group(1)
        self.client = httpx.Client(base_url=self.url, timeout=30)
        assert self.client.get("/ready").status_code == 200

    def stop(self) -> int:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)


def _readline(proc, timeout: float) -> str:
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return out[0] if out else ""


def data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def assert_clean_error(resp, status: int) -> dict:
    """The status, our error shape, and nothing of a traceback."""
    assert resp.status_code == status, resp.text
    assert "Traceback" not in resp.text and 'File "' not in resp.text
    return resp.json()["error"]


def metric(text: str, name: str, **labels) -> float:
    sel = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{re.escape(name)}{re.escape('{' + sel + '}') if sel else ''} (\S+)$"
    found = re.search(pattern, text, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return tiny_artifact(tmp_path_factory)


@pytest.fixture(scope="module")
def embedder(artifact):
    return Embedder.from_artifact(artifact)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """PNG files of assorted sizes and modes: (paths, bytes)."""
    root = tmp_path_factory.mktemp("serve-images")
    rng = np.random.default_rng(1)
    paths, blobs = [], []
    for i, mode in enumerate(["RGB", "L", "RGBA", "P"] * 6):
        img = random_image(rng, int(rng.integers(20, 70)), int(rng.integers(20, 70)), mode)
        data = png_bytes(img)
        (root / f"{i}.png").write_bytes(data)
        paths.append(str(root / f"{i}.png"))
        blobs.append(data)
    return paths, blobs


@pytest.fixture(scope="module")
def server(artifact):
    srv = Server(
        artifact,
        *("--max-batch", "8", "--max-delay-ms", "50", "--max-queue", "64"),
        *("--max-body-mb", "1", "--max-pixels", "100000"),
    )
    yield srv
    assert srv.stop() == 0


def test_embeddings_equal_embedder_under_concurrency(server, embedder, images):
    paths, blobs = images
    expected = embedder.embed(paths)
    assert not np.isnan(expected).any()

    def one(i):
        return server.client.post(
            "/v1/embeddings", json={"model": "tiny", "input": data_uri(blobs[i])}
        )

    with ThreadPoolExecutor(len(blobs)) as pool:
        responses = list(pool.map(one, range(len(blobs))))
    got = []
    for resp in responses:
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["object"] == "list" and body["model"] == "tiny"
        assert body["usage"]["images"] == 1 and body["usage"]["total_tokens"] == 17
        got.append(body["data"][0]["embedding"])
    got = np.asarray(got, np.float32)
    assert not np.isnan(got).any()
    assert np.abs(got - expected).max() <= 1e-6

    metrics = server.client.get("/metrics").text
    calls = metric(metrics, "vit_serve_batch_size_count")
    singles = metric(metrics, "vit_serve_batch_size_bucket", le="1.0")
    assert calls > singles, "no model call ran more than one image under concurrency"


def test_one_request_of_many_images_and_base64(server, embedder, images):
    paths, blobs = images
    raw = [base64.b64encode(b).decode() for b in blobs[:10]]  # raw base64, no data: prefix
    resp = server.client.post("/v1/embeddings", json={"input": raw, "encoding_format": "base64"})
    assert resp.status_code == 200, resp.text
    data = resp.json()["data"]
    assert [d["index"] for d in data] == list(range(10))
    got = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in data])
    assert np.abs(got - embedder.embed(paths[:10])).max() <= 1e-6


def test_classify_equals_embedder(server, embedder, images):
    paths, blobs = images
    resp = server.client.post(
        "/v1/classify",
        json={"model": "tiny", "input": [data_uri(b) for b in blobs[:4]], "top_k": 2},
    )
    assert resp.status_code == 200, resp.text
    expected = embedder.classify(paths[:4], top_k=2)
    for row, want in zip(resp.json()["data"], expected, strict=True):
        assert [x["label"] for x in row["labels"]] == [label for label, _ in want]
        probs = [x["probability"] for x in row["labels"]]
        assert np.allclose(probs, [p for _, p in want], atol=1e-6, rtol=0)


def test_bad_image_fails_only_its_own_request(server, images):
    _, blobs = images
    good = data_uri(blobs[0])
    cut = data_uri(blobs[1][: len(blobs[1]) // 2])
    not_image = data_uri(b"this is text, not a PNG")
    cases = {
        "truncated": [good, cut],
        "not an image": [good, good, not_image],
        "not base64": [good, "%%%not base64%%%"],
        "a URL": ["https://example.com/cat.png"],
    }

    def post(inputs):
        return server.client.post("/v1/embeddings", json={"model": "tiny", "input": inputs})

    with ThreadPoolExecutor(8) as pool:
        bad = {k: pool.submit(post, v) for k, v in cases.items()}
        goods = [pool.submit(post, [good]) for _ in range(4)]  # batched alongside the bad ones
        for what, fut in bad.items():
            err = assert_clean_error(fut.result(), 400)
            index = len(cases[what]) - 1
            assert f"input[{index}]" in err["message"] and err["param"] == f"input[{index}]", what
        for fut in goods:
            assert fut.result().status_code == 200


def test_too_many_pixels_refused_before_decoding(server):
    # A real PNG header claiming 2000x2000 (over --max-pixels 100000) with the pixel data
    # of a 4x4 image: decoding it would fail as truncated; the answer must be the limit.
    png = png_bytes(Image.new("RGB", (4, 4)))
    ihdr = b"IHDR" + struct.pack(">II", 2000, 2000) + png[24:29]
    forged = png[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + png[33:]
    resp = server.client.post("/v1/embeddings", json={"input": [data_uri(forged)]})
    err = assert_clean_error(resp, 400)
    assert "2000x2000" in err["message"] and "not decoded" in err["message"]


def test_size_limits_and_bad_requests(server, images):
    _, blobs = images
    big = "A" * (1024 * 1024 + 100)  # over --max-body-mb 1
    assert_clean_error(server.client.post("/v1/embeddings", json={"input": [big]}), 413)
    assert_clean_error(
        server.client.post("/v1/embeddings", json={"model": "nope", "input": data_uri(blobs[0])}),
        404,
    )
    assert_clean_error(server.client.post("/v1/embeddings", content=b"{not json"), 400)
    assert_clean_error(server.client.post("/v1/embeddings", json={"model": "tiny"}), 400)
    assert_clean_error(server.client.post("/v1/embeddings", json={"input": []}), 400)
    too_many = {"input": [data_uri(blobs[0])] * 65}  # more than --max-queue could ever hold
    assert_clean_error(server.client.post("/v1/embeddings", json=too_many), 413)
    dims = {"input": data_uri(blobs[0]), "dimensions": 7}
    assert (
        "dimensions"
        in assert_clean_error(server.client.post("/v1/embeddings", json=dims), 400)["message"]
    )
    assert_clean_error(server.client.get("/v1/nothing-here"), 404)


def test_health_ready_metrics(server):
    assert server.client.get("/health").json() == {"status": "ok"}
    ready = server.client.get("/ready").json()
    assert ready["status"] == "ready" and ready["model"] == "tiny" and ready["dim"] == 32
    resp = server.client.get("/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    text = resp.text
    for name in (
        "vit_serve_requests_total",
        "vit_serve_images_total",
        "vit_serve_batch_size_bucket",
        "vit_serve_queue_depth",
        "vit_serve_queue_wait_seconds_bucket",
        "vit_serve_model_seconds_bucket",
    ):
        assert name in text, name
    assert metric(text, "vit_serve_requests_total", endpoint="embeddings", outcome="ok") >= 1
    assert metric(text, "vit_serve_queue_depth") == 0
    assert server.client.get("/v1/models").json()["data"][0]["id"] == "tiny"


@pytest.fixture(scope="module")
def slow_server(artifact):
    """A long batching window, always waited out, and a 4-image queue: overload and drain,
    deterministically."""
    srv = Server(
        artifact, "--max-batch", "8", "--max-delay-ms", "1500", "--max-queue", "4",
        "--batch-wait", "window",
    )  # fmt: skip
    yield srv
    srv.stop()


def test_full_queue_gets_503_with_retry_after(slow_server, images):
    _, blobs = images
    body = {"input": [data_uri(b) for b in blobs[:4]]}
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(slow_server.client.post, "/v1/embeddings", json=body)
        time.sleep(0.4)  # the 4 images now wait (1.5 s window, batch of 8 not full)
        resp = slow_server.client.post("/v1/embeddings", json={"input": data_uri(blobs[0])})
        err = assert_clean_error(resp, 503)
        assert "overloaded" in err["message"] and int(resp.headers["retry-after"]) >= 1
        assert first.result().status_code == 200
    metrics = slow_server.client.get("/metrics").text
    assert metric(metrics, "vit_serve_requests_total", endpoint="embeddings", outcome="overloaded")


def test_sigterm_drains_in_flight_request(slow_server, images):
    _, blobs = images
    with ThreadPoolExecutor(1) as pool:
        started = time.perf_counter()
        pending = pool.submit(
            slow_server.client.post, "/v1/embeddings", json={"input": data_uri(blobs[0])}
        )
        time.sleep(0.4)  # in the queue, 1.1 s of its window left
        slow_server.proc.send_signal(signal.SIGTERM)
        resp = pending.result()
    assert resp.status_code == 200 and len(resp.json()["data"]) == 1
    assert time.perf_counter() - started >= 1.0  # it was answered after the signal, not before
    assert slow_server.proc.wait(timeout=30) == 0


def test_lone_request_does_not_wait_out_the_window(artifact, images):
    # default --batch-wait incoming: nothing else is on its way, so the image runs at once
    srv = Server(artifact, "--max-batch", "8", "--max-delay-ms", "20000")
    try:
        started = time.perf_counter()
        resp = srv.client.post("/v1/embeddings", json={"input": data_uri(images[1][0])})
        assert resp.status_code == 200, resp.text
        assert time.perf_counter() - started < 10.0  # the window is 20 s
    finally:
        assert srv.stop() == 0


def test_model_that_fails_to_load_exits_before_binding(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    with socket.socket() as probe:  # a port nobody listens on; the server must not bind it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for artifact in (tmp_path / "missing", broken):
        run = subprocess.run(
            [sys.executable, "-m", "vit_deploy.cli.serve", "--artifact", str(artifact)]
            + ["--port", str(port)],
            capture_output=True,
            text=True,
            timeout=STARTUP_S,
        )
        assert run.returncode != 0
        assert run.stdout == ""  # never announced an address
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("vit-serve: error:"), run.stderr


def test_fast_path_answers_as_the_fastapi_routes(embedder, images):
    """PostRoutes (plain ASGI) in front, and the FastAPI routes it stands in for, in-process:
    the same status and body for good, bad and oversized requests; other methods get 405."""
    import asyncio

    from vit_deploy.serve.app import ServeSettings, create_app

    paths, blobs = images
    good = {"model": "tiny", "input": [data_uri(b) for b in blobs[:3]]}
    bad = {"model": "tiny", "input": [data_uri(blobs[0]), data_uri(b"not a png")]}
    cases = [
        ("/v1/embeddings", good),
        ("/v1/embeddings", {**good, "encoding_format": "base64"}),
        ("/v1/embeddings", bad),
        ("/v1/embeddings", {**good, "model": "other"}),
        ("/v1/classify", {**good, "top_k": 2}),
        ("/v1/embeddings", {"model": "tiny", "input": ["x" * 300_000]}),  # over the body limit
    ]

    async def chunks():  # no content-length: the limit is found while reading
        yield b'{"input": ["' + b"x" * 150_000
        yield b"x" * 150_000 + b'"]}'

    async def answers(app, fastapi_app):
        transport = httpx.ASGITransport(app=app)
        async with fastapi_app.router.lifespan_context(fastapi_app):  # the batcher runs
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                out = [await client.post(path, json=body) for path, body in cases]
                out.append(await client.post("/v1/embeddings", content=chunks()))
                out.append(await client.get("/v1/embeddings"))
        return [(r.status_code, r.headers.get("content-type"), r.content) for r in out]

    settings = ServeSettings(max_body_bytes=200_000, decode_threads=1)
    fast = create_app(embedder, name="tiny", settings=settings)
    inner, behind = fast.app, []

    async def counting(scope, receive, send):  # what gets past the fast path to FastAPI
        if scope["type"] == "http":
            behind.append(scope["method"])
        await inner(scope, receive, send)

    fast.app = counting
    reference = create_app(embedder, name="tiny", settings=settings).app  # FastAPI alone
    got = asyncio.run(answers(fast, inner))
    want = asyncio.run(answers(reference, reference))
    assert [s for s, _, _ in want] == [200, 200, 400, 404, 200, 413, 413, 405]
    assert got == want
    assert b"input[1]" in got[2][2] and b"got more" in got[6][2]
    assert behind == ["GET"]  # every POST was answered in front


def test_client_gone_before_its_body_is_answered_by_nobody(embedder):
    import asyncio

    from vit_deploy.serve.app import create_app

    app = create_app(embedder, name="tiny")
    sent = []

    async def receive():
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/embeddings", "headers": []}
    asyncio.run(app(scope, receive, send))
    app.state.service.decoders.close()  # no lifespan ran to close it
    assert sent == []
    text = app.state.service.metrics.render().decode()
    assert metric(text, "vit_serve_requests_total", endpoint="embeddings", outcome="disconnected")


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
def test_ort_spin_idle_puts_only_the_sessions_threads_at_idle_priority(artifact):
    from vit_deploy.cli.serve import build_parser, load_embedder
    from vit_deploy.errors import ConfigError
    from vit_deploy.serve.threads import set_idle_priority, thread_ids

    def idle() -> set[int]:
        return {t for t in thread_ids() if os.sched_getscheduler(t) == os.SCHED_IDLE}

    before = idle()
    args = build_parser().parse_args(["--artifact", str(artifact), "--ort-spin-idle"])
    embedder = load_embedder(args)
    started = idle() - before
    assert started, "expected the session's intra-op threads at SCHED_IDLE"
    assert threading.get_native_id() not in started  # the caller keeps its priority
    options = embedder.backend.session.get_session_options()
    with pytest.raises(RuntimeError):  # no spin entry: ONNX Runtime's own spinning
        options.get_session_config_entry("session.intra_op.allow_spinning")
    image = random_image(np.random.default_rng(0), 40, 30)
    assert np.array_equal(embedder.embed([image]), Embedder.from_artifact(artifact).embed([image]))
    with pytest.raises(ConfigError, match="got none"):
        set_idle_priority(set())


def test_ort_spin_flags_reach_the_session(artifact):
    from vit_deploy.cli.serve import build_parser, load_embedder

    def entries(*flags) -> dict[str, str]:
        args = build_parser().parse_args(["--artifact", str(artifact), "--max-batch", "2", *flags])
        options = load_embedder(args).backend.session.get_session_options()
        found = {}
        for key in ("allow_spinning", "spin_duration_us"):
            try:
                found[key] = options.get_session_config_entry(f"session.intra_op.{key}")
            except RuntimeError:  # not set: ONNX Runtime's default
                pass
        return found

    assert entries() == {"allow_spinning": "0"}  # the default: they sleep
    assert entries("--ort-spin") == {}  # ONNX Runtime's own policy, which spins
    assert entries("--ort-spin-us", "0") == {"allow_spinning": "0"}
    assert entries("--ort-spin-us", "250") == {"spin_duration_us": "250"}
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--artifact", str(artifact), "--ort-spin", "--ort-spin-us", "5"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--artifact", str(artifact), "--ort-spin-us", "-1"])
