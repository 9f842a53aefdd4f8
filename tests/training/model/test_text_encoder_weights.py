"""Docking a Hugging Face BERT / RoBERTa / ELECTRA language encoder (tiny random checkpoints built with
`transformers`): our encoder computes their last hidden state at TP=1 and TP=2; vocabulary maps; errors."""

from __future__ import annotations

import json

import pytest
import torch

from common.errors import UserError
from parallel.groups import Topology
from tests.distributed import run_ranks
from training.model import MetaLM, model_config_from_preset

VOCAB = 512  # the debug preset's vocabulary
HF_SIZES = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
OURS = {
    "text_encoder.num_layers": 2,
    "text_encoder.norm_scheme": "post",
    "text_encoder.embedding_norm": True,
    "text_encoder.token_type": True,
    "text_encoder.scale_embeddings": False,
    "text_encoder.layer_norm_eps": 1e-12,
}
# family -> (our extra settings, HF model class name, config class name, extra HF config, save as safetensors)
FAMILIES = {
    "bert": ({}, "BertModel", "BertConfig", dict(max_position_embeddings=64, type_vocab_size=2), True),
    "roberta": (
        {"text_encoder.position_offset": 2, "text_encoder.layer_norm_eps": 1e-5},
        "RobertaForMaskedLM",  # "roberta." prefix + an LM head that must be ignored
        "RobertaConfig",
        dict(
            max_position_embeddings=66, type_vocab_size=1, pad_token_id=1, bos_token_id=0, layer_norm_eps=1e-5
        ),
        True,
    ),
    "electra": (
        {"text_encoder.embedding_size": 32},
        "ElectraForPreTraining",  # the discriminator: "electra." prefix + its head
        "ElectraConfig",
        dict(max_position_embeddings=64, type_vocab_size=2, embedding_size=32),
        False,  # pytorch_model.bin
    ),
}
# RoBERTa's <s> is 0 and <pad> 1, ours the other way round: a hand map swaps them (identity elsewhere)
ROBERTA_MAP = [1, 0] + list(range(2, VOCAB))


def write_tokenizer_map(directory, mapping: list[int], kind: str) -> str:
    """A tokenizer dir's tokenizer.json with the source_vocab map (the contract with data_prep's import)."""
    directory.mkdir(parents=True, exist_ok=True)
    meta = {
        "vocab_size": len(mapping),
        "source_vocab": {"kind": kind, "path": "hf", "project_to_source": mapping},
    }
    (directory / "tokenizer.json").write_text(json.dumps(meta))
    return str(directory)


def build_hf(family: str, folder, vocab: int = VOCAB, seed: int = 0):
    """A tiny random HF checkpoint folder (config.json + weights); returns the HF base model (eval)."""
    from common.streaming_compat import ensure_streaming_importable

    ensure_streaming_importable()  # transformers imports torchvision (the CUDA build; see that module)
    transformers = pytest.importorskip("transformers")
    _, model_cls, cfg_cls, extra, safe = FAMILIES[family]
    torch.manual_seed(seed)
    cfg = getattr(transformers, cfg_cls)(
        vocab_size=vocab, hidden_act="gelu", **{**dict(layer_norm_eps=1e-12), **HF_SIZES, **extra}
    )
    cfg._attn_implementation = "eager"
    hf = getattr(transformers, model_cls)(cfg).eval()
    with (
        torch.no_grad()
    ):  # HF init leaves LayerNorms at 1 / 0 and small type rows: randomize so tests see them
        for name, p in hf.named_parameters():
            if "LayerNorm" in name or "token_type" in name:
                p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(str(folder), safe_serialization=safe)
    return getattr(hf, family, hf)  # the encoder body of a model with a head


def our_config(family: str, folder, vocab_map: str = "", **more):
    where = {"text_encoder.weights_path": str(folder), "text_encoder.vocab_map_from": vocab_map}
    return model_config_from_preset("debug", **{**OURS, **FAMILIES[family][0], **where, **more})


def spans(seed: int = 0) -> torch.Tensor:
    """[<s>] + span, <pad>-padded (project ids)."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.zeros(3, 12, dtype=torch.long)
    for i, n in enumerate((11, 7, 4)):
        rows[i, 0] = 1
        rows[i, 1 : n + 1] = torch.randint(7, VOCAB, (n,), generator=g)
    return rows


def _encode(rank, world, cases, ids):
    from parallel import ParallelConfig, destroy_distributed, init_distributed

    topo = init_distributed(ParallelConfig(tp=world))
    out = {}
    for family, (folder, vocab_map) in cases.items():
        model = MetaLM(our_config(family, folder, vocab_map), topo).eval()
        with torch.no_grad():
            out[family] = model.text_encoder(torch.from_numpy(ids)).numpy()
    destroy_distributed()
    return out


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Each family's folder, vocab map and HF reference output at the span tokens."""
    root = tmp_path_factory.mktemp("hf")
    ids = spans()
    cases, refs = {}, {}
    for family in FAMILIES:
        hf = build_hf(family, root / family)
        vocab_map = ""
        hf_ids = ids
        if family == "roberta":
            vocab_map = write_tokenizer_map(root / "roberta-tokenizer", ROBERTA_MAP, "hf-bpe")
            hf_ids = torch.tensor(ROBERTA_MAP)[ids]
        with torch.no_grad():
            last = hf(input_ids=hf_ids, attention_mask=(ids != 0).long()).last_hidden_state
        cases[family] = (str(root / family), vocab_map)
        refs[family] = last[:, 1:]  # our encoder drops the <s> output
    return cases, refs, ids


@pytest.mark.parametrize("tp", [1, 2])
def test_docked_encoder_computes_the_hf_last_hidden_state(checkpoints, tp):
    cases, refs, ids = checkpoints
    outs = run_ranks(tp, _encode, cases, ids.numpy())
    real = ids[:, 1:] != 0  # padding outputs are never used (and RoBERTa positions them differently)
    for out in outs:
        for family, ref in refs.items():
            got = torch.from_numpy(out[family])
            assert got.shape == ref.shape, family
            torch.testing.assert_close(got[real], ref[real], rtol=1e-4, atol=1e-5, msg=family)


def test_vocab_map_permutes_rows_and_keeps_init_for_missing_tokens(tmp_path):
    """A hand map onto a smaller HF vocabulary (300 rows): mapped rows are copied, -1 rows keep their init."""
    hf = build_hf("bert", tmp_path / "bert", vocab=300)
    words = hf.embeddings.word_embeddings.weight.detach()
    mapping = [(7 * i + 3) % 300 for i in range(VOCAB)]
    missing = [4, 5, 6, 400, 511]  # e.g. <image>, </image>, </d> and tokens the HF vocabulary lacks
    for i in missing:
        mapping[i] = -1
    tok = write_tokenizer_map(tmp_path / "tok", mapping, "hf-wordpiece")
    cfg = our_config("bert", tmp_path / "bert", tok)
    assert cfg.problems(tp=1) == []
    model = MetaLM(cfg, Topology.single_process())
    fresh = MetaLM(our_config("bert", "", ""), Topology.single_process())  # same init seed, nothing docked
    got = model.text_encoder.embedding.weight.detach()
    for i, row in enumerate(mapping):
        want = fresh.text_encoder.embedding.weight[i] if row < 0 else words[row]
        assert torch.equal(got[i], want), i
    # the other tensors are the checkpoint's (not the fresh init)
    pos = hf.embeddings.position_embeddings.weight
    assert torch.equal(model.text_encoder.positions, pos)


def test_vocabulary_and_setting_mismatches_name_the_fix(tmp_path):
    build_hf("bert", tmp_path / "bert", vocab=300)
    cfg = our_config("bert", tmp_path / "bert")
    text = "\n".join(cfg.problems(tp=1))
    assert "vocabulary of 300 tokens, the project's is 512" in text
    assert "python -m data_prep tokenizer --import-hf DIR" in text
    with pytest.raises(UserError, match="--import-hf"):
        MetaLM(cfg, Topology.single_process())
    # config.json disagrees with our settings: each mismatch names the key and value to set
    bad = our_config(
        "bert",
        tmp_path / "bert",
        **{"text_encoder.num_layers": 3, "text_encoder.norm_scheme": "pre", "text_encoder.max_len": 65},
    )
    text = "\n".join(bad.problems(tp=1))
    for needle in (
        "model.text_encoder.num_layers=3 does not match",
        "set model.text_encoder.num_layers=2",
        "set model.text_encoder.norm_scheme=post",
        "set model.text_encoder.max_len <= 64",
    ):
        assert needle in text, needle
    # a map without source_vocab / of the wrong kind
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "tokenizer.json").write_text(json.dumps({"vocab_size": 512}))
    no_map = our_config("bert", tmp_path / "bert", str(tmp_path / "plain"))
    assert any('has no "source_vocab"' in p for p in no_map.problems(tp=1))
    bpe = write_tokenizer_map(tmp_path / "bpe", list(range(300)), "hf-bpe")
    assert any(
        "a bert checkpoint has hf-wordpiece" in p
        for p in our_config("bert", tmp_path / "bert", bpe).problems(1)
    )
    # not there: an error in real runs (data checks), none when files are not checked (shipped configs)
    gone = our_config("bert", tmp_path / "nope")
    assert any("weights_path=" in p and "does not exist" in p for p in gone.problems(tp=1))
    assert gone.problems(tp=1, check_files=False) == []


def test_lone_file_needs_the_bert_style_and_our_names_round_trip(tmp_path):
    from safetensors.torch import save_file

    build_hf("bert", tmp_path / "bert")
    lone = str(tmp_path / "bert" / "model.safetensors")  # a single file: no config.json to compare with
    cfg = our_config("bert", lone, **{"text_encoder.embedding_norm": False})
    with pytest.raises(UserError, match="model.text_encoder.embedding_norm=true"):
        MetaLM(cfg, Topology.single_process())
    docked = MetaLM(our_config("bert", lone), Topology.single_process())
    # our own names (as gathered from a run, vocab padding removed) load back into a fresh model
    sd = {n: p.detach().clone() for n, p in docked.text_encoder.named_parameters()}
    sd["embedding.weight"] = sd["embedding.weight"][:VOCAB]
    save_file(sd, tmp_path / "ours.safetensors")
    again = MetaLM(our_config("bert", tmp_path / "ours.safetensors", init_seed=7), Topology.single_process())
    for n, p in again.text_encoder.named_parameters():
        assert torch.equal(p, dict(docked.text_encoder.named_parameters())[n]), n
