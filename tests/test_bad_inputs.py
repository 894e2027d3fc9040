"""Bad and odd inputs through core.data and the CLI (issue 13): bounded memory, no tracebacks,
every skipped file accounted for. Every input is generated here at run time; no binary fixtures.

Memory is measured with tracemalloc (Python allocations, which is where zip members and file
bytes live), never with wall-clock time.
"""

from __future__ import annotations

import io
import os
import re
import tracemalloc
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from core.cli import build_parser
from core.cli import main as cli_main
from core.data import NoImagesError, load_image_set, parse_classes
from core.data.archives import ARCHIVE_SLACK_BYTES, DEFAULT_MAX_RATIO
from core.data.classes import MAX_CLASS_NAME_CHARS
from core.data.decode import SNIFF_BYTES
from core.models.tiny import tiny_test_models

ROOT = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024


def png(color=(200, 30, 30), size=(16, 12)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def noisy_jpeg(size=(256, 192)) -> bytes:
    """A JPEG whose entropy-coded data is most of the file (so cutting it keeps the header)."""
    buf = io.BytesIO()
    Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3)).save(buf, format="JPEG")
    return buf.getvalue()


def zip_file(path: Path, members: dict[str, bytes], method=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def peak_bytes(fn, *args, **kwargs) -> tuple[object, int]:
    """(result, peak bytes allocated by Python while ``fn`` ran)."""
    tracemalloc.start()
    try:
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:  # the peak still counts
            result = exc
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


# ----------------------------------------------------------------------------- archives


def test_small_member_zip_bomb_is_refused_before_any_member_is_read(tmp_path):
    # Members under the old 1 MiB threshold of the ratio check: 40 x 1,000,000 zero bytes.
    bomb = zip_file(tmp_path / "bomb.zip", {f"z/{i:03d}.png": b"\0" * 1_000_000
                                            for i in range(40)})
    assert bomb.stat().st_size < 100_000
    result, peak = peak_bytes(load_image_set, bomb)
    assert isinstance(result, NoImagesError)
    assert len(result.skipped) == 40
    assert all("compression ratio" in s.reason and "zip bomb" in s.reason for s in result.skipped)
    assert peak < 4 * MiB  # was 40 MB: every member read before the image check


def test_many_small_compressible_images_stop_at_the_archive_budget(tmp_path):
    # Each member is a valid PNG padded with 60,000 zero bytes: under the per-member floor, it
    # passes every header check, so only the archive-wide ratio budget can stop them.
    member = png() + b"\0" * 60_000
    z = zip_file(tmp_path / "many.zip", {f"m/{i:04d}.png": member for i in range(600)})
    result, peak = peak_bytes(load_image_set, z)
    held = sum(len(it.data) for it in result.items)
    bound = DEFAULT_MAX_RATIO * z.stat().st_size + ARCHIVE_SLACK_BYTES
    assert 0 < len(result.items) < 600 and held <= bound
    refused = [s for s in result.skipped if "overall" in s.reason]
    assert len(refused) == 600 - len(result.items)
    assert "expand more than 100:1 overall" in refused[0].reason
    assert peak < bound + 4 * MiB


def test_non_images_are_not_read_whole(tmp_path):
    blob = os.urandom(8 * MiB)  # incompressible: no ratio check applies
    z = zip_file(tmp_path / "mixed.zip", {"a.png": png(), "clip.mp4": blob},
                 method=zipfile.ZIP_STORED)
    result, peak = peak_bytes(load_image_set, z)
    assert [it.name for it in result.items] == ["a.png"]
    assert [(s.name, s.reason) for s in result.skipped] == [("clip.mp4", "not an image")]
    assert peak < 2 * MiB  # was 8 MiB: the member was read before the header check
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.png").write_bytes(png())
    (folder / "movie.mkv").write_bytes(blob)
    (folder / "notes.txt").write_bytes(b"x" * (SNIFF_BYTES * 3))
    result, peak = peak_bytes(load_image_set, folder)
    assert [it.name for it in result.items] == ["a.png"]
    assert {s.name for s in result.skipped} == {"movie.mkv", "notes.txt"}
    assert peak < 2 * MiB


def test_members_are_validated_as_they_are_read(tmp_path):
    # 30 incompressible non-image members after a PNG signature, 400 KB each: each passes the
    # sniff, fails the header check, and its bytes must be freed before the next is read.
    fake = [b"\x89PNG\r\n\x1a\n" + os.urandom(400_000) for _ in range(30)]
    z = zip_file(tmp_path / "fake.zip", {f"f{i:02d}.png": d for i, d in enumerate(fake)},
                 method=zipfile.ZIP_STORED)
    del fake
    result, peak = peak_bytes(load_image_set, z)
    assert isinstance(result, NoImagesError) and len(result.skipped) == 30
    assert peak < 4 * MiB  # was 12 MB: every member held until all were read


@pytest.mark.parametrize("members", [{}, {"__MACOSX/._a.png": b"junk", ".DS_Store": b"x"}])
def test_an_empty_upload_says_so(tmp_path, members):
    z = zip_file(tmp_path / "empty.zip", members)
    with pytest.raises(NoImagesError) as excinfo:
        load_image_set(z)
    message = str(excinfo.value)
    assert "0 file(s) skipped" not in message and "()" not in message
    assert "no files" in message and "PNG" in message


def test_files_with_the_same_name_get_distinct_display_names(tmp_path):
    a = tmp_path / "one" / "dup.png"
    b = tmp_path / "two" / "dup.png"
    c = tmp_path / "dup (2).png"  # the name the second one would get is taken
    for path, color in ((a, (255, 0, 0)), (b, (0, 255, 0)), (c, (0, 0, 255))):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png(color))
    s = load_image_set([a, b, c])
    assert [it.name for it in s.items] == ["dup.png", "dup (3).png", "dup (2).png"]
    z1 = zip_file(tmp_path / "z1.zip", {"x/img.png": png()})
    z2 = zip_file(tmp_path / "z2.zip", {"x/img.png": png((0, 0, 0))})
    assert [it.name for it in load_image_set([z1, z2]).items] == ["x/img.png", "x/img (2).png"]


def test_a_path_no_file_can_have_is_skipped_not_raised(tmp_path):
    good = tmp_path / "a.png"
    good.write_bytes(png())
    s = load_image_set([good, "x" * 300 + ".png"])
    assert [it.name for it in s.items] == ["a.png"]
    (skip,) = s.skipped
    assert skip.reason.startswith("cannot read") and len(skip.name) <= 80


# ----------------------------------------------------------------------------- class lists


@pytest.mark.parametrize("text,match", [
    ('["a", "b",', "not valid JSON"),
    ('["cat", "dog"', "not valid JSON"),
    ("[1, 2]", "JSON list of strings"),
    ('["a", ["b"]]', "JSON list of strings"),
])
def test_malformed_json_class_lists_are_refused(text, match):
    with pytest.raises(ValueError, match=match):
        parse_classes(text)


def test_bracketed_names_without_quotes_stay_names():
    assert parse_classes("[unused], other").names == ("[unused]", "other")


def test_overlong_class_names_are_refused_with_the_limit():
    with pytest.raises(ValueError) as excinfo:
        parse_classes("cat\n" + "x" * 5000)
    message = str(excinfo.value)
    assert "class 2 is 5,000 characters" in message
    assert f"limit is {MAX_CLASS_NAME_CHARS}" in message
    assert len(parse_classes("cat\n" + "y" * MAX_CLASS_NAME_CHARS).names[1]) == MAX_CLASS_NAME_CHARS


# ----------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def keys():
    return tiny_test_models()


def _cli(keys, tmp_path, images, classes, *extra):
    return cli_main(["run", "--images", str(images), "--classes", classes, "--vlm",
                     keys["clip_vit"], "--vfm", keys["dinov2"], "--methods", "clip",
                     "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"),
                     *extra])


def _folder(tmp_path, n_good=4, n_truncated=1) -> Path:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(n_good):
        (folder / f"good{i}.png").write_bytes(png((40 * i, 100, 200), (32, 24)))
    for i in range(n_truncated):
        data = noisy_jpeg()
        (folder / f"bad{i}.jpg").write_bytes(data[: len(data) // 2])  # header fine, data cut
    return folder


def test_cli_class_text_longer_than_a_file_name_is_text(keys, tmp_path, capsys):
    classes = ", ".join(f"class number {i}" for i in range(40))
    assert len(classes) > 255
    code = _cli(keys, tmp_path, _folder(tmp_path, 3, 0), classes)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Traceback" not in captured.err


def test_cli_lists_every_skipped_file_and_counts_them(keys, tmp_path, capsys):
    code = _cli(keys, tmp_path, _folder(tmp_path), "red, blue")
    captured = capsys.readouterr()
    assert code == 0
    assert "skipped bad0.jpg: truncated file" in captured.err
    assert captured.out.strip().splitlines()[-1] == "images: 4 used, 1 skipped"


def test_cli_when_no_image_decodes(keys, tmp_path, capsys):
    code = _cli(keys, tmp_path, _folder(tmp_path, 0, 2), "red, blue")
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "skipped bad0.jpg: truncated file" in err and "skipped bad1.jpg" in err
    assert err.count("skipped bad0.jpg") == 1
    assert err.strip().splitlines()[-1] == "images: 0 used, 2 skipped"


def test_cli_user_errors_exit_2_without_traceback(keys, tmp_path, capsys):
    folder = _folder(tmp_path, 2, 0)
    cases = [
        (["run", "--images", "y" * 300, "--classes", "a, b"], "no usable images"),
        (["run", "--images", str(folder), "--classes", '["a", "b",'], "not valid JSON"),
        (["run", "--images", str(folder), "--classes", "a\n" + "b" * 1000], "1,000 characters"),
    ]
    for argv, expected in cases:
        code = cli_main(argv)
        err = capsys.readouterr().err
        assert code == 2, (argv[:4], err)
        assert expected in err and "Traceback" not in err


def test_cli_missing_weights_exit_3(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    code = cli_main(["run", "--images", str(_folder(tmp_path, 2, 0)), "--classes", "a, b",
                     "--vfm", "none", "--methods", "clip", "--out", str(tmp_path / "o"),
                     "--no-cache"])
    err = capsys.readouterr().err
    assert code == 3 and "python -m core download" in err and "Traceback" not in err


def test_cli_internal_errors_exit_1_with_a_plain_message(keys, tmp_path, capsys, monkeypatch):
    import core.methods.run as run_module

    def broken(*args, **kwargs):
        raise TypeError("an internal bug")

    monkeypatch.setattr(run_module, "run_method", broken)
    monkeypatch.delenv("FUSIONLAB_DEBUG", raising=False)
    code = _cli(keys, tmp_path, _folder(tmp_path, 2, 0), "a, b")
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "internal error (TypeError: an internal bug)" in err and "FUSIONLAB_DEBUG" in err


def test_exit_codes_are_documented_in_help_and_readme():
    helps = [build_parser().format_help()]
    run_parser = build_parser()._subparsers._group_actions[0].choices["run"]
    helps.append(run_parser.format_help())
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Command line"):]
    section = section[:section.index("\n## ", 5)]
    for text in (*helps, section):
        assert "exit code" in text.lower()
        for code, words in (("0", "success"), ("1", "internal error"), ("2", "user error"),
                            ("3", "weights"), ("130", "interrupted")):
            assert any(re.search(rf"(?<![0-9.]){code}(?![0-9.])", line)
                       and words in line.lower() for line in text.splitlines()), (code, words)
