"""Inputs: image sets (files, zips, folders) under input-safety limits, decoding, class lists,
dataset presets and attributes, and the benchmark datasets' layouts."""

from core.data.archives import ARCHIVE_SUFFIXES
from core.data.classes import (
    PRESETS,
    ClassList,
    DatasetPreset,
    get_preset,
    load_attributes,
    load_classes_file,
    parse_classes,
)
from core.data.coop import IMAGE_SUFFIXES
from core.data.decode import BadImageError, DecodeResult, SkippedFile, decode_image, decode_many
from core.data.images import ImageItem, ImageSet, NoImagesError, load_image_set

__all__ = [
    "ARCHIVE_SUFFIXES", "IMAGE_SUFFIXES", "PRESETS", "ClassList", "DatasetPreset", "get_preset",
    "load_attributes",
    "load_classes_file", "parse_classes", "BadImageError", "DecodeResult", "SkippedFile",
    "decode_image", "decode_many", "ImageItem", "ImageSet", "NoImagesError", "load_image_set",
]
