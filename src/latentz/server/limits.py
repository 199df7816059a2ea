"""The server's limits: what it refuses before doing work, in one place so the docs, the errors and the
tests agree. Enforced by `latentz.server.middleware` (bodies), `latentz.server.uploads` (content),
`latentz.server.gate` (jobs) and the codec's `SizeLimits` (pixels).
"""

from __future__ import annotations

from dataclasses import dataclass

from latentz.codec.limits import SizeLimits

MULTIPART_OVERHEAD = 64 * 1024
"""Room for multipart boundaries and small form fields on top of the file itself."""
MAX_JSON_BYTES = 4 * 1024 * 1024
"""Largest JSON body (interpolate: two latents, a few thousand numbers). JSON is parsed in the event
loop, where a 12 MiB body would stall every other request for about 0.2 s."""


@dataclass(frozen=True)
class Limits:
    """The server's refusals, in one place so the docs, the errors and the tests agree."""

    max_upload_bytes: int = 16 * 1024 * 1024
    max_pixels: int = 24_000_000
    max_spatial_side: int = 1024
    max_samples: int = 64
    max_interpolation_steps: int = 32
    max_concurrent_jobs: int = 4
    queue_timeout_s: float = 30.0
    max_waiting_per_client: int = 64
    """Requests one client (IP address) may have waiting for a slot; more are refused with 429 at once."""
    body_idle_timeout_s: float = 30.0
    """Longest pause allowed between two pieces of a request body (slow-body / slowloris clients)."""
    body_timeout_s: float = 300.0
    """Longest a whole request body may take to arrive (16 MiB at 56 KB/s)."""
    header_timeout_s: float = 10.0
    """Longest a connection may take to send a complete request head (request line and headers)."""
    allowed_hosts: tuple[str, ...] = ()
    """Host names answered besides IP addresses and ``localhost`` (``*``: any); others get 421."""
    allowed_origins: tuple[str, ...] = ()
    """Other sites (``scheme://host[:port]``) whose pages may run the models; others get 403."""

    def __post_init__(self) -> None:
        # JSON (how the limits reach `latentz serve`'s workers) has lists, not tuples.
        object.__setattr__(self, "allowed_hosts", tuple(self.allowed_hosts))
        object.__setattr__(self, "allowed_origins", tuple(self.allowed_origins))

    def sizes(self) -> SizeLimits:
        """The size policy every encode and decode here runs under: what encode scales an upload
        down to is also the most a .latentz file may declare, so the server decodes whatever it
        encodes and nothing bigger."""
        return SizeLimits(
            max_image_pixels=self.max_pixels,
            max_coded_pixels=self.max_spatial_side**2,
            max_coded_side=self.max_spatial_side,
            raise_with="`latentz serve --max-spatial-side`",
        )
