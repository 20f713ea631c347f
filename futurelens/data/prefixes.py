"""The Future Lens dataset: prefixes cut from documents, with the real next tokens and the model's own.

One row per prefix: provenance (document id, token offset), the prefix ids (the special tokens the
tokenizer puts before a text, e.g. Gemma's BOS, then the document's tokens: `futurelens.tokens`), the
real next ``n_max + 1`` tokens, and the model's greedy continuation of the same
length — the targets for N = 0..n_max. Stored as an Arrow dataset with a
``futurelens.json`` beside it recording the model, tokenizer hash and settings.

How `build_prefixes` gets there, at any corpus size:

- **Streaming.** Documents are read, tokenized and sampled as they stream from the source
  (`corpus.documents`). A seeded shuffle buffer holds at most ``buffer_tokens`` tokens of
  documents; once it is full, a randomly chosen document leaves it for each one that arrives and
  gives one candidate prefix (random length and offset). When the source ends, the buffer empties
  in random order and the next pass over the source begins. A corpus that fits in the buffer is
  kept after its first pass and sampled round-robin in memory (one seeded permutation of its
  documents per pass). Memory is bounded by the buffer, never by the corpus; the same seed gives
  the same candidates.
- **Labelling in shards.** Candidates are labelled (the model's greedy continuation,
  `futurelens.tracing.greedy`) in shards of at most ``shard_size``, each written atomically to
  ``<out>.partial/`` as it finishes. A re-run with the same settings after a kill or Ctrl-C draws the
  same candidates again, reuses every finished shard (checking that it holds exactly those
  candidates) and labels from the first missing one, so it ends bit-identical to an uninterrupted
  build. ``<out>`` is written atomically at the end, then ``<out>.partial`` is removed.
- **Counts.** ``futurelens.json`` records ``n_candidates`` (labelled) = ``n_kept`` (in the dataset)
  + ``n_dropped`` (failed the correctness filter) + ``n_unused`` (passed it after the dataset was
  full: the spare candidates of the last shard).
- **Memory.** The build keeps counts, not rows: at the end the dataset's rows are read back from the
  labelled shards one at a time (filtered and split as the build decided) and streamed into one
  Arrow file, which `datasets` then copies batch by batch into the saved dataset; no Python object
  per prefix is held but one int key per candidate drawn (to skip repeats).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from ..artifacts.dataset import (
    COLUMNS,
    open_partial,
    partial_dir,
    read_shard,
    record,
    resume_note,
    save_prefixes,
    shard_path,
    write_shard,
)
from ..errors import FutureLensError
from ..tokens import prepended
from . import labels as L
from .corpus import EMBEDDED, documents
from .labels import Interrupted, is_test  # noqa: F401 - part of this module's API

if TYPE_CHECKING:
    import numpy as np

    from ..models import LensModel


log = logging.getLogger(__name__)


@dataclass
class DataConfig:
    """Settings of `futurelens data`: which prefixes to cut and how to label them."""

    model: str = "smollm2-135m"
    """Hub id, local folder, or the embedded default 'smollm2-135m'."""
    source: str = EMBEDDED
    """Corpus: 'pydoc' (offline Python docs), a .txt/.jsonl/.parquet file or folder, or 'hf:<dataset>[:config]'; or
    a prefix table, used as given (no cutting): 'paper-test' (the paper's 1,000 Pile test prefixes, shipped), the
    authors' CSV format, or a .csv/.jsonl/.parquet with a 'prefix' column (optional 'doc', 'next', 'continuation')."""
    out: str = "runs/data"
    """Folder the dataset is written to."""
    n_prefixes: int = 2000
    """Prefixes to keep in total (train + test), after the correctness filter."""
    min_len: int = 8
    """Shortest prefix, in tokens."""
    max_len: int = 96
    """Longest prefix, in tokens."""
    length_dist: str = "uniform"
    """Prefix-length distribution: 'uniform' or 'loguniform' between min_len and max_len."""
    n_max: int = 3
    """Furthest token ahead to predict: targets are N = 0..n_max."""
    test_fraction: float = 0.2
    """Fraction of documents (not prefixes) held out for testing."""
    filter_correct: bool = True
    """Keep only prefixes whose next token the model predicts correctly (the paper's setup)."""
    seed: int = 0
    """Seed for the split and the sampling; the same seed gives the same dataset."""
    batch_size: int = 32
    """Prefixes per forward pass while labelling."""
    text_field: str = "text"
    """Field holding the text in .jsonl/.parquet/hub records."""
    max_documents: int = 0
    """Read at most this many documents of the source per pass (0 = all). Memory does not depend on it: documents stream."""
    buffer_tokens: int = 1_000_000
    """Tokens of streamed documents held at once for shuffling (4 bytes each): bounds memory whatever the corpus size.
    A corpus that fits is kept in memory after one pass."""
    labels: str = "auto"
    """Labels of a prefix table: 'model' (its own greedy continuation), 'table' (the table's continuation, e.g. the
    authors' GPT-J teacher phrase) or 'auto' (the table's when this tokenizer reproduces its token counts, as GPT-J's
    does on the authors' file; else the model's)."""
    batch_tokens: int = 32768
    """Most prefix tokens per labelling forward pass: long prefixes run in smaller batches (memory bounded by it)."""
    shard_size: int = 4096
    """Most candidates labelled per shard: the unit of resumption (a killed build resumes after its last finished
    shard). Larger shards fill the equal-length decoding batches better."""


def check_config(cfg: DataConfig) -> None:
    """Refuse bad settings with a message that names the fix, before anything is loaded or read."""
    if cfg.length_dist not in ("uniform", "loguniform"):
        raise FutureLensError(f"length_dist must be 'uniform' or 'loguniform', not {cfg.length_dist!r}.")
    if not 1 <= cfg.min_len <= cfg.max_len:
        raise FutureLensError(f"Need 1 <= min_len <= max_len, got min_len={cfg.min_len}, max_len={cfg.max_len}.")
    if not 0 <= cfg.test_fraction < 1:
        raise FutureLensError(f"test_fraction must be in [0, 1), got {cfg.test_fraction}.")
    for name in ("n_prefixes", "batch_size", "shard_size", "buffer_tokens", "batch_tokens"):
        if getattr(cfg, name) < 1:
            raise FutureLensError(f"{name} must be >= 1, got {getattr(cfg, name)}.")
    if cfg.n_max < 0 or cfg.max_documents < 0:
        raise FutureLensError(f"n_max and max_documents must be >= 0, got {cfg.n_max} and {cfg.max_documents}.")
    from .table import check_table, table_path

    table = table_path(cfg.source)
    if table is not None:
        check_table(cfg, table)
        return
    documents(cfg.source, cfg.text_field)  # a missing file or folder says so now ('hf:' is checked as it streams)


def _pieces(cfg: DataConfig, tokenizer: Any) -> Iterator[tuple[str, int, "np.ndarray"]]:
    """One pass over the source, in its order: ``(doc id, token offset, int32 tokens)`` per usable piece.

    Documents are tokenized one at a time as they stream. One longer than a sixteenth of the
    buffer is cut into pieces of that size (a prefix never crosses a cut), so no single
    document can outgrow the buffer; the offset stays the offset in the whole document.
    """
    import numpy as np

    need = cfg.n_max + 1
    cap = max(cfg.buffer_tokens // 16, cfg.max_len + need)
    for i, doc in enumerate(documents(cfg.source, cfg.text_field)):
        if cfg.max_documents and i >= cfg.max_documents:
            break
        ids = np.asarray(tokenizer(doc.text, add_special_tokens=False)["input_ids"], dtype=np.int32)
        for a in range(0, len(ids), cap):
            piece = ids if len(ids) <= cap else ids[a : a + cap].copy()  # a copy: a view would keep the whole document
            if len(piece) >= cfg.min_len + need:
                yield doc.id, a, piece


def _candidates(cfg: DataConfig, tokenizer: Any) -> Iterator[tuple[str, int, list[int], list[int]]]:
    """An endless, seeded stream of ``(doc id, offset, prefix, real next tokens)``; see the module docstring.

    Each document (piece) that leaves the shuffle buffer gives one candidate; a candidate seen
    before (same document, offset and length) is skipped. A corpus that fits in the buffer is
    sampled exactly as a round-robin over its documents in a fresh seeded order per pass.
    """
    import numpy as np

    rng = np.random.default_rng(cfg.seed)
    need = cfg.n_max + 1
    lead = prepended(tokenizer)  # the model's own BOS (if its tokenizer adds one) starts every prefix
    # Every (document, offset, length) drawn so far, each as one exact int key: the document's index in `docs`,
    # the length and the offset packed into separate bit fields (a tuple costs about twice as much). An offset
    # too large for its field keeps the tuple itself; an int and a tuple are never equal, so this is exactly the
    # membership test of a set of tuples.
    seen: set[int | tuple[str, int, int]] = set()
    docs: dict[str, int] = {}
    misses = 0  # consecutive repeats; a small corpus can run out of distinct prefixes
    n_pieces = 0  # usable document pieces in one pass
    corpus: list | None = None  # the whole corpus, once a pass has shown that it fits in the buffer

    def cut(doc_id: str, base: int, tokens: "np.ndarray"):
        nonlocal misses
        hi = min(cfg.max_len, len(tokens) - need)
        if cfg.length_dist == "loguniform":
            length = int(round(np.exp(rng.uniform(np.log(cfg.min_len), np.log(hi))))) if hi > cfg.min_len else hi
        else:
            length = int(rng.integers(cfg.min_len, hi + 1))
        offset = int(rng.integers(0, len(tokens) - length - need + 1))
        start = base + offset
        if start < 1 << 40:
            key = ((docs.setdefault(doc_id, len(docs)) * (cfg.max_len + 1) + length) << 40) | start
        else:
            key = (doc_id, start, length)
        if key in seen:
            misses += 1
            return None
        misses = 0
        seen.add(key)
        end = offset + length
        return doc_id, start, lead + tokens[offset:end].tolist(), tokens[end : end + need].tolist()

    while True:
        if misses > 100 * max(n_pieces, 1):
            raise FutureLensError(
                f"The corpus has run out of new prefixes after {len(seen)}: lower --n-prefixes, widen "
                "--min-len/--max-len, or use a larger corpus."
            )
        if corpus is not None:
            order = [corpus[i] for i in rng.permutation(len(corpus))]
        else:
            buffer: list = []
            held = n_pieces = 0
            spilled = False
            for piece in _pieces(cfg, tokenizer):
                n_pieces += 1
                buffer.append(piece)
                held += len(piece[2])
                while held > cfg.buffer_tokens:  # full: a random document leaves and gives a candidate
                    j = int(rng.integers(len(buffer)))
                    leaving, buffer[j] = buffer[j], buffer[-1]
                    buffer.pop()
                    held -= len(leaving[2])
                    spilled = True
                    candidate = cut(*leaving)
                    if candidate is not None:
                        yield candidate
            if not n_pieces:
                raise FutureLensError(
                    f"No document has the {cfg.min_len + need} tokens a prefix of min_len={cfg.min_len} plus "
                    f"{need} next tokens needs: lower --min-len or use a larger corpus."
                )
            if not spilled:  # the whole corpus is in the buffer: keep it, and sample it in memory from now on
                corpus = buffer
                continue
            order = [buffer[i] for i in rng.permutation(len(buffer))]
            buffer = []
        for piece in order:
            candidate = cut(*piece)
            if candidate is not None:
                yield candidate


def _advance(bar: Any, n: int) -> None:
    if n > bar.n:
        bar.update(n - bar.n)


def build_prefixes(lm: "LensModel", cfg: DataConfig, progress: bool = True) -> Path:
    """Cut, label and filter prefixes; write the dataset to ``cfg.out`` atomically. Returns the folder.

    Streams the corpus and labels in resumable shards (see the module docstring): after a kill or
    Ctrl-C (`Interrupted`), the same call resumes after the last finished shard. The progress bar
    counts kept prefixes against ``n_prefixes`` (exactly, as each group of equal-length candidates
    is labelled), with the candidates labelled, the rate and the time left; its total stays the
    same across a resume.
    """
    from tqdm.auto import tqdm

    check_config(cfg)
    from .table import build_table, table_path

    table = table_path(cfg.source)
    if table is not None:  # prefixes given as text: used as given (futurelens.data.table)
        return build_table(lm, cfg, table, progress)
    work = partial_dir(cfg.out)
    open_partial(work, L.settings(lm, cfg))
    stream = _candidates(cfg, lm.tokenizer)
    # Only counts are kept here: the rows are on disk in the labelled shards, and the final table is assembled
    # from them one shard at a time (`_assemble`), so memory does not grow with the number of prefixes.
    taken: list[int] = []  # per shard: how many of its passing candidates the dataset keeps (in shard order)
    kept = n_candidates = n_passed = 0
    max_candidates = 50 * cfg.n_prefixes  # a model that never predicts right would otherwise loop forever
    bar = None
    k = 0
    try:
        while kept < cfg.n_prefixes:
            # Size the shard from the keep rate seen so far, so a small dataset labels few spare candidates
            # (none without the filter); candidates are decoded in groups of equal length, so a shard must be
            # large enough to fill them.
            rate = n_passed / n_candidates if n_candidates else 0.5
            wanted = int(1.2 * (cfg.n_prefixes - kept) / max(rate, 0.05)) + 1 if cfg.filter_correct else cfg.n_prefixes - kept
            try:
                if n_candidates >= max_candidates:
                    raise FutureLensError(
                        f"Only {kept} of {n_candidates} candidate prefixes passed the correctness filter; "
                        "use --no-filter-correct or a corpus the model knows better."
                    )
                pool = [next(stream) for _ in range(min(cfg.shard_size, max(cfg.batch_size, wanted)))]
            except FutureLensError:  # the build is deterministic: a re-run would fail alike, so keep nothing
                shutil.rmtree(work, ignore_errors=True)
                raise
            path = shard_path(work, k)
            targets = read_shard(path, pool)
            if targets is None:
                if bar is None:
                    if k and progress:
                        tqdm.write(f"Resuming the build in {work}: {k} labelled shard(s) kept.")
                    bar = tqdm(total=cfg.n_prefixes, initial=kept, desc="Labelling (kept)", unit="prefix",
                               disable=not progress, smoothing=0.1)
                labelled, passed = [0], [0]

                def chunk_done(rows: int) -> None:
                    labelled[0] += rows
                    bar.set_postfix_str(f"{n_candidates + labelled[0]} candidates")

                def group_done(candidates: list, group: list, kept=kept) -> None:
                    passed[0] += sum(not cfg.filter_correct or t[0] == c[3][0] for c, t in zip(candidates, group))
                    _advance(bar, min(kept + passed[0], cfg.n_prefixes))

                targets = L.label(lm, pool, cfg, chunk_done, group_done)
                write_shard(path, pool, targets)
            k += 1
            n_candidates += len(pool)
            passing = sum(not cfg.filter_correct or t[0] == c[3][0] for c, t in zip(pool, targets))
            n_passed += passing
            taken.append(min(passing, cfg.n_prefixes - kept))  # the rest are spares: correct, but the dataset is full
            kept += taken[-1]
            del pool, targets
            if bar is not None:
                _advance(bar, kept)
                bar.set_postfix_str(f"{n_candidates} candidates")
    except KeyboardInterrupt as err:
        if bar is not None:
            bar.close()
            bar = None
        raise Interrupted(f"Interrupted. {resume_note(cfg.out)}") from err
    finally:
        if bar is not None:
            bar.close()

    del stream  # the candidate stream's shuffle buffer and `seen` set are not needed for the assembly
    rows = work / "table.arrow"
    n_test = _assemble(work, taken, cfg, rows)
    meta = record(lm, asdict(cfg), n_candidates=n_candidates, n_passed=n_passed, n_kept=kept, n_test=n_test)
    out = save_prefixes(rows, meta, cfg.out)
    shutil.rmtree(work, ignore_errors=True)
    return out


def _assemble(work: Path, taken: list[int], cfg: DataConfig, path: Path) -> int:
    """Write the dataset's rows to ``path`` as one Arrow IPC stream, a labelled shard at a time; the test rows' count.

    Shard ``k`` gives its first ``taken[k]`` candidates that pass the correctness filter, in shard
    order, with their split: the rows, order and types the build keeps. One shard is decoded and
    written at a time, so memory holds one shard, whatever the dataset's size.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    ids = pa.list_(pa.int64())
    schema = pa.schema([("doc_id", pa.string()), ("offset", pa.int64()), ("prefix_ids", ids), ("next_ids", ids),
                        ("target_ids", ids), ("split", pa.string())])
    n_test = 0
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for k, n in enumerate(taken):
            if not n:
                continue
            shard = pq.read_table(shard_path(work, k), columns=list(COLUMNS[:-1]))
            if cfg.filter_correct:  # the first target against the first real next token, in Arrow
                right = pc.equal(pc.list_element(shard["target_ids"], 0), pc.list_element(shard["next_ids"], 0))
                passing = np.flatnonzero(right.to_numpy(zero_copy_only=False))
                shard = shard.take(pa.array(passing[:n]))
            else:
                shard = shard.slice(0, n)
            split = ["test" if is_test(d, cfg.seed, cfg.test_fraction) else "train" for d in shard["doc_id"].to_pylist()]
            n_test += split.count("test")
            writer.write_table(shard.append_column("split", pa.array(split, pa.string())).cast(schema))
            del shard
    return n_test
