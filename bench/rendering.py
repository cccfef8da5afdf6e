"""Rendering section: a thumbnail and a full-size rendered JPEG of one 512x512 16-bit
CT instance, against Pillow encoding the same picture alone (the floor: what is left
when decoding the file, the Modality/VOI pipeline and the HTTP layer cost nothing)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from bench.util import Report, Result, median

SIZE = 512


def _instance(path: Path) -> Path:
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    # A smooth body-like phantom with noise: JPEG costs what it costs on a real slice.
    y, x = np.mgrid[:SIZE, :SIZE]
    body = ((x - 256) ** 2 / 200**2 + (y - 256) ** 2 / 160**2) <= 1
    rng = np.random.default_rng(512)
    pixels = np.where(body, 1000 + 40 * np.sin(x / 9.0) + rng.normal(0, 15, body.shape), 0)
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = SIZE
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope = "-1024", "1"
    ds.WindowCenter, ds.WindowWidth = "40", "400"
    ds.PixelData = np.clip(pixels, 0, 4095).astype(np.uint16).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    return path


def _time(function: Callable[[], object], reps: int) -> float:
    function()  # warm: imports, page cache
    samples = []
    for _ in range(reps):
        started = time.perf_counter()
        function()
        samples.append(time.perf_counter() - started)
    return median(samples) * 1000


def rendering_section(report: Report, work: Path, reps: int = 30) -> None:
    from dicom_archive.web.rendering import (
        THUMBNAIL_SIZE,
        Viewport,
        encode,
        frame_pixels,
        render_frame,
        render_thumbnail,
    )

    path = _instance(work / "render-512.dcm")
    pixels = frame_pixels(path)

    # The same Pillow calls our encoder makes, on the picture already windowed.
    def pillow_thumbnail() -> bytes:
        return encode(pixels, viewport=Viewport(THUMBNAIL_SIZE, THUMBNAIL_SIZE), quality=75)

    def pillow_full() -> bytes:
        return encode(pixels, quality=90)

    thumb = _time(lambda: render_thumbnail(path), reps)
    thumb_base = _time(pillow_thumbnail, reps)
    report.add(
        Result(
            "rendering",
            "thumbnail of a 512x512 16-bit CT (read, window, fit to 128, JPEG), median",
            thumb,
            "ms",
            thumb_base,
            "Pillow alone: fit + JPEG of the windowed picture",
            note="(the ratio is the cost of reading, decoding and windowing the file)",
        )
    )
    full = _time(lambda: render_frame(path), reps)
    full_base = _time(pillow_full, reps)
    report.add(
        Result(
            "rendering",
            "rendered 512x512 JPEG (quality 90), median",
            full,
            "ms",
            full_base,
            "Pillow alone: JPEG of the windowed picture",
        )
    )
    decoded = _time(lambda: frame_pixels(path), reps)
    report.add(Result("rendering", "of which header, decode and VOI (no encoding)", decoded, "ms"))
