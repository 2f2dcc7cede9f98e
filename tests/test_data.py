from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dbdpo.config import ConceptConfig
from dbdpo.data import (
    DataError,
    eval_prompts,
    fill_prompt,
    load_concept,
    load_prompt_templates,
    text_prompt,
    to_tensor,
    train_prompts,
)


def concept_dir(tmp_path, images):
    for name, img in images.items():
        img.save(tmp_path / name)
    return ConceptConfig(dir=str(tmp_path), min_size=32)


def test_modes_are_converted_to_rgb(tmp_path):
    rgba = Image.new("RGBA", (40, 40), (255, 0, 0, 0))  # fully transparent red
    cfg = concept_dir(tmp_path, {"a_gray.png": Image.new("L", (40, 40), 128), "b_rgba.png": rgba,
                                 "c_cmyk.jpg": Image.new("CMYK", (40, 40), (0, 255, 255, 0))})
    images = load_concept(cfg)
    assert all(i.mode == "RGB" for i in images)  # in file-name order: gray, rgba, cmyk
    assert images[0].getpixel((0, 0)) == (128, 128, 128)
    assert images[1].getpixel((0, 0)) == (255, 255, 255)  # transparency -> white, not black
    r, g, b = images[2].getpixel((0, 0))
    assert r > 200 and g < 60 and b < 60  # CMYK (0,255,255,0) is red


@pytest.mark.parametrize("name, array, mode, expected", [
    ("gray16.png", np.full((40, 40), 32896, np.uint16), None, 128),   # 16-bit PNG opens as I;16
    ("dark16.png", np.full((40, 40), 250, np.uint16), None, 1),  # dark, not 8-bit: 250/65535 of white
    ("gray32.tif", np.full((40, 40), 65535, np.int32), "I", 255),
    ("gray8_in_32.tif", np.full((40, 40), 100, np.int32), "I", 100),  # 8-bit values stored wide
    ("float.tif", np.full((40, 40), 0.25, np.float32), "F", 64),
])
def test_wide_grayscale_keeps_its_brightness(tmp_path, name, array, mode, expected):
    """PIL's convert("RGB") clips 16/32-bit values at 255: a mid-gray 16-bit PNG came out white."""
    Image.fromarray(array, mode=mode).save(tmp_path / name)
    (loaded,) = load_concept(ConceptConfig(dir=str(tmp_path), min_size=32))
    assert loaded.mode == "RGB" and loaded.getpixel((0, 0)) == (expected,) * 3


def test_photos_in_a_subfolder_of_the_concept_are_named_not_skipped(tmp_path):
    Image.new("RGB", (40, 40)).save(tmp_path / "a.png")
    (tmp_path / "more").mkdir()
    Image.new("RGB", (40, 40)).save(tmp_path / "more" / "b.png")
    with pytest.raises(DataError, match=r"more: a folder of images inside concept.dir=.*move them up into it"):
        load_concept(ConceptConfig(dir=str(tmp_path), min_size=32))
    (tmp_path / "more" / "b.png").unlink()  # an empty subfolder, or one of notes, is not a photo set
    (tmp_path / ".ipynb_checkpoints").mkdir()
    Image.new("RGB", (40, 40)).save(tmp_path / ".ipynb_checkpoints" / "a-checkpoint.png")
    assert len(load_concept(ConceptConfig(dir=str(tmp_path), min_size=32))) == 1


def test_gray_alpha_and_palette_transparency_composite_on_white(tmp_path):
    Image.new("LA", (40, 40), (100, 0)).save(tmp_path / "a_la.png")  # transparent gray
    palette = Image.new("P", (40, 40), 0)
    palette.putpalette([10, 20, 30] * 256)
    palette.save(tmp_path / "b_p.png", transparency=0)
    Image.new("LA", (40, 40), (100, 255)).save(tmp_path / "c_la_opaque.png")
    pixels = [i.getpixel((0, 0)) for i in load_concept(ConceptConfig(dir=str(tmp_path), min_size=32))]
    assert pixels == [(255, 255, 255), (255, 255, 255), (100, 100, 100)]


def test_exif_rotation_is_applied(tmp_path):
    img = Image.new("RGB", (60, 40), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    img.save(tmp_path / "rot.jpg", exif=exif)
    (loaded,) = load_concept(ConceptConfig(dir=str(tmp_path), min_size=32))
    assert loaded.size == (40, 60)


def test_tiny_image_is_rejected_naming_the_file(tmp_path):
    cfg = concept_dir(tmp_path, {"ok.png": Image.new("RGB", (64, 64)), "small.png": Image.new("RGB", (64, 16))})
    with pytest.raises(DataError, match=r"small.png: 64x16 px is smaller than concept.min_size=32"):
        load_concept(cfg)


def test_non_image_and_corrupt_files_are_rejected(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"notes.txt: not an image file"):
        load_concept(ConceptConfig(dir=str(tmp_path)))
    (tmp_path / "notes.txt").unlink()
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=r"broken.png: not a readable image"):
        load_concept(ConceptConfig(dir=str(tmp_path)))


def test_a_caption_beside_a_photo_is_accepted_with_a_note(tmp_path, caplog):
    """The kohya / diffusers dataset habit: photo.txt beside photo.png. A .txt of no photo is
    still refused."""
    cfg = concept_dir(tmp_path, {"dog.png": Image.new("RGB", (64, 64), "red")})
    (tmp_path / "dog.txt").write_text("a dog on a sofa")
    with caplog.at_level("INFO", logger="dbdpo.data"):
        (loaded,) = load_concept(cfg)
    assert loaded.size == (64, 64) and "1 photos have a caption file; finetune.captions: true" in caplog.text
    (tmp_path / "cat.txt").write_text("no photo of this name")
    with pytest.raises(DataError, match=r"cat.txt: not an image file .* nor a photo's caption"):
        load_concept(cfg)


def test_missing_or_empty_dir(tmp_path):
    with pytest.raises(DataError, match="is not a directory"):
        load_concept(ConceptConfig(dir=str(tmp_path / "nope")))
    with pytest.raises(DataError, match="holds no images"):
        load_concept(ConceptConfig(dir=str(tmp_path)))


def test_embedded_concept_loads(in_repo):
    images = load_concept(ConceptConfig())
    assert len(images) == 6 and all(i.size == (64, 64) for i in images)


def test_to_tensor_range_and_shape():
    img = Image.new("RGB", (100, 50), (255, 0, 127))
    x = to_tensor([img], 32)
    assert x.shape == (1, 3, 32, 32)
    assert x[0, 0].min().item() == 1.0 and x[0, 1].max().item() == -1.0
    assert torch.allclose(x[0, 2], torch.full((32, 32), 127 / 127.5 - 1))


def test_prompts_render_and_ts_variants():
    cfg = ConceptConfig(token="sks", class_noun="toy")
    t = "a {token} {class_noun} in the jungle"
    assert fill_prompt(t, cfg) == "a sks toy in the jungle"
    assert text_prompt(t, cfg, "with_class") == "a toy in the jungle"
    assert text_prompt(t, cfg, "without_concept") == "a in the jungle"


def test_prompt_sets(in_repo):
    train, held_out = Path("data/prompts/train.txt"), Path("data/prompts/eval.txt")
    assert len(eval_prompts(held_out, 20)) == 20
    with pytest.raises(DataError, match="evaluate.num_prompts=30: data/prompts/eval.txt has only 20 prompts"):
        eval_prompts(held_out, 30)
    rounds = train_prompts(train, {"round_1": (0, 8), "round_2": (8, 16)})
    r1, r2 = rounds["round_1"], rounds["round_2"]
    assert len(r1) == 8 and not set(r1) & set(r2)  # rounds use disjoint prompts
    assert not set(train_prompts(train, {"all": (0, 210)})["all"]) & set(eval_prompts(held_out, 20))  # held-out
    with pytest.raises(DataError, match="rounds.round_9: data/prompts/train.txt: this round needs prompts 200..259 "
                                        "but the pool has 210"):
        train_prompts(train, {"round_1": (0, 8), "round_9": (200, 260)})


@pytest.mark.parametrize("content, message", [
    (b"# pool\na {token} toy\na {token} {class_noun} {\n", r"prompts.txt:3: 'a \{token\} \{class_noun\} \{': .*"
                                                       r"write a literal brace as \{\{ or \}\}"),
    (b"a {token} toy\na {token} toy in the {place}\n", r"prompts.txt:2: .* uses \{place\}; the placeholders are"),
    (b"a {token} toy\na toy on the beach\n", r"prompts.txt:2: prompt 'a toy on the beach' lacks the \{token\}"),
    (b"a {token} toy\na {token} caf\xe9\n", r"prompts.txt:2: not UTF-8 .*re-save the file as UTF-8"),
])
def test_bad_prompt_files_name_the_file_and_line(tmp_path, content, message):
    (tmp_path / "prompts.txt").write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_prompt_templates(tmp_path / "prompts.txt")


def test_literal_braces_render(tmp_path):
    (tmp_path / "prompts.txt").write_text("a {token} {class_noun} with a {{heart}} sign\n")
    (template,) = load_prompt_templates(tmp_path / "prompts.txt")
    assert fill_prompt(template, ConceptConfig()) == "a sks toy with a {heart} sign"


def test_a_decompression_bomb_names_the_file(tmp_path, monkeypatch):
    Image.new("RGB", (100, 100)).save(tmp_path / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 100x100 > 2x the limit: PIL refuses it
    with pytest.raises(DataError, match=r"huge.png: Image size \(10000 pixels\) exceeds limit .*downscale the photo"):
        load_concept(ConceptConfig(dir=str(tmp_path), min_size=32))


def test_captions_are_read_in_photo_order_filled_in_and_must_name_the_token(tmp_path):
    from dbdpo.data import load_captions

    cfg = concept_dir(tmp_path, {name: Image.new("RGB", (64, 64), "red") for name in ("a.png", "b.png", "c.jpg")})
    (tmp_path / "a.txt").write_text("a {token} {class_noun}\n  on a sofa  ")
    (tmp_path / "c.txt").write_text("sks toy asleep")
    assert load_captions(cfg) == ["a sks toy on a sofa", None, "sks toy asleep"]
    (tmp_path / "b.txt").write_text("a toy on a sofa")
    with pytest.raises(DataError, match=r"b.txt: the caption 'a toy on a sofa' does not name the instance token "
                                        r"'sks' \(concept.token\); add it, or \{token\}"):
        load_captions(cfg)
    (tmp_path / "b.txt").write_bytes(b"sks \xff")
    with pytest.raises(DataError, match=r"b.txt: not UTF-8"):
        load_captions(cfg)
    (tmp_path / "b.txt").write_text("a {token} {color}")
    with pytest.raises(DataError, match=r"b.txt: .* has a placeholder other than"):
        load_captions(cfg)
