"""What one request may ask of the server, and how a refusal is answered: an HTTP status and an
OpenAI-style error body, `{"error": {"message": ..., "type": "invalid_request_error", ...}}`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fastapi.responses import JSONResponse

MiB = 1 << 20


class RequestError(Exception):
    """A request the server refuses: the HTTP status and the message sent back."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


@dataclass(frozen=True)
class ServerLimits:
    """What one request may ask for. `image_root` None: no image files are read at all."""

    image_root: Path | None = None
    max_image_bytes: int = 20 * MiB
    max_image_pixels: int = 4096 * 4096
    max_images: int = 8

    @property
    def max_body_bytes(self) -> int:
        """A request holds at most `max_images` base64 images and 1 MiB of everything else."""
        return self.max_images * (self.max_image_bytes * 4 // 3 + 4) + MiB


def error_response(status: int, message: str, param: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    return JSONResponse(body, status_code=status)
