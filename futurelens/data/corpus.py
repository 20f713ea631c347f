"""Where documents come from: the embedded Python docs, local files, or a (streamed) HF dataset.

Every source yields `Document`s with a stable id, so a prefix can always be traced
back to (document id, token offset) and recomputed. Every source is a stream: documents are
read one at a time (JSONL line by line, Parquet in record batches, ``hf:`` datasets with
``streaming=True``), so reading a corpus never holds more than one document's text; each call
of `documents` starts a new pass from the beginning, in the same order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import FutureLensError

EMBEDDED = "pydoc"
"""The offline default: the topic texts of Python's own documentation (``pydoc_data``), one document per topic."""


@dataclass(frozen=True)
class Document:
    id: str
    text: str


def _pydoc() -> Iterator[Document]:
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield Document(f"pydoc:{name}", topics[name])


def _files(path: Path, text_field: str) -> Iterator[Document]:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        suffix = file.suffix.lower()
        if suffix == ".jsonl":
            with file.open(encoding="utf-8") as fh:
                for i, line in enumerate(fh):
                    if line.strip():
                        record = json.loads(line)
                        if text_field not in record:
                            raise FutureLensError(f"{file}:{i + 1} has no {text_field!r} field; pass --text-field.")
                        yield Document(str(record.get("id", f"{file.name}:{i}")), record[text_field])
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            parquet = pq.ParquetFile(file)
            names = parquet.schema_arrow.names
            if text_field not in names:
                raise FutureLensError(f"{file} has no {text_field!r} column (has {names}); pass --text-field.")
            i = 0  # read in record batches: a large file is never in memory whole
            for batch in parquet.iter_batches(batch_size=256, columns=[text_field]):
                for text in batch.column(0).to_pylist():
                    yield Document(f"{file.name}:{i}", text)
                    i += 1
        elif suffix in (".txt", ".md", ".rst", ""):
            yield Document(str(file.relative_to(path) if path.is_dir() else file.name), file.read_text(encoding="utf-8"))


def _hub(spec: str, text_field: str, split: str) -> Iterator[Document]:
    from datasets import load_dataset

    name, _, config = spec.partition(":")
    try:
        stream = load_dataset(name, config or None, split=split, streaming=True)
    except Exception as err:  # noqa: BLE001 - datasets raises many types for "no network"/"no such dataset"
        raise FutureLensError(
            f"Could not stream the dataset {name!r} from the Hugging Face hub ({type(err).__name__}). "
            f"Check the name and network, or use local files or the embedded corpus ({EMBEDDED!r})."
        ) from err
    for i, record in enumerate(stream):  # streamed: records arrive one at a time, the dataset is never downloaded whole
        if text_field not in record:
            raise FutureLensError(f"Records of {name!r} have no {text_field!r} field (they have {sorted(record)}); pass --text-field.")
        yield Document(f"{name}:{record.get('id', i)}", record[text_field])


def documents(source: str = EMBEDDED, text_field: str = "text", split: str = "train") -> Iterator[Document]:
    """Documents from ``source``: ``"pydoc"``, a file/folder (.txt/.md/.jsonl/.parquet), or ``"hf:name[:config]"``."""
    if source == EMBEDDED:
        return _pydoc()
    if source.startswith("hf:"):
        return _hub(source[3:], text_field, split)
    path = Path(source)
    if not path.exists():
        raise FutureLensError(
            f"Corpus {source!r} is neither {EMBEDDED!r}, an existing file or folder, nor 'hf:<dataset>' for the hub."
        )
    return _files(path, text_field)
