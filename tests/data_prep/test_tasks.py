"""`python -m data_prep tasks`: templates, readers, skips/cuts, determinism, verify, inspect, CLI."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import data_prep.tasks as tasks_mod
from common import exit_codes
from common.errors import UserError
from data_prep.cli import build_parser, main
from data_prep.shard_meta import read_shard_meta, split_images
from data_prep.task_readers import VqaReader, default_dataset_name, parse_input
from data_prep.task_templates import DEFAULT_TEMPLATES, load_templates, render_context
from data_prep.tasks import TasksConfig, build_tasks
from data_prep.tokenizer import load_tokenizer
from data_prep.verify import shard_readers, verify_shards

from .conftest import jpeg_bytes


def _cfg(inputs, tokenizer_dir, out, **kw):
    kw.setdefault("image_size", 16)
    return TasksConfig(
        inputs=[str(i) for i in inputs], tokenizer=tokenizer_dir, output=out, progress=False, **kw
    )


def _rows(out: Path) -> list[dict]:
    return [reader.get_item(i) for info, reader in shard_readers(out) for i in range(info["samples"])]


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _templates(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "templates.yaml"
    path.write_text(text)
    return path


PAIR_TEMPLATES = """
pair:
  - images: ["{images[0]}", "{images[1]}"]
    encoder: ["Statement: {sentence}", "Options: {options}", {text: "Hint: {hint}", optional: true}]
    decoder: "Answer:"
    target: "{label_text}"
"""


def test_render_split_two_images_two_segments(tmp_path, tokenizer_dir):
    ts = load_templates(_templates(tmp_path, PAIR_TEMPLATES))
    (tpl,) = ts.by_dataset["pair"]
    fields = {
        "images": ["l.png", "r.png"],
        "sentence": "the left one is red",
        "choices": ["yes", "no"],
        "label": 1,
    }
    r = tpl.render(render_context(fields))
    assert r.image_values == ["l.png", "r.png"]
    assert r.encoder == ["Statement: the left one is red", "Options: yes or no"]  # empty optional left out
    assert (r.decoder, r.target) == ("Answer:", "no")
    assert tpl.render(render_context({**fields, "hint": "look left"})).encoder[-1] == "Hint: look left"

    (tmp_path / "l.png").write_bytes(jpeg_bytes(size=(40, 30), fmt="PNG"))
    (tmp_path / "r.png").write_bytes(jpeg_bytes(size=(30, 50), colour=(20, 40, 200)))
    src = _write_jsonl(tmp_path / "pair_train.jsonl", [fields])
    out = tmp_path / "out"
    stats = build_tasks(_cfg([src], tokenizer_dir, out, templates=ts.path, image_size=24))
    assert stats["samples"] == 1 and stats["images"] == 2 and stats["image_size"] == 24
    (s,) = _rows(out)
    tok = load_tokenizer(tokenizer_dir)
    assert s["key"] == "pair_train.jsonl:1" and s["dataset"] == "pair" and s["template_id"] == 0
    assert s["encoder_segments"] == [
        tok.encode("Statement: the left one is red"),
        tok.encode("Options: yes or no"),
    ]
    assert s["decoder_prompt_ids"] == tok.encode("Answer:")
    assert s["target_ids"].dtype == np.int32 and s["target_ids"].tolist() == tok.encode("no")
    assert (s["target"], s["answers"], s["choices"], s["label"]) == ("no", ["no"], ["yes", "no"], 1)
    assert (s["question_id"], s["image_id"]) == (-1, -1)
    imgs = [Image.open(io.BytesIO(b)) for b in split_images(s)]
    assert [(i.format, i.mode, i.size) for i in imgs] == [("JPEG", "RGB", (24, 24))] * 2
    assert imgs[1].getpixel((12, 12))[2] > 150  # the second image is the blue one: order kept
    assert (
        stats["tokens"]
        == sum(map(len, s["encoder_segments"])) + len(s["decoder_prompt_ids"]) + len(s["target_ids"])
        == (read_shard_meta(out)["tokens"])
    )
    assert verify_shards(out)[0] == []


def test_shipped_templates_parse_with_the_paper_prompts():
    ts = load_templates(DEFAULT_TEMPLATES)
    for name in ("mnli", "vqa", "coco_caption", "flan", "shapes_vqa", "shapes_text"):
        assert ts.by_dataset[name], name
    (mnli,) = ts.by_dataset["mnli"]
    r = mnli.render({"premise": "P", "hypothesis": "H", "target": "entailment"})
    assert (r.encoder, r.decoder, r.target) == (["Premise: P", "Hypothesis: H"], "Label:", "entailment")
    (vqa,) = ts.by_dataset["vqa"]
    r = vqa.render({"image": "x.jpg", "question": "what is it?", "answer": "a dog"})
    assert (r.image_values, r.encoder, r.decoder) == (["x.jpg"], ["question: what is it?"], "answer:")
    assert ts.by_dataset["coco_caption"][0].render({"image": "x", "caption": "c"}).encoder == [
        "Summarize this image:"
    ]
    flan = ts.by_dataset["flan"][1]
    assert flan.render({"instruction": "Add.", "input": "", "target": "3"}).encoder == ["Instruction: Add."]


def test_bad_template_files_name_file_dataset_and_index(tmp_path):
    path = _templates(
        tmp_path,
        """
ok:
  - encoder: ["{a}"]
    target: "{b}"
  - encoder: ["x"]
    target: "{t}"
    decodr: "typo"
  - images: ["look at {image}"]
    target: "{t}"
  - decoder: "only a prompt"
    target: "{t}"
  - encoder: ["{}"]
    target: "{t}"
""",
    )
    with pytest.raises(UserError) as e:
        load_templates(path)
    msg = str(e.value)
    assert f"templates {path}: dataset 'ok' template 1: unknown key(s) decodr" in msg
    assert "template 2: images item 'look at {image}'" in msg
    assert "template 3: needs at least one `images` item or `encoder` segment" in msg
    assert "template 4: encoder segment '{}': positional placeholder" in msg
    assert "template 0" not in msg


def test_missing_field_is_a_user_error_before_anything_is_written(tmp_path, tokenizer_dir):
    path = _templates(
        tmp_path,
        """
mnli:
  - encoder: ["Premise: {premise}", "Hypothesis: {hypothesis}"]
    target: "{target}"
  - encoder: ["{premise}", "{hypothesis}"]
    decoder: "{prompt_word}:"
    target: "{target}"
""",
    )
    src = _write_jsonl(tmp_path / "mnli.jsonl", ["", {"premise": "p", "hypothesis": "h", "target": "yes"}])
    out = tmp_path / "out"
    with pytest.raises(UserError) as e:
        build_tasks(_cfg([src], tokenizer_dir, out, templates=path))
    msg = str(e.value)
    assert f"templates {path}: dataset 'mnli' template 1 uses field 'prompt_word'" in msg
    assert f"input {src} line 2 does not have (its fields: hypothesis, premise, target)" in msg
    assert "template 0" not in msg
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["mnli.jsonl", "templates.yaml"]
    # A dataset without templates, named or by file stem, is reported with the names there are.
    with pytest.raises(UserError, match="no templates for dataset 'other'.*NAME=FILE with one of: mnli"):
        build_tasks(_cfg([f"other={src}"], tokenizer_dir, out, templates=path))
    assert (
        main(
            [
                "tasks",
                "--input",
                str(src),
                "--templates",
                str(path),
                "--tokenizer",
                str(tokenizer_dir),
                "--output",
                str(out),
            ]
        )
        == exit_codes.USER_ERROR
    )
    assert not out.exists()


def test_skips_and_cuts_are_counted(tmp_path, tokenizer_dir):
    path = _templates(
        tmp_path,
        """
qa:
  - images: ["{image}"]
    encoder: ["{question}"]
    decoder: "answer"
    target: "{answer}"
""",
    )
    (tmp_path / "ok.jpg").write_bytes(jpeg_bytes(size=(50, 40)))
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    long_q = " ".join(["red circle"] * 30)
    rows = [
        {"image": "ok.jpg", "question": "the colour", "answer": "red"},
        {"image": "ok.jpg", "question": "the colour", "answer": "   "},  # empty_target
        {"image": "ok.jpg", "question": " \n ", "answer": "red"},  # empty_encoder_segment
        "{not json",  # bad_record
        {"image": "gone.jpg", "question": "the colour", "answer": "red"},  # missing_image
        {"image": "bad.jpg", "question": "the colour", "answer": "red"},  # corrupt_image
        {"image": "ok.jpg", "answer": "red"},  # missing_field (not the first row: skipped)
        {"image": "ok.jpg", "question": "q", "answer": "red", "choices": ["a", "b"], "label": 5},  # bad_label
        {"image": "ok.jpg", "question": long_q, "answer": long_q},  # both cut
    ]
    src = _write_jsonl(tmp_path / "qa.jsonl", rows)
    out = tmp_path / "out"
    stats = build_tasks(
        _cfg([src], tokenizer_dir, out, templates=path, max_encoder_tokens=8, max_target_tokens=5)
    )
    assert stats["samples"] == 2
    assert stats["skipped"] == {
        "bad_label": 1,
        "bad_record": 1,
        "corrupt_image": 1,
        "empty_encoder_segment": 1,
        "empty_target": 1,
        "missing_field": 1,
        "missing_image": 1,
    }
    assert stats["datasets"]["qa"]["skipped"] == stats["skipped"] == stats["sources"][str(src)]["skipped"]
    assert stats["encoder_tokens"]["truncated"] == 1 and stats["encoder_tokens"]["max"] == 8
    assert stats["target_tokens"]["truncated"] == 1 and stats["target_tokens"]["max"] == 5
    cut = _rows(out)[1]
    assert len(cut["encoder_segments"][0]) == 8 and len(cut["target_ids"]) == 5
    assert cut["target"] == long_q  # the text keeps the whole target; only the ids are cut
    assert verify_shards(out)[0] == []


def _vqa_files(root: Path) -> tuple[Path, Path, Path]:
    images = root / "val2014"
    images.mkdir(parents=True)
    (images / "COCO_val2014_000000000042.jpg").write_bytes(jpeg_bytes(size=(64, 48)))
    (images / "7.jpg").write_bytes(jpeg_bytes(size=(30, 30), colour=(10, 200, 10)))
    questions = [
        {"image_id": 42, "question": "What colour is the box?", "question_id": 420},
        {"image_id": 42, "question": "Is it big?", "question_id": 421},
        {"image_id": 7, "question": "What colour?", "question_id": 70},
        {"image_id": 9, "question": "Where is it?", "question_id": 90},  # image file missing
        {"image_id": 7, "question": "Unanswered?", "question_id": 71},  # no annotation
    ]

    def ann(qid, image_id, mc, answers):
        return {
            "question_id": qid,
            "image_id": image_id,
            "question_type": "what color is the",
            "answer_type": "other",
            "multiple_choice_answer": mc,
            "answers": [
                {"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)
            ],
        }

    anns = [
        ann(420, 42, "red", ["red"] * 8 + ["dark red", "orange"]),
        ann(421, 42, "yes", ["yes"] * 10),
        ann(70, 7, "green", ["green"] * 10),
        ann(90, 9, "left", ["left"] * 10),
    ]
    q = root / "questions.json"
    a = root / "annotations.json"
    q.write_text(json.dumps({"data_subtype": "val2014", "questions": questions}))
    a.write_text(json.dumps({"data_subtype": "val2014", "annotations": anns}))
    return q, a, images


def test_vqa_v2_reader_and_shards(tmp_path, tokenizer_dir):
    q, a, images = _vqa_files(tmp_path)
    reader = VqaReader(q, a, "vqa", images)
    got = {r.key: r for r in reader}
    assert got["questions.json:q71"].skip == "missing_annotation"
    first = got["questions.json:q420"].fields
    assert first["image"] == str(images / "COCO_val2014_000000000042.jpg")  # COCO name pattern
    assert got["questions.json:q70"].fields["image"] == str(images / "7.jpg")  # plain {image_id}.jpg
    assert first["answer"] == "red" and len(first["answers"]) == 10 and first["answers"][-1] == "orange"

    out = tmp_path / "out"
    stats = build_tasks(
        _cfg([], tokenizer_dir, out, format="vqa", questions=str(q), annotations=a, image_root=images)
    )
    assert stats["samples"] == 3 and stats["skipped"] == {"missing_annotation": 1, "missing_image": 1}
    rows = {r["question_id"]: r for r in _rows(out)}
    r = rows[420]
    tok = load_tokenizer(tokenizer_dir)
    assert (r["dataset"], r["image_id"], r["target"], len(r["image_sizes"])) == ("vqa", 42, "red", 1)
    assert r["answers"] == ["red"] * 8 + ["dark red", "orange"]
    assert r["encoder_segments"] == [tok.encode("question: What colour is the box?")]
    assert r["decoder_prompt_ids"] == tok.encode("answer:") and r["target_ids"].tolist() == tok.encode("red")
    assert verify_shards(out)[0] == []

    # Only the plain pattern: the COCO-named image is not found; a wrong root is an error up front.
    stats = build_tasks(
        _cfg(
            [],
            tokenizer_dir,
            tmp_path / "o2",
            questions=f"myvqa={q}",
            annotations=a,
            image_root=images,
            image_patterns=["{image_id}.jpg"],
            templates=_templates(tmp_path, "myvqa:\n  - images: ['{image}']\n    target: '{answer}'\n"),
        )
    )
    assert stats["samples"] == 1 and stats["datasets"]["myvqa"]["skipped"]["missing_image"] == 3
    with pytest.raises(UserError, match="none of the images of its first 4 examples exist.*--image-pattern"):
        build_tasks(
            _cfg([], tokenizer_dir, tmp_path / "o3", questions=str(q), annotations=a, image_root=tmp_path)
        )
    with pytest.raises(UserError, match="--annotations"):
        build_tasks(_cfg([], tokenizer_dir, tmp_path / "o3", questions=str(q)))


def test_coco_captions_for_finetuning_and_eval(tmp_path, raw_data, tokenizer_dir):
    captions = raw_data / "eval" / "caption" / "captions.json"
    images = raw_data / "eval" / "caption" / "images"
    out = tmp_path / "cap"
    stats = build_tasks(_cfg([captions], tokenizer_dir, out, image_root=images, coco_captions="first"))
    n_images = len(json.loads(captions.read_text())["images"])
    assert stats["samples"] == n_images and stats["datasets"] == {
        "coco_caption": {
            "samples": n_images,
            "skipped": {},
            "dropped_by_cap": 0,
            "templates": {"0": n_images},
        }
    }
    r = _rows(out)[0]
    assert r["target"] == r["answers"][0] and len(r["answers"]) == 3 and r["image_id"] >= 0
    stats = build_tasks(
        _cfg([f"coco_caption={captions}"], tokenizer_dir, tmp_path / "all", image_root=images)
    )
    assert stats["samples"] == 3 * n_images


def test_same_output_for_any_worker_count_and_verify(tmp_path, raw_data, tokenizer_dir):
    inputs = [
        f"shapes_vqa={raw_data / 'tasks' / 'shapes_vqa_train.jsonl'}",
        raw_data / "tasks" / "shapes_text_train.jsonl",
    ]
    a = build_tasks(_cfg(inputs, tokenizer_dir, tmp_path / "w1", workers=1, shard_size_limit="64kb"))
    b = build_tasks(_cfg(inputs, tokenizer_dir, tmp_path / "w2", workers=2, shard_size_limit="64kb"))
    assert a == b and set(a["datasets"]) == {"shapes_vqa", "shapes_text"} and a["skipped"] == {}
    files = sorted(p.name for p in (tmp_path / "w1").iterdir())
    assert len(files) > 3 and files == sorted(p.name for p in (tmp_path / "w2").iterdir())
    for name in files:
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes(), name
    problems, summary = verify_shards(tmp_path / "w1")
    assert problems == [] and summary["kind"] == "tasks" and summary["shards"] > 1
    # verify notices stats that do not match the shards
    stats = json.loads((tmp_path / "w2" / "stats.json").read_text())
    stats["datasets"]["shapes_text"]["samples"] += 1
    (tmp_path / "w2" / "stats.json").write_text(json.dumps(stats))
    assert any("per dataset" in p for p in verify_shards(tmp_path / "w2")[0])


def test_template_draw_is_deterministic_per_example(tmp_path, raw_data, tokenizer_dir):
    ts = load_templates(DEFAULT_TEMPLATES)
    keys = [f"f.jsonl:{i}" for i in range(200)]
    draws = [ts.draw("shapes_text", k, 0).index for k in keys]
    assert draws == [ts.draw("shapes_text", k, 0).index for k in keys] and set(draws) == {0, 1}
    assert draws != [ts.draw("shapes_text", k, 1).index for k in keys]
    src = raw_data / "tasks" / "shapes_text_val.jsonl"
    build_tasks(_cfg([src], tokenizer_dir, tmp_path / "o", seed=3))
    rows = _rows(tmp_path / "o")
    assert [r["template_id"] for r in rows] == [ts.draw("shapes_text", r["key"], 3).index for r in rows]
    assert {r["label"] for r in rows} == {0, 1} and all(r["choices"] == ["yes", "no"] for r in rows)


def test_cap_per_dataset_is_deterministic_and_spread(tmp_path, tokenizer_dir):
    path = _templates(
        tmp_path, "a:\n  - encoder: ['{x}']\n    target: '{y}'\nb:\n  - encoder: ['{x}']\n    target: '{y}'\n"
    )
    rows = [{"x": f"red circle {i}", "y": "yes"} for i in range(40)]
    a = _write_jsonl(tmp_path / "a.jsonl", rows)
    a2 = _write_jsonl(tmp_path / "a_more.jsonl", rows[:10])
    b = _write_jsonl(tmp_path / "b.jsonl", rows[:5])
    inputs = [a, f"a={a2}", b]
    s1 = build_tasks(_cfg(inputs, tokenizer_dir, tmp_path / "c1", templates=path, max_per_dataset=12))
    assert s1["datasets"]["a"]["samples"] == 12 and s1["datasets"]["a"]["dropped_by_cap"] == 38
    assert s1["datasets"]["b"]["samples"] == 5 and s1["datasets"]["b"]["dropped_by_cap"] == 0
    keys = [r["key"] for r in _rows(tmp_path / "c1")]
    build_tasks(_cfg(inputs, tokenizer_dir, tmp_path / "c2", templates=path, max_per_dataset=12, workers=2))
    assert keys == [r["key"] for r in _rows(tmp_path / "c2")]
    kept_a = [k for k in keys if k.startswith("a.jsonl:")]
    assert kept_a != [f"a.jsonl:{i}" for i in range(1, len(kept_a) + 1)]  # not simply the first lines
    build_tasks(_cfg(inputs, tokenizer_dir, tmp_path / "c3", templates=path, max_per_dataset=12, seed=1))
    assert keys != [r["key"] for r in _rows(tmp_path / "c3")]


def test_interrupt_leaves_nothing(tmp_path, raw_data, tokenizer_dir, monkeypatch):
    calls = {"n": 0}
    real = tasks_mod.process_chunk

    def flaky(chunk):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(chunk)

    monkeypatch.setattr(tasks_mod, "process_chunk", flaky)
    with pytest.raises(KeyboardInterrupt):
        build_tasks(_cfg([raw_data / "tasks" / "shapes_text_train.jsonl"], tokenizer_dir, tmp_path / "out"))
    assert list(tmp_path.iterdir()) == []


def test_cli_inspect_and_at_file(tmp_path, raw_data, tokenizer_dir, capsys):
    listing = tmp_path / "inputs.txt"
    listing.write_text(f"shapes_vqa={raw_data / 'tasks' / 'shapes_vqa_train.jsonl'}\n")
    out = tmp_path / "shards"
    argv = [
        "tasks",
        "--input",
        f"@{listing}",
        "--tokenizer",
        str(tokenizer_dir),
        "--image-size",
        "16",
        "--max-per-dataset",
        "20",
        "--output",
        str(out),
        "--no-progress",
    ]
    assert main(argv) == exit_codes.OK
    assert json.loads(capsys.readouterr().out.strip())["datasets"] == {"shapes_vqa": 20}
    assert main(argv) == exit_codes.USER_ERROR  # exists: needs --force
    assert main(["verify", str(out)]) == exit_codes.OK
    capsys.readouterr()
    assert main(["inspect", str(out), "--samples", "3", "--images-out", str(tmp_path / "look")]) == 0
    report = capsys.readouterr().out
    assert "tasks shards" in report and "encoder[0]:" in report and "decoder prompt:" in report
    assert len(list((tmp_path / "look").glob("*.jpg"))) == 3 and (tmp_path / "look" / "samples.txt").is_file()
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["tasks", "--help"])
    assert e.value.code == 0 and "example" in capsys.readouterr().out


def test_input_names():
    assert parse_input("mnli=data/x.jsonl") == ("mnli", Path("data/x.jsonl"))
    assert parse_input("data/x.jsonl") == (None, Path("data/x.jsonl"))
    assert default_dataset_name(Path("d/mnli_train.jsonl")) == "mnli"
    assert default_dataset_name(Path("d/shapes_text-val.jsonl.zst")) == "shapes_text"
    assert default_dataset_name(Path("d/flan.jsonl")) == "flan"


def test_sigterm_mid_run_exits_130_and_leaves_nothing(tmp_path, raw_data, tokenizer_dir):
    import multiprocessing
    import os
    import signal
    import time

    out = tmp_path / "out"
    src = f"shapes_vqa={raw_data / 'tasks' / 'shapes_vqa_train.jsonl'}"
    argv = ["tasks", "--input", *[src] * 200, "--tokenizer", str(tokenizer_dir), "--image-size", "16"]
    argv += ["--output", str(out), "--shard-size-limit", "20kb", "--no-progress", "--workers", "2"]
    proc = multiprocessing.get_context("fork").Process(target=lambda: os._exit(main(argv)))
    proc.start()
    deadline = time.time() + 120
    while time.time() < deadline and not any(tmp_path.glob(".out.tmp-*/shard.*.mds")):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGTERM)
    proc.join(60)
    assert proc.exitcode == 130
    assert list(tmp_path.iterdir()) == []
