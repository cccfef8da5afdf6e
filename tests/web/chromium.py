"""Headless Chromium (Debian's /usr/bin/chromium) driven by Playwright, never a
downloaded browser; a fresh profile per browser."""

from __future__ import annotations

import io
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
from PIL import Image

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags the closed network here refuses many
# connections and Chromium stalls on them.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

needs_chromium = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None, reason="Debian's chromium is not installed"
)


@contextmanager
def browser_context(extra_flags: list[str] | None = None, **options: Any) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                args=FLAGS + (extra_flags or []),
                headless=True,
                viewport={"width": 1280, "height": 900},
                **options,
            )
            try:
                yield context
            finally:
                context.close()


def picture_stats(png: bytes) -> tuple[float, int]:
    """(standard deviation of the grey values, number of distinct colours)."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    pixels = np.asarray(image)
    colours = len(np.unique(pixels.reshape(-1, 3), axis=0))
    return float(pixels.std()), colours
