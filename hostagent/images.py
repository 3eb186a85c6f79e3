"""The host's image cache: gallery images fetched by digest, plus the boot kit's built-in ones.

An OS disk names its image by sha256. The cache keeps one file per digest
(``<cache>/<sha256>``), downloaded once from the gallery's object store and verified; an image
without a digest (``tiny`` on a cluster whose scheduler has no copy of it) comes from the boot
kit (``<boot_dir>/<name>.qcow2``). Overlays point at these files, so they are never modified.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from common.errors import DriverError
from common.images import file_sha256

log = logging.getLogger(__name__)

ImageFetcher = Callable[[str, Path], Awaitable[None]]
"""``fetch(sha256, dest)``: write the gallery object with that digest to ``dest``."""


class ImageCache:
    def __init__(
        self, cache_dir: Path, builtin_dir: Path | None, fetcher: ImageFetcher | None = None
    ) -> None:
        self.cache_dir = cache_dir
        self.builtin_dir = builtin_dir
        self.fetcher = fetcher
        self._locks: dict[str, asyncio.Lock] = {}
        self._builtin_digests: dict[Path, tuple[float, str]] = {}

    def builtin(self, name: str) -> Path | None:
        if self.builtin_dir is None:
            return None
        for suffix in (".qcow2", ".raw", ".img"):
            path = self.builtin_dir / f"{name}{suffix}"
            if path.is_file():
                return path
        return None

    def _builtin_digest(self, path: Path) -> str:
        mtime = path.stat().st_mtime
        known = self._builtin_digests.get(path)
        if known is None or known[0] != mtime:
            known = self._builtin_digests[path] = (mtime, file_sha256(path))
        return known[1]

    async def resolve(self, name: str, sha256: str) -> Path:
        """A local file holding image ``name`` with digest ``sha256`` (fetched if needed)."""
        builtin = self.builtin(name)
        if not sha256:
            if builtin is None:
                raise DriverError(
                    f"image {name!r} has no digest and this host has no built-in copy of it",
                    retryable=True,
                )
            return builtin
        if builtin is not None and self._builtin_digest(builtin) == sha256:
            return builtin
        cached = self.cache_dir / sha256
        if cached.is_file():
            return cached
        lock = self._locks.setdefault(sha256, asyncio.Lock())
        async with lock:
            if not cached.is_file():
                await self._fetch(name, sha256, cached)
        return cached

    async def _fetch(self, name: str, sha256: str, dest: Path) -> None:
        if self.fetcher is None:
            raise DriverError(
                f"image {name!r} is not cached and no gallery is reachable", retryable=True
            )
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        partial = dest.with_name(f".{dest.name}.partial")
        try:
            await self.fetcher(sha256, partial)
            actual = await asyncio.to_thread(file_sha256, partial)
            if actual != sha256:
                raise DriverError(
                    f"image {name!r} fetched with sha256 {actual}, expected {sha256}",
                    retryable=True,
                )
            os.replace(partial, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
        log.info("image cached name=%s sha256=%s", name, sha256)
