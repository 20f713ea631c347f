"""Prefix tables: prefixes given as text, used as given (no cutting), labelled and split like cut ones.

Two formats, recognised by their columns:

- **The authors' CSV** (Future Lens' ``data/testing_data*_1000.csv``: ``doc``, ``start_prefix_index``,
  ``decoded_prefix``, ``prefix_len``, ``decoded_phrase``, and ``teacher_phrase`` in the teacher file). The
  document's own next tokens are ``decoded_phrase``; GPT-J's greedy continuation is ``teacher_phrase``.
  ``--source paper-test`` is the teacher file, shipped in ``futurelens/data/paper/`` (attribution there).
- **A generic table** (``.csv``, ``.jsonl`` or ``.parquet``) with a ``prefix`` column, optionally ``doc`` (the
  document it comes from: the split is by it; default: each row its own document), ``next`` (the text that
  follows it in the document) and ``continuation`` (a model's continuation, usable as labels).

Each row becomes one dataset row: ``prefix_ids`` = the text as futurelens tokenises it (`futurelens.tokens`:
the tokenizer's BOS first, if it adds one), ``next_ids`` = the first ``n_max + 1`` tokens of the following text
(tokenised together with the prefix, so a word is split as in the document; -1, a missing target that no score
counts, where that text is shorter in this tokenizer), ``table_ids`` = the table's
continuation (the authors' ``teacher_phrase``), and ``target_ids`` = the labels. The labels are the table's
continuation when it was made with this model's tokenizer (``labels='auto'``: the tokenizer reproduces the
table's own token counts, ``prefix_len`` and ``gen_len``, as GPT-J's does on the authors' file), else the model's
own greedy continuation, as for cut prefixes. A table with no following text has no real next tokens: its
``next_ids`` are the labels, and the correctness filter is not applied (recorded).

Labelling runs in shards of ``shard_size`` rows, each written atomically to ``<out>.partial/`` and reused by a
re-run after a kill (the rows are checked to be the same); a length group of long prefixes is decoded in batches
of at most ``batch_tokens`` tokens, so memory is bounded by the budget, not by the longest prefix times the
batch size. The rows stream from the file a shard at a time.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from ..artifacts import dataset as D
from ..errors import FutureLensError
from ..tokens import encode, special_tokens
from . import labels as L

if TYPE_CHECKING:
    from ..models import LensModel
    from .prefixes import DataConfig

PAPER_TEST = "paper-test"
"""``--source paper-test``: the paper's 1,000 test prefixes (the authors' teacher file, shipped)."""
PAPER_DIR = Path(__file__).parent / "paper"
PAPER_FILE = "testing_data_teacher_1000.csv"
AUTHORS = ("doc", "start_prefix_index", "decoded_prefix", "prefix_len", "decoded_phrase")
"""The columns that mark the authors' format."""
SUFFIXES = (".csv", ".jsonl", ".parquet")
LABELS = ("auto", "model", "table")

log = logging.getLogger(__name__)


def table_path(source: str) -> Path | None:
    """The prefix table ``source`` names, or None when it is a corpus of documents (cut into prefixes)."""
    if source == PAPER_TEST:
        return PAPER_DIR / PAPER_FILE
    path = Path(source)
    suffix = path.suffix.lower()
    if not path.is_file() or suffix not in SUFFIXES:
        return None
    if suffix == ".csv":  # documents are never CSV: a CSV is a table, and must be one of the two formats
        return path
    names = _columns(path)
    return path if "prefix" in names or set(AUTHORS) <= set(names) else None


def _columns(path: Path) -> list[str]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return list(pq.ParquetFile(path).schema_arrow.names)
    if suffix == ".jsonl":
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    return list(json.loads(line))
        return []
    import pandas as pd

    return list(pd.read_csv(path, nrows=0).columns)


def table_format(path: Path) -> str:
    """``'authors'`` or ``'generic'``; a table of neither is refused with the columns it needs."""
    names = _columns(path)
    if set(AUTHORS) <= set(names):
        return "authors"
    if "prefix" in names:
        return "generic"
    raise FutureLensError(
        f"{path} is a table with columns {names[:12]}, neither the authors' format ({', '.join(AUTHORS)}) nor a "
        "prefix table (a 'prefix' column, optionally 'doc', 'next' and 'continuation')."
    )


def _records(path: Path) -> Iterator[dict]:
    """The table's rows as dicts, streamed (CSV and Parquet in chunks, JSONL line by line)."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        import pandas as pd

        for chunk in pd.read_csv(path, chunksize=256, keep_default_na=False, dtype=str):
            yield from chunk.to_dict("records")
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=256):
            yield from batch.to_pylist()
    else:
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    yield json.loads(line)


def rows(path: Path) -> Iterator[dict]:
    """``{doc, offset, prefix, next, continuation, counts}`` per row, in the table's order (strings or None)."""
    kind = table_format(path)
    for i, r in enumerate(_records(path)):
        if kind == "authors":
            prefix = r["decoded_prefix"]
            teacher = r.get("teacher_phrase")
            yield {"doc": f"pile{r.get('pile', 0)}:doc{r['doc']}", "offset": int(r["start_prefix_index"] or 0),
                   "prefix": prefix, "next": r["decoded_phrase"] or None, "continuation": teacher or None,
                   "counts": (int(r["prefix_len"]), int(r["gen_len"])) if r.get("gen_len") not in (None, "") else
                   (int(r["prefix_len"]), None)}
        else:
            doc = r.get("doc")
            yield {"doc": f"{path.name}:{i}" if doc in (None, "") else str(doc), "offset": int(r.get("offset") or 0),
                   "prefix": r["prefix"], "next": r.get("next") or None, "continuation": r.get("continuation") or None,
                   "counts": None}


def _plain(tok: Any, text: str) -> list[int]:
    return [int(t) for t in tok(text, add_special_tokens=False)["input_ids"]]


def _after(tok: Any, prefix: str, text: str, n: int) -> list[int]:
    """The first ``n`` tokens of ``text`` as it is tokenised after ``prefix`` (the document's own split)."""
    own = _plain(tok, prefix)
    joint = _plain(tok, prefix + text)
    ids = joint[len(own):] if joint[: len(own)] == own else _plain(tok, text)
    return ids[:n]


def same_tokenizer(tok: Any, path: Path, sample: int = 50) -> bool:
    """Whether ``tok`` reproduces the table's recorded token counts (``prefix_len``, and ``gen_len`` of its
    continuation) on its first ``sample`` rows: the table was made with this tokenizer."""
    seen = 0
    for r in rows(path):
        if r["counts"] is None:
            return False
        prefix_len, gen_len = r["counts"]
        if len(_plain(tok, r["prefix"])) != prefix_len:
            return False
        if gen_len is not None and r["continuation"] is not None and len(_plain(tok, r["continuation"])) != gen_len:
            return False
        seen += 1
        if seen >= sample:
            break
    return seen > 0


def check_table(cfg: "DataConfig", path: Path) -> None:
    if cfg.labels not in LABELS:
        raise FutureLensError(f"labels must be one of {', '.join(LABELS)}, not {cfg.labels!r}.")
    table_format(path)


def _use_table_labels(lm: "LensModel", cfg: "DataConfig", path: Path, has_continuation: bool) -> bool:
    if cfg.labels == "model":
        return False
    if cfg.labels == "table":
        if not has_continuation:
            raise FutureLensError(f"labels='table' needs the table's continuation, and {path} has none "
                                  "('teacher_phrase' or 'continuation'): use --labels model.")
        return True
    return has_continuation and same_tokenizer(lm.tokenizer, path)


def build_table(lm: "LensModel", cfg: "DataConfig", path: Path, progress: bool = True) -> Path:
    """The dataset of a prefix table at ``cfg.out`` (atomic; resumable shard by shard). Returns the folder."""
    from tqdm.auto import tqdm

    check_table(cfg, path)
    need = cfg.n_max + 1
    first = next(rows(path), None)
    if first is None:
        raise FutureLensError(f"{path} has no rows.")
    from_table = _use_table_labels(lm, cfg, path, first["continuation"] is not None)
    has_next = first["next"] is not None
    filtering = cfg.filter_correct and has_next
    if cfg.filter_correct and not has_next:
        log.warning("%s gives no following text, so no real next tokens: the correctness filter is not applied.", path)
    settings = L.settings(lm, cfg)
    settings["table"] = {"path": str(path.resolve()), "labels": "table" if from_table else "model"}
    work = D.partial_dir(cfg.out)
    D.open_partial(work, settings)
    tok = lm.tokenizer

    def candidates() -> Iterator[tuple]:
        for r in rows(path):
            ids = encode(tok, r["prefix"])
            if len(ids) == len(special_tokens(tok)["prepend"]):
                continue  # an empty prefix has no last token
            table_ids = _after(tok, r["prefix"], r["continuation"], need) if r["continuation"] else []
            nxt = _after(tok, r["prefix"], r["next"], need) if r["next"] else []
            if r["next"] and len(nxt) < need:  # the following text is shorter here: -1 = no target (not scored)
                nxt = nxt + [-1] * (need - len(nxt))
            yield (r["doc"], r["offset"], ids, nxt, table_ids)

    stream = candidates()
    taken: list[int] = []
    kept = n_candidates = n_passed = n_short = n_next_short = 0
    k = 0
    n_rows = sum(1 for _ in _records(path))  # the bar's total: a table shorter than n_prefixes is used up first
    bar = tqdm(total=min(cfg.n_prefixes, n_rows), desc="Labelling (kept)", unit="prefix", disable=not progress,
               smoothing=0.1)
    try:
        while kept < cfg.n_prefixes:
            pool = []
            for c in stream:
                if has_next and c[3][-1] < 0:
                    n_next_short += 1  # kept: its text scores leave out the missing positions
                if from_table and len(c[4]) < need:
                    n_short += 1  # its continuation (the labels) is shorter than n_max + 1 tokens here
                    continue
                pool.append(c)
                # Without the filter every row is kept: label no more than the dataset still needs.
                if len(pool) >= (cfg.shard_size if filtering else min(cfg.shard_size, cfg.n_prefixes - kept)):
                    break
            if not pool:
                break  # the table is used up
            shard = D.shard_path(work, k)
            plain = [(c[0], c[1], c[2], c[3] if has_next else []) for c in pool]
            targets = D.read_shard(shard, plain)
            if targets is None:
                if from_table:
                    targets = [c[4][:need] for c in pool]
                else:
                    targets = L.label(lm, plain, cfg)
                D.write_shard(shard, plain, targets, extra={"table_ids": [c[4] for c in pool]})
            k += 1
            n_candidates += len(pool)
            ok = [not filtering or t[0] == c[3][0] for c, t in zip(pool, targets)]
            n_passed += sum(ok)
            taken.append(min(sum(ok), cfg.n_prefixes - kept))
            kept += taken[-1]
            bar.update(taken[-1])
    except KeyboardInterrupt as err:
        bar.close()
        raise L.Interrupted(f"Interrupted. {D.resume_note(cfg.out)}") from err
    bar.close()
    if not kept:
        shutil.rmtree(work, ignore_errors=True)
        raise FutureLensError(f"No row of {path} was kept ({n_candidates} labelled, {n_short} too short): "
                              "use --no-filter-correct, or check the table.")
    n_test = _assemble(work, taken, cfg, filtering, has_next)
    meta = D.record(
        lm, asdict(cfg), n_candidates=n_candidates, n_passed=n_passed, n_kept=kept, n_test=n_test,
        table={
            "path": str(path) if cfg.source != PAPER_TEST else f"futurelens/data/paper/{PAPER_FILE}",
            "format": table_format(path),
            "labels": "the table's continuation" if from_table else "the model's own greedy continuation",
            "next_ids": "the document's following text" if has_next else "the labels (the table has no following text)",
            "filter": "applied" if filtering else "not applied",
            "n_too_short": n_short,
            "n_next_short": n_next_short,
        },
    )
    out = D.save_prefixes(work / "table.arrow", meta, cfg.out)
    shutil.rmtree(work, ignore_errors=True)
    return out


def _assemble(work: Path, taken: list[int], cfg: "DataConfig", filtering: bool, has_next: bool) -> int:
    """The dataset's rows as one Arrow stream (``work/table.arrow``), a shard at a time; the test rows' count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = pa.list_(pa.int64())
    schema = pa.schema([("doc_id", pa.string()), ("offset", pa.int64()), ("prefix_ids", ids), ("next_ids", ids),
                        ("target_ids", ids), ("table_ids", ids), ("split", pa.string())])
    n_test = 0
    with pa.OSFile(str(work / "table.arrow"), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for k, n in enumerate(taken):
            shard = pq.read_table(D.shard_path(work, k)).to_pydict()
            out = {name: [] for name in schema.names}
            for d, o, p, x, t, c in zip(shard["doc_id"], shard["offset"], shard["prefix_ids"], shard["next_ids"],
                                        shard["target_ids"], shard["table_ids"]):
                if len(out["doc_id"]) >= n:
                    break
                if filtering and t[0] != x[0]:
                    continue
                split = "test" if L.is_test(d, cfg.seed, cfg.test_fraction) else "train"
                n_test += split == "test"
                # Without following text, the "real" next tokens are the labels (against=text = against=model).
                for name, v in zip(schema.names, (d, o, p, x if has_next else t, t, c, split)):
                    out[name].append(v)
            writer.write_table(pa.table(out, schema=schema))
    return n_test
