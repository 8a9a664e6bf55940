"""The images of a request: base64 data URLs, or files (paths or `file://` URLs) under the
server's image root. Nothing is fetched over the network, nothing outside the root is read, and
images over the byte or pixel limits are refused (413) before they are decoded in full."""

from __future__ import annotations

import base64
import binascii
import io
from urllib.parse import unquote, urlsplit

from PIL import Image

from sphinx_mllm.data.image_paths import ImagePathError, image_path_under
from sphinx_mllm.pipeline.images import DECODE_ERRORS
from sphinx_mllm.pipeline.serving.limits import RequestError, ServerLimits


def load_image(url: str, where: str, limits: ServerLimits) -> Image.Image:
    """The image a request names: a base64 data URL, or a file under the image root."""
    scheme = urlsplit(url).scheme.lower() if not url.startswith("data:") else "data"
    if scheme == "data":
        data = _data_url(url, where, limits)
    elif scheme in ("http", "https"):
        raise RequestError(
            400,
            f"{where}: this server fetches no images over {scheme}; send the image as a "
            "data URL (data:image/png;base64,...) or a path under the server's image root",
            where,
        )
    elif scheme in ("", "file"):
        data = _image_file(url, where, limits)
    else:
        raise RequestError(
            400,
            f"{where}: unsupported image URL scheme {scheme!r}; use a data URL or a path",
            where,
        )
    return _decode(data, where, limits)


def _data_url(url: str, where: str, limits: ServerLimits) -> bytes:
    header, comma, payload = url[len("data:") :].partition(",")
    if not comma or not header.lower().endswith(";base64"):
        raise RequestError(
            400, f"{where}: a data URL must be base64 (data:image/png;base64,...)", where
        )
    media = header[: -len(";base64")].split(";")[0].strip().lower()
    if media and not media.startswith("image/"):
        raise RequestError(400, f"{where}: the data URL holds {media!r}, not an image", where)
    payload = "".join(payload.split())
    if len(payload) // 4 * 3 > limits.max_image_bytes + 3:
        raise _too_big(where, len(payload) // 4 * 3, limits)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as error:
        raise RequestError(
            400, f"{where}: the data URL is not valid base64: {error}", where
        ) from error
    if len(data) > limits.max_image_bytes:
        raise _too_big(where, len(data), limits)
    return data


def _image_file(url: str, where: str, limits: ServerLimits) -> bytes:
    if url.lower().startswith("file:"):
        name = url[len("file:") :]
        name = unquote(name[2:] if name.startswith("//") else name)
    else:
        name = url
    if limits.image_root is None:
        raise RequestError(
            403,
            f"{where}: this server reads no image files (it was started without --image-root); "
            "send the image as a data URL",
            where,
        )
    try:
        path = image_path_under(limits.image_root, name)
    except ImagePathError as error:
        raise RequestError(403, f"{where}: {error}", where) from error
    if not path.is_file():
        raise RequestError(
            400, f"{where}: image {name!r} is not a file under the image root", where
        )
    size = path.stat().st_size
    if size > limits.max_image_bytes:
        raise _too_big(where, size, limits)
    return path.read_bytes()


def _too_big(where: str, size: int, limits: ServerLimits) -> RequestError:
    return RequestError(
        413, f"{where}: the image is {size} bytes; the limit is {limits.max_image_bytes}", where
    )


def _decode(data: bytes, where: str, limits: ServerLimits) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as opened:
            width, height = opened.size
            if width * height > limits.max_image_pixels:
                raise RequestError(
                    413,
                    f"{where}: the image is {width}x{height} pixels; the limit is "
                    f"{limits.max_image_pixels} pixels",
                    where,
                )
            return opened.convert("RGB")
    except Image.DecompressionBombError as error:
        raise RequestError(413, f"{where}: the image is too large: {error}", where) from error
    except DECODE_ERRORS as error:
        raise RequestError(400, f"{where}: cannot read the image: {error}", where) from error
