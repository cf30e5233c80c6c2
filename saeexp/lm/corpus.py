"""Text in, token windows out: a corpus through `datasets` (local files or a hub dataset), shuffled in
pieces, tokenized and packed into windows of `context_size` tokens.

Packing: pieces are joined with the tokenizer's EOS between them and cut into windows; with a BOS
policy other than `none` every window starts with BOS, so window[0] is BOS and context_size - 1 text
tokens follow. Windows are never padded (the tail that does not fill one is dropped), so BOS is the
only position a policy has to exclude.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from saeexp.errors import ConfigError
from saeexp.lm.windows import WindowStream

PIECE_CHARS = 8000  # long documents are cut (at paragraph breaks) into pieces of about this many characters
BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def _is_local(entry: str) -> bool:
    return entry.startswith(("/", "~", ".")) or any(c in entry for c in "*?[") or Path(entry).exists()


def resolve(corpus) -> tuple[list[Path] | None, str | None]:
    """(local files, None) or (None, hub dataset name); every pattern must match at least one file."""
    entries = [corpus] if isinstance(corpus, str) else list(corpus or [])
    if not entries:
        raise ConfigError("data.corpus is empty: expected file paths/globs or a hub dataset name")
    if len(entries) == 1 and not _is_local(entries[0]):
        return None, entries[0]
    files: list[Path] = []
    for e in entries:
        if not _is_local(e):
            raise ConfigError(f"data.corpus entry {e!r}: not a local path; a hub dataset name must be the "
                              "only entry")
        hits = sorted(glob.glob(os.path.expanduser(e), recursive=True))
        hits = [h for h in hits if Path(h).is_file()]
        if not hits:
            raise ConfigError(f"data.corpus entry {e!r}: no such file (for the default Debian corpus run "
                              "scripts/setup-lm.sh)")
        files += [Path(h) for h in hits]
    return files, None


def identity(corpus, split: str, column: str, config: str | None, revision: str | None) -> str:
    """What fixes the corpus's content, without reading it: file paths, sizes and mtimes, or the hub name."""
    files, hub = resolve(corpus)
    if hub is not None or files is None:
        return f"hub:{hub}:{config}:{split}:{column}@{revision}"
    stats = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return f"files:{len(files)}:" + hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:24] + f":{column}"


def _pieces(batch: dict, column: str) -> dict:
    """Cut documents into pieces at paragraph breaks, so one huge document cannot fill the sample."""
    out = []
    for text in batch[column]:
        if not text or not text.strip():
            continue
        start = 0
        while start < len(text):
            end = start + PIECE_CHARS
            if end < len(text):
                brk = text.rfind("\n\n", start + PIECE_CHARS // 2, end)
                end = brk + 2 if brk > 0 else end
            out.append(text[start:end])
            start = end
    return {"text": out}


def texts(corpus, split: str = "train", column: str = "text", streaming: bool = False, seed: int = 0,
          config: str | None = None, revision: str | None = None, cache_dir: Path | None = None,
          skip: int = 0) -> Iterator[str]:
    """The corpus as a deterministic stream of text pieces, shuffled with `seed`, from piece `skip` on."""
    import datasets  # noqa: PLC0415 - the `lm` extra, for data=lm only

    files, hub = resolve(corpus)
    kw = {"cache_dir": str(cache_dir) if cache_dir else None, "streaming": streaming}
    if files is not None:
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # local files: nothing to ask the hub
        exts = {BUILDERS.get("".join(p.suffixes[-2:-1]) if p.suffix == ".gz" else p.suffix, "text") for p in files}
        if len(exts) > 1:
            raise ConfigError(f"data.corpus mixes file kinds {sorted(exts)}; give one kind at a time")
        builder = exts.pop()
        extra = {"sample_by": "document"} if builder == "text" else {}
        ds = datasets.load_dataset(builder, data_files=[str(p) for p in files], split=split, **extra, **kw)
    else:
        try:
            ds = datasets.load_dataset(hub, config, split=split, revision=revision, **kw)
        except Exception as e:  # offline or unknown name: one actionable line
            raise ConfigError(f"data.corpus={hub!r}: the hub dataset cannot be fetched ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:120]}); offline, point data.corpus at local text "
                              "files (paths or globs)") from None
    names = ds.column_names if ds.column_names is not None else [column]
    if column not in names:
        raise ConfigError(f"data.corpus_column={column!r}: the corpus has columns {names}")
    ds = ds.map(_pieces, batched=True, fn_kwargs={"column": column}, remove_columns=names)
    ds = ds.shuffle(seed=seed, buffer_size=10_000) if streaming else ds.shuffle(seed=seed)
    if skip:  # a resumed stream or a growing cache: pieces before `skip` were packed already (never tokenized again)
        ds = ds.skip(skip) if streaming else ds.select(range(min(skip, len(ds)), len(ds)))
    for row in ds:
        yield row["text"]


def pack(pieces: Iterator[str], tokenizer, context_size: int, bos: str, n_windows: int,
         batch_docs: int = 64) -> np.ndarray:
    """int32 [n, context_size] token windows, n <= n_windows (fewer only if the corpus runs out)."""
    return WindowStream(lambda skip: pieces, tokenizer, context_size, bos, batch_docs=batch_docs).take(n_windows)
