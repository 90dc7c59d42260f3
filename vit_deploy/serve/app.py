"""The HTTP app: OpenAI-shaped embeddings, top-k classification, health and metrics.

FastAPI on uvicorn: a well-kept ASGI stack with graceful shutdown on SIGTERM (finish
in-flight requests, then exit); the batching is ours (``batcher.py``) because every
image must go through the artifact's own preprocessing and fail alone. The two POST
routes are plain ASGI in front of FastAPI (``fastpath.py``: a third of the event loop's
CPU per request was FastAPI's own).

A request: body read up to ``max_body_bytes`` (413), parsed (400), model name checked
(404), admitted to the batcher's queue before any decoding (503 + Retry-After), images
decoded and preprocessed in a thread pool (400 naming the first bad index), then batched
with other requests' images. Bodies are written with orjson: float32 rows as their
shortest exact decimal, several times faster than ``json`` on a list of floats.
``create_app(embedder, ...)`` takes a loaded, warmed ``Embedder``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from vit_deploy.embed.embedder import l2_normalize
from vit_deploy.errors import ArtifactError
from vit_deploy.labels import top_k
from vit_deploy.serve.batcher import DynamicBatcher, QueueFullError
from vit_deploy.serve.decode import DEFAULT_MAX_PIXELS, ImageInputError, decode_to_pixels
from vit_deploy.serve.fastpath import ClientGoneError, PostRoutes, header, read_body
from vit_deploy.serve.metrics import CONTENT_TYPE, ServeMetrics
from vit_deploy.serve.pool import ChunkedThreadPool
from vit_deploy.serve.schemas import (
    ClassifyRequest,
    EmbeddingsRequest,
    HTTPError,
    encode_embedding,
    parse_request,
)

log = logging.getLogger("vit_deploy.serve")
OUTCOMES = {200: "ok", 400: "bad_request", 404: "not_found", 413: "too_large", 503: "overloaded"}
DISCONNECTED = "disconnected"  # the client went away before its body was read
RETRY_AFTER_S = "1"


@dataclass(frozen=True)
class ServeSettings:
    max_batch: int = 32
    max_delay_ms: float = 5.0
    batch_wait: str = "incoming"  # see vit_deploy.serve.batcher
    max_queue: int = 256  # images admitted and unanswered
    max_body_bytes: int = 32 * 2**20
    max_pixels: int = DEFAULT_MAX_PIXELS
    exif_transpose: bool = True  # turn images by their EXIF orientation tag
    # half the cores (the model's threads take the rest), at most 4: decoding a small image
    # is mostly Python under the GIL, so two decode threads on 2 cores only fight for it
    decode_threads: int = max(1, min(4, (os.cpu_count() or 2) // 2))


def json_bytes(body: dict) -> bytes:
    """``body`` as JSON; numpy arrays in it are written as lists (float32 exactly)."""
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def json_response(body: dict | bytes, status: int = 200, headers=None) -> Response:
    """A JSON response of ``body`` (a dict, or JSON bytes already written)."""
    content = body if isinstance(body, bytes) else json_bytes(body)
    return Response(content, status, headers, media_type="application/json")


def classifier_problem(embedder) -> str | None:
    """Why ``/v1/classify`` cannot answer for this model (None: it can)."""
    cfg, names = embedder.config, embedder.backend.output_names
    if not cfg.num_classes or "logits" not in names:
        return f"model has no classification head (outputs: {', '.join(names)})"
    if len(embedder.labels) != cfg.num_classes:
        return f"model has {cfg.num_classes} classes but {len(embedder.labels)} label names"
    return None


class _Service:
    """The state one app holds: the model, its batcher, the decode pool, the metrics."""

    def __init__(self, embedder, name: str, settings: ServeSettings):
        self.embedder = embedder
        self.name = name
        self.settings = settings
        self.metrics = ServeMetrics(settings.max_batch)
        self.batcher = DynamicBatcher(
            embedder.run,
            max_batch=settings.max_batch,
            max_delay_s=settings.max_delay_ms / 1000.0,
            max_queue=settings.max_queue,
            wait=settings.batch_wait,
            metrics=self.metrics,
        )
        self.decoders = ChunkedThreadPool(self._decode, settings.decode_threads, "vit-serve-decode")
        self.classify_problem = classifier_problem(embedder)
        cfg = embedder.config
        self.tokens_per_image = (cfg.img_size // cfg.patch_size) ** 2 + int(cfg.class_token)

    async def read_body(self, scope: dict, receive) -> bytes:
        limit = self.settings.max_body_bytes

        def too_large(got: str) -> HTTPError:
            return HTTPError(413, f"expected a body of at most {limit} bytes, got {got}")

        declared = header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large(declared)
        return await read_body(receive, limit, too_large)

    def check(self, req) -> list[str]:
        if req.model is not None and req.model != self.name:
            raise HTTPError(404, f"model: expected {self.name!r}, got {req.model!r}", param="model")
        images = req.images
        if not images:
            raise HTTPError(400, "input: expected at least one image, got none", param="input")
        if len(images) > self.settings.max_queue:
            raise HTTPError(
                413, f"input: expected at most {self.settings.max_queue} images, got {len(images)}",
                param="input",
            )  # fmt: skip
        return images

    @staticmethod
    def overloaded(n: int) -> HTTPError:
        return HTTPError(
            503, f"server overloaded: the queue has no room for {n} image(s); retry later",
            headers={"Retry-After": RETRY_AFTER_S}, images=n,
        )  # fmt: skip

    async def pixels(self, images: list[str]) -> list[np.ndarray]:
        results = await asyncio.gather(*self.decoders.submit(images), return_exceptions=True)
        for i, res in enumerate(results):
            if isinstance(res, ImageInputError):
                raise HTTPError(400, f"input[{i}]: {res}", param=f"input[{i}]", images=len(images))
            if isinstance(res, BaseException):
                raise res
        return results

    def _decode(self, image: str) -> np.ndarray:
        started = time.perf_counter()
        px = decode_to_pixels(
            image, self.embedder.preprocess, self.settings.max_pixels, self.settings.exif_transpose
        )
        self.metrics.decode_time.observe(time.perf_counter() - started)
        return px

    async def run(self, images: list[str]) -> list[dict[str, np.ndarray]]:
        try:
            self.batcher.admit(len(images))  # room is reserved before any decoding
        except QueueFullError:
            raise self.overloaded(len(images)) from None
        submitted = False
        try:
            pixels = await self.pixels(images)
            submitted = True
            return await self.batcher.submit(pixels)
        finally:
            if not submitted:  # a bad image (or a cancelled request): give its room back
                self.batcher.withdraw(len(images))

    def usage(self, n: int) -> dict:
        tokens = n * self.tokens_per_image
        return {"prompt_tokens": tokens, "total_tokens": tokens, "images": n}


def create_app(embedder, *, name: str, settings: ServeSettings | None = None) -> PostRoutes:
    """The ASGI app for one loaded, warmed ``Embedder``, served as model ``name``.

    ``app.state.is_draining`` (a callable) makes ``/ready`` answer 503 once shutdown began.
    """
    svc = _Service(embedder, name, settings or ServeSettings())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        svc.batcher.start()
        try:
            yield
        finally:
            await svc.batcher.stop()
            svc.decoders.close()

    app = FastAPI(title="vit-serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = svc
    app.state.is_draining = lambda: False

    def answer(endpoint: str, started: float, status: int, body: dict, headers=None, n=0):
        outcome = OUTCOMES.get(status, "error")
        svc.metrics.requests.labels(endpoint, outcome).inc()
        if n:
            svc.metrics.images.labels(outcome).inc(n)
        svc.metrics.request_time.labels(endpoint).observe(time.perf_counter() - started)
        return status, json_bytes(body), headers or {}

    async def handle(endpoint: str, scope: dict, receive, schema, respond):
        started = time.perf_counter()
        n = 0
        try:
            req = parse_request(schema, await svc.read_body(scope, receive))
            images = svc.check(req)
            n = len(images)
            if getattr(req, "dimensions", None) not in (None, embedder.dim):
                raise HTTPError(
                    400, f"dimensions: expected {embedder.dim} (this model's), got {req.dimensions}",
                    param="dimensions",
                )  # fmt: skip
            body = respond(req, await svc.run(images))
            return answer(endpoint, started, 200, body, n=n)
        except HTTPError as err:
            return answer(endpoint, started, err.status, err.body(), err.headers, err.images or n)
        except ClientGoneError:
            svc.metrics.requests.labels(endpoint, DISCONNECTED).inc()
            return None
        except Exception:  # noqa: BLE001 - logged here, never shown to the client
            log.exception("%s failed", endpoint)
            err = HTTPError(500, "internal error: the request failed in the server")
            return answer(endpoint, started, 500, err.body(), n=n)

    def embeddings_body(req: EmbeddingsRequest, rows) -> dict:
        vectors = l2_normalize(np.stack([r["embedding"] for r in rows]).astype(np.float32))
        data = [
            {"object": "embedding", "index": i, "embedding": encode_embedding(v, req.encoding_format)}
            for i, v in enumerate(vectors)
        ]  # fmt: skip
        return {"object": "list", "data": data, "model": name, "usage": svc.usage(len(rows))}

    def classify_body(req: ClassifyRequest, rows) -> dict:
        k = min(req.top_k, len(embedder.labels))
        ranked = top_k(np.stack([r["logits"] for r in rows]), embedder.labels, k)
        data = [
            {"object": "classification", "index": i,
             "labels": [{"label": label, "probability": p} for label, p in pairs]}
            for i, pairs in enumerate(ranked)
        ]  # fmt: skip
        return {"object": "list", "data": data, "model": name, "usage": svc.usage(len(rows))}

    async def embeddings(scope, receive):
        return await handle("embeddings", scope, receive, EmbeddingsRequest, embeddings_body)

    async def classify(scope, receive):
        if svc.classify_problem is not None:
            err = HTTPError(400, f"classify: {svc.classify_problem}; use /v1/embeddings")
            return answer("classify", time.perf_counter(), 400, err.body())
        return await handle("classify", scope, receive, ClassifyRequest, classify_body)

    post_routes = {"/v1/embeddings": embeddings, "/v1/classify": classify}
    for path, handler in post_routes.items():
        # the same handlers as FastAPI routes: what answers when PostRoutes is not in front
        # (the reference path the tests compare it with), and 405 for other methods
        app.add_api_route(path, as_route(handler), methods=["POST"], include_in_schema=False)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "local"}]}

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/ready")
    async def ready():
        if app.state.is_draining():
            return json_response({"status": "draining"}, 503)
        return {"status": "ready", "model": name, "backend": embedder.name, "dim": embedder.dim}

    @app.get("/metrics")
    async def metrics():
        return Response(svc.metrics.render(), media_type=CONTENT_TYPE)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):  # 404 / 405 for unknown routes, in our error shape
        err = HTTPError(exc.status_code, str(exc.detail))
        return json_response(err.body(), exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc):
        return json_response(HTTPError(400, "invalid request").body(), 400)

    @app.exception_handler(Exception)
    async def server_error(request, exc):  # last resort: log it, show no traceback
        log.exception("unhandled error")
        return json_response(HTTPError(500, "internal error").body(), 500)

    return PostRoutes(app, post_routes)


def as_route(handler):
    """A fast-path handler as a FastAPI endpoint."""

    async def route(request: Request):
        answer = await handler(request.scope, request.receive)
        if answer is None:
            return Response(status_code=400)  # the client is gone; nobody reads this
        status, body, headers = answer
        return json_response(body, status, headers)

    return route


def warm_up(embedder, max_batch: int) -> None:
    """One call at batch 1 and one at ``max_batch``: allocations and lazy init happen now,
    not in the first client's latency. Raises if the model's outputs are not finite."""
    cfg = embedder.config
    for b in sorted({1, max_batch}):
        out = embedder.run(np.zeros((b, cfg.in_chans, cfg.img_size, cfg.img_size), np.float32))
        for key, value in out.items():
            if not np.isfinite(np.asarray(value)).all():
                raise ArtifactError(f"warm-up: expected finite {key!r} outputs, got NaN or Inf")


__all__ = ["ServeSettings", "classifier_problem", "create_app", "top_k", "warm_up"]
