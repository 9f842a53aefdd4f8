"""kind: caption -- COCO-format captioning: one generated caption per image, BLEU-1..4 and CIDEr-D.

data: `annotations` (COCO captions JSON: images [{id, file_name}], annotations [{image_id, caption}]) and
`images` (the folder `file_name` is relative to). Every listed image with at least one caption is an
example (file order; `limit` keeps the first N). Fields for the format strings: {image_id}, {file_name},
{caption} (the image's first reference: a demonstration's label).
demos: the same layout (a train split), or `path`: JSONL {"image": PATH, "caption": TEXT, ...}.

Default prompt, the MetaLM paper's captioning instruction: encoder ["Summarize this image:"], an empty
decoder prompt, label "{caption}". A model that was only pretrained on image-caption pairs saw
`<s> <image> ... </image> caption` (no instruction): use `encoder: []` for it (configs/eval/shapes.yaml).

Scoring: the predictions file is a COCO results JSON [{image_id, caption}] scored by
`evaluation.metrics.caption` exactly as `python -m evaluation score coco-caption` scores it (only the
predicted images; their references define CIDEr-D's document frequencies). Metrics on coco-caption's
scale: BLEU-1..4 in [0, 1], CIDEr-D (papers quote both x100).
"""

from __future__ import annotations

import json
from pathlib import Path

from evaluation.inputs import Problems, is_id
from evaluation.tasks.base import Item, Task, jsonl_items, read_json


class CaptionTask(Task):
    kind = "caption"
    default_encoder = ["Summarize this image:"]
    default_prompt = ""
    default_label = "{caption}"
    generative = True

    def read(self, files, problems: Problems, *, demos: bool) -> list[Item]:
        if demos and files.path:
            return jsonl_items(self.path(files.path), "demonstrations", problems, images=True)
        return coco_caption_items(
            self.path(files.annotations),
            self.path(files.images),
            problems,
            "annotations" if not demos else "demos",
        )

    def predict(self, runner) -> dict[int, str]:
        return {i: p["text"] for i, p in self.generate_texts(runner).items()}

    def write_predictions(self, predictions: dict[int, str], path: Path) -> None:
        rows = [{"image_id": it.key, "caption": predictions[i]} for i, it in enumerate(self.items)]
        path.write_text("[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n")

    def score(self, path: Path) -> tuple[dict[str, float], dict]:
        from evaluation.metrics.caption import read_coco_caption_inputs, score_captions

        inputs = read_coco_caption_inputs(path, self.path(self.cfg.data.annotations))
        scores = score_captions(inputs.predictions, inputs.references)
        return scores, {"num_images": len(inputs.predictions), "num_missing": inputs.num_missing}


def coco_caption_items(ann_path: Path, image_dir: Path, problems: Problems, what: str) -> list[Item]:
    """One item per listed image with captions; ids checked for consistency (problems name file and id)."""
    data = read_json(ann_path, f"{what} (COCO captions)", problems)
    if data is None:
        return []
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("images"), list)
        or not isinstance(data.get("annotations"), list)
    ):
        problems.add(
            f"{what} file {ann_path} must be a COCO captions JSON object with an 'images' list "
            "([{id, file_name}]) and an 'annotations' list ([{image_id, caption}])"
        )
        return []
    if not image_dir.is_dir():
        problems.add(f"image folder {image_dir} (for {ann_path}) does not exist")
    files: dict = {}
    for i, img in enumerate(data["images"]):
        image_id = img.get("id") if isinstance(img, dict) else None
        name = img.get("file_name") if isinstance(img, dict) else None
        if not is_id(image_id) or not isinstance(name, str) or not name:
            problems.add(f"{ann_path}: images[{i}] needs an 'id' and a 'file_name'")
        elif image_id in files:
            problems.add(f"{ann_path}: image id {image_id!r} is listed twice (images[{i}])")
        else:
            files[image_id] = name
    captions: dict = {}
    for i, ann in enumerate(data["annotations"]):
        image_id = ann.get("image_id") if isinstance(ann, dict) else None
        caption = ann.get("caption") if isinstance(ann, dict) else None
        if not is_id(image_id) or not isinstance(caption, str):
            problems.add(f"{ann_path}: annotations[{i}] needs an 'image_id' and a string 'caption'")
        elif image_id not in files:
            problems.add(
                f"{ann_path}: annotations[{i}] is for image_id {image_id!r}, which is not in the file's "
                "images list: the image file cannot be found"
            )
        else:
            captions.setdefault(image_id, []).append(caption)
    return [
        Item(
            image_id,
            f"{ann_path}, image_id {image_id!r}",
            {"image_id": image_id, "file_name": name, "caption": captions[image_id][0]},
            [image_dir / name],
        )
        for image_id, name in files.items()
        if image_id in captions
    ]
