"""Image readers for ``LoadImaged``: PNG/JPG/BMP through PIL and TIFF through tifffile, both rows first, with what a
viewer shows (EXIF orientation applied, CMYK/YCCK/palette/1-bit converted to RGB or grey), and NIfTI.

Each 2D image's meta records ``exif_orientation`` (1: none) and ``colour_mode`` (the stored PIL mode, e.g. "CMYK",
or "tiff"), which folder inference reports.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import tifffile
from monai.data import ImageReader, NibabelReader, PILReader
from monai.data.utils import is_supported_format
from monai.utils import MetaKeys
from PIL import Image, ImageOps

from ..formats import NIFTI_SUFFIXES, error_reason, split_suffix

ROW_MAJOR = "row_major"  # image meta key: True when the array is (H, W), rows first, while MONAI's 2D layout is (W, H)
EXIF_ORIENTATION, COLOUR_MODE = "exif_orientation", "colour_mode"  # image meta keys of 2D images
GREY_TO_COLOUR = "grey_to_colour"  # image meta key (ToImageChannelsd): a grey image repeated for a colour network
EXIF_ORIENTATION_TAG = 0x0112
# PIL modes that numpy reads as they are: grey (8/16/32-bit, float), grey + alpha, RGB, RGBA
DIRECT_MODES = ("L", "I;16", "I;16B", "I;16L", "I", "F", "LA", "RGB", "RGBA")


def as_displayed(image: Image.Image) -> tuple[Image.Image, dict[str, object]]:
    """``image`` as a viewer shows it: EXIF orientation applied; CMYK, YCCK (PIL: CMYK), YCbCr, LAB, HSV and
    palette images converted to RGB (palette with transparency to RGBA), 1-bit to 8-bit grey. Returns the image and
    its meta entries (``exif_orientation``, ``colour_mode``)."""
    orientation = int(image.getexif().get(EXIF_ORIENTATION_TAG, 1) or 1)
    mode = image.mode
    if orientation != 1:
        image = ImageOps.exif_transpose(image)
    if image.mode == "1":
        image = image.convert("L")
    elif image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif image.mode == "PA":
        image = image.convert("RGBA")
    elif image.mode not in DIRECT_MODES:
        image = image.convert("RGB")
    return image, {EXIF_ORIENTATION: orientation, COLOUR_MODE: mode}


class RowMajorPILReader(PILReader):
    """``PILReader(reverse_indexing=False)`` of :func:`as_displayed` images: (H, W[, C]) arrays, rows first, marked
    ``meta["row_major"] = True``.

    Its ``spatial_shape`` stays MONAI's (W, H), which MONAI Label's ``Restored`` uses; :class:`ToImageLayoutd`
    turns predictions back into that layout.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(reverse_indexing=False, **kwargs)

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        images = img if isinstance(img, (list, tuple)) else [img]
        displayed = [as_displayed(image) for image in images]
        array, meta = super().get_data([image for image, _ in displayed] if len(images) > 1 else displayed[0][0])
        meta.update(displayed[0][1])
        meta[ROW_MAJOR] = True
        return array, meta


class TiffReader(ImageReader):
    """Read .tif/.tiff with tifffile (PIL fails on many scientific TIFFs, e.g. 16-bit multi-sample).

    Returns (H, W) or (H, W, C) arrays in the stored dtype, in the same (row, column) order and with the same
    metadata as :class:`RowMajorPILReader` (``spatial_shape`` (W, H), ``row_major``); the channel axis is
    recorded for ``EnsureChannelFirstd``.
    """

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        return is_supported_format(filename, ["tif", "tiff"])

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs) -> list[np.ndarray]:
        filenames = [data] if isinstance(data, (str, os.PathLike)) else list(data)
        return [np.squeeze(tifffile.imread(str(name))) for name in filenames]

    def get_data(self, img: list[np.ndarray] | np.ndarray) -> tuple[np.ndarray, dict]:
        arrays = img if isinstance(img, list) else [img]
        if len(arrays) != 1 or arrays[0].ndim not in (2, 3):
            raise ValueError(f"expected one 2D TIFF image (H, W) or (H, W, C), got shapes {[a.shape for a in arrays]}.")
        array = arrays[0]
        meta = {
            MetaKeys.SPATIAL_SHAPE: np.asarray(array.shape[1::-1]),
            ROW_MAJOR: True,
            MetaKeys.ORIGINAL_CHANNEL_DIM: -1 if array.ndim == 3 else float("nan"),
            MetaKeys.AFFINE: np.eye(3),
            MetaKeys.ORIGINAL_AFFINE: np.eye(3),
            EXIF_ORIENTATION: 1,
            COLOUR_MODE: "tiff",
        }
        return array, meta


def image_readers() -> list[ImageReader]:
    """Readers for PNG/JPG/BMP (row-major, i.e. (H, W[, C])), TIFF and NIfTI, for ``LoadImaged(reader=...)``."""
    return [NibabelReader(), TiffReader(), RowMajorPILReader()]


def open_image_header(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of a 2D image file from its header alone (no pixel data is decoded)."""
    if str(path).lower().endswith((".tif", ".tiff")):
        with tifffile.TiffFile(str(path)) as tiff:
            shape = tiff.pages[0].shape
        return int(shape[0]), int(shape[1])
    with Image.open(path) as image:
        return image.height, image.width


def header_problem(path: str | os.PathLike, max_pixels: int) -> str:
    """Why the 2D image file ``path`` cannot be segmented, judged from its header before any pixel is decoded, or ""
    (NIfTI files are left to their reader). One line naming the problem and the fix."""
    if split_suffix(os.path.basename(path))[1] in NIFTI_SUFFIXES:
        return ""
    kind = split_suffix(os.path.basename(path))[1].lstrip(".").upper()
    try:
        height, width = open_image_header(path)
    except PermissionError:
        return "permission denied; make the file readable (chmod +r)"
    except Image.DecompressionBombError as error:
        return f"image too large, a possible decompression bomb ({error_reason(error)}); max_pixels is {max_pixels}"
    except Exception as error:  # PIL, tifffile: not an image of this kind, or damaged
        return f"not a readable {kind} image ({error_reason(error)}); the file is damaged or not an image"
    if height * width > max_pixels:
        return (
            f"image too large: {width}x{height} pixels ({height * width / 1e6:.0f} megapixels) is over max_pixels "
            f"{max_pixels}; downscale it or raise --max_pixels"
        )
    return ""
