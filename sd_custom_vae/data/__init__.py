"""Layer 3, the data: images from wherever ``--data`` names them, decoded one way, cut into crops.

Knows nothing of models. Sources (folders, the built-in photos, 🤗 datasets, WebDataset shards) are opened by
``opener.open_source``; ``image_file.read_image`` is the one image reader; ``crops`` makes training and evaluation
crops; ``image_data`` gathers what a command works on.
"""

from .builtin import builtin_held_out, builtin_photos
from .colour import RGB_TO_YCBCR
from .crops import Augmentation, CropBatches, RandomCrops, StreamCrops, evaluation_crops, protocol_crops
from .image_data import ImageData, held_out_images, load_image_data, read_images, upscales_too_far
from .image_file import load_images, to_image
from .opener import absolute, looks_like_a_path
from .sources import DataOptions

# what the layers above, the examples and the benchmarks use; the rest is imported from its module
__all__ = [
    "RGB_TO_YCBCR", "Augmentation", "CropBatches", "DataOptions", "ImageData", "RandomCrops", "StreamCrops",
    "absolute", "builtin_held_out", "builtin_photos", "evaluation_crops", "held_out_images", "load_image_data",
    "load_images", "looks_like_a_path", "protocol_crops", "read_images", "to_image", "upscales_too_far",
]
