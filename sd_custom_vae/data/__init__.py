"""Layer 3, the data: images from wherever ``--data`` names them, decoded one way, cut into crops.

Knows nothing of models. Sources (folders, the built-in photos, 🤗 datasets, WebDataset shards) are opened by
``opener.open_source``; ``images.read_image`` is the one image reader; ``crops`` makes training and evaluation
crops; ``image_data`` gathers what a command works on.
"""

from .builtin import builtin_held_out, builtin_photos, builtin_source
from .colour import RGB_TO_YCBCR, rotate_hue
from .crops import (
    PROTOCOLS,
    Augmentation,
    CropBatches,
    RandomCrops,
    StreamCrops,
    evaluation_crops,
    protocol_crops,
    random_crop,
)
from .hf_datasets import expand_braces
from .image_data import (
    MAX_UPSCALE,
    ImageData,
    SourceImages,
    check_upscale,
    held_out_images,
    load_image_data,
    read_images,
)
from .images import IMAGE_SUFFIXES, LoadReport, at_least, load_images, prepare_images, read_image, to_image, to_tensor
from .opener import BUILTIN, absolute, find_images, folder_source, looks_like_a_path, open_source
from .sources import DataOptions, MapSource, StreamSource, bucket, take

__all__ = [
    "BUILTIN", "IMAGE_SUFFIXES", "absolute", "MAX_UPSCALE", "PROTOCOLS", "RGB_TO_YCBCR", "Augmentation", "CropBatches",
    "DataOptions", "ImageData", "LoadReport", "MapSource", "RandomCrops", "SourceImages", "StreamCrops",
    "StreamSource", "at_least", "bucket", "builtin_held_out", "builtin_photos", "builtin_source", "check_upscale",
    "evaluation_crops", "expand_braces", "find_images", "folder_source", "held_out_images", "load_image_data",
    "load_images", "looks_like_a_path", "open_source", "prepare_images", "protocol_crops", "random_crop",
    "read_image", "read_images", "rotate_hue", "take", "to_image", "to_tensor",
]
