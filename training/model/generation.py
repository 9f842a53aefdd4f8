"""Generation: a semi-causal prefix (images, encoder spans, decoder prompt), then greedy or beam search.

The prefix of each example is a `Row` as the data pipeline lays one out (`training.data.finetune.task_row`:
`<s> [<image> K slots </image>]* [encoder segments] prompt`); `generate_rows` collates the rows (right
padding, so examples may have any prefix length), runs the encoders and the decoder over the prefix ONCE,
then decodes one token per row per step:

- per-row prefix lengths: a row of length n < P (the longest prefix) has a padding hole at n..P-1 that no
  later position attends to (a full attention mask: `layers.packed_attention_mask` for the prefix, the
  valid keys for each new token); its first new token gets position n, the next n+1, ... (positions are
  position ids, not cache indices), so a row computes exactly what it computes alone;
- KV cache (`use_cache=True`): each new token is one decoder step over the cached keys/values of this
  rank's heads; `use_cache=False` re-runs the decoder over the whole sequence each step (the reference
  the cache is tested against; the encoder outputs are computed once either way);
- greedy (num_beams=1) or beam search with fairseq's length penalty: a hypothesis of L tokens (L counts
  the closing `</s>` when it has one) with summed log-probability S scores S / L ** length_penalty
  (1.0: mean log-probability; 0: the raw sum; larger values favour longer outputs). As fairseq does, only
  an `</s>` among the top num_beams candidates of a step ends a hypothesis, and an example is done once
  num_beams hypotheses have ended (or its length limit is reached: live beams end there without `</s>`);
  its answer is the best-scoring ended hypothesis.

Tensor parallel: every rank of a TP group computes the same full logits (gathered vocab shards), so all
ranks pick the same tokens and must make the same calls. ZeRO-3: the model is used as it is (inside
`Trainer.full_parameters`' gather, as `Trainer.caption_samples` does, or not: a nested gather is an
error); ZeRO-3's module hooks gather each module's parameters at every module call, a collective over
the DP group. So every DP rank must call `generate_rows` the same number of times (same num_beams);
the inputs may differ: the decoding loop stops only when every DP rank is done (`group_stop`: one
small all-reduce per step), a finished rank stepping on without effect, so all ranks make the same
module calls.

`MetaLM.generate(images, prompt_ids)` (captions during training) is a thin layout on top. The evaluation
API (`evaluation/generate.py`: encoder-side inputs, in-context demonstrations, choice scoring) builds its
rows and calls `generate_rows`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from common.errors import UserError
from common.special_tokens import EOS_ID
from training.data.batch import Batch
from training.data.finetune import task_row
from training.data.semicausal import Row, collate
from training.model.layers import KVCache, packed_attention_mask

# step(src, tokens) -> log-probabilities [R, V] of the next token of every row, after reordering the rows
# by `src` (beam search; None = keep) and appending `tokens` [R]
StepFn = Callable[[torch.Tensor | None, torch.Tensor], torch.Tensor]
# stop(all rows here are done) -> stop decoding now (ZeRO-3: only once every DP rank is done)
StopFn = Callable[[bool], bool]


def _local_stop(done: bool) -> bool:
    return done


def group_stop(group, device: torch.device) -> StopFn:
    """Stop only when every rank of `group` is done: a rank whose rows are all done keeps stepping (its
    steps change nothing) while another one still decodes, so all make the same number of model calls."""
    import torch.distributed as dist

    def stop(done: bool) -> bool:
        flag = torch.tensor([0 if done else 1], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
        return int(flag.item()) == 0

    return stop


@dataclass
class Hypothesis:
    """One generated continuation."""

    tokens: list[int]  # generated ids, without the closing </s>
    logprob: float  # summed log-probability of the tokens (and of </s> when finished)
    score: float  # logprob / length ** length_penalty (the beam-search ranking)
    finished: bool  # ended with </s> (False: stopped at the length limit)


def length_penalized(logprob: float, length: int, length_penalty: float) -> float:
    """fairseq's hypothesis score: logprob / length ** length_penalty (length counts a closing </s>)."""
    return logprob / max(1, length) ** length_penalty


def zero3_partitioned(model) -> bool:
    """Whether DeepSpeed ZeRO-3 partitions this model's parameters."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


# ---------------------------------------------------------------------------------------------------
class PrefixDecoder:
    """The model side of decoding: run the prefix once, then `step` one token per row.

    The prefix (one row per example) runs once; its KV cache is then repeated `expand` times (beams),
    so the rows are example 0's beams, example 1's, ... `first_logp` [R, V] holds each row's
    log-probabilities of its first new token."""

    def __init__(
        self,
        model,
        prefix: Batch,
        lengths: torch.Tensor,
        *,
        expand: int = 1,
        use_cache: bool = True,
        vocab_limit: int | None = None,
    ):
        self.model = model
        self.vocab_limit = vocab_limit
        dev = model.embedding.weight.device
        emb = model.input_embeddings(prefix)  # the encoders run here, once per example
        lengths = lengths.to(dev)
        p = emb.shape[1]
        idx = torch.arange(p, device=dev)
        valid = idx[None, :] < lengths[:, None]  # [B, P] keys a new token may attend to (no padding hole)
        pos = torch.where(valid, idx[None, :], torch.zeros_like(idx[None, :]))
        mask = packed_attention_mask(torch.where(valid, 0, -1))
        self.cache = KVCache(len(model.decoder.layers)) if use_cache else None
        first = self._logp(model.decode_step(emb, pos, self.cache, mask, last=lengths - 1))
        rows = torch.arange(emb.shape[0], device=dev).repeat_interleave(expand)  # beams of each example
        self.first_logp = first[rows]
        self.valid, self.next_pos = valid[rows], lengths[rows]  # next_pos: position id of the next token
        if self.cache is not None:
            self.cache.reorder(rows)
        else:
            self.emb, self.pos = emb[rows], pos[rows]

    def step(self, src: torch.Tensor | None, tokens: torch.Tensor) -> torch.Tensor:
        m = self.model
        if src is not None:
            self.valid, self.next_pos = self.valid[src], self.next_pos[src]
            if self.cache is not None:
                self.cache.reorder(src)
            else:
                self.emb, self.pos = self.emb[src], self.pos[src]
        e = m.embedding(tokens[:, None]) * m.embed_scale  # [R, 1, H]
        pos = self.next_pos[:, None]
        self.valid = torch.cat([self.valid, self.valid.new_ones(self.valid.shape[0], 1)], dim=1)
        self.next_pos = self.next_pos + 1
        if self.cache is not None:
            logits = m.decode_step(e, pos, self.cache, self.valid[:, None, None, :])[:, -1]
        else:
            self.emb = torch.cat([self.emb, e.to(self.emb.dtype)], dim=1)
            self.pos = torch.cat([self.pos, pos], dim=1)
            mask = packed_attention_mask(torch.where(self.valid, 0, -1))
            last = torch.full_like(self.next_pos, self.emb.shape[1] - 1)
            logits = m.decode_step(self.emb, self.pos, None, mask, last=last)
        return self._logp(logits)

    def _logp(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.vocab_limit is not None and self.vocab_limit < logits.shape[-1]:
            logits[:, self.vocab_limit :] = float("-inf")  # ids the tokenizer does not have
        return torch.log_softmax(logits, dim=-1)


# ---------------------------------------------------------------------------------------------------
def greedy_search(
    first_logp: torch.Tensor,
    step: StepFn,
    max_new: Sequence[int],
    eos_id: int,
    length_penalty: float = 1.0,
    stop: StopFn = _local_stop,
) -> list[Hypothesis]:
    """Most probable next token per row until </s> or the row's limit `max_new[r]`."""
    rows = len(max_new)
    tokens: list[list[int]] = [[] for _ in range(rows)]
    logprob = [0.0] * rows
    finished = [False] * rows
    done = [n <= 0 for n in max_new]
    logp = first_logp
    for _ in itertools.count():
        val, nxt = logp.max(dim=-1)
        for r, (v, t) in enumerate(zip(val.tolist(), nxt.tolist())):
            if done[r]:
                continue
            logprob[r] += v
            if t == eos_id:
                finished[r] = done[r] = True
            else:
                tokens[r].append(t)
                done[r] = len(tokens[r]) >= max_new[r]
        if stop(all(done)):
            break
        logp = step(None, nxt)
    return [
        Hypothesis(t, lp, length_penalized(lp, len(t) + f, length_penalty), f)
        for t, lp, f in zip(tokens, logprob, finished)
    ]


def beam_search(
    first_logp: torch.Tensor,
    step: StepFn,
    num_beams: int,
    max_new: Sequence[int],
    eos_id: int,
    length_penalty: float = 1.0,
    stop: StopFn = _local_stop,
) -> list[list[Hypothesis]]:
    """Beam search over len(max_new) examples of num_beams rows each (rows i*nb .. i*nb+nb-1, identical at
    the start). Returns each example's ended hypotheses, best first (score = length_penalized)."""
    n, nb = len(max_new), num_beams
    v = first_logp.shape[-1]
    dev = first_logp.device
    scores = torch.full((n, nb), float("-inf"), device=dev)
    scores[:, 0] = 0.0  # all beams start identical: expand only the first
    alive: list[list[int]] = [[] for _ in range(n * nb)]
    ended: list[list[Hypothesis]] = [[] for _ in range(n)]
    done = [m <= 0 for m in max_new]
    logp = first_logp
    for t in itertools.count():
        cand = (scores[:, :, None] + logp.view(n, nb, v)).view(n, nb * v)
        top_s, top_i = cand.topk(min(2 * nb, nb * v), dim=-1)
        src, toks, new_scores, new_alive = [], [], [], []
        for i in range(n):
            picked = 0
            if not done[i]:
                last = t + 1 >= max_new[i]  # the tokens picked now are this example's last
                for rank, (s, idx) in enumerate(zip(top_s[i].tolist(), top_i[i].tolist())):
                    if s == float("-inf"):
                        break
                    beam, tok = divmod(idx, v)
                    hyp = alive[i * nb + beam]
                    if tok == eos_id:
                        if rank < nb:  # fairseq: only an </s> among the top num_beams candidates ends a beam
                            ended[i].append(
                                Hypothesis(hyp, s, length_penalized(s, len(hyp) + 1, length_penalty), True)
                            )
                        continue
                    if last:
                        ended[i].append(
                            Hypothesis(
                                hyp + [tok], s, length_penalized(s, len(hyp) + 1, length_penalty), False
                            )
                        )
                    src.append(i * nb + beam)
                    toks.append(tok)
                    new_scores.append(s)
                    new_alive.append(hyp + [tok])
                    picked += 1
                    if picked == nb:
                        break
                done[i] = last or len(ended[i]) >= nb
            while picked < nb:  # a finished example (or too few live candidates): dead beams
                src.append(i * nb)
                toks.append(eos_id)
                new_scores.append(float("-inf"))
                new_alive.append([])
                picked += 1
        if stop(all(done)):
            break
        alive = new_alive
        scores = torch.tensor(new_scores, device=dev).view(n, nb)
        logp = step(torch.tensor(src, device=dev), torch.tensor(toks, device=dev))
    # stable sort: on equal scores the hypothesis that ended first wins
    return [sorted(e, key=lambda h: -h.score) for e in ended]


# ---------------------------------------------------------------------------------------------------
@torch.no_grad()
def generate_rows(
    model,
    rows: Sequence[Row],
    *,
    max_new_tokens: int,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    eos_id: int = EOS_ID,
    use_cache: bool = True,
    vocab_limit: int | None = None,
) -> list[Hypothesis]:
    """The best continuation of each prefix row (its inputs: `row.seq[:-1]`, as `task_row(..., target=[])`
    gives; spans and images as the row says). Rows may have any lengths. Every TP rank must call this
    with the same rows; the results are identical on all of them. vocab_limit: generate only ids below
    it (a tokenizer with fewer pieces than the model's vocabulary)."""
    if num_beams < 1:
        raise UserError(f"num_beams={num_beams} must be >= 1")
    if max_new_tokens < 1:
        raise UserError(f"max_new_tokens={max_new_tokens} must be >= 1")
    if not rows:
        return []
    cfg = model.cfg
    lengths = torch.tensor([len(r.seq) - 1 for r in rows])
    too_long = [i for i, n in enumerate(lengths.tolist()) if n >= cfg.max_seq_len]
    if too_long:
        raise UserError(
            f"prefix {too_long[0]} has {int(lengths[too_long[0]])} positions, which leaves no room to generate "
            f"in model.max_seq_len={cfg.max_seq_len}: shorten its inputs or use fewer demonstrations"
        )
    if any(r.example_ids is not None for r in rows):
        raise ValueError("generate_rows takes one example per row (not packed rows)")
    max_new = [min(max_new_tokens, cfg.max_seq_len - n) for n in lengths.tolist()]
    dev, dtype = model.embedding.weight.device, model.embedding.weight.dtype
    prefix = collate(list(rows), cfg.image_slots, cfg.image_size).to(dev)
    prefix.images = prefix.images.to(dtype)
    was_training = model.training
    model.eval()
    try:
        stop = _local_stop
        topo = getattr(model, "topology", None)
        if zero3_partitioned(model) and topo is not None and topo.dp_size > 1:
            stop = group_stop(topo.dp_group, dev)  # ZeRO-3 gathers per module call: DP ranks step together
        dec = PrefixDecoder(
            model, prefix, lengths, expand=num_beams, use_cache=use_cache, vocab_limit=vocab_limit
        )
        if num_beams == 1:
            return greedy_search(dec.first_logp, dec.step, max_new, eos_id, length_penalty, stop)
        ended = beam_search(dec.first_logp, dec.step, num_beams, max_new, eos_id, length_penalty, stop)
        return [e[0] if e else Hypothesis([], float("-inf"), float("-inf"), False) for e in ended]
    finally:
        model.train(was_training)


# ---------------------------------------------------------------------------------------------------
def _prompts(prompt_ids, n: int) -> list[list[int]]:
    if prompt_ids is None:
        return [[] for _ in range(n)]
    if len(prompt_ids) == 0 or isinstance(prompt_ids[0], int):
        return [list(prompt_ids) for _ in range(n)]
    if len(prompt_ids) != n:
        raise UserError(f"{len(prompt_ids)} prompts for {n} images: give one prompt per image or one for all")
    return [list(p) for p in prompt_ids]


def generate(
    model,
    images: torch.Tensor,
    prompt_ids=None,
    max_new_tokens: int = 32,
    eos_id: int = EOS_ID,
    use_cache: bool = True,
    num_beams: int = 1,
    length_penalty: float = 1.0,
) -> list[list[int]]:
    """Caption each image: `<s> <image> [K slots] </image> [prompt]` then greedy or beam decoding.
    prompt_ids: None, one prompt for all images, or one per image (any lengths). Returns the generated
    ids per image (no prompt, no </s>)."""
    if images.dim() == 3:  # one image [3, H, W]
        images = images[None]
    cfg = model.cfg
    prompts = _prompts(prompt_ids, images.shape[0])
    images = images.detach().float().cpu()
    rows = [
        task_row([img], [], p, [], cfg.image_slots, cfg.max_seq_len, cfg.span_max_len - 1)
        for img, p in zip(images, prompts)
    ]
    hyps = generate_rows(
        model,
        rows,
        max_new_tokens=max_new_tokens,
        num_beams=num_beams,
        length_penalty=length_penalty,
        eos_id=eos_id,
        use_cache=use_cache,
    )
    return [h.tokens for h in hyps]
