"""vit-serve: an HTTP embedding server with dynamic batching (``create_app``)."""

from vit_deploy.serve.app import ServeSettings, create_app, warm_up
from vit_deploy.serve.batcher import DynamicBatcher, QueueFullError

__all__ = ["DynamicBatcher", "QueueFullError", "ServeSettings", "create_app", "warm_up"]
