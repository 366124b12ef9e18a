"""Image and label file I/O shared by the vision kits, with errors that name the file.

Images are decoded by torchvision's native decoders (JPEG/PNG/WebP) and by Pillow for
the rest (BMP, TIFF, a GIF's first frame, ...), always as 3-channel uint8 (3,H,W):
grayscale images are repeated to RGB so every model sees 3 channels.

Labels are single-channel PNGs of class ids, read with Pillow because it keeps a
palette ('P') image's indices, which ARE the class ids in the VOC convention
(torchvision would expand the palette to colours). A colour-coded RGB label is
rejected: its colours are not class ids, and guessing a mapping would silently
train on the wrong classes.

Every decode reads the header first and refuses an image with more pixels than its limit
before a byte of pixel data is expanded: a 40 KB PNG can declare 16000x16000 pixels.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_image

from e2ekit.core.errors import DataError
from e2ekit.core.textio import read_utf8

__all__ = [
    "IMAGE_EXTS",
    "PIXEL_CEILING",
    "SERVE_LIMIT_KEY",
    "ImageTooLarge",
    "check_image_files",
    "colorize",
    "decode_image_bytes",
    "decode_image_field",
    "encode_png",
    "get_palette",
    "image_size",
    "list_inputs",
    "overlay",
    "read_image",
    "read_label",
]

# torchvision 0.29 warns on every decode that TorchCodec will take over image I/O; the
# decoders still work and are the fastest available here, so keep logs readable.
warnings.filterwarnings(
    "ignore",
    message="The image decoding and encoding capabilities of TorchVision",
    category=DeprecationWarning,
)

# The most pixels any image may have here, whatever a limit is set to (3 GiB as RGB). Pillow
# refuses beyond twice its MAX_IMAGE_PIXELS and warns beyond it: e2ekit checks its own,
# lower, configured limits from the header, so Pillow's guard moves up to this ceiling
# (its default, 179 MP, would refuse the large aerial images seg predict tiles).
PIXEL_CEILING = 1 << 30
Image.MAX_IMAGE_PIXELS = PIXEL_CEILING
CEILING_KEY = "e2ekit's ceiling for any image"
# The config key the serving limit lives under (ServeSettings.max_image_pixels).
SERVE_LIMIT_KEY = "serve.max_image_pixels"
# Formats torchvision decodes natively; the rest go through Pillow.
# PNG goes to Pillow: torchvision's libpng decoder crashes the process (SIGSEGV) on a
# corrupt IDAT stream, and one bad upload must not kill a server.
_TORCHVISION_FORMATS = {"JPEG", "WEBP"}

# Pillow modes whose pixel values are the class ids themselves.
_ID_MODES = {"L", "P", "I", "I;16", "I;16L", "I;16B", "1"}


def _pil_to_rgb_tensor(im: Image.Image) -> torch.Tensor:
    if im.mode in ("I", "I;16", "I;16B", "I;16L"):  # 16-bit grey: keep the high byte
        grey = (np.asarray(im, dtype=np.int64).clip(0, 65535) >> 8).astype(np.uint8)
        return torch.from_numpy(grey)[None].expand(3, -1, -1).contiguous()
    arr = np.array(im.convert("RGB"), dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()  # (3, H, W)


class ImageTooLarge(DataError):
    """An image whose header declares more pixels than a limit allows; nothing was decoded.

    ``size`` is (width, height), or None where Pillow refused the header as a bomb before
    saying its size. ``key`` names the setting that holds ``limit``, so the message tells the
    user what to raise.
    """

    def __init__(self, what: str, size: tuple[int, int] | None, limit: int, key: str) -> None:
        self.what, self.size, self.limit, self.key = what, size, limit, key
        shape = "" if size is None else f"{size[0]}x{size[1]} ({size[0] * size[1]} pixels), "
        super().__init__(f"{what} is {shape}over the limit of {limit} pixels ({key})")


def _check_pixels(what: str, size: tuple[int, int], max_pixels: int | None, limit_key: str) -> None:
    if size[0] * size[1] > PIXEL_CEILING:
        raise ImageTooLarge(what, size, PIXEL_CEILING, CEILING_KEY)
    if max_pixels is not None and size[0] * size[1] > max_pixels:
        raise ImageTooLarge(what, size, max_pixels, limit_key)


def _header(raw: bytes, what: str) -> Image.Image:
    """The image opened by Pillow, which reads the header (size, format) and no pixel data."""
    try:
        return Image.open(io.BytesIO(raw))
    except Image.DecompressionBombError:
        raise ImageTooLarge(what, None, PIXEL_CEILING, CEILING_KEY) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(
            f"cannot decode image {what}: {_reason(exc)} (is it a JPEG/PNG/BMP/TIFF file?)"
        ) from None


def _reason(exc: BaseException) -> str:
    """Pillow's message without the in-memory buffer it names (``<_io.BytesIO at 0x..>``)."""
    if isinstance(exc, UnidentifiedImageError):
        return "not an image format Pillow knows, or a truncated header"
    return str(exc)


def _decode(raw: bytes, what: str, max_pixels: int | None, limit_key: str) -> torch.Tensor:
    """Check the header's size against the limit, then decode: torchvision for JPEG/PNG/WebP
    (fast, native), Pillow for the rest and for what torchvision cannot read.

    The size check comes first so an image bomb (a small file declaring a huge picture) costs
    microseconds, not gigabytes. Other formats go to Pillow because it decodes one frame: an
    animated GIF's later frames are never expanded.
    """
    with _header(raw, what) as im:
        _check_pixels(what, im.size, max_pixels, limit_key)
        if im.format not in _TORCHVISION_FORMATS:
            try:
                return _pil_to_rgb_tensor(im)
            except (OSError, ValueError, SyntaxError) as exc:
                raise DataError(f"cannot decode image {what}: {exc}") from None
    try:
        img = decode_image(torch.frombuffer(bytearray(raw), dtype=torch.uint8), ImageReadMode.RGB)
    except RuntimeError as tv_exc:
        try:
            with Image.open(io.BytesIO(raw)) as im:
                return _pil_to_rgb_tensor(im)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            raise DataError(
                f"cannot decode image {what}: {_reason(exc) or tv_exc} "
                "(is it a JPEG/PNG/BMP/TIFF file?)"
            ) from None
    if img.ndim == 4:  # several frames: the first
        img = img[0]
    if img.dtype == torch.uint16:  # a 16-bit PNG: keep the high byte
        img = (img.to(torch.int32) >> 8).to(torch.uint8)
    return img


def read_image(
    path: str | Path, max_pixels: int | None = None, limit_key: str = ""
) -> torch.Tensor:
    """An image file as uint8 (3, H, W) RGB; a missing or corrupt file is a DataError.

    An image over ``max_pixels`` (width x height from its header) is :class:`ImageTooLarge`,
    raised before decoding and naming ``limit_key``; :data:`PIXEL_CEILING` always applies.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError:
        if not path.is_file():
            raise DataError(f"image file not found: {path}") from None
        raise DataError(f"cannot read image file {path}") from None
    if not raw:
        raise DataError(f"image file is empty: {path}")
    return _decode(raw, str(path), max_pixels, limit_key)


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file from its header alone, to refuse a file before
    reading it whole."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise DataError(f"image file not found: {path}") from None
    except Image.DecompressionBombError:
        raise ImageTooLarge(str(path), None, PIXEL_CEILING, CEILING_KEY) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(
            f"cannot decode image {path}: {_reason(exc)} (is it a JPEG/PNG/BMP/TIFF file?)"
        ) from None


def check_image_files(paths: Iterable[Path], max_pixels: int, limit_key: str) -> None:
    """Refuse the first file over ``max_pixels`` before any is decoded: a predict run over
    a folder fails in milliseconds rather than after hours, or out of memory."""
    for path in paths:
        _check_pixels(str(path), image_size(path), max_pixels, limit_key)


def decode_image_bytes(
    data: bytes, max_pixels: int | None = None, limit_key: str = "", what: str = ""
) -> torch.Tensor:
    """Encoded image bytes (an upload, a request body) as uint8 (3, H, W) RGB; limits as
    :func:`read_image`."""
    if not data:
        raise DataError("cannot decode image: no bytes received")
    return _decode(bytes(data), what or f"({len(data)} bytes)", max_pixels, limit_key)


def decode_image_field(
    value: str, field: str = "image", max_pixels: int | None = None
) -> torch.Tensor:
    """A request's base64 image field as uint8 (3, H, W) RGB, for the vision kits' servers.

    Bad base64 or an undecodable image is HTTP 422; an image over ``max_pixels`` (default:
    the serving app's ``serve.max_image_pixels``) is 413, refused from its header before any
    decoding. Each names the field, so a bad request never reaches the model.
    """
    from e2ekit.core.serve.app import BadRequest, current_settings  # keep FastAPI out of training

    if max_pixels is None:
        max_pixels = current_settings().max_image_pixels
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"'{field}' is not valid base64", 422) from None
    try:
        return decode_image_bytes(raw, max_pixels, SERVE_LIMIT_KEY, what=f"'{field}'")
    except ImageTooLarge as exc:
        raise BadRequest(str(exc), 413) from None
    except DataError as exc:
        raise BadRequest(f"'{field}' could not be decoded: {exc}", 422) from None


def read_label(path: str | Path) -> np.ndarray:
    """A label PNG as an (H, W) array of class ids (uint8, uint16 or int32, as stored).

    The dtype is kept narrow on purpose: validation counts values with
    ``np.bincount`` and datasets remap with a lookup table, both fastest on
    uint8/uint16.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"label file not found: {path}")
    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode not in _ID_MODES:
                if mode in ("RGB", "RGBA", "LA", "PA", "CMYK", "YCbCr", "HSV", "LAB"):
                    raise DataError(
                        f"label {path} is a {mode} image; a label must be a single-channel PNG "
                        "of class ids (mode L or P): convert a colour-coded label to ids by "
                        "mapping each palette colour to its class index"
                    )
                raise DataError(
                    f"label {path} has unsupported image mode {mode}; save it as a "
                    "single-channel 8- or 16-bit PNG of class ids"
                )
            arr = np.array(im)
    except Image.DecompressionBombError:
        raise ImageTooLarge(f"label {path}", None, PIXEL_CEILING, CEILING_KEY) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"cannot decode label file {path}: {_reason(exc)}") from None
    if arr.ndim != 2:
        raise DataError(f"label {path} has shape {arr.shape}; expected (H, W) class ids")
    if arr.dtype == np.bool_:  # mode '1': black/white -> 0/1
        arr = arr.astype(np.uint8)
    elif arr.dtype.byteorder == ">":  # 'I;16B' -> native uint16
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


def encode_png(array: np.ndarray | torch.Tensor, compress_level: int = 6) -> bytes:
    """PNG bytes of an (H, W) id map (uint8/uint16) or an RGB image (H,W,3) or (3,H,W)."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
        if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
            array = array.transpose(1, 2, 0)  # (C,H,W) -> (H,W,C)
    arr = np.asarray(array)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        if arr.dtype == np.uint8:
            im = Image.fromarray(arr, mode="L")
        else:
            if arr.size and (arr.min() < 0 or arr.max() > 65535):
                raise ValueError("a PNG label holds values 0..65535 only")
            im = Image.fromarray(arr.astype(np.uint16))
    elif arr.ndim == 3 and arr.shape[-1] in (3, 4):
        im = Image.fromarray(np.ascontiguousarray(arr.astype(np.uint8)))
    else:
        raise ValueError(f"cannot encode an array of shape {arr.shape} as PNG")
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def get_palette(n: int = 256) -> np.ndarray:
    """(n, 3) uint8 colours, visually distinct for neighbouring class ids.

    The bits of each class id are spread over the high bits of R, G and B (the
    scheme PASCAL VOC and PaddleSeg use), so class 0 is black, 1 dark red, 2
    dark green, and ids differing in a low bit differ strongly in colour.
    """
    ids = np.arange(n, dtype=np.int64)
    pal = np.zeros((n, 3), dtype=np.int64)
    for shift in range(8):
        for ch in range(3):
            bit = (ids >> (3 * shift + ch)) & 1
            pal[:, ch] |= bit << (7 - shift)
    return pal.astype(np.uint8)


def _to_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def colorize(label: np.ndarray | torch.Tensor, palette: np.ndarray | None = None) -> np.ndarray:
    """An (H, W) id map as an (H, W, 3) uint8 RGB picture (ids beyond the palette wrap)."""
    lab = _to_numpy(label).astype(np.int64)
    if palette is None:
        palette = get_palette(max(256, int(lab.max()) + 1 if lab.size else 256))
    pal = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    return pal[np.mod(lab, len(pal))]


def overlay(
    image: np.ndarray | torch.Tensor,
    label: np.ndarray | torch.Tensor,
    alpha: float = 0.5,
    palette: np.ndarray | None = None,
    ignore_index: int | None = 255,
) -> np.ndarray:
    """The image blended with its colourised label, (H, W, 3) uint8; ignored pixels unblended.

    ``image`` is uint8 (H, W, 3) or (3, H, W) (a float image in [0, 1] is scaled).
    """
    img = _to_numpy(image)
    if img.ndim == 3 and img.shape[0] == 3 and img.shape[-1] != 3:
        img = img.transpose(1, 2, 0)  # (3,H,W) -> (H,W,3)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.dtype != np.uint8:
        img = np.clip(img * 255.0 if img.max() <= 1.0 else img, 0, 255).astype(np.uint8)
    lab = _to_numpy(label)
    if lab.shape != img.shape[:2]:
        raise ValueError(f"label shape {lab.shape} does not match image {img.shape[:2]}")
    colour = colorize(lab, palette).astype(np.float32)
    out = (1.0 - alpha) * img.astype(np.float32) + alpha * colour
    if ignore_index is not None:
        keep = lab == ignore_index
        out[keep] = img[keep]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def list_inputs(path: Path) -> list[Path]:
    """An image file, a folder of images (recursive) or a list file (first column per line;
    a relative entry is looked up beside the list, then from the working directory)."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
        if not files:
            raise DataError(f"--input {path}: no image files ({', '.join(sorted(IMAGE_EXTS))})")
        return files
    if path.suffix.lower() in IMAGE_EXTS:
        return [path]
    files = []
    for line_no, line in enumerate(read_utf8(path, DataError).splitlines(), start=1):
        if not line.strip():
            continue
        entry = Path(line.split()[0])
        places = [entry] if entry.is_absolute() else [path.parent / entry, entry]
        item = next((p for p in places if _is_file(p)), None)
        if item is None:
            where = " or ".join(str(p) for p in places)
            raise DataError(f"{path}:{line_no}: image not found: {where}")
        files.append(item)
    if not files:
        raise DataError(f"--input {path}: the list file names no images")
    return files


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a name too long for the file system
        return False
