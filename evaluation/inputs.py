"""Reading user-supplied JSON files and collecting every problem before raising one UserError."""

from __future__ import annotations

import json
import logging
from collections.abc import Container
from pathlib import Path
from typing import Any

from common.errors import UserError

log = logging.getLogger(__name__)

# Problems listed in one error; the rest are counted, so a wholly wrong file gives a short message.
MAX_LISTED_PROBLEMS = 20


class Problems:
    """Collects input problems so a user sees all of them (up to a limit) in one UserError."""

    def __init__(self) -> None:
        self._listed: list[str] = []
        self._total = 0

    def add(self, message: str) -> None:
        self._total += 1
        if len(self._listed) < MAX_LISTED_PROBLEMS:
            self._listed.append(message)

    def __bool__(self) -> bool:
        return self._total > 0

    def raise_if_any(self) -> None:
        if not self._total:
            return
        if self._total == 1:
            raise UserError(self._listed[0])
        lines = "\n".join(f"  - {m}" for m in self._listed)
        if self._total > len(self._listed):
            lines += f"\n  ... and {self._total - len(self._listed)} more"
        raise UserError(f"{self._total} problems:\n{lines}")


def load_json(path: str | Path, what: str) -> Any:
    """Parse a JSON file; a missing, unreadable or malformed file is a UserError naming it."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} file {path} does not exist; check the path")
    if not path.is_file():
        raise UserError(f"{what} path {path} is not a file; pass the JSON file itself")
    try:
        with path.open("r", encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(
            f"{what} file {path} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno} "
            f"(character {e.pos}); fix the file or regenerate it"
        ) from None
    except UnicodeDecodeError as e:
        raise UserError(f"{what} file {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise UserError(f"cannot read {what} file {path}: {e.strerror}") from None


def is_id(value: Any) -> bool:
    """Image and question ids are JSON integers or strings (a bool is neither)."""
    return (isinstance(value, int) and not isinstance(value, bool)) or isinstance(value, str)


def id_type_hint(missing: Any, known: Container) -> str:
    """' (...)' when `missing` is present in `known` under the other JSON type, e.g. "42" vs 42."""
    other = str(missing) if isinstance(missing, int) else None
    if isinstance(missing, str) and missing.lstrip("-").isdigit():
        other = int(missing)
    if other is not None and other in known:
        kind = "a string" if isinstance(missing, str) else "an integer"
        return f" (it is {kind} here but {other!r} exists there: make the id types match)"
    return ""


def describe(value: Any) -> str:
    """How a JSON value reads in an error message."""
    return {dict: "a JSON object", list: "a JSON list", str: "a string"}.get(
        type(value), type(value).__name__
    )


def check_results(
    data: Any,
    name: str,
    problems: Problems,
    *,
    id_key: str,
    text_key: str,
    fmt: str,
    swapped_keys: tuple[str, ...],
    duplicate_fix: str,
) -> dict:
    """A results file (`[{id_key, text_key}]`, COCO / VQA results format) -> {id: text}; every problem
    (wrong shape, empty, bad entries, duplicate ids) is added to `problems`, naming the file and entry."""
    if not isinstance(data, list):
        hint = ""
        if isinstance(data, dict) and any(k in data for k in swapped_keys):
            what = "/".join(swapped_keys)
            hint = f" (it looks like {'an' if what[0] in 'aeiou' else 'a'} {what} file: are the arguments swapped?)"
        problems.add(
            f"predictions file {name} must be a JSON list of {{'{id_key}', '{text_key}'}} objects "
            f"({fmt} format), not {describe(data)}{hint}"
        )
        return {}
    if not data:
        problems.add(f"predictions file {name} is an empty list: there is nothing to score")
        return {}
    out: dict = {}
    first_index: dict = {}
    for i, entry in enumerate(data):
        where = f"predictions file {name}, entry {i}"
        if not isinstance(entry, dict):
            problems.add(f"{where} is {describe(entry)}, expected an object with '{id_key}' and '{text_key}'")
            continue
        key, text = entry.get(id_key), entry.get(text_key)
        if not is_id(key):
            problems.add(f"{where}: '{id_key}' must be an integer or string, got {key!r}")
            continue
        if not isinstance(text, str):
            problems.add(f"{where} ({id_key} {key!r}): '{text_key}' must be a string, got {text!r}")
            continue
        if key in first_index:
            problems.add(
                f"{where}: duplicate {id_key} {key!r} (also entry {first_index[key]}); {duplicate_fix}"
            )
            continue
        first_index[key] = i
        out[key] = text
    return out


def unpredicted(
    annotated,
    predictions,
    problems: Problems,
    *,
    require_all: bool,
    what: str,
    annotations_name: str,
    predictions_name: str,
    fix: str,
    listed: int = 5,
) -> list:
    """The annotated ids without a prediction. With `require_all` (and no other problem) they are a problem
    naming the first `listed`; every problem found is raised here; otherwise they are scored without,
    with a warning."""
    missing = [i for i in annotated if i not in predictions]
    if require_all and missing and not problems:
        names = ", ".join(repr(i) for i in missing[:listed])
        more = f" and {len(missing) - listed} more" if len(missing) > listed else ""
        problems.add(
            f"{len(missing)} annotated {what}(s) of {annotations_name} have no prediction in "
            f"{predictions_name} (e.g. {names}{more}); {fix} or drop --require-all"
        )
    problems.raise_if_any()
    if missing:
        log.warning(
            "%d of %d annotated %ss have no prediction; scoring the %d predicted ones",
            len(missing),
            len(annotated),
            what,
            len(predictions),
        )
    return missing
