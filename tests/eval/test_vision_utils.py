"""Image transforms: exact pixel values, grayscale -> RGB, HF image processors reproduced; image
files checked before a run."""
import os

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from eval.vision_utils import (
    IMAGENET_MEAN, IMAGENET_STD, ImageTransformConfig, collate_vision, default_transform_config, image_file_problem,
    make_batch_transform, to_rgb_image, transform_config_from_processor, transform_image)

IDENTITY = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def test_constant_rgb_image_exact_values():
    image = Image.fromarray(np.dstack([np.full((5, 7), v, np.uint8) for v in (0, 51, 255)]))
    pixels = transform_image(image, default_transform_config(4))
    assert pixels.shape == (3, 4, 4) and pixels.dtype == torch.float32
    for channel, value in enumerate((0, 51, 255)):
        expected = (value / 255 - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel]
        assert torch.allclose(pixels[channel], torch.full((4, 4), expected), atol=1e-6)


def test_grayscale_becomes_three_equal_channels_in_unit_range():
    digit = np.round(np.linspace(0, 16, 64).reshape(8, 8) * 255 / 16).astype(np.uint8)
    pixels = transform_image(Image.fromarray(digit), ImageTransformConfig(image_size=32, resize_size=32, **IDENTITY))
    assert pixels.shape == (3, 32, 32)
    assert torch.equal(pixels[0], pixels[1]) and torch.equal(pixels[1], pixels[2])
    assert pixels.min().item() == 0.0 and pixels.max().item() == 1.0
    normalised = transform_image(Image.fromarray(digit), default_transform_config(32))
    low = [(0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
    high = [(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
    for channel in range(3):
        assert normalised[channel].min().item() == pytest.approx(low[channel], abs=1e-6)
        assert normalised[channel].max().item() == pytest.approx(high[channel], abs=1e-6)


def test_center_crop_and_shortest_edge_resize():
    # 6x4 (w x h) with a distinct value per column; crop 2x2 from the centre keeps columns 2, 3.
    columns = np.tile(np.arange(6, dtype=np.uint8) * 10, (4, 1))
    config = ImageTransformConfig(image_size=2, resize_size=4, resize_to_square=False, resample="nearest", **IDENTITY)
    pixels = transform_image(Image.fromarray(columns), config)
    # Shortest edge 4 -> already 4 high, 6 wide; crop left = (6 - 2) // 2 = 2.
    assert torch.allclose(pixels[0], torch.tensor([[20, 30], [20, 30]]) / 255.0)


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_16_bit_grayscale_is_rescaled_to_8_bits_not_clipped(mode, tmp_path):
    """A 16-bit PNG became nearly white: convert('RGB') clipped every value above 255."""
    ramp = np.arange(0, 65536, 257, dtype=np.int64).reshape(16, 16)  # 256 values, 0..65535
    image = Image.fromarray(ramp.astype(np.uint16)) if mode == "I;16" else Image.fromarray(ramp.astype(np.int32))
    assert image.mode == mode
    rgb = np.asarray(to_rgb_image(image))
    assert rgb.dtype == np.uint8 and np.array_equal(rgb[:, :, 0], np.arange(256).reshape(16, 16))
    assert np.array_equal(rgb[:, :, 0], rgb[:, :, 2])
    path = tmp_path / "ramp16.png"  # as read from a 16-bit PNG file
    Image.fromarray(ramp.astype(np.uint16)).save(path)
    with Image.open(path) as read:
        assert np.array_equal(np.asarray(to_rgb_image(read))[:, :, 1], np.arange(256).reshape(16, 16))


def test_images_without_a_known_range_are_refused():
    with pytest.raises(ValueError, match=r"^a floating-point image \(PIL mode F\) has no known range; save it as an "
                                         r"8- or 16-bit image$"):
        to_rgb_image(Image.fromarray(np.ones((2, 2), np.float32)))
    with pytest.raises(ValueError, match=r"^a PIL mode I image with values outside 0..65535 \(found 0..70000\) has no known "
                                         r"range"):
        to_rgb_image(Image.fromarray(np.array([[0, 70000]], np.int32)))


def test_numpy_and_mode_conversions():
    assert to_rgb_image(np.zeros((3, 3), np.uint8)).mode == "RGB"
    assert to_rgb_image(np.zeros((3, 3, 1), np.uint8)).size == (3, 3)
    assert to_rgb_image(Image.new("RGBA", (2, 2))).mode == "RGB"
    assert to_rgb_image(Image.new("P", (2, 2))).mode == "RGB"
    with pytest.raises(ValueError, match=r"numpy images must be uint8 \(0..255\), got float64"):
        to_rgb_image(np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"expected a PIL image or a uint8 numpy array, got list"):
        to_rgb_image([[0]])


def test_batch_transform_and_collator():
    transform = make_batch_transform(ImageTransformConfig(image_size=2, resize_size=2, **IDENTITY))
    images = [Image.new("L", (3, 3), 255), Image.new("RGB", (2, 2), (0, 0, 0))]
    batch = transform({"pixel_values": images, "labels": [4, 1]})
    assert batch["labels"] == [4, 1]
    examples = [{"pixel_values": p, "labels": l} for p, l in zip(batch["pixel_values"], batch["labels"])]
    collated = collate_vision(examples)
    assert collated["pixel_values"].shape == (2, 3, 2, 2)
    assert collated["pixel_values"][0].eq(1.0).all() and collated["pixel_values"][1].eq(0.0).all()
    assert collated["labels"].tolist() == [4, 1] and collated["labels"].dtype == torch.long


@pytest.mark.parametrize("name, kwargs, expected", [
    ("ViTImageProcessor", {}, (224, 224, True)),
    ("DeiTImageProcessor", {}, (224, 256, True)),
    ("MobileNetV2ImageProcessor", {}, (224, 256, False)),
    ("ConvNextImageProcessor", {"size": {"shortest_edge": 224}}, (224, 256, False)),
    ("ConvNextImageProcessor", {}, (384, 384, True)),
    ("EfficientNetImageProcessor", {}, (346, 346, True)),
])
def test_matches_hf_image_processors(name, kwargs, expected):
    processor_class = getattr(transformers, f"{name}Pil", None)
    if processor_class is None:
        pytest.skip(f"{name}Pil (the PIL backend) is not in this transformers version")
    processor = processor_class(**kwargs)
    config = transform_config_from_processor(processor)
    assert (config.image_size, config.resize_size, config.resize_to_square) == expected
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8))
    reference = processor(images=image, return_tensors="np")["pixel_values"][0]
    assert np.abs(transform_image(image, config).numpy() - reference).max() < 1e-5


def test_processor_image_size_override_scales_the_resize():
    processor = transformers.DeiTImageProcessorPil() if hasattr(transformers, "DeiTImageProcessorPil") else None
    if processor is None:
        pytest.skip("DeiTImageProcessorPil is not in this transformers version")
    config = transform_config_from_processor(processor, image_size=112)
    assert (config.image_size, config.resize_size) == (112, 128)


def test_config_errors():
    with pytest.raises(ValueError, match=r"image_size=0 must be >= 1"):
        ImageTransformConfig(image_size=0, resize_size=0)
    with pytest.raises(ValueError, match=r"resize_size=16 must be >= image_size=32"):
        ImageTransformConfig(image_size=32, resize_size=16)
    with pytest.raises(ValueError, match=r"need 3 values each \(RGB\), std > 0"):
        ImageTransformConfig(image_size=2, resize_size=2, std=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match=r"resample='lanczos'; use one of"):
        ImageTransformConfig(image_size=2, resize_size=2, resample="lanczos")
    with pytest.raises(ValueError, match=r"has no size/image_mean; pass an image processor"):
        transform_config_from_processor(object())


def test_image_file_problem_names_what_is_wrong_without_decoding(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(good)
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "folder.png").mkdir()
    os.mkfifo(tmp_path / "pipe.png")  # opening it would block: never opened
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:400])  # a whole header: PNG's chunk checks find the cut
    assert image_file_problem(good) is None
    assert image_file_problem(truncated) == "cannot be read (OSError: Truncated File Read)"
    assert image_file_problem(truncated, read_header=False) is None
    jpeg = tmp_path / "cut.jpg"  # a JPEG's body is not checked: only a decode finds its cut
    Image.open(good).convert("RGB").save(jpeg, quality=95)
    jpeg.write_bytes(jpeg.read_bytes()[:-200])
    assert image_file_problem(jpeg) is None
    with Image.open(jpeg) as image, pytest.raises(OSError, match=r"^image file is truncated"):
        image.load()
    assert image_file_problem(tmp_path / "nowhere.png") == "does not exist"
    assert image_file_problem(tmp_path / "notes.png") == "is not an image PIL can read"
    assert image_file_problem(tmp_path / "notes.png", read_header=False) is None
    assert image_file_problem(tmp_path / "empty.png", read_header=False) == "is empty (0 bytes)"
    assert image_file_problem(tmp_path / "folder.png") == "is a directory"
    assert image_file_problem(tmp_path / "pipe.png") == "is not a regular file"
    assert image_file_problem("bad\0name.png") == "cannot be read (ValueError: embedded null byte)"
