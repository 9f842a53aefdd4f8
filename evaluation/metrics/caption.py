"""COCO captioning scores (BLEU-1..4, CIDEr-D) of a COCO results file against COCO caption annotations.

Inputs, as coco-caption reads them:
- predictions (COCO results format): a JSON list of {"image_id": int|str, "caption": str}, one per
  image; other keys are ignored;
- annotations: {"images": [{"id", ...}], "annotations": [{"image_id", "caption", ...}]} (the
  captions_val2014.json / Karpathy-split layout); "images" is optional.

As in coco-caption only the predicted images are scored (their references also define CIDEr-D's
document frequencies); annotated images without a prediction are counted in `num_missing`, or are an
error with `require_all`. Everything is validated before any scoring; all problems found are
reported in one `UserError`. Scores are on coco-caption's scale (BLEU in [0, 1], CIDEr-D ~ 0..10);
papers usually quote them x100. See `caption_tokenize` for the one difference from coco-caption
(a Python tokenizer replaces its Java PTBTokenizer).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluation.inputs import Problems, check_results, describe, id_type_hint, is_id, load_json, unpredicted
from evaluation.metrics.bleu import corpus_bleu
from evaluation.metrics.caption_tokenize import tokenize_caption
from evaluation.metrics.cider import cider_d

log = logging.getLogger(__name__)

_LISTED_MISSING = 5  # missing image ids quoted in the --require-all error


@dataclass
class CaptionSet:
    """Validated inputs: one raw predicted caption and its raw references per predicted image."""

    predictions: dict[Hashable, str]
    references: dict[Hashable, list[str]]
    num_missing: int  # annotated images (with captions) that have no prediction


def _is_object_with_list(data: Any, key: str) -> bool:
    return isinstance(data, dict) and isinstance(data.get(key), list)


def _check_predictions(data: Any, name: str, problems: Problems) -> dict[Hashable, str]:
    return check_results(
        data,
        name,
        problems,
        id_key="image_id",
        text_key="caption",
        fmt="COCO results",
        swapped_keys=("annotations",),
        duplicate_fix="coco-caption scores exactly one caption per image: keep one",
    )


def _check_annotations(data: Any, name: str, problems: Problems) -> tuple[dict[Hashable, list[str]], set]:
    """Returns image id -> valid reference captions, and every other image id the file mentions."""
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        problems.add(
            f"annotations file {name} must be a JSON object with an 'annotations' list of "
            f"{{'image_id', 'caption'}} objects (COCO captions format), not {describe(data)}"
            + (" without an 'annotations' list" if isinstance(data, dict) else "")
        )
        return {}, set()
    images = data.get("images", [])
    image_ids: set = set()
    if not isinstance(images, list):
        problems.add(f"annotations file {name}: 'images' must be a list, not {describe(images)}")
    else:
        for i, image in enumerate(images):
            if isinstance(image, dict) and is_id(image.get("id")):
                image_ids.add(image["id"])
            else:
                problems.add(f"annotations file {name}, images[{i}]: expected an object with an 'id'")
    references: dict[Hashable, list[str]] = {}
    for i, ann in enumerate(data["annotations"]):
        where = f"annotations file {name}, annotations[{i}]"
        if not isinstance(ann, dict):
            problems.add(f"{where} is {describe(ann)}, expected an object with 'image_id' and 'caption'")
            continue
        image_id, caption = ann.get("image_id"), ann.get("caption")
        if not is_id(image_id):
            problems.add(f"{where}: 'image_id' must be an integer or string, got {image_id!r}")
        elif not isinstance(caption, str):
            problems.add(f"{where} (image_id {image_id!r}): 'caption' must be a string, got {caption!r}")
            image_ids.add(image_id)  # the image is annotated, just not usably
        else:
            references.setdefault(image_id, []).append(caption)
    return references, image_ids


def check_coco_caption_inputs(
    predictions_data: Any,
    annotations_data: Any,
    predictions_name: str = "<predictions>",
    annotations_name: str = "<annotations>",
    require_all: bool = False,
) -> CaptionSet:
    """Validate parsed predictions and annotations; raise one UserError listing every problem."""
    problems = Problems()
    predictions = _check_predictions(predictions_data, predictions_name, problems)
    references, image_ids = _check_annotations(annotations_data, annotations_name, problems)
    if not _is_object_with_list(annotations_data, "annotations"):
        problems.raise_if_any()  # nothing to check the predictions against

    known_ids = set(references) | image_ids
    for image_id in predictions:
        if image_id in references:
            continue
        if image_id in image_ids:
            problems.add(
                f"image_id {image_id!r} of {predictions_name} is listed in the images of "
                f"{annotations_name} but has no caption there: nothing to compare with; drop the "
                "prediction or use the annotations file of the split it belongs to"
            )
        else:
            hint = id_type_hint(image_id, known_ids)
            problems.add(
                f"image_id {image_id!r} of {predictions_name} is not in {annotations_name}{hint}; "
                "are the predictions for another split?"
            )
    missing = unpredicted(
        references,
        predictions,
        problems,
        require_all=require_all,
        what="image",
        annotations_name=annotations_name,
        predictions_name=predictions_name,
        fix="predict every image",
        listed=_LISTED_MISSING,
    )
    return CaptionSet(predictions, {i: references[i] for i in predictions}, len(missing))


def read_coco_caption_inputs(
    predictions_path: str | Path, annotations_path: str | Path, require_all: bool = False
) -> CaptionSet:
    """Load and validate a COCO results file and a COCO captions annotations file."""
    predictions_data = load_json(predictions_path, "predictions")
    annotations_data = load_json(annotations_path, "annotations")
    return check_coco_caption_inputs(
        predictions_data, annotations_data, str(predictions_path), str(annotations_path), require_all
    )


def score_captions(
    predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]]
) -> dict[str, float]:
    """BLEU-1..4 and CIDEr-D of raw captions (tokenized here with `tokenize_caption`)."""
    hypotheses = {i: tokenize_caption(c) for i, c in predictions.items()}
    tokenized_refs = {i: [tokenize_caption(c) for c in references[i]] for i in predictions}
    bleu = corpus_bleu(hypotheses, tokenized_refs, max_n=4)
    cider = cider_d(hypotheses, tokenized_refs)
    scores = {f"BLEU-{k}": s for k, s in enumerate(bleu.scores, start=1)}
    scores["CIDEr-D"] = cider.score
    return scores
