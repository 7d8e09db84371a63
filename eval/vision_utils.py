"""Image preprocessing for vision tasks: PIL/numpy images -> normalised 3-channel float tensors.

Two sources of settings: a pretrained model's image processor (its mean, std, resize and crop
sizes), or, for models trained from scratch, a plain resize to a square `image_size` with the
ImageNet mean/std. Images of any mode (grayscale digits, palette, RGBA) become RGB first.

The transform runs lazily through `Dataset.with_transform` on columns already renamed to
`pixel_values` and `labels`, the names the HF vision models' `forward` takes, so the Trainer's
`remove_unused_columns` keeps them and no float copy of the dataset is materialised.
"""
from __future__ import annotations

import io
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESAMPLE_MODES = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
                  "nearest": Image.Resampling.NEAREST}


@dataclass(frozen=True)
class ImageTransformConfig:
    """Resize (shortest edge to `resize_size`, or the whole image to a square), center-crop to
    `image_size` x `image_size`, scale to [0, 1], normalise with `mean`/`std` per channel."""

    image_size: int
    resize_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize_to_square: bool = True
    resample: str = "bilinear"

    def __post_init__(self) -> None:
        if self.image_size < 1:
            raise ValueError(f"image_size={self.image_size} must be >= 1 (pixels per side)")
        if self.resize_size < self.image_size:
            raise ValueError(f"resize_size={self.resize_size} must be >= image_size={self.image_size}: "
                             "the crop is taken from the resized image")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean={self.mean} and std={self.std} need 3 values each (RGB), std > 0")
        if self.resample not in RESAMPLE_MODES:
            raise ValueError(f"resample={self.resample!r}; use one of {sorted(RESAMPLE_MODES)}")


def default_transform_config(image_size: int = 32) -> ImageTransformConfig:
    """From-scratch models: resize straight to `image_size` squared, ImageNet mean/std."""
    return ImageTransformConfig(image_size=image_size, resize_size=image_size)


def _size_dict(size: Any) -> Any:
    """Plain dict from a processor's size: fast processors hold a `SizeDict` object, not a dict."""
    if isinstance(size, (int, dict)) or size is None:
        return size
    keys = ("height", "width", "shortest_edge")
    return {k: getattr(size, k) for k in keys if getattr(size, k, None) is not None}


def _side(size: Any, what: str) -> int:
    """One side length from an image processor's size dict ({"height", "width"} or {"shortest_edge"})."""
    size = _size_dict(size)
    if isinstance(size, int):
        return size
    if isinstance(size, dict):
        if "shortest_edge" in size:
            return int(size["shortest_edge"])
        if "height" in size and "width" in size:
            if size["height"] != size["width"]:
                raise ValueError(f"{what}={size} is not square; only square crops are supported")
            return int(size["height"])
    raise ValueError(f"cannot read a side length from image processor {what}={size!r}; "
                     "expected an int, {'shortest_edge': n} or {'height': n, 'width': n}")


def transform_config_from_processor(processor: Any, image_size: int | None = None) -> ImageTransformConfig:
    """The settings of a pretrained model's image processor (ViT/DeiT, ConvNeXt/ResNet, MobileNet,
    EfficientNet style). `image_size` overrides the crop size and scales the resize with it."""
    size = _size_dict(getattr(processor, "size", None))
    if size is None or getattr(processor, "image_mean", None) is None:
        raise ValueError(f"{type(processor).__name__} has no size/image_mean; pass an image processor, "
                         "or use default_transform_config(image_size) for a model trained from scratch")
    shortest_edge = isinstance(size, dict) and "shortest_edge" in size
    resize = _side(size, "size")
    crop_size = getattr(processor, "crop_size", None)
    if getattr(processor, "do_center_crop", False) and crop_size is not None:
        crop = _side(crop_size, "crop_size")
    elif getattr(processor, "crop_pct", None) and shortest_edge:
        # ConvNeXt/ResNet: below 384, resize to shortest_edge / crop_pct and crop shortest_edge;
        # from 384 up, warp to a square without cropping.
        if resize < 384:
            crop, resize = resize, int(resize / processor.crop_pct)
        else:
            crop, shortest_edge = resize, False
    else:
        crop = resize
    if image_size is not None:
        resize, crop = max(image_size, round(resize * image_size / crop)), image_size
    resample_id = int(getattr(processor, "resample", 2))
    resample = {2: "bilinear", 3: "bicubic", 0: "nearest"}.get(resample_id)
    if resample is None:
        raise ValueError(f"{type(processor).__name__}.resample={resample_id} is not bilinear (2), bicubic (3) "
                         "or nearest (0); build an ImageTransformConfig by hand")
    rescale_factor = getattr(processor, "rescale_factor", 1 / 255)
    if getattr(processor, "rescale_offset", False) or abs(rescale_factor - 1 / 255) > 1e-12:
        raise ValueError(f"{type(processor).__name__} rescales other than x / 255 (rescale_factor="
                         f"{rescale_factor}, rescale_offset="
                         f"{getattr(processor, 'rescale_offset', None)}); build an ImageTransformConfig by hand")
    mean = tuple(float(m) for m in processor.image_mean)
    std = tuple(float(s) for s in processor.image_std)
    if not getattr(processor, "do_normalize", True):
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    elif getattr(processor, "include_top", False):
        # EfficientNet divides by std a second time: (x - mean) / std / std.
        std = tuple(s * s for s in std)
    return ImageTransformConfig(image_size=crop, resize_size=max(resize, crop), mean=mean, std=std,
                                resize_to_square=not shortest_edge, resample=resample)


def image_file_problem(path: str | os.PathLike[str], read_header: bool = True) -> str | None:
    """Why `path` cannot be read as an image ("does not exist", "is empty", ...), or None.

    One stat, then (with `read_header`) PIL's own check of the file, which decodes no pixels: the
    format from its header, and for PNG every chunk and its checksum (a truncated PNG fails); about
    a quarter of a decode of a small image, a tenth of a 224-pixel one. A JPEG's compressed body is
    not read, so a truncated or corrupt JPEG still passes.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return "does not exist"
    except (OSError, ValueError) as error:  # ValueError: a NUL character in the path
        return f"cannot be read ({type(error).__name__}: {error})"
    if stat.S_ISDIR(info.st_mode):
        return "is a directory"
    if not stat.S_ISREG(info.st_mode):  # a FIFO or device would block or never end
        return "is not a regular file"
    if info.st_size == 0:
        return "is empty (0 bytes)"
    if not read_header:
        return None
    try:
        with Image.open(path) as image:  # identifies the format from the header
            image.verify()
    except UnidentifiedImageError:
        return "is not an image PIL can read"
    except Exception as error:  # noqa: BLE001 - PermissionError, a plugin's own errors on a bad header
        return f"cannot be read ({type(error).__name__}: {error})"
    return None


def first_image_size(ds: Any, column: str) -> tuple[int, int] | None:
    """(width, height) of the first image in `column` of a datasets.Dataset, read from its file's or
    bytes' header (no pixels decoded); None for no rows, no images, or an unreadable header."""
    import datasets

    if len(ds) == 0:
        return None
    try:
        if isinstance(ds.features.get(column), datasets.Image):
            stored = ds.select([0]).cast_column(column, datasets.Image(decode=False))[0][column]
            source = io.BytesIO(stored["bytes"]) if stored.get("bytes") else stored.get("path")
            if source is None:
                return None
            with Image.open(source) as image:
                return image.size
        value = ds[0][column]
    except (OSError, ValueError):  # the checks before training name a bad image; this is only for a note
        return None
    if isinstance(value, Image.Image):
        return value.size
    if isinstance(value, np.ndarray) and value.ndim >= 2:
        return int(value.shape[1]), int(value.shape[0])
    return None


def to_rgb_image(image: Any) -> Image.Image:
    """A PIL RGB image from a PIL image of any mode or a uint8 array (H, W) / (H, W, 1|3|4)."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"numpy images must be uint8 (0..255), got {image.dtype}; "
                             "scale and cast them, e.g. (x * 255).round().astype(np.uint8)")
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise ValueError(f"expected a PIL image or a uint8 numpy array, got {type(image).__name__}")
    if image.mode.startswith("I;16") or image.mode == "I":
        # 16-bit grayscale (a 16-bit PNG opens as I;16, or I): convert("RGB") clips every value
        # above 255, so the image came out nearly white. Rescaled to 8 bits (65535 -> 255) instead.
        values = np.asarray(image).astype(np.float64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ValueError(f"a PIL mode {image.mode} image with values outside 0..65535 (found {values.min():g}.."
                             f"{values.max():g}) has no known range; save it as an 8- or 16-bit image")
        image = Image.fromarray(np.round(values / 257.0).astype(np.uint8))
    elif image.mode == "F":
        raise ValueError("a floating-point image (PIL mode F) has no known range; save it as an 8- or 16-bit image")
    return image if image.mode == "RGB" else image.convert("RGB")


def transform_image(image: Any, config: ImageTransformConfig) -> torch.Tensor:
    """One image -> float32 tensor (3, image_size, image_size), normalised."""
    image = to_rgb_image(image)
    resample = RESAMPLE_MODES[config.resample]
    if config.resize_to_square:
        image = image.resize((config.resize_size, config.resize_size), resample)
    else:
        # The short side becomes resize_size; the long side is truncated like HF's processors.
        width, height = image.size
        short, long = min(width, height), max(width, height)
        new_short, new_long = config.resize_size, int(config.resize_size * long / short)
        image = image.resize((new_short, new_long) if width <= height else (new_long, new_short), resample)
    width, height = image.size
    left, top = (width - config.image_size) // 2, (height - config.image_size) // 2
    if (width, height) != (config.image_size, config.image_size):
        image = image.crop((left, top, left + config.image_size, top + config.image_size))
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    pixels = (pixels - np.asarray(config.mean, np.float32)) / np.asarray(config.std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


def make_batch_transform(config: ImageTransformConfig
                         ) -> Callable[[dict[str, list[Any]]], dict[str, list[Any]]]:
    """For `Dataset.with_transform` on columns `pixel_values` (images) and `labels`."""
    def batch_transform(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        out = dict(batch)
        out["pixel_values"] = [transform_image(image, config) for image in batch["pixel_values"]]
        return out

    return batch_transform


def collate_vision(examples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack `pixel_values` (3, H, W) and `labels` (int) into a batch."""
    return {
        "pixel_values": torch.stack([torch.as_tensor(e["pixel_values"]) for e in examples]),
        "labels": torch.tensor([int(e["labels"]) for e in examples], dtype=torch.long),
    }
