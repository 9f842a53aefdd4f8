import json
import tarfile

import pytest

from common.errors import UserError
from data_prep.pair_readers import (
    CocoReader,
    ManifestReader,
    WebDatasetReader,
    detect_format,
    open_pair_sources,
)
from data_prep.text_sources import TextRecord, decode_record, iter_text_records, validate_text_input

from .conftest import jpeg_bytes, write_coco, write_tar


def _summary(pairs):
    return [(p.key, p.caption, p.skip, p.image_bytes is not None) for p in pairs]


def test_webdataset_groups_by_key_and_counts_bad_members(tmp_path):
    img = jpeg_bytes()
    tar = write_tar(
        tmp_path / "00000.tar",
        [
            ("000.jpg", img),
            ("000.txt", b"a red box"),
            ("000.json", b'{"caption": "ignored"}'),
            ("001.png", jpeg_bytes(fmt="PNG")),
            ("001.txt", b"second"),
            ("README", b"stray file"),
            ("002.txt", b"caption file without image"),
            ("003.jpg", img),  # image without caption
            ("004.webp", jpeg_bytes(fmt="WEBP")),
            ("004.json", b'{"caption": "from json"}'),
            ("005.jpg", img),
            ("005.txt", b"\xff\xfe not utf-8"),
            ("sub/006.jpeg", img),
            ("sub/006.txt", b"in a folder"),
        ],
    )
    got = _summary(WebDatasetReader(tar))
    assert got == [
        ("000", "a red box", None, True),
        ("001", "second", None, True),
        ("README", None, "stray_file", False),
        ("002", None, "missing_image", False),
        ("003", None, "missing_caption", False),
        ("004", "from json", None, True),
        ("005", None, "non_utf8_caption", False),
        ("sub/006", "in a folder", None, True),
    ]


def test_truncated_tar_keeps_what_was_read(tmp_path):
    img = jpeg_bytes(size=(200, 200))
    members = []
    for i in range(6):
        members += [(f"{i:03d}.jpg", img), (f"{i:03d}.txt", f"caption {i}".encode())]
    full = write_tar(tmp_path / "full.tar", members)
    data = full.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) * 2 // 3])
    pairs = list(WebDatasetReader(cut))
    good = [p for p in pairs if not p.skip]
    skips = [p.skip for p in pairs if p.skip]
    assert skips.count("truncated_tar") == 1 and set(skips) <= {"truncated_tar", "missing_caption"}
    assert 2 <= len(good) < 6
    assert [p.caption for p in good] == [f"caption {i}" for i in range(len(good))]
    # cut exactly between members, and with the end-of-archive blocks missing: nothing whole is lost
    with tarfile.open(full) as tar:
        offsets = [m.offset for m in tar]
    for cut_at, n_good in ((offsets[4], 2), (offsets[-1] + 1024, 6), (offsets[4] + 100, 2)):
        cut.write_bytes(data[:cut_at])
        pairs = list(WebDatasetReader(cut))
        assert sum(not p.skip for p in pairs) == n_good
        assert [p.skip for p in pairs if p.skip] == ["truncated_tar"]


def test_not_a_tar_is_a_user_error_naming_the_file(tmp_path):
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"this is not a tar file at all" * 10)
    with pytest.raises(UserError, match="bad.tar"):
        WebDatasetReader(bad)
    empty = tmp_path / "empty.tar"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match="empty.tar"):
        open_pair_sources([empty])


def test_coco_all_first_and_missing(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "1.jpg").write_bytes(jpeg_bytes())
    path = write_coco(
        tmp_path,
        images=[
            {"id": 1, "file_name": "1.jpg"},
            {"id": 2, "file_name": "2.jpg"},
            {"id": 3, "file_name": "3.jpg"},
        ],
        annotations=[
            {"id": 10, "image_id": 1, "caption": "one"},
            {"id": 11, "image_id": 1, "caption": "uno"},
            {"id": 12, "image_id": 2, "caption": "two"},
            {"id": 13, "image_id": 99, "caption": "orphan"},
        ],
    )
    pairs = list(CocoReader(path, tmp_path / "img", "all"))
    assert [(p.key, p.caption, p.skip) for p in pairs] == [
        ("1_10", "one", None),
        ("1_11", "uno", None),
        ("2_12", "two", None),
        ("3", None, "missing_caption"),
        ("99_13", None, "missing_image"),
    ]
    assert pairs[0].image_path == str(tmp_path / "img" / "1.jpg")
    first = [p for p in CocoReader(path, tmp_path / "img", "first") if not p.skip]
    assert [p.caption for p in first] == ["one", "two"]


def test_coco_bad_json_is_a_user_error(tmp_path):
    bad = tmp_path / "captions.json"
    bad.write_text("{ not json")
    with pytest.raises(UserError, match="captions.json"):
        open_pair_sources([bad])
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(UserError, match="annotations"):
        open_pair_sources([bad])


def test_manifests_jsonl_and_csv(tmp_path):
    (tmp_path / "a.jpg").write_bytes(jpeg_bytes())
    jl = tmp_path / "m.jsonl"
    jl.write_text('{"image": "a.jpg", "caption": "first"}\n{"broken\n{"image": "b.jpg"}\n{"caption": "x"}\n')
    pairs = list(ManifestReader(jl, "jsonl", None))
    assert [(p.caption, p.skip) for p in pairs] == [
        ("first", None),
        (None, "bad_record"),
        (None, "missing_caption"),
        (None, "missing_image"),
    ]
    assert pairs[0].image_path == str(tmp_path / "a.jpg")
    csv_path = tmp_path / "m.csv"
    csv_path.write_text('file_name,text\na.jpg,"hello, world"\nb.jpg,other\n')
    pairs = list(ManifestReader(csv_path, "csv", None))
    assert [(p.caption, p.image_path.endswith(n)) for p, n in zip(pairs, ["a.jpg", "b.jpg"])] == [
        ("hello, world", True),
        ("other", True),
    ]
    bad_row = tmp_path / "b.csv"
    bad_row.write_bytes(b"image,caption\na.jpg,ok\nb.jpg,caf\xe9 latin-1\nc.jpg,after\n")
    assert [(p.caption, p.skip) for p in open_pair_sources([bad_row])[0]] == [
        ("ok", None),
        (None, "bad_record"),
        ("after", None),
    ]
    tsv = tmp_path / "m.tsv"
    tsv.write_text("path\tcaption\na.jpg\ttabbed\n")
    assert [p.caption for p in open_pair_sources([tsv])[0]] == ["tabbed"]


def test_manifest_without_needed_columns_is_a_user_error(tmp_path):
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("url,title\nx,y\n")
    with pytest.raises(UserError, match="--image-field"):
        open_pair_sources([csv_path])
    ok = ManifestReader(csv_path, "csv", None, image_field="url", caption_field="title")
    assert [p.caption for p in ok] == ["y"]


def test_format_detection(tmp_path):
    assert detect_format(tmp_path) == "webdataset"
    for name, fmt in [("a.tar", "webdataset"), ("c.json", "coco"), ("m.jsonl", "jsonl"), ("m.csv", "csv")]:
        assert detect_format(tmp_path / name) == fmt
    with pytest.raises(UserError, match="--format"):
        detect_format(tmp_path / "data.parquet")
    with pytest.raises(UserError, match="no such file"):
        open_pair_sources([tmp_path / "missing.tar"])


def test_text_records_and_decoding(tmp_path):
    jl = tmp_path / "c.jsonl"
    jl.write_bytes(
        b'{"text": "doc one"}\n\n{"text": "  "}\n{"other": 1}\n{"text": "caf\xc3\xa9"}\n'
        b'{"text": "bad \xff"}\nnot json\n'
    )
    got = [decode_record(r) for r in iter_text_records(jl)]
    assert got == [
        ("doc one", None),
        (None, "empty_document"),
        (None, "missing_text_field"),
        ("caf\u00e9", None),
        (None, "non_utf8"),
        (None, "bad_json_line"),
    ]
    txt = tmp_path / "t.txt"
    txt.write_text("para one\nstill one\n\npara two\n")
    assert len(list(iter_text_records(txt, "file"))) == 1
    assert [r.data for r in iter_text_records(txt, "paragraph")] == [b"para one\nstill one", b"para two\n"]
    assert decode_record(TextRecord(b"\xff\xfe", False)) == (None, "non_utf8")


def test_text_input_validation(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        validate_text_input(tmp_path / "nope.jsonl")
    wrong = tmp_path / "w.jsonl"
    wrong.write_text('{"content": "x"}\n')
    with pytest.raises(UserError, match="--text-field"):
        validate_text_input(wrong)
    notjson = tmp_path / "n.jsonl"
    notjson.write_text("plain text\n")
    with pytest.raises(UserError, match="not JSON"):
        validate_text_input(notjson)
    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    with pytest.raises(UserError, match="unsupported"):
        validate_text_input(tmp_path / "x.parquet")
