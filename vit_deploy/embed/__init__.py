"""The embedding engine: ``Embedder`` (Python API) and the streaming file pipeline that
``vit-embed`` runs (``pipeline``, its work dir ``workdir`` and output ``writers``)."""

from vit_deploy.embed.embedder import Embedder, l2_normalize

__all__ = ["Embedder", "l2_normalize"]
