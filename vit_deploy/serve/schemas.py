"""Request bodies and the error body, shaped like the OpenAI API's.

``POST /v1/embeddings``: ``{"model", "input": [image, ...] | image, "encoding_format"}``;
``POST /v1/classify``: ``{"model", "input", "top_k"}``. An image is a data URI or raw
base64. Errors: ``{"error": {"message", "type", "param", "code"}}``, never a traceback.
"""

from __future__ import annotations

import base64
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class _Request(BaseModel):
    # OpenAI clients send fields we do not use ("user"); ignore them rather than refuse.
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    input: list[str] | str

    @property
    def images(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class EmbeddingsRequest(_Request):
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None  # accepted only when it is the model's own dimension


class ClassifyRequest(_Request):
    top_k: int = Field(default=5, ge=1)


class HTTPError(Exception):
    """An answer other than 200: status, OpenAI-style error type, message, offending field."""

    TYPES = {
        400: "invalid_request_error",
        404: "not_found_error",
        413: "request_too_large",
        503: "overloaded_error",
        500: "server_error",
    }

    def __init__(
        self, status: int, message: str, *, param: str | None = None, headers=None, images=0
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.headers = headers or {}
        self.images = images  # how many images the failed request carried (for the metrics)

    def body(self) -> dict:
        kind = self.TYPES.get(self.status, "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": None}}


def parse_request(model: type[_Request], body: bytes) -> _Request:
    """The request, or a 400 naming the first bad field (never echoing the input)."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        kind = "invalid JSON" if first["type"] == "json_invalid" else first["msg"]
        raise HTTPError(400, f"{where}: {kind}", param=where) from None


def encode_embedding(vector: np.ndarray, encoding_format: str) -> np.ndarray | str:
    """The float32 vector (the app writes it as a JSON list), or base64 of little-endian
    float32 (what OpenAI's clients decode)."""
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return np.ascontiguousarray(vector, np.float32)


__all__ = [
    "ClassifyRequest",
    "EmbeddingsRequest",
    "HTTPError",
    "encode_embedding",
    "parse_request",
]
