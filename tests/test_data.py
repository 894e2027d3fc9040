"""Tests for core.data.images and core.data.classes: loading, validation, decoding, zips, classes,
presets.

Every image is generated in tmp_path at test time; no binary fixtures.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.data import (
    BadImageError,
    ImageItem,
    ImageSet,
    NoImagesError,
    decode_image,
    decode_many,
    load_image_set,
)
from core.data.classes import (
    PRESET_DIR,
    PRESETS,
    get_preset,
    load_attributes,
    load_classes_file,
    parse_classes,
)
from core.data.decode import ALLOWED_FORMATS

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)
LOSSY_TOL = 12  # JPEG / WEBP colour error on flat colours


def encode(fmt: str, size=(8, 6), color=RED, mode="RGB", **save) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, fmt, **save)
    return buf.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make_zip(members: dict[str, bytes], method=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in members.items():
            if name.endswith("/"):
                zf.writestr(zipfile.ZipInfo(name), b"")
            else:
                zf.writestr(zipfile.ZipInfo(name), data, compress_type=method)
    return buf.getvalue()


def patch_member(zbytes: bytes, member: str, *, flag: int = 0, size: int | None = None) -> bytes:
    """Set flag bits and/or the declared uncompressed size of one member, in both headers."""
    b, name = bytearray(zbytes), member.encode()
    for sig, name_len_at, name_at, flag_at, size_at in ((b"PK\x03\x04", 26, 30, 6, 22),
                                                         (b"PK\x01\x02", 28, 46, 8, 24)):
        i = b.find(sig)
        while i >= 0:
            (n,) = struct.unpack_from("<H", b, i + name_len_at)
            if b[i + name_at:i + name_at + n] == name:
                b[i + flag_at] |= flag
                if size is not None:
                    struct.pack_into("<I", b, i + size_at, size)
            i = b.find(sig, i + 4)
    return bytes(b)


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height but holds no real pixel data (a cheap bomb header)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def item(name: str, data: bytes) -> ImageItem:
    return ImageItem.from_bytes(name, data)


def close(pixel, expected, tol=0) -> bool:
    return all(abs(int(p) - int(e)) <= tol for p, e in zip(pixel, expected))


# ----------------------------------------------------------------------------- formats and decoding


@pytest.mark.parametrize("fmt", ALLOWED_FORMATS)
def test_allowed_formats_load_and_decode(tmp_path, fmt):
    data = encode(fmt, size=(9, 5))
    path = write(tmp_path / f"x.{fmt.lower()}", data)
    s = load_image_set([path])
    (it,) = s.items
    assert (it.name, it.format, it.size, it.label) == (path.name, fmt, (9, 5), None)
    assert it.sha256 == hashlib.sha256(data).hexdigest()
    assert s.skipped == () and s.labels is None and s.class_names == []
    im = decode_image(it)
    assert im.mode == "RGB" and im.size == (9, 5)
    assert close(im.getpixel((4, 2)), RED, LOSSY_TOL)


def test_item_repr_and_equality_ignore_bytes():
    a = item("a.png", encode("PNG"))
    assert "data" not in repr(a) and a.sha256 in repr(a)
    assert a == ImageItem("a.png", b"other", a.sha256, None, "PNG", (8, 6))


def test_animated_gif_decodes_first_frame():
    frames = [Image.new("RGB", (6, 6), c) for c in (RED, BLUE, BLUE)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50)
    im = decode_image(item("anim.gif", buf.getvalue()))
    assert im.mode == "RGB" and close(im.getpixel((3, 3)), RED, 2)


@pytest.mark.parametrize("size", [(1, 1), (3, 1000), (1000, 3)])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_odd_sizes(size, fmt):
    it = item(f"odd.{fmt}", encode(fmt, size=size))
    assert it.size == size and decode_image(it).size == size


def test_exif_orientation_6_is_applied():
    stored = Image.new("RGB", (40, 20), BLUE)
    stored.paste(RED, (0, 0, 20, 10))  # stored top-left quadrant
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    buf = io.BytesIO()
    stored.save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    it = item("rotated.jpg", buf.getvalue())
    assert it.size == (20, 40)  # the header size, already as displayed
    im = decode_image(it)
    assert im.size == (20, 40)
    assert close(im.getpixel((15, 5)), RED, LOSSY_TOL)  # stored top-left -> displayed top-right
    assert close(im.getpixel((5, 5)), BLUE, LOSSY_TOL)
    assert close(im.getpixel((15, 35)), BLUE, LOSSY_TOL)


def test_cmyk_jpeg_to_rgb():
    it = item("cmyk.jpg", encode("JPEG", size=(16, 16), color=(255, 0, 0, 0), mode="CMYK"))
    im = decode_image(it)
    assert im.mode == "RGB" and close(im.getpixel((8, 8)), (0, 255, 255), 20)  # cyan


def test_16bit_png_is_scaled_not_clipped():
    grey = np.array([[65535, 32768, 0, 257]], dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, "PNG")
    im = decode_image(item("deep.png", buf.getvalue()))
    assert np.asarray(im).tolist() == [[[v] * 3 for v in (255, 128, 0, 1)]]


@pytest.mark.parametrize("mode,color,expected", [("1", 1, WHITE), ("L", 77, (77, 77, 77))])
def test_bilevel_and_grey_to_rgb(mode, color, expected):
    im = decode_image(item("g.png", encode("PNG", size=(3, 2), color=color, mode=mode)))
    assert im.mode == "RGB" and im.getpixel((1, 1)) == expected


def test_rgba_and_la_alpha_composited_on_white():
    rgba = Image.new("RGBA", (3, 1))
    rgba.putdata([(255, 0, 0, 0), (0, 0, 255, 255), (255, 0, 0, 128)])
    buf = io.BytesIO()
    rgba.save(buf, "PNG")
    px = [tuple(p) for p in np.asarray(decode_image(item("rgba.png", buf.getvalue())))[0]]
    assert px[0] == WHITE and px[1] == BLUE and close(px[2], (255, 127, 127), 1)

    la = Image.new("LA", (2, 1))
    la.putdata([(0, 0), (100, 255)])
    buf = io.BytesIO()
    la.save(buf, "PNG")
    px = [tuple(p) for p in np.asarray(decode_image(item("la.png", buf.getvalue())))[0]]
    assert px == [WHITE, (100, 100, 100)]


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_transparency_composited_on_white(fmt):
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putpixel((1, 1), 1)
    buf = io.BytesIO()
    pal.save(buf, fmt, transparency=0)  # index 0 (red) is transparent
    im = decode_image(item(f"pal.{fmt}", buf.getvalue()))
    assert im.getpixel((0, 0)) == WHITE and im.getpixel((1, 1)) == BLUE


def test_max_side_shrinks_without_enlarging():
    big = item("big.jpg", encode("JPEG", size=(800, 600)))
    assert decode_image(big, max_side=100).size == (100, 75)
    wide = item("wide.png", encode("PNG", size=(300, 30)))
    assert decode_image(wide, max_side=100).size == (100, 10)
    small = item("small.png", encode("PNG", size=(20, 10)))
    assert decode_image(small, max_side=100).size == (20, 10)


def test_truncated_jpeg_reported_by_name_others_decoded(tmp_path):
    good = encode("JPEG", size=(64, 48))
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
    buf = io.BytesIO()
    noisy.save(buf, "JPEG")
    paths = [write(tmp_path / "a.jpg", good),
             write(tmp_path / "cut.jpg", buf.getvalue()[: len(buf.getvalue()) // 2]),
             write(tmp_path / "b.jpg", good)]
    s = load_image_set(paths)  # headers are intact: truncation shows at decode time
    assert [it.name for it in s.items] == ["a.jpg", "cut.jpg", "b.jpg"]
    images, failures = decode_many(s.items)
    assert len(images) == 2 and all(im.size == (64, 48) for im in images)
    assert [(f.name, f.reason, f.index) for f in failures] == [("cut.jpg", "truncated file", 1)]
    with pytest.raises(BadImageError, match="cut.jpg: truncated file"):
        decode_image(s.items[1])


def test_rejected_files_are_skipped_by_name(tmp_path):
    tiff = io.BytesIO()
    Image.new("RGB", (4, 4)).save(tiff, "TIFF")
    paths = [
        write(tmp_path / "ok.png", encode("PNG")),
        write(tmp_path / "notes.jpg", b"this is text, not a picture\n" * 5),
        write(tmp_path / "scan.tif", tiff.getvalue()),
        write(tmp_path / "empty.png", b""),
        write(tmp_path / "cut.png", encode("PNG")[:12]),
        tmp_path / "missing.png",
    ]
    s = load_image_set(paths)
    assert [it.name for it in s.items] == ["ok.png"]
    reasons = {f.name: f.reason for f in s.skipped}
    assert reasons == {
        "notes.jpg": "not an image",
        "scan.tif": "format TIFF not allowed (allowed: PNG, JPEG, WEBP, BMP, GIF)",
        "empty.png": "empty file",
        "cut.png": "truncated or corrupt PNG header",
        "missing.png": "file not found",
    }


def test_nothing_usable_raises_with_reasons(tmp_path):
    bad = write(tmp_path / "a.jpg", b"hello")
    with pytest.raises(NoImagesError, match="a.jpg: not an image") as info:
        load_image_set([bad])
    assert info.value.skipped[0].name == "a.jpg"
    with pytest.raises(NoImagesError, match="no files"):
        load_image_set([])


def test_decompression_bomb_with_a_lowered_limit(tmp_path):
    path = write(tmp_path / "big.png", encode("PNG", size=(100, 100)))
    keep = write(tmp_path / "small.png", encode("PNG", size=(10, 10)))
    s = load_image_set([path, keep], max_pixels=5_000)
    assert [it.name for it in s.items] == ["small.png"]
    assert s.skipped[0].reason == "decompression bomb: 100x100 pixels exceeds the 5,000 pixel limit"
    with pytest.raises(BadImageError, match="decompression bomb"):
        ImageItem.from_bytes("big.png", path.read_bytes(), max_pixels=5_000)


@pytest.mark.parametrize("side", [10_000, 20_000])  # 100 M (Pillow warns), 400 M (Pillow raises)
def test_decompression_bomb_default_limit_crafted_header(side):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(BadImageError, match="decompression bomb: .* exceeds the 89 M pixel"):
            ImageItem.from_bytes("bomb.png", png_header(side, side))
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


# ----------------------------------------------------------------------------- folders and CSV


def test_folder_per_class_labels(tmp_path):
    root = tmp_path / "data"
    write(root / "cat" / "1.png", encode("PNG"))
    write(root / "cat" / "2.jpg", encode("JPEG"))
    write(root / "dog" / "3.png", encode("PNG", color=BLUE))
    write(root / "dog" / "puppies" / "4.png", encode("PNG"))
    write(root / ".cache" / "5.png", encode("PNG"))
    write(root / "cat" / ".DS_Store", b"junk")
    write(root / "readme.txt", b"about")
    write(root / "more.zip", make_zip({"x.png": encode("PNG")}))
    s = load_image_set(root)
    assert [(it.name, it.label) for it in s.items] == [
        ("cat/1.png", "cat"), ("cat/2.jpg", "cat"), ("dog/3.png", "dog"),
        ("dog/puppies/4.png", "puppies")]
    assert s.class_names == ["cat", "dog", "puppies"] and s.labels is not None
    assert {f.name: f.reason for f in s.skipped} == {
        "readme.txt": "not an image",
        "more.zip": "archive inside a folder skipped (load it alone)"}


def test_folder_with_one_subfolder_has_no_labels(tmp_path):
    write(tmp_path / "photos" / "a.png", encode("PNG"))
    write(tmp_path / "photos" / "b.png", encode("PNG"))
    assert load_image_set(tmp_path).labels is None


def test_folder_respects_entry_cap(tmp_path):
    for i in range(5):
        write(tmp_path / f"{i}.png", encode("PNG"))
    s = load_image_set(tmp_path, max_entries=3)
    assert len(s) == 3 and "more than 3 files" in s.skipped[0].reason


def test_total_size_cap(tmp_path):
    data = encode("BMP", size=(20, 20))
    paths = [write(tmp_path / f"{i}.bmp", data) for i in range(3)]
    s = load_image_set(paths, max_total_bytes=2 * len(data) + 10)
    assert len(s) == 2 and "total size limit" in s.skipped[0].reason


def test_labels_csv_overrides_folder_labels(tmp_path):
    root = tmp_path / "data"
    write(root / "a" / "1.png", encode("PNG"))
    write(root / "b" / "1.png", encode("PNG"))
    write(root / "b" / "2.png", encode("PNG"))
    text = "filename,label\na/1.png,cat\n2.png,dog\nzzz.png,fox\n"
    s = load_image_set(root, labels_csv=text)
    assert [it.label for it in s.items] == ["cat", "b", "dog"]
    assert any("match no image" in w and "zzz.png" in w for w in s.warnings)

    csv_path = write(tmp_path / "labels.csv", b"1.png,cat\nb/2.png,dog\n")  # no header
    s = load_image_set(root, labels_csv=csv_path)
    assert [it.label for it in s.items] == ["a", "b", "dog"]  # "1.png" is ambiguous: ignored
    assert any("several images" in w for w in s.warnings)

    with pytest.raises(ValueError, match="none of its 1 rows matches"):
        load_image_set(root, labels_csv="nope.png,cat")
    with pytest.raises(ValueError, match="filename,label"):
        load_image_set(root, labels_csv="just-one-column\n")


def test_labels_csv_on_plain_files(tmp_path):
    paths = [write(tmp_path / "x.png", encode("PNG")), write(tmp_path / "y.png", encode("PNG"))]
    s = load_image_set(paths, labels_csv=str(write(tmp_path / "l.csv", b"x.png,cat\ny.png,dog")))
    assert s.labels == ["cat", "dog"] and s.warnings == ()


# ----------------------------------------------------------------------------- zips


def test_zip_folder_labels_and_junk_ignored(tmp_path):
    z = make_zip({
        "dataset/": b"",
        "dataset/cat/": b"",
        "dataset/cat/1.png": encode("PNG"),
        "dataset/cat/2.jpg": encode("JPEG"),
        "dataset/dog/3.png": encode("PNG", color=BLUE),
        "__MACOSX/dataset/cat/._1.png": b"\x00\x05\x16\x07junk",
        "dataset/.DS_Store": b"junk",
        "dataset/Thumbs.db": b"junk",
    })
    path = write(tmp_path / "pets.zip", z)
    for source in (path, z, str(path)):
        s = load_image_set(source)
        assert [(it.name, it.label) for it in s.items] == [("dataset/cat/1.png", "cat"),
                                                           ("dataset/cat/2.jpg", "cat"),
                                                           ("dataset/dog/3.png", "dog")]
        assert s.skipped == () and s.class_names == ["cat", "dog"]


def test_zip_with_one_common_folder_has_no_labels():
    z = make_zip({"images/a.png": encode("PNG"), "images/b.png": encode("PNG")})
    assert load_image_set(z).labels is None


def test_zip_unsafe_names_are_display_only(tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    before_tmp = sorted(os.listdir(tmp_path.parent))
    z = make_zip({
        "../evil.png": encode("PNG"),
        "/etc/x.png": encode("PNG"),
        "..\\..\\win.png": encode("PNG"),
        "C:\\imgs\\c.png": encode("PNG"),
        "a/./b/../d.png": encode("PNG"),
    })
    s = load_image_set(write(tmp_path / "z.zip", z))
    assert sorted(it.name for it in s.items) == [
        "a/b/d.png", "etc/x.png", "evil.png", "imgs/c.png", "win.png"]
    decode_many(s.items)
    assert os.listdir(cwd) == []
    assert sorted(os.listdir(tmp_path)) == ["cwd", "z.zip"]
    assert sorted(os.listdir(tmp_path.parent)) == before_tmp
    assert not Path("/etc/x.png").exists() and not (tmp_path.parent / "evil.png").exists()


def test_zip_compression_ratio_cap():
    zeros = b"\x00" * (50 * 1024 * 1024)  # ~1000:1 once deflated
    z = make_zip({"big.bmp": zeros, "ok.png": encode("PNG")})
    assert len(z) < 1024 * 1024
    s = load_image_set(z)
    assert [it.name for it in s.items] == ["ok.png"]
    (skip,) = s.skipped
    assert skip.name == "big.bmp" and "exceeds the 100:1 limit" in skip.reason


def test_zip_nested_archives_skipped():
    inner = make_zip({"x.png": encode("PNG")})
    z = make_zip({"a.png": encode("PNG"), "inner.zip": inner, "more.tar.gz": b"\x1f\x8b..",
                  "b.7z": b"7z", "c.rar": b"Rar!"})
    s = load_image_set(z)
    assert [it.name for it in s.items] == ["a.png"]
    assert {f.name: f.reason for f in s.skipped} == {
        n: "nested archive skipped" for n in ("inner.zip", "more.tar.gz", "b.7z", "c.rar")}


def test_zip_too_many_entries(tmp_path):
    z = make_zip({f"{i}.png": encode("PNG") for i in range(5)})
    with pytest.raises(NoImagesError, match=r"too many entries \(5 > 3 limit\)"):
        load_image_set(z, max_entries=3)
    other = write(tmp_path / "alone.png", encode("PNG"))
    s = load_image_set([write(tmp_path / "many.zip", z), other], max_entries=3)
    assert [it.name for it in s.items] == ["alone.png"] and s.skipped[0].name == "many.zip"


def test_zip_encrypted_member_skipped():
    z = make_zip({"a.png": encode("PNG"), "secret.png": encode("PNG")})
    s = load_image_set(patch_member(z, "secret.png", flag=0x1))
    assert [it.name for it in s.items] == ["a.png"]
    assert [(f.name, f.reason) for f in s.skipped] == [("secret.png", "encrypted member skipped")]


def test_zip_lying_sizes_stay_bounded():
    data = encode("BMP", size=(64, 64))
    z = make_zip({"a.png": encode("PNG"), "small_lie.bmp": data, "huge_lie.bmp": data})
    z = patch_member(z, "small_lie.bmp", size=100)  # really 12 KiB: read stops at 100 bytes
    z = patch_member(z, "huge_lie.bmp", size=3 * 2**30)
    s = load_image_set(z)
    assert [it.name for it in s.items] == ["a.png"]
    reasons = {f.name: f.reason for f in s.skipped}
    assert reasons["small_lie.bmp"].startswith("corrupt or unsupported zip member")
    assert reasons["huge_lie.bmp"].startswith("file too large")


def test_not_a_zip(tmp_path):
    with pytest.raises(NoImagesError, match="not a readable zip archive"):
        load_image_set(b"definitely not a zip")
    with pytest.raises(NoImagesError, match="archive format not supported"):
        load_image_set(write(tmp_path / "x.tar", b"tar"))


def test_image_set_labels_none_when_partial():
    a = item("a.png", encode("PNG"))
    s = ImageSet(items=(a, ImageItem(a.name, a.data, a.sha256, "cat", "PNG", a.size)))
    assert s.labels is None and s.class_names == ["cat"]


# ----------------------------------------------------------------------------- classes


def test_parse_classes_newline_wins_and_trims():
    assert parse_classes(" cat\ndog, puppy\n\n  bird \r\n").names == ("cat", "dog, puppy", "bird")
    assert parse_classes("cat, dog ,, bird,").names == ("cat", "dog", "bird")
    assert parse_classes('["a cat", "a dog"]').names == ("a cat", "a dog")


def test_parse_classes_dedupes_case_insensitively_with_warning():
    c = parse_classes("Cat\ncat\nDOG\ndog\nbird\nbird")
    assert c.names == ("Cat", "DOG", "bird")
    (note,) = c.warnings
    assert "3 duplicate" in note and "'cat' (same as 'Cat')" in note and "'bird'" in note
    assert parse_classes("a,b").warnings == ()


@pytest.mark.parametrize("text,match", [("  \n , ", "no class names"), ("", "no class names"),
                                        ("cat", "at least 2 classes"),
                                        ("cat\nCAT", "at least 2 classes")])
def test_parse_classes_errors(text, match):
    with pytest.raises(ValueError, match=match):
        parse_classes(text)


def test_load_classes_file(tmp_path):
    assert load_classes_file(write(tmp_path / "c.txt", b"\xef\xbb\xbfcat\ndog\n")).names == (
        "cat", "dog")
    assert load_classes_file(write(tmp_path / "c.json", b'["cat", "dog"]')).names == ("cat", "dog")
    with pytest.raises(ValueError, match="JSON list of strings"):
        load_classes_file(write(tmp_path / "d.json", b'{"cat": 1}'))
    with pytest.raises(ValueError, match="not a file"):
        load_classes_file(tmp_path / "missing.txt")


# ----------------------------------------------------------------------------- presets

EXPECTED_COUNTS = {"imagenet": 1000, "caltech101": 100, "oxford_pets": 37, "stanford_cars": 196,
                   "flowers102": 102, "food101": 101, "fgvc_aircraft": 100, "sun397": 397,
                   "dtd": 47, "eurosat": 10, "ucf101": 101}


def test_preset_counts_match_the_shipped_lists():
    shipped = json.loads((PRESET_DIR / "classnames.json").read_text())
    assert {k: len(v) for k, v in shipped.items()} == EXPECTED_COUNTS
    assert {k: p.n_classes for k, p in PRESETS.items()} == EXPECTED_COUNTS
    for key, preset in PRESETS.items():
        repeated = {n for n in preset.class_names if preset.class_names.count(n) > 1}
        # a fact of open_clip's ImageNet names: two classes each are called these
        assert repeated == ({"missile", "sunglasses"} if key == "imagenet" else set())
        assert preset.key == key
        assert list(preset.raw_class_names) == shipped[key]
        assert preset.class_names == tuple(n.replace("_", " ") for n in shipped[key])
        assert not any("_" in n for n in preset.class_names)


def test_preset_templates_have_one_slot():
    templates = json.loads((PRESET_DIR / "templates.json").read_text())
    for key, preset in PRESETS.items():
        assert preset.template == templates[key] and preset.template.count("{}") == 1
        assert all(t.count("{}") == 1 for t in preset.templates_ensemble)
    assert PRESETS["oxford_pets"].template.format("pug") == "a photo of a pug, a type of pet."
    assert PRESETS["dtd"].templates_ensemble == ()


def test_imagenet_prefers_open_clip_and_matches_the_shipped_list():
    import importlib.util

    imagenet = PRESETS["imagenet"]
    if importlib.util.find_spec("open_clip") is None:
        pytest.skip("open_clip not installed: the shipped list is used")
    assert imagenet.source == "open_clip.zero_shot_metadata.IMAGENET_CLASSNAMES"
    assert len(imagenet.templates_ensemble) == 80
    assert imagenet.templates_ensemble[0] == "a bad photo of a {}."


def test_shipped_presets_are_a_faithful_copy_of_shared_data():
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    if not shared.is_dir():
        pytest.skip("shared/data not beside the repository")
    for name in ("classnames.json", "templates.json"):
        shipped = json.loads((PRESET_DIR / name).read_text())
        assert json.loads((shared / name).read_text()) == shipped


def test_get_preset_lookup_and_unknown_names():
    assert get_preset("oxford_pets") is PRESETS["oxford_pets"]
    assert get_preset("Oxford-IIIT Pets") is PRESETS["oxford_pets"]
    assert get_preset("FGVC-Aircraft").key == "fgvc_aircraft"
    with pytest.raises(ValueError, match="unknown dataset preset 'cifar10'.*oxford_pets"):
        get_preset("cifar10")


# ----------------------------------------------------------------------------- attributes


def test_load_attributes_text_path_and_class_matching(tmp_path):
    text = json.dumps({"Great white shark": ["sharp teeth", " grey body ", "sharp teeth", ""],
                       "tench": ["olive-green scales"], "extra": ["unused"]})
    attrs = load_attributes(text)
    assert attrs["Great white shark"] == ["sharp teeth", "grey body"]
    got = load_attributes(write(tmp_path / "d.json", text.encode()),
                          class_names=["tench", "great_white_shark"])
    assert list(got) == ["tench", "great_white_shark"]
    assert got["great_white_shark"] == ["sharp teeth", "grey body"]


def test_load_attributes_reports_missing_classes():
    text = json.dumps({"cat": ["whiskers"]})
    with pytest.raises(ValueError, match=r"no descriptors for 2 of 3 classes \('dog', 'fox'\)"):
        load_attributes(text, class_names=["cat", "dog", "fox"])
    with pytest.warns(UserWarning, match="'dog'"):
        got = load_attributes(text, class_names=["cat", "dog"], on_missing="warn")
    assert got == {"cat": ["whiskers"]}


@pytest.mark.parametrize("text,match", [
    ('["whiskers"]', "expected a JSON object"),
    ('{"cat": "whiskers"}', "list of strings"),
    ('{"cat": ["ok", 3]}', "list of strings"),
    ('{"cat": ["  "]}', "no descriptors"),
    ('{"cat": [', "invalid JSON"),
])
def test_load_attributes_validation(text, match):
    with pytest.raises(ValueError, match=match):
        load_attributes(text)


# ----------------------------------------------------------------------------- odds and ends


def test_duplicates_by_content_are_kept(tmp_path):
    data = encode("PNG")
    s = load_image_set([write(tmp_path / "a.png", data), write(tmp_path / "b.png", data)])
    assert [it.name for it in s.items] == ["a.png", "b.png"]
    assert s.items[0].sha256 == s.items[1].sha256


def test_wide_integer_data_is_stretched_not_clipped():
    from core.data.decode import _wide_to_rgb

    im = _wide_to_rgb(Image.fromarray(np.array([[-5, 0, 5]], dtype=np.int32)))
    assert np.asarray(im)[0, :, 0].tolist() == [0, 128, 255]


@pytest.mark.parametrize("option", ["max_pixels", "max_entries", "max_total_bytes", "max_ratio"])
def test_invalid_limits_are_rejected(tmp_path, option):
    path = write(tmp_path / "a.png", encode("PNG"))
    with pytest.raises(ValueError, match=option):
        load_image_set(path, **{option: 0})
