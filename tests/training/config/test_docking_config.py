"""The 1.3B config docks CLIP ViT-L/14 and ELECTRA-large by path: weights on disk are checked with the data
(an error in real runs, not for a shipped config on a machine without them); their config.json must agree."""

from __future__ import annotations

import json

from parallel.groups import Topology
from tests.paths import CONFIGS
from training.config import load_config
from training.model.spec import component_specs

# the config.json values of the Hugging Face hub checkpoints the 1.3B config names
ELECTRA_LARGE = {
    "architectures": ["ElectraForPreTraining"],
    "model_type": "electra",
    "embedding_size": 1024,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_attention_heads": 16,
    "num_hidden_layers": 24,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "pad_token_id": 0,
    "vocab_size": 30522,
}
CLIP_L14 = {
    "model_type": "clip",
    "vision_config": {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_attention_heads": 16,
        "num_hidden_layers": 24,
        "patch_size": 14,
        "image_size": 224,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
    },
}


def checkpoint_folder(path, config: dict):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config))
    (path / "model.safetensors").write_bytes(b"")  # validation reads config.json only
    return str(path)


def test_metalm_1_3b_docks_by_path_and_freezes_like_the_paper():
    cfg = load_config(CONFIGS / "metalm-1.3b.yaml")
    m = cfg.model
    assert m.vision_encoder.weights_path == "checkpoints/clip-vit-large-patch14"
    assert m.text_encoder.weights_path == "checkpoints/electra-large-discriminator"
    assert m.text_encoder.vocab_map_from == cfg.data.tokenizer
    assert (m.text_encoder.trainable_layers, m.vision_encoder.trainable_layers) == (2, 1)
    assert m.decoder.norm_scheme == "deepnorm" and m.text_encoder.norm_scheme == "post"
    specs = component_specs(m, Topology.single_process("meta"))
    assert (specs["decoder"].hidden_dropout, specs["decoder"].attention_dropout) == (0.0, 0.0)
    for enc in ("text_encoder", "vision_encoder"):
        assert (specs[enc].hidden_dropout, specs[enc].attention_dropout) == (0.1, 0.1)
    # without the downloaded folders: fine for the shipped-config check, an error with the data checks
    assert cfg.problems(64, check_data=False) == []
    text = "\n".join(cfg.problems(64, check_data=True))
    assert "model.vision_encoder.weights_path='checkpoints/clip-vit-large-patch14' does not exist" in text
    assert "model.text_encoder.weights_path='checkpoints/electra-large-discriminator' does not exist" in text


def test_hub_config_json_matches_the_1_3b_settings(tmp_path):
    clip = checkpoint_folder(tmp_path / "clip", CLIP_L14)
    electra = checkpoint_folder(tmp_path / "electra", ELECTRA_LARGE)
    tok = tmp_path / "tokenizer"
    tok.mkdir()
    mapping = list(range(30522)) + [-1] * 7
    (tok / "tokenizer.json").write_text(
        json.dumps({"source_vocab": {"kind": "hf-wordpiece", "path": electra, "project_to_source": mapping}})
    )
    where = [
        f"model.vision_encoder.weights_path={clip}",
        f"model.text_encoder.weights_path={electra}",
        f"model.text_encoder.vocab_map_from={tok}",
        "model.vocab_size=30529",
    ]
    cfg = load_config(CONFIGS / "metalm-1.3b.yaml", where)
    assert cfg.model.problems(2, None, check_files=True) == []
    # a model whose every weight is loaded next (export, evaluation) reads no pretrained files
    gone = load_config(CONFIGS / "metalm-1.3b.yaml").model.without_weight_files()
    assert gone.problems(2, None, check_files=True) == [] and gone.frozen_random_problems() == []
    # a mismatch names the key and the value to set
    other = json.loads(json.dumps(CLIP_L14))
    other["vision_config"]["patch_size"] = 16
    clip16 = checkpoint_folder(tmp_path / "clip16", other)
    bad = load_config(CONFIGS / "metalm-1.3b.yaml", [*where, f"model.vision_encoder.weights_path={clip16}"])
    problems = bad.model.problems(2, None, check_files=True)
    assert any("set model.vision_encoder.patch_size=16" in p for p in problems), problems
    # a project vocabulary without the map: the sizes differ, the fix is the tokenizer import
    nomap = load_config(CONFIGS / "metalm-1.3b.yaml", [*where, "model.text_encoder.vocab_map_from="])
    problems = nomap.model.problems(2, None, check_files=True)
    assert any("vocabulary of 30522 tokens" in p and "--import-hf" in p for p in problems), problems
