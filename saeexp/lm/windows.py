"""Token windows cut from a stream of text pieces, resumable at any window boundary without re-tokenizing.

The packing is `corpus.pack`'s: each piece's tokens and then EOS, all pieces joined, cut into windows of
`context_size - len(prefix)` tokens, each window prefixed with BOS unless the policy is `none`, the tail that
does not fill a window dropped. A `Position` (piece index, token offset into that piece's tokens + EOS) names
where the next window's text starts: the activation cache records it after each shard and the stream in its
checkpoint, so a later run starts there by skipping pieces (cheap) instead of tokenizing everything before.
"""
from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

import numpy as np

from saeexp.errors import ConfigError

BOS_POLICIES = ("exclude", "include", "none")


@dataclass(frozen=True)
class Position:
    """Where the next window's text starts: token `offset` of piece `piece` (its tokens followed by EOS)."""

    piece: int = 0
    offset: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Position":
        return cls(int(d["piece"]), int(d["offset"]))


class WindowStream:
    """int32 windows [n, context_size] on demand from `open_pieces(skip)` (pieces from index `skip` on).

    Tokenizing a piece alone or in a batch gives the same ids (fast tokenizers encode each text on its own),
    so a stream started at a Position yields exactly the windows one started earlier yields from there.
    """

    def __init__(self, open_pieces: Callable[[int], Iterator[str]], tokenizer, context_size: int, bos: str,
                 start: Position = Position(), batch_docs: int = 64):
        if bos not in BOS_POLICIES:
            raise ConfigError(f"data.bos={bos!r}: expected one of {BOS_POLICIES}")
        self.prefix = []
        if bos != "none":
            if tokenizer.bos_token_id is None:
                raise ConfigError(f"data.bos={bos!r}: this tokenizer has no BOS token; use data.bos=none")
            self.prefix = [tokenizer.bos_token_id]
        self.body = context_size - len(self.prefix)
        if self.body < 1:
            raise ConfigError(f"data.context_size={context_size}: too small for a BOS plus text")
        self.context_size, self.tokenizer, self.batch_docs = context_size, tokenizer, batch_docs
        self.sep = tokenizer.eos_token_id
        self._pieces = open_pieces(start.piece)
        self._next_piece = start.piece  # index of the next piece to read from _pieces
        # unread pieces: (piece index, index of toks[0] in that piece's tokens + EOS, toks)
        self._pending: deque[tuple[int, int, np.ndarray]] = deque()
        self._offset = 0  # tokens of _pending[0] already cut into windows
        self._skip_first = start.offset  # cut from the start piece when it is tokenized
        self._available = 0  # unread tokens in _pending
        self.exhausted = False
        self.position = start

    def _read_more(self) -> bool:
        """Tokenize the next batch of pieces into _pending; False when the corpus has no more."""
        batch = []
        for text in self._pieces:
            batch.append(text)
            if len(batch) == self.batch_docs:
                break
        if not batch:
            self.exhausted = True
            return False
        for ids in self.tokenizer(batch, add_special_tokens=False)["input_ids"]:
            toks = np.asarray(ids + ([self.sep] if self.sep is not None else []), dtype=np.int32)
            base, self._skip_first = self._skip_first, 0  # nonzero only for a resumed start piece
            self._pending.append((self._next_piece, base, toks[base:]))
            self._available += len(toks) - base
            self._next_piece += 1
        return True

    def take(self, n: int) -> np.ndarray:
        """Up to n windows (fewer only when the corpus runs out); advances `position`."""
        while self._available < n * self.body and self._read_more():
            pass
        k = min(n, self._available // self.body)
        body = np.empty(k * self.body, dtype=np.int32)
        filled = 0
        while filled < len(body):
            _, _, toks = self._pending[0]
            m = min(len(toks) - self._offset, len(body) - filled)
            body[filled:filled + m] = toks[self._offset:self._offset + m]
            filled += m
            self._offset += m
            if self._offset == len(toks):
                self._pending.popleft()
                self._offset = 0
        self._available -= len(body)
        if self._pending:
            piece, base, _ = self._pending[0]
            self.position = Position(piece, base + self._offset)
        else:
            self.position = Position(self._next_piece, 0)
        out = np.empty((k, self.context_size), dtype=np.int32)
        out[:, :len(self.prefix)] = self.prefix
        out[:, len(self.prefix):] = body.reshape(k, self.body)
        return out
