"""Dock a pretrained language encoder: Hugging Face BERT / RoBERTa / ELECTRA weights, or our own names.

`model.text_encoder.weights_path` is a Hugging Face folder as downloaded (e.g. `google/electra-large-discriminator`:
config.json + pytorch_model.bin / model.safetensors; nothing to convert) or one weights file
(hf_checkpoint.py). Key formats:
- HF (`BertModel`, `RobertaModel`, `ElectraModel`, or a model with a head: `bert.` / `roberta.` / `electra.`
  prefixes; heads, poolers and the ELECTRA discriminator head are ignored): separate q/k/v projections are
  fused into our per-head QKV layout; `embeddings.LayerNorm` -> `embed_ln`, `token_type_embeddings` row 0
  -> `token_type`, ELECTRA's `embeddings_project` -> `embed_proj`, old `gamma` / `beta` names accepted;
- ours: the names under `text_encoder.` (with or without that prefix), full (TP-independent) tensors, rows
  already in project token ids.
These encoders are post-LN with an embedding LayerNorm, a token-type embedding, learned absolute positions
(RoBERTa's start at padding_idx + 1) and exact GELU: `model.text_encoder` must say so (norm_scheme: post,
embedding_norm, token_type, scale_embeddings: false, layer_norm_eps, position_offset, embedding_size); a
folder's config.json is checked against it, each mismatch naming the key to set.

Vocabulary: the word-embedding rows are re-ordered into project token ids. The tokenizer dir named by
`model.text_encoder.vocab_map_from` (written by `python -m data_prep tokenizer --import-hf DIR`) holds in its
tokenizer.json `"source_vocab": {"kind": "hf-wordpiece" | "hf-bpe", "path": ..., "project_to_source": [...]}`:
for each project id the row of the HF embedding matrix, or -1 for a token the HF vocabulary lacks (its row
keeps its fresh init). Without a map the vocabularies must have the same size (the identity).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch

from common.errors import UserError
from training.model import hf_checkpoint

log = logging.getLogger(__name__)

PREFIX = "text_encoder."
FAMILY_PREFIXES = {"bert.": "bert", "roberta.": "roberta", "electra.": "electra"}
ROBERTA_TYPES = ("roberta",)  # (XLM-R / CamemBERT: same layers, a sentencepiece vocabulary: not wired)
MODEL_TYPES = ("bert", "electra", *ROBERTA_TYPES)
VOCAB_KINDS = {"bert": "hf-wordpiece", "electra": "hf-wordpiece", "roberta": "hf-bpe"}
# the encoder style every BERT-family checkpoint needs
STYLE = {"norm_scheme": "post", "embedding_norm": True, "token_type": True, "scale_embeddings": False}
IMPORT_FIX = "python -m data_prep tokenizer --import-hf DIR"

_LAYER = {
    "attention.output.dense": "attn.out",
    "attention.output.LayerNorm": "ln1",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "output.LayerNorm": "ln2",
}


def family_of(model_type: str | None) -> str | None:
    if model_type in ROBERTA_TYPES:
        return "roberta"
    return model_type if model_type in MODEL_TYPES else None


def hf_settings(hf: dict) -> tuple[dict, list[str], int]:
    """(model.text_encoder settings a HF config.json needs, problems no setting can fix, embedding width)."""
    hidden = hf.get("hidden_size", 768)
    emb = hf.get("embedding_size", hidden)  # ELECTRA only
    offset = hf.get("pad_token_id", 1) + 1 if family_of(hf.get("model_type")) == "roberta" else 0
    want = {
        "num_layers": hf.get("num_hidden_layers", 12),
        "hidden_size": hidden,
        "num_heads": hf.get("num_attention_heads", 12),
        "ffn_hidden_size": hf.get("intermediate_size", 3072),
        **STYLE,
        "layer_norm_eps": float(hf.get("layer_norm_eps", 1e-12)),
        "position_offset": offset,
    }
    other = []
    if hf.get("hidden_act", "gelu") != "gelu":
        other.append(f"its hidden_act={hf.get('hidden_act')!r} is not the exact GELU our encoder uses")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        other.append(
            f"its position_embedding_type={hf.get('position_embedding_type')!r}: only absolute positions are supported"
        )
    return want, other, emb


def _effective(te) -> dict:
    return {k: getattr(te, k) for k in ("num_layers", "hidden_size", "num_heads", "ffn_hidden_size")} | {
        k: getattr(te, k) for k in (*STYLE, "layer_norm_eps", "position_offset")
    }


def config_json_problems(te, hf: dict, path: str) -> list[str]:
    """Mismatches between `model.text_encoder` (te) and the checkpoint's config.json."""
    key = "model.text_encoder.weights_path"
    if family_of(hf.get("model_type")) is None:
        return [
            f"{key}={path!r}: config.json has model_type={hf.get('model_type')!r}; docking supports "
            f"{', '.join(MODEL_TYPES)}"
        ]
    want, other, emb = hf_settings(hf)
    out = hf_checkpoint.setting_problems("text_encoder", want, _effective(te), f"{path}/config.json")
    if (te.embedding_size or te.hidden_size) != emb:
        out.append(
            f"model.text_encoder.embedding_size={te.embedding_size} does not match {path}/config.json "
            f"(embedding_size {emb}): set model.text_encoder.embedding_size={0 if emb == te.hidden_size else emb}"
        )
    table = hf.get("max_position_embeddings", 512)
    if te.position_offset + te.max_len > table:
        out.append(
            f"model.text_encoder.max_len={te.max_len} needs {te.position_offset + te.max_len} position rows; "
            f"{path} has {table}: set model.text_encoder.max_len <= {table - te.position_offset}"
        )
    return out + [f"{key}={path!r}: {o}" for o in other]


# ---------------------------------------------------------------------------------------------------
# the vocabulary map (contract with `python -m data_prep tokenizer --import-hf`)


def read_vocab_map(directory: str) -> tuple[list[int], str | None]:
    """(project_to_source, kind) from DIR/tokenizer.json's "source_vocab" (DIR may be the file itself)."""
    p = Path(directory)
    f = p if p.is_file() else p / "tokenizer.json"
    where = f"model.text_encoder.vocab_map_from={directory!r}"
    try:
        meta = json.loads(f.read_text())
    except OSError:
        raise UserError(
            f"{where}: no {f}; give the tokenizer dir written by `{IMPORT_FIX}` (DIR: the docked checkpoint)"
        ) from None
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{where}: {f} is not valid JSON ({e}); rebuild it with `{IMPORT_FIX}`") from e
    src = meta.get("source_vocab") if isinstance(meta, dict) else None
    if not isinstance(src, dict):
        raise UserError(
            f'{where}: {f} has no "source_vocab" (the tokenizer was not imported from a Hugging Face '
            f"vocabulary): build it with `{IMPORT_FIX}`, DIR being the docked checkpoint"
        )
    mapping = src.get("project_to_source")
    if not isinstance(mapping, list) or not all(isinstance(i, int) and i >= -1 for i in mapping):
        raise UserError(
            f"{where}: source_vocab.project_to_source in {f} must be a list of row ids (>= 0) or -1; "
            f"rebuild it with `{IMPORT_FIX}`"
        )
    return mapping, src.get("kind")


def vocab_problems(te, vocab_size: int, hf_rows: int | None, family: str | None) -> list[str]:
    """The project <-> docked-encoder vocabulary: a map that fits both, or equal sizes (the identity)."""
    if not te.vocab_map_from:
        if hf_rows is not None and hf_rows != vocab_size:
            return [
                f"model.text_encoder.weights_path={te.weights_path!r} has a vocabulary of {hf_rows} tokens, "
                f"the project's is {vocab_size} (model.vocab_size): build the project tokenizer from the "
                f"checkpoint's vocabulary with `{IMPORT_FIX}` and set model.text_encoder.vocab_map_from to "
                "that tokenizer dir"
            ]
        return []
    try:
        mapping, kind = read_vocab_map(te.vocab_map_from)
    except UserError as e:
        return [str(e)]
    where = f"model.text_encoder.vocab_map_from={te.vocab_map_from!r}"
    out = []
    if len(mapping) > vocab_size:
        out.append(
            f"{where}: its map has {len(mapping)} entries, more than model.vocab_size={vocab_size}: "
            "use the tokenizer the run trains with (data.tokenizer)"
        )
    if hf_rows is not None and mapping and max(mapping) >= hf_rows:
        out.append(
            f"{where}: its map points at row {max(mapping)}, the docked encoder has {hf_rows} rows: "
            f"the map was built for another vocabulary; rebuild it with `{IMPORT_FIX}`"
        )
    want = VOCAB_KINDS.get(family or "")
    if kind and want and kind != want:
        out.append(
            f"{where}: its map is for a {kind} vocabulary, a {family} checkpoint has {want}: "
            f"rebuild it with `{IMPORT_FIX}` from the docked checkpoint"
        )
    return out


def text_weights_problems(cfg) -> list[str]:
    """`model.text_encoder.weights_path` exists, its config.json matches, and the vocabularies line up."""
    te = cfg.text_encoder
    if not te.weights_path:
        if te.vocab_map_from:
            return [
                "model.text_encoder.vocab_map_from is set but model.text_encoder.weights_path is empty: "
                "the map re-orders docked weights; set weights_path or drop vocab_map_from"
            ]
        return []
    key = "model.text_encoder.weights_path"
    missing = hf_checkpoint.missing_problem(key, te.weights_path, "BERT/RoBERTa/ELECTRA")
    if missing:
        return [missing]
    try:
        hf = hf_checkpoint.read_config_json(te.weights_path)
    except UserError as e:
        return [f"{key}: {e}"]
    if hf is None:  # a lone file: shapes are checked when it is loaded
        return vocab_problems(te, cfg.vocab_size, None, None)
    out = config_json_problems(te, hf, te.weights_path)
    return out + vocab_problems(te, cfg.vocab_size, hf.get("vocab_size"), family_of(hf.get("model_type")))


# ---------------------------------------------------------------------------------------------------
# names


def from_hf_bert(sd: dict[str, torch.Tensor], num_heads: int) -> tuple[dict[str, torch.Tensor], str | None]:
    """HF BERT-family names -> ours (word / position / type tables still whole). Returns (tensors, family
    from the key prefix or None). Keys outside the encoder body (heads, pooler) are dropped."""
    family = None
    body: dict[str, torch.Tensor] = {}
    for key, t in sd.items():
        k = key
        for prefix, fam in FAMILY_PREFIXES.items():
            if k.startswith(prefix):
                k, family = k[len(prefix) :], fam
                break
        if k.startswith(("embeddings.", "embeddings_project.", "encoder.")):
            k = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", k)
            body[re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", k)] = t
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for k, t in body.items():
        if k in ("embeddings.position_ids", "embeddings.token_type_ids"):
            continue  # buffers
        if k == "embeddings.word_embeddings.weight":
            out["embedding.weight"] = t
        elif k == "embeddings.position_embeddings.weight":
            out["positions"] = t
        elif k == "embeddings.token_type_embeddings.weight":
            out["token_type"] = t[0]  # our inputs are all type 0
        elif k.startswith("embeddings.LayerNorm."):
            out["embed_ln." + k.rsplit(".", 1)[1]] = t
        elif k.startswith("embeddings_project."):
            out["embed_proj." + k.rsplit(".", 1)[1]] = t
        else:
            m = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias)", k)
            mod = m.group(2) if m else None
            if m and mod in ("attention.self.query", "attention.self.key", "attention.self.value"):
                qkv.setdefault((int(m.group(1)), m.group(3)), {})[mod.rsplit(".", 1)[1][0]] = t
            elif m and mod in _LAYER:
                out[f"stack.layers.{m.group(1)}.{_LAYER[mod]}.{m.group(3)}"] = t
            else:
                out["unmapped:" + k] = t
    for (i, kind), parts in qkv.items():
        name = f"stack.layers.{i}.attn.qkv.{kind}"
        if set(parts) != {"q", "k", "v"}:
            out["unmapped:" + name] = next(iter(parts.values()))
            continue
        out[name] = hf_checkpoint.fuse_qkv(parts["q"], parts["k"], parts["v"], num_heads)
    return out, family


def _is_hf(sd: dict) -> bool:
    return any(k.endswith("embeddings.word_embeddings.weight") for k in sd)


# ---------------------------------------------------------------------------------------------------
# loading


def _word_rows(model, words: torch.Tensor, path: str, family: str | None) -> tuple[torch.Tensor, int]:
    """The docked [V_hf, E] word embedding -> [vocab_size, E] in project ids (unmapped rows: fresh init).
    Returns (rows, number of project ids that kept their init)."""
    te, vocab = model.cfg.text_encoder, model.cfg.vocab_size
    problems = vocab_problems(te, vocab, words.shape[0], family)
    if problems:
        raise UserError([f"text weights {path}: {p}" for p in problems])
    if not te.vocab_map_from:
        return words, 0
    mapping, _ = read_vocab_map(te.vocab_map_from)
    idx = torch.tensor(mapping, dtype=torch.long)
    rows = model.full_init(PREFIX + "embedding.weight")[:vocab].clone()
    have = torch.nonzero(idx >= 0).squeeze(1)
    rows[have] = words[idx[have]].to(rows.dtype)
    return rows, vocab - have.numel()


def load_text_weights(model, path: str) -> None:
    """Copy the checkpoint's encoder weights into `model.text_encoder` (this TP rank's shards)."""

    te = model.cfg.text_encoder
    hf_cfg = hf_checkpoint.read_config_json(path)
    if hf_cfg is not None:
        problems = config_json_problems(te, hf_cfg, path)
        if problems:
            raise UserError(problems)
    sd = hf_checkpoint.read_state_dict(path, "text")
    kept = 0
    if _is_hf(sd):
        sd, family = from_hf_bert(sd, te.num_heads)
        family = family_of(hf_cfg.get("model_type")) if hf_cfg else family
        style = {k: v for k, v in STYLE.items() if getattr(te, k) != v}
        if style:  # a lone file (no config.json): at least the encoder style must be the BERT family's
            raise UserError(
                f"text weights {path} are a Hugging Face BERT-family encoder: set "
                + ", ".join(f"model.text_encoder.{k}={str(v).lower()}" for k, v in style.items())
            )
        if "embedding.weight" in sd:
            sd["embedding.weight"], kept = _word_rows(model, sd["embedding.weight"], path, family)
        need = te.position_offset + te.max_len
        if "positions" in sd and sd["positions"].shape[0] > need:
            sd["positions"] = sd["positions"][:need]  # a shorter max_len than the checkpoint's
    else:
        sd = {k[len(PREFIX) :] if k.startswith(PREFIX) else k: v for k, v in sd.items()}

    def shape_of(name, p):
        want = model.full_shape(p)
        return (model.cfg.vocab_size, *want[1:]) if name == "embedding.weight" else want  # no vocab padding

    n_tensors = hf_checkpoint.load_component(
        model,
        PREFIX,
        sd,
        source=f"text weights {path}",
        what="language encoder",
        section="model.text_encoder",
        unexpected_hint=" (check model.text_encoder: embedding_size, embedding_norm, token_type)",
        shape_of=shape_of,
    )
    if kept and not model.text_encoder.embedding.weight.requires_grad:
        log.warning(
            "%d project tokens are not in the docked vocabulary of %s and keep a random embedding row, "
            "which is frozen (model.text_encoder.trainable_layers / model.freeze.embeddings)",
            kept,
            path,
        )
    log.info(
        "docked the language encoder from %s (%d tensors; %d project tokens kept their init row)",
        path,
        n_tensors,
        kept,
    )
