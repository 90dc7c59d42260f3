"""Output writers for ``vit-embed``: rows streamed into a temp file, renamed into place.

``.npy``: a float32 (rows, D) array, written header first then chunk by chunk (no
memory map, so resident memory does not grow with the file), plus ``<out>.paths.txt``
with row i's path on line i.

``.parquet``: columns ``path`` (string) and ``embedding`` (fixed_size_list<float32>[D]),
one row group per chunk; the schema metadata ``vit_deploy`` holds the run's settings.

``read_embeddings(path)`` reads either back as (paths, embeddings).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from vit_deploy.errors import ArtifactError, OutputPathError
from vit_deploy.storage import commit_file, fsync_dir, temp_path

OUTPUT_FORMATS = {".npy": "npy", ".parquet": "parquet"}
ROW_DTYPE = np.dtype("<f4")


def open_writer(plan, rows: int, dim: int, meta: dict | None = None):
    if plan.fmt == "npy":
        return NpyWriter(plan, rows, dim)
    return ParquetWriter(plan, rows, dim, meta or {})


def _close(f) -> None:
    f.flush()
    os.fsync(f.fileno())
    f.close()


def _publish(tmp: Path, path: Path) -> None:
    os.replace(tmp, path)
    fsync_dir(path.parent)


class _Writer:
    def __init__(self, plan, rows: int, dim: int):
        self.plan, self.rows, self.dim = plan, rows, dim
        self.written = 0

    def _count(self, paths, emb: np.ndarray) -> None:
        if emb.shape != (len(paths), self.dim):
            raise ArtifactError(f"expected ({len(paths)}, {self.dim}) embeddings, got {emb.shape}")
        self.written += len(paths)
        if self.written > self.rows:
            raise RuntimeError(f"internal error: more rows than the {self.rows} announced")

    def _check_complete(self) -> None:
        if self.written != self.rows:
            raise RuntimeError(f"internal error: wrote {self.written} rows, expected {self.rows}")


class NpyWriter(_Writer):
    def __init__(self, plan, rows: int, dim: int):
        super().__init__(plan, rows, dim)
        self.tmp, self.paths_tmp = temp_path(plan.out), temp_path(plan.paths)
        self.f = open(self.tmp, "xb")
        header = {"descr": np.lib.format.dtype_to_descr(ROW_DTYPE), "fortran_order": False}
        np.lib.format.write_array_header_1_0(self.f, {**header, "shape": (rows, dim)})
        self.paths_f = open(self.paths_tmp, "x", encoding="utf-8", newline="\n")

    def write(self, paths: list[str], emb: np.ndarray) -> None:
        self._count(paths, emb)
        self.f.write(np.ascontiguousarray(emb, dtype=ROW_DTYPE).tobytes())
        self.paths_f.writelines(p + "\n" for p in paths)

    def commit(self) -> None:
        self._check_complete()
        _close(self.paths_f)
        _close(self.f)
        _publish(self.paths_tmp, self.plan.paths)
        _publish(self.tmp, self.plan.out)

    def abort(self) -> None:
        for f, path in ((self.f, self.tmp), (self.paths_f, self.paths_tmp)):
            f.close()
            path.unlink(missing_ok=True)


class ParquetWriter(_Writer):
    def __init__(self, plan, rows: int, dim: int, meta: dict):
        import pyarrow as pa
        import pyarrow.parquet as pq

        super().__init__(plan, rows, dim)
        self.pa = pa
        self.schema = pa.schema(
            [("path", pa.string()), ("embedding", pa.list_(pa.float32(), dim))],
            metadata={"vit_deploy": json.dumps(meta, sort_keys=True)},
        )
        self.tmp = temp_path(plan.out)
        self.writer = pq.ParquetWriter(str(self.tmp), self.schema)

    def write(self, paths: list[str], emb: np.ndarray) -> None:
        self._count(paths, emb)
        pa = self.pa
        flat = pa.array(np.ascontiguousarray(emb, dtype=np.float32).reshape(-1), pa.float32())
        table = pa.Table.from_arrays(
            [pa.array(paths, pa.string()), pa.FixedSizeListArray.from_arrays(flat, self.dim)],
            schema=self.schema,
        )
        self.writer.write_table(table)

    def commit(self) -> None:
        self._check_complete()
        self.writer.close()
        commit_file(self.tmp, self.plan.out)

    def abort(self) -> None:
        self.writer.close()
        self.tmp.unlink(missing_ok=True)


def read_embeddings(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """(paths, (rows, D) float32 embeddings) from a vit-embed output, .npy or .parquet."""
    path = Path(path)
    fmt = OUTPUT_FORMATS.get(path.suffix.lower())
    if fmt == "npy":
        sidecar = path.with_name(path.name + ".paths.txt")
        paths = sidecar.read_text(encoding="utf-8").splitlines()
        return paths, np.load(path, mmap_mode="r")
    if fmt == "parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        column = table.column("embedding").combine_chunks()
        emb = column.flatten().to_numpy().reshape(len(table), column.type.list_size)
        return table.column("path").to_pylist(), emb
    raise OutputPathError(f"{path}: expected a .npy or .parquet file written by vit-embed")
