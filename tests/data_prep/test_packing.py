import numpy as np
import pytest

from common.special_tokens import END_DOC_ID
from data_prep.packing import Packer


def _reference(docs, seq_len):
    stream, starts = [], []
    for d in docs:
        starts.append(len(stream))
        stream += list(d) + [END_DOC_ID]
    out = []
    for i in range(len(stream) // seq_len):
        lo = i * seq_len
        ds = sorted({0} | {s - lo for s in starts if lo <= s < lo + seq_len})
        out.append((stream[lo : lo + seq_len], ds))
    return out, len(stream) % seq_len


@pytest.mark.parametrize("seq_len", [2, 5, 16])
def test_packing_matches_a_simple_reference_across_calls(seq_len):
    rng = np.random.default_rng(seq_len)
    docs = [list(rng.integers(10, 100, size=rng.integers(1, 40))) for _ in range(50)]
    packer = Packer(seq_len)
    got = []
    for i in range(0, len(docs), 7):  # documents arrive in uneven batches
        got += packer.add(docs[i : i + 7])
    want, tail = _reference(docs, seq_len)
    assert len(got) == len(want)
    for (tokens, starts), (wt, ws) in zip(got, want):
        assert tokens.dtype == np.int32 and starts.dtype == np.int32 and len(tokens) == seq_len
        assert tokens.tolist() == wt and starts.tolist() == ws
    assert packer.pending_tokens == tail


def test_doc_starts_mark_documents_and_separators_end_them():
    packer = Packer(8)
    ((tokens, starts),) = packer.add([[11, 12, 13], [21, 22], [31]])[:1]
    assert tokens.tolist() == [11, 12, 13, END_DOC_ID, 21, 22, END_DOC_ID, 31]
    assert starts.tolist() == [0, 4, 7]
    # the next sequence starts inside document 3: segment at 0, then document 4 at 1
    ((tokens, starts),) = packer.add([[41] * 6])
    assert tokens.tolist() == [END_DOC_ID] + [41] * 6 + [END_DOC_ID] and starts.tolist() == [0, 1]
    assert packer.add([]) == [] and packer.pending_tokens == 0
