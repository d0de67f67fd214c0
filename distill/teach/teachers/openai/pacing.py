"""How fast the API teacher may send: client-side rate limits and the server's Retry-After."""

from __future__ import annotations

import asyncio
import email.utils
import time
from typing import Any


class RateLimiter:
    """Token buckets for requests/min and tokens/min, refilled continuously; a bucket holds
    at most 5 seconds' worth, so the limit is never exceeded in bursts."""

    def __init__(self, requests_per_minute: float | None, tokens_per_minute: float | None):
        self.limits = [
            (r / 60.0, max(1.0, r / 12.0)) if r else None for r in (requests_per_minute, tokens_per_minute)
        ]
        self.level = [lim[1] if lim else 0.0 for lim in self.limits]
        self.stamp = time.monotonic()
        self.lock = asyncio.Lock()

    async def acquire(self, tokens: float) -> None:
        async with self.lock:  # first come, first served
            for i, need in enumerate((1.0, tokens)):
                if self.limits[i] is None:
                    continue
                rate, capacity = self.limits[i]
                need = min(need, capacity)
                while True:
                    now = time.monotonic()
                    self._refill(now)
                    if self.level[i] >= need:
                        self.level[i] -= need
                        break
                    await asyncio.sleep((need - self.level[i]) / rate)

    def _refill(self, now: float) -> None:
        for i, lim in enumerate(self.limits):
            if lim:
                self.level[i] = min(lim[1], self.level[i] + (now - self.stamp) * lim[0])
        self.stamp = now


def retry_after(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms``, or ``retry-after`` in seconds or as an HTTP date."""
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return min(max(float(value) / scale, 0.0), 600.0)
        except ValueError:
            try:
                return min(
                    max(email.utils.parsedate_to_datetime(value).timestamp() - time.time(), 0.0), 600.0
                )
            except (TypeError, ValueError):
                return None
    return None
