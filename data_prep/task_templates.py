"""Task templates: which text of an example goes to the language encoder, which to the decoder.

A template file is YAML mapping a dataset name to a list of templates (one is drawn per example,
see `TemplateSet.draw`). A template is a mapping with these keys:

  images:  ["{field}", ...]  images for the vision encoder, in order. Each item is exactly one
                             placeholder: a field holding an image path (relative to --image-root)
                             or a list of paths (all of them are used); `{images[1]}` picks one.
                             Default: none.
  encoder: [SEGMENT, ...]    text for the bidirectional language encoder, one encoder span per
                             segment. A SEGMENT is a string, or `{text: STRING, optional: true}`: an
                             optional segment is left out when a field it names is missing, null or
                             empty (e.g. FLAN's `input`). A plain string means one segment. Default: none.
  decoder: STRING            decoder prompt: decoder tokens after the encoded spans, no loss. Default "".
  target:  STRING            what the decoder learns to generate (the loss). Required.
  note:    STRING            free text, ignored.

Strings are Python format strings over the example's fields: `{premise}`, `{choices[0]}`,
`{image_id:012d}`, `{{` and `}}` for literal braces. An example with a `choices` list also has two
derived fields (unless it has fields of those names itself): `{options}` = the choices as
"a, b or c", and `{label_text}` = choices[label]. A list value renders joined by ", ".
A template needs at least one image or encoder segment (finetuning goes through the encoders).
Which text goes to the encoder and which to the decoder is data here, never code.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import string
from dataclasses import dataclass
from pathlib import Path

import yaml

from common.errors import UserError

DEFAULT_TEMPLATES = Path(__file__).parent / "templates" / "default.yaml"
TEMPLATE_KEYS = ("images", "encoder", "decoder", "target", "note")
DERIVED_FIELDS = ("options", "label_text")
_IMAGE_REF = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)(?:\[(\d+)\])?\}$")
_ROOT = re.compile(r"^[^.\[]+")


class MissingField(Exception):
    """A template names a field the example lacks (or holds null); `field` is the root name."""

    def __init__(self, field: str):
        super().__init__(field)
        self.field = field


class BadValue(Exception):
    """A field value cannot be rendered with the template's format spec (e.g. `:d` on a string)."""


class _Formatter(string.Formatter):
    def get_value(self, key, args, kwargs):
        if not isinstance(key, str) or kwargs.get(key) is None:
            raise MissingField(str(key))
        return kwargs[key]

    def get_field(self, field_name, args, kwargs):
        try:
            return super().get_field(field_name, args, kwargs)
        except MissingField:
            raise
        except (IndexError, KeyError, AttributeError, TypeError) as e:
            raise MissingField(field_name) from e

    def format_field(self, value, format_spec):
        if value is None:
            return ""
        if isinstance(value, list | tuple):
            value = ", ".join(_as_text(v) for v in value)
        elif isinstance(value, dict):
            value = json.dumps(value, ensure_ascii=False)
        try:
            return format(value, format_spec)
        except (ValueError, TypeError) as e:
            raise BadValue(f"{value!r} with format spec {format_spec!r}: {e}") from e


_FMT = _Formatter()


def _as_text(v) -> str:
    return "" if v is None else v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)


def _blank(value) -> bool:
    return value is None or (
        isinstance(value, str | list | dict) and not (value.strip() if isinstance(value, str) else value)
    )


def field_names(text: str) -> list[str]:
    """Root field names a format string uses, in order (`{choices[0]}` -> `choices`). ValueError if bad."""
    names = []
    for _, name, spec, _ in _FMT.parse(text):
        if name is None:
            continue
        if name == "" or name.isdigit():
            raise ValueError("positional placeholder {} is not allowed: name a field, e.g. {question}")
        names.append(_ROOT.match(name).group(0))
        if spec and "{" in spec:
            names.extend(field_names(spec))
    return names


def join_options(choices: list[str]) -> str:
    """["a"] -> "a"; ["a", "b", "c"] -> "a, b or c"."""
    if len(choices) <= 1:
        return "".join(choices)
    return f"{', '.join(choices[:-1])} or {choices[-1]}"


def label_index(label, choices: list[str]) -> int | None:
    """The int label as an index into choices (a label equal to one of the choices counts too)."""
    if isinstance(label, bool):
        return None
    if isinstance(label, int):
        return label
    if isinstance(label, str) and label in choices:
        return choices.index(label)
    return None


def render_context(fields: dict) -> dict:
    """The example's fields plus the derived `options` and `label_text` (when it has choices)."""
    ctx = dict(fields)
    choices = fields.get("choices")
    if isinstance(choices, list) and choices and all(isinstance(c, str) for c in choices):
        ctx.setdefault("options", join_options(choices))
        i = label_index(fields.get("label"), choices)
        if i is not None and 0 <= i < len(choices):
            ctx.setdefault("label_text", choices[i])
    return ctx


@dataclass(frozen=True)
class Segment:
    text: str
    optional: bool
    fields: tuple[str, ...]


@dataclass(frozen=True)
class Rendered:
    image_values: list  # field values naming the images (paths, relative to the image root)
    encoder: list[str]  # encoder segment texts (optional ones already left out)
    decoder: str
    target: str


@dataclass(frozen=True)
class Template:
    dataset: str
    index: int
    images: tuple[tuple[str, int | None], ...]  # (field, list index or None)
    encoder: tuple[Segment, ...]
    decoder: str
    target: str

    def required_fields(self) -> list[str]:
        """Fields every example must have (optional segments excluded), in template order."""
        names = [f for f, _ in self.images]
        for seg in self.encoder:
            if not seg.optional:
                names.extend(seg.fields)
        names += field_names(self.decoder) + field_names(self.target)
        return list(dict.fromkeys(names))

    def render(self, ctx: dict) -> Rendered:
        """Render with `render_context(fields)`. Raises MissingField / BadValue."""
        images = []
        for name, idx in self.images:
            value = ctx.get(name)
            if value is None:
                raise MissingField(name)
            if idx is not None:
                if not isinstance(value, list) or idx >= len(value):
                    raise MissingField(f"{name}[{idx}]")
                value = value[idx]
            images.extend(value if isinstance(value, list) else [value])
        encoder = []
        for seg in self.encoder:
            if seg.optional and any(_blank(ctx.get(f)) for f in seg.fields):
                continue
            encoder.append(_FMT.vformat(seg.text, (), ctx))
        return Rendered(
            images, encoder, _FMT.vformat(self.decoder, (), ctx), _FMT.vformat(self.target, (), ctx)
        )


def _parse_template(raw, dataset: str, index: int, where: str, problems: list[str]) -> Template | None:
    at = f"{where}: dataset '{dataset}' template {index}"
    if not isinstance(raw, dict):
        problems.append(f"{at}: must be a mapping with keys {', '.join(TEMPLATE_KEYS)}")
        return None
    unknown = sorted(set(raw) - set(TEMPLATE_KEYS))
    if unknown:
        problems.append(
            f"{at}: unknown key(s) {', '.join(map(str, unknown))} (allowed: {', '.join(TEMPLATE_KEYS)})"
        )
    n_before = len(problems)
    images = []
    raw_images = raw.get("images") or []
    if not isinstance(raw_images, list):
        raw_images = [raw_images]
    for item in raw_images:
        m = _IMAGE_REF.match(item) if isinstance(item, str) else None
        if m is None:
            problems.append(
                f"{at}: images item {item!r} must be one placeholder like '{{image}}' or '{{images[0]}}'"
            )
            continue
        images.append((m.group(1), int(m.group(2)) if m.group(2) is not None else None))
    raw_encoder = raw.get("encoder") or []
    if isinstance(raw_encoder, str | dict):
        raw_encoder = [raw_encoder]
    segments = []
    for item in raw_encoder if isinstance(raw_encoder, list) else [None]:
        text, optional = item, False
        if isinstance(item, dict):
            extra = sorted(set(item) - {"text", "optional"})
            text, optional = item.get("text"), item.get("optional", False)
            if extra or not isinstance(optional, bool):
                problems.append(f"{at}: encoder segment {item!r}: use {{text: STRING, optional: true|false}}")
                continue
        if not isinstance(text, str) or not text.strip():
            problems.append(f"{at}: encoder segment {item!r} must be a non-empty string")
            continue
        try:
            segments.append(Segment(text, optional, tuple(field_names(text))))
        except ValueError as e:
            problems.append(f"{at}: encoder segment {text!r}: {e}")
    decoder, target = raw.get("decoder", ""), raw.get("target")
    if decoder is None:
        decoder = ""
    for key, value in (("decoder", decoder), ("target", target)):
        if not isinstance(value, str) or (key == "target" and not value.strip()):
            problems.append(f"{at}: `{key}` must be a{' non-empty' if key == 'target' else ''} string")
            continue
        try:
            field_names(value)
        except ValueError as e:
            problems.append(f"{at}: {key} {value!r}: {e}")
    if not images and not segments and len(problems) == n_before:
        problems.append(f"{at}: needs at least one `images` item or `encoder` segment")
    if len(problems) > n_before:
        return None
    return Template(dataset, index, tuple(images), tuple(segments), decoder, target)


@dataclass
class TemplateSet:
    path: Path
    sha256: str
    by_dataset: dict[str, list[Template]]

    def draw(self, dataset: str, key: str, seed: int) -> Template:
        """The template for one example: a function of (seed, dataset, key) only, so any --workers agree."""
        options = self.by_dataset[dataset]
        if len(options) == 1:
            return options[0]
        return options[random.Random(f"{seed}|{dataset}|{key}").randrange(len(options))]

    def summary(self) -> dict:
        return {
            "file": str(self.path.absolute()),
            "sha256": self.sha256,
            "datasets": {k: len(v) for k, v in self.by_dataset.items()},
        }


def load_templates(path: str | Path) -> TemplateSet:
    """Parse and check a template file; UserError listing every problem (file, dataset, index)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--templates {path}: no such file")
    data = path.read_bytes()
    try:
        raw = yaml.safe_load(data)
    except yaml.YAMLError as e:
        raise UserError(f"templates {path}: not valid YAML ({e})") from e
    if not isinstance(raw, dict) or not raw:
        raise UserError(f"templates {path}: must map dataset names to lists of templates")
    problems: list[str] = []
    by_dataset: dict[str, list[Template]] = {}
    for dataset, items in raw.items():
        if isinstance(items, dict):
            items = [items]
        if not isinstance(items, list) or not items:
            problems.append(f"templates {path}: dataset '{dataset}': needs a list of templates")
            continue
        parsed = [
            _parse_template(t, str(dataset), i, f"templates {path}", problems) for i, t in enumerate(items)
        ]
        by_dataset[str(dataset)] = [t for t in parsed if t is not None]
    if problems:
        raise UserError(problems)
    return TemplateSet(path, hashlib.sha256(data).hexdigest(), by_dataset)
