"""How big an image or a .latentz file may be: one policy for the format, the runtime, the CLI and
the server.

Why it exists: a header declares any size in a few bytes, and memory follows the declared size,
not the file's. A fully convolutional (spatial) decoder needs about 220 MB per megapixel (measured
on red-cars-128 through ONNX Runtime: 285 MB peak at 1 MP, 925 MB at 4 MP, 1.46 GB at 6.3 MP), so
a 22-byte file declaring 5792x5792 used to cost 7 GB. Every size is therefore judged *from the
header*, before a pixel or a symbol is allocated:

- an image we read is at most `SizeLimits.max_image_pixels` (decoding one costs 3-4 bytes a pixel);
- a fixed-size (vector) model codes only its own size, so a file must declare exactly that;
- a spatial model codes at most `max_coded_pixels`, at most `max_coded_side` a side. A bigger
  image is scaled down to fit before it is encoded (and the note says so); a bigger declared file
  is refused with a message that names the limit and the option that raises it.

Decoding in tiles would bound memory whatever the size, but would change the bitstream's meaning at
tile borders; refusing keeps every decode exact and the rule easy to state. The defaults keep one
encode or decode of any input under about 1 GB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from latentz.codec.format import MAX_PIXELS, CodecSettingError, Header, LatentzFormatError, ModelMismatchError
from latentz.imaging import MAX_PIXELS as MAX_IMAGE_PIXELS

MB_PER_CODED_MEGAPIXEL = 220
"""Peak memory of a spatial decode per megapixel, measured (see the module docstring)."""


class TooLargeError(LatentzFormatError):
    """A file or image that declares more pixels than this policy codes at once."""

    def __init__(self, message: str, limit: int) -> None:
        super().__init__(message)
        self.limit = limit


@dataclass(frozen=True)
class SizeLimits:
    """The most pixels an image or a file may declare; ``raise_with`` names the option that raises
    `max_coded_pixels` where the user meets it (a CLI flag, a server option)."""

    max_image_pixels: int = MAX_IMAGE_PIXELS
    max_coded_pixels: int = 4_194_304
    """2048x2048: a spatial decode then peaks near 0.9 GB."""
    max_coded_side: int = 65_535
    raise_with: str = "--max-coded-pixels"

    def __post_init__(self) -> None:
        for name in ("max_image_pixels", "max_coded_pixels", "max_coded_side"):
            if getattr(self, name) < 1:
                raise CodecSettingError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_coded_pixels > MAX_PIXELS:
            raise CodecSettingError(
                f"max_coded_pixels is at most {MAX_PIXELS:,}, the .latentz format's ceiling"
            )

    def fits(self, width: int, height: int) -> bool:
        """Whether a spatial model may code a ``width`` x ``height`` image as it is."""
        return max(width, height) <= self.max_coded_side and width * height <= self.max_coded_pixels

    def coded_size(self, width: int, height: int) -> tuple[int, int]:
        """The size a spatial model codes a ``width`` x ``height`` image at: itself if it fits, else
        scaled down (aspect kept) to the largest size that does."""
        if self.fits(width, height):
            return width, height
        scale = min(
            self.max_coded_side / max(width, height), math.sqrt(self.max_coded_pixels / (width * height))
        )
        new_width, new_height = max(1, round(width * scale)), max(1, round(height * scale))
        while not self.fits(new_width, new_height):  # rounding can leave one row too many
            new_width, new_height = max(1, new_width - 1), max(1, new_height - 1)
        return new_width, new_height

    def describe(self) -> str:
        side = f", {self.max_coded_side:,} px a side" if self.max_coded_side < 65_535 else ""
        return f"{self.max_coded_pixels:,} pixels{side}"

    def check_declared(
        self, header: Header, *, fully_convolutional: bool, image_size: int, model_name: str
    ) -> None:
        """Refuse a file whose declared image this model cannot decode within the limits.

        Called with the header alone, before the payload is entropy-decoded.
        """
        height, width = header.height, header.width
        if not fully_convolutional:
            if (height, width) != (image_size, image_size):
                raise ModelMismatchError(
                    f"the file declares a {width}x{height} image, but {model_name} codes only "
                    f"{image_size}x{image_size} images; the file is corrupt or was not made by it"
                )
            return
        if not self.fits(width, height):
            megabytes = width * height / 1e6 * MB_PER_CODED_MEGAPIXEL
            raise TooLargeError(
                f"the file declares a {width}x{height} image ({width * height:,} pixels); {model_name} "
                f"decodes at most {self.describe()} at once here, which bounds memory (this one would "
                f"need about {megabytes:,.0f} MB); {self.raise_with} raises the limit",
                self.max_coded_pixels,
            )


DEFAULT_LIMITS = SizeLimits()
