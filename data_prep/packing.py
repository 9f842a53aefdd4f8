"""Pack tokenized documents into fixed-length sequences with `</d>` between documents.

The token stream is doc_1 + [</d>] + doc_2 + [</d>] + ... cut into `seq_len` pieces. For each
piece, `doc_starts` holds the offsets where a document segment begins: always 0 (a piece that
starts inside a document begins a segment there too), then every offset where a new document
starts. Segment i is [doc_starts[i], doc_starts[i+1]) (the last runs to seq_len); a document's
`</d>` is the last token of its segment. Tokens that do not fill a last whole piece are dropped
and counted (`dropped_tail_tokens`), as llm-foundry's ConcatTokensDataset does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from common.special_tokens import END_DOC_ID


class Packer:
    def __init__(self, seq_len: int, separator: int = END_DOC_ID):
        self.seq_len = seq_len
        self.separator = separator
        self._carry = np.zeros(0, dtype=np.int32)  # tokens not yet in a full piece
        self._carry_starts = np.zeros(0, dtype=np.int64)  # doc starts inside _carry

    @property
    def pending_tokens(self) -> int:
        """Tokens held back for the next piece (dropped if no more documents come)."""
        return len(self._carry)

    def add(self, docs: Sequence[Sequence[int]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Add documents (token id lists, no separator); return the (tokens, doc_starts) pieces now full."""
        if not docs:
            return []
        lengths = np.fromiter((len(d) + 1 for d in docs), dtype=np.int64, count=len(docs))
        parts = [self._carry]
        sep = np.array([self.separator], dtype=np.int32)
        for d in docs:
            parts.append(np.asarray(d, dtype=np.int32))
            parts.append(sep)
        flat = np.concatenate(parts)
        starts = np.concatenate([self._carry_starts, len(self._carry) + np.cumsum(lengths) - lengths])
        L = self.seq_len
        n_full = len(flat) // L
        out = []
        if n_full:
            bounds = np.searchsorted(starts, np.arange(n_full + 1) * L)
            for i in range(n_full):
                tokens = flat[i * L : (i + 1) * L].copy()
                ds = starts[bounds[i] : bounds[i + 1]] - i * L
                if len(ds) == 0 or ds[0] != 0:
                    ds = np.concatenate([[0], ds])
                out.append((tokens, ds.astype(np.int32)))
        cut = n_full * L
        self._carry = flat[cut:].copy()
        self._carry_starts = starts[starts >= cut] - cut
        return out
