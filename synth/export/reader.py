"""Read parquet files back as memory-mapped ``datasets.Dataset`` objects.

Parquet is compressed, so it cannot be memory-mapped as Arrow: it is converted once, a batch at a
time, into an Arrow file in a cache, which ``datasets`` then maps. Neither step holds the data in
memory, so the trainers open exports far larger than RAM.

The cache file is named by a fingerprint of each file's absolute path, inode, size and modification
time, and of the schema. ``load_dataset(folder)`` is not used: ``datasets`` (<= 5.2) keys the cache
of a local folder by the folder's name and relative paths, so ``round_1/data/sft`` and
``round_2/data/sft`` would share one; it also cannot materialise a 0-row split, which an export may
have.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from synth.export.schema import CONFIGS, SCHEMAS, SPLITS

if TYPE_CHECKING:
    # imported where used: `datasets` takes a second to import, and most commands never read back
    import datasets

# Rows per Arrow record batch in the cache file (datasets' own writer default).
BATCH_ROWS = 1_000


def default_cache_dir() -> Path:
    """Under the ``datasets`` cache ($HF_DATASETS_CACHE, $HF_HOME), where its own conversions go."""
    import datasets

    return Path(datasets.config.HF_DATASETS_CACHE) / "synth_parquet"


def _fingerprint(files: Sequence[Path], schema: pa.Schema) -> str:
    h = hashlib.sha256(schema.serialize().to_pybytes())
    for f in files:
        st = f.stat()
        h.update(f"\x00{f.resolve()}\x00{st.st_ino}\x00{st.st_size}\x00{st.st_mtime_ns}".encode())
    return h.hexdigest()[:32]


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with exactly ``schema``'s columns: missing ones null, null-typed ones cast."""
    if table.schema.equals(schema):
        return table
    columns = [
        table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(len(table), f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def read_parquet(
    files: Sequence[Path], schema: pa.Schema | None = None, cache_dir: str | Path | None = None
) -> datasets.Dataset:
    """One memory-mapped dataset over ``files``, in order.

    With no ``schema``, the files' schemas are unified (a column missing from a file, or all null
    in it, takes its type from the others), as ``pa.concat_tables(promote_options="default")``
    would. ``cache_dir`` holds the converted Arrow files (default :func:`default_cache_dir`).
    """
    import datasets

    files = [Path(f) for f in files]
    if schema is None:
        schema = pa.unify_schemas([pq.read_schema(f) for f in files], promote_options="default")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache / f"{_fingerprint(files, schema)}.arrow"
    if not target.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        # Unique per writer, so processes converting the same files at once (DDP ranks) never
        # write into one file; the last rename wins with identical content.
        tmp = target.with_name(f"{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
                for f in files:
                    with pq.ParquetFile(f, memory_map=True) as parquet:
                        for batch in parquet.iter_batches(batch_size=BATCH_ROWS):
                            writer.write_table(_conform(pa.Table.from_batches([batch]), schema))
            tmp.replace(target)
        finally:
            tmp.unlink(missing_ok=True)
    return datasets.Dataset.from_file(str(target))


def load_export(dataset_dir: Path, config: str, cache_dir: str | Path | None = None) -> datasets.DatasetDict:
    """Read one config of an exported folder back, every split and shard included (empty ones too).

    ``datasets.load_dataset(dataset_dir, config)`` is the usual way and works whenever the
    config has rows; this also returns empty splits, with the exported schema, memory-mapped
    (see :func:`read_parquet`).
    """
    import datasets

    if config not in SCHEMAS:
        raise ValueError(f"unknown config {config!r}; expected one of {CONFIGS}")
    out = {}
    for split in SPLITS:
        files = sorted((Path(dataset_dir) / config).glob(f"{split}-*.parquet"))
        if not files:
            raise FileNotFoundError(f"no {config}/{split}-*.parquet under {dataset_dir}")
        out[split] = read_parquet(files, SCHEMAS[config], cache_dir)
    return datasets.DatasetDict(out)
