import math

import numpy as np
import pytest
import torch
from PIL import Image

from sd_custom_vae.data import (
    RGB_TO_YCBCR,
    Augmentation,
    RandomCrops,
    builtin_photos,
    evaluation_crops,
    load_image_data,
    to_image,
)
from sd_custom_vae.data.colour import rotate_hue
from sd_custom_vae.data.image_file import to_tensor
from sd_custom_vae.data.opener import find_images, folder_source


def write_image(path, size=(80, 60), seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def test_builtin_photos_ship_with_packages_and_validation_is_held_out():
    train, val = builtin_photos()
    assert len(train) >= 8 and len(val) >= 2
    assert not {p.name for p in train} & {p.name for p in val}
    assert all(p.exists() for p in train + val)


def test_folder_search_is_recursive_and_split_is_stable(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for i, name in enumerate(["x.jpg", "a/y.png", "a/b/z.webp", "a/b/w.bmp", "notes.txt"]):
        write_image(tmp_path / name, seed=i) if not name.endswith(".txt") else (tmp_path / name).write_text("hi")
    paths = find_images(tmp_path)
    assert [str(p.relative_to(tmp_path)) for p in paths] == ["a/b/w.bmp", "a/b/z.webp", "a/y.png", "x.jpg"]
    train, val = folder_source(tmp_path).split(val_fraction=0.1)
    assert len(val) == 1 and sorted(train + val) == list(range(len(paths)))
    assert folder_source(tmp_path).split(0.1) == (train, val)


def test_tensors_are_in_minus_one_to_one_and_round_trip():
    image = Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3) * 5)
    tensor = to_tensor(image)
    assert tensor.shape == (3, 4, 4) and tensor.min() >= -1 and tensor.max() <= 1
    assert np.array_equal(np.asarray(to_image(tensor)), np.asarray(image))


def test_random_crops_are_a_pure_function_of_seed_and_index():
    images = [Image.new("RGB", (50, 40), (i * 40, 0, 0)) for i in range(3)]
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), np.uint8))
    crops = RandomCrops([noise] + images, 16)
    assert torch.equal(crops[7], crops[7])
    assert crops[7].shape == (3, 16, 16)
    assert not torch.equal(crops[7], crops[8])

def test_random_scale_crops_show_more_of_the_image_shrunk_to_the_crop_side():
    ramp = Image.fromarray(np.tile(np.arange(0, 256, 2, dtype=np.uint8), (128, 1))).convert("RGB")  # 2 levels a pixel
    native = RandomCrops([ramp], 16, augmentation=Augmentation(flip=False))
    scaled = RandomCrops([ramp], 16, augmentation=Augmentation(flip=False, min_scale=0.25))
    spans = [float(c[0, 0, -1] - c[0, 0, 0]) * 127.5 / 2 for c in (scaled[k] for k in range(20))]  # in source pixels
    assert all(native[k].shape == scaled[k].shape == (3, 16, 16) for k in range(20))
    assert {round(float(native[k][0, 0, -1] - native[k][0, 0, 0]) * 127.5 / 2) for k in range(20)} == {15}
    assert max(spans) > 40 and min(spans) >= 14  # up to 64 px of the image in 16 px, never less than native
    assert torch.equal(scaled[3], scaled[3])



def test_hue_rotation_turns_colour_keeps_brightness_and_grey_and_comes_back_full_circle():
    image = torch.rand(3, 8, 8) * 1.2 - 0.6  # inside the range with room to turn
    grey = torch.full((3, 8, 8), 0.3)
    luma = lambda x: torch.einsum("i,ihw->hw", RGB_TO_YCBCR[0], x)  # noqa: E731
    turned = rotate_hue(image, 2.0)
    assert torch.allclose(luma(turned), luma(image), atol=1e-5) and not torch.allclose(turned, image, atol=0.05)
    assert torch.allclose(rotate_hue(turned, -2.0), image, atol=1e-5)
    assert torch.allclose(rotate_hue(grey, 1.0), grey, atol=1e-6)
    red = torch.tensor([1.0, -1.0, -1.0]).view(3, 1, 1)
    assert rotate_hue(red, math.pi)[0].item() < -0.5  # red turned half-way round is cyan
    crops = RandomCrops([Image.new("RGB", (32, 32), (200, 40, 40))], 16, augmentation=Augmentation(hue_rotation=0.5))
    hues = {tuple(crops[k][:, 0, 0].round(decimals=2).tolist()) for k in range(40)}
    assert 10 < len(hues) < 40  # about half the crops keep their red, the rest each turned by its own angle


def test_evaluation_crops_show_every_photo_first():
    images = [Image.new("RGB", (100, 80), (i * 60, 0, 0)) for i in range(3)]
    crops = evaluation_crops(images, 32, per_image=2)
    assert crops.shape == (6, 3, 32, 32)
    assert [round(float(c[0, 0, 0]), 3) for c in crops[:3]] == [round(i * 60 / 127.5 - 1, 3) for i in range(3)]


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no images found"):
        load_image_data(tmp_path, 32)


def test_unreadable_files_are_skipped_with_a_count(tmp_path):
    for i in range(4):
        write_image(tmp_path / f"good{i}.png", seed=i)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.warns(UserWarning, match="skipped 2 file"):
        data = load_image_data(tmp_path, 32)
    assert data.report.loaded == 4 and data.report.skipped == 2


def test_nothing_usable_is_an_error(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"nope")
    (tmp_path / "broken2.jpg").write_bytes(b"nope")
    with pytest.raises(ValueError, match=r"could be read as an image \(2 unreadable"):
        load_image_data(tmp_path, 32)


def test_small_images_are_upscaled_and_said(tmp_path):
    for i in range(3):
        write_image(tmp_path / f"small{i}.png", size=(20, 30), seed=i)
    with pytest.warns(UserWarning, match="upscaled 3 image"):
        data = load_image_data(tmp_path, 32)
    assert min(data.train[0].size) == 32 and data.val_crops.shape[-1] == 32
