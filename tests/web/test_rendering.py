"""Rendered frames and thumbnails against independent renderings of the same files.

The oracle is DCMTK (``dcmj2pnm``, ``dcml2pnm`` for JPEG-LS: its own decoders and its
own VOI pipeline) with the window settings our defaults imply; JPEG 2000, which DCMTK
cannot decode, is checked against the same image stored uncompressed and against
pydicom's own VOI functions.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.pixels.processing import apply_voi_lut

from dicom_archive.errors import UsageError
from dicom_archive.web.rendering import (
    FrameNotFound,
    NotRenderable,
    Viewport,
    Window,
    encode,
    frame_pixels,
    parse_viewport,
    parse_window,
    render_frame,
    render_thumbnail,
)
from tests.factory import make_instance, write_dataset

needs_dcmtk = pytest.mark.skipif(shutil.which("dcmj2pnm") is None, reason="DCMTK not installed")


def pydicom_file(name: str) -> Path:
    return Path(get_testdata_file(name))


def dcmtk_render(path: Path, out: Path, options: list[str], frame: int = 1) -> np.ndarray[Any, Any]:
    tool = (
        "dcml2pnm"
        if "jls" in path.name.lower() or "jpeg_ls" in path.name.lower() or "JPEGLS" in path.name
        else "dcmj2pnm"
    )
    subprocess.run(
        [tool, *options, "+F", str(frame), str(path), str(out)], check=True, capture_output=True
    )
    return np.asarray(Image.open(out)).astype(int)


def assert_close(ours: np.ndarray[Any, Any], reference: np.ndarray[Any, Any]) -> None:
    """Rounding differs by a grey level here and there, never more than 3."""
    assert ours.shape == reference.shape
    difference = np.abs(ours.astype(int) - reference.astype(int))
    assert difference.mean() <= 1.0, difference.mean()
    assert difference.max() <= 3, difference.max()


# (file, DCMTK options equivalent to our default for it, frame)
DCMTK_CASES = [
    # grey, no window in the file: the frame's min/max
    ("CT_small.dcm", ["+Wm"], 1),  # signed 16-bit, rescale
    ("JPGExtended.dcm", ["+Wm"], 1),  # JPEG extended 12-bit
    ("JPEGLSNearLossless_16.dcm", ["+Wm"], 1),  # JPEG-LS near-lossless
    ("liver_1frame.dcm", ["+Wm"], 1),  # 1-bit segmentation
    ("rtdose.dcm", ["+Wm"], 5),  # 32-bit, multi-frame: frame 5 of 15
    ("image_dfl.dcm", ["+Wm"], 1),  # deflated data set
    # grey, the file's first Window Center/Width
    ("MR_small.dcm", ["+Wi", "1"], 1),
    ("MR_small_bigendian.dcm", ["+Wi", "1"], 1),
    ("MR_small_RLE.dcm", ["+Wi", "1"], 1),
    ("MR_small_jpeg_ls_lossless.dcm", ["+Wi", "1"], 1),
    ("examples_overlay.dcm", ["+Wi", "1", "--no-overlays"], 1),
    # colour
    ("examples_rgb_color.dcm", [], 1),
    ("ExplVR_BigEnd.dcm", [], 1),
    ("examples_palette.dcm", [], 1),
    ("examples_ybr_color.dcm", [], 10),  # JPEG baseline YBR_FULL_422, frame 10 of 30
    ("SC_ybr_full_422_uncompressed.dcm", [], 1),
    ("SC_rgb_dcmtk_+eb+cy+np.dcm", [], 1),  # JPEG baseline YBR_FULL_422
    ("SC_rgb_jpeg_gdcm.dcm", [], 1),  # JPEG lossless RGB
    ("SC_rgb_jls_lossy_line.dcm", [], 1),  # JPEG-LS RGB
    ("SC_rgb_rle_16bit_2frame.dcm", [], 2),  # RLE 16-bit RGB, second frame
    ("SC_rgb_rle_32bit.dcm", [], 1),
]


@needs_dcmtk
@pytest.mark.parametrize(("name", "options", "frame"), DCMTK_CASES, ids=[c[0] for c in DCMTK_CASES])
def test_frames_match_dcmtk(tmp_path: Path, name: str, options: list[str], frame: int) -> None:
    """Grey (rescale, window, min/max, 1 to 32 bits, signed) and colour (RGB, YBR,
    palette) frames in every transfer syntax render as DCMTK renders them."""
    path = pydicom_file(name)
    reference = dcmtk_render(path, tmp_path / "ref.pnm", options, frame)
    assert_close(frame_pixels(path, frame=frame), reference)


def test_png_is_the_frame_exactly() -> None:
    """PNG is lossless: decoding it gives back the display values."""
    path = pydicom_file("MR_small.dcm")
    png = render_frame(path, media_type="image/png")
    assert png.startswith(b"\x89PNG")
    decoded = np.asarray(Image.open(io.BytesIO(png)))
    assert np.array_equal(decoded, frame_pixels(path))


def test_jpeg_2000_renders_as_the_same_image_uncompressed() -> None:
    """A lossless JPEG 2000 copy of MR_small renders exactly as the original."""
    assert np.array_equal(
        frame_pixels(pydicom_file("MR_small_jp2klossless.dcm")),
        frame_pixels(pydicom_file("MR_small.dcm")),
    )


@pytest.mark.parametrize("name", ["693_J2KI.dcm", "J2K_pixelrep_mismatch.dcm"])
def test_jpeg_2000_window_matches_pydicom(name: str) -> None:
    """The file's window applied by pydicom's own VOI function gives the same picture."""
    path = pydicom_file(name)
    ds = pydicom.dcmread(path)
    # pydicom's window takes modality values and maps onto the rescaled range of
    # the stored bits: bring that range to 0..255.
    slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
    values = apply_voi_lut(ds.pixel_array * slope + intercept, ds, index=0)
    bits, signed = ds.BitsStored, ds.PixelRepresentation
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    low, high = low * slope + intercept, high * slope + intercept
    reference = (values - low) / (high - low) * 255
    assert_close(frame_pixels(path), np.rint(reference))


@pytest.mark.parametrize(
    "name", ["GDCMJ2K_TextGBR.dcm", "examples_jpeg2k.dcm", "SC_rgb_gdcm_KY.dcm"]
)
def test_jpeg_2000_colour_matches_pydicom(name: str) -> None:
    path = pydicom_file(name)
    assert np.array_equal(frame_pixels(path), pydicom.dcmread(path).pixel_array)


def _synthetic(tmp_path: Path, name: str, **overrides: Any) -> Path:
    return write_dataset(make_instance(rows=64, columns=48, **overrides), tmp_path / name)


def _ramp(signed: bool) -> bytes:
    values = np.arange(64 * 48, dtype=np.int32).reshape(64, 48) * 3 - (2000 if signed else 0)
    return values.astype(np.int16 if signed else np.uint16).tobytes()


@needs_dcmtk
def test_monochrome1_is_inverted_as_dcmtk_does(tmp_path: Path) -> None:
    path = _synthetic(
        tmp_path,
        "m1.dcm",
        PhotometricInterpretation="MONOCHROME1",
        BitsStored=16,
        HighBit=15,
        PixelData=_ramp(False),
    )
    ours = frame_pixels(path)
    assert ours[0, 0] == 255 and ours[-1, -1] == 0  # the lowest value is white
    assert_close(ours, dcmtk_render(path, tmp_path / "ref.pnm", ["+Wm"]))


@needs_dcmtk
@pytest.mark.parametrize("function", ["linear", "linear-exact", "sigmoid"])
def test_signed_rescaled_with_a_requested_window(tmp_path: Path, function: str) -> None:
    """window=center,width[,function] overrides the file's window, in modality units."""
    path = _synthetic(
        tmp_path,
        "signed.dcm",
        PixelRepresentation=1,
        BitsStored=16,
        HighBit=15,
        PixelData=_ramp(True),
        RescaleSlope="2",
        RescaleIntercept="-1024",
        WindowCenter="40",
        WindowWidth="400",
    )
    window = Window(-500, 3000, function)
    ours = frame_pixels(path, window=window)
    options = ["+Ww", "-500", "3000"]
    if function != "linear":
        # DCMTK 3.6.7 implements the linear function only: check the others by formula.
        values = (np.frombuffer(_ramp(True), dtype=np.int16).reshape(64, 48) * 2.0) - 1024
        if function == "sigmoid":
            expected = 255 / (1 + np.exp(-4 * (values + 500) / 3000))
        else:
            expected = np.clip(((values + 500) / 3000 + 0.5), 0, 1) * 255
        assert_close(ours, np.rint(expected))
        return
    assert_close(ours, dcmtk_render(path, tmp_path / "ref.pnm", options))
    # and without the parameter, the file's own window (40/400), as DCMTK's +Wi 1
    assert_close(frame_pixels(path), dcmtk_render(path, tmp_path / "ref2.pnm", ["+Wi", "1"]))


@needs_dcmtk
def test_voi_lut_sequence_is_applied_as_dcmtk_does(tmp_path: Path) -> None:
    from pydicom.dataset import Dataset

    lut = Dataset()
    lut.LUTDescriptor = [256, 0, 8]
    # A curve nobody would mistake for a window: the square root
    lut.LUTData = [round(255 * (i / 255) ** 0.5) for i in range(256)]
    ds = make_instance(
        rows=64,
        columns=48,
        BitsStored=8,
        HighBit=7,
        PixelData=(np.arange(64 * 48) % 300).astype(np.uint16).tobytes(),
    )
    ds.VOILUTSequence = [lut]
    ds[0x00283010][0][0x00283006].VR = "US"
    path = write_dataset(ds, tmp_path / "voi.dcm")
    assert_close(frame_pixels(path), dcmtk_render(path, tmp_path / "ref.pnm", ["+Wl", "1"]))


def test_thumbnail_is_small_and_shows_the_middle_frame() -> None:
    path = pydicom_file("examples_ybr_color.dcm")  # 30 frames, 320x240
    thumbnail = Image.open(io.BytesIO(render_thumbnail(path)))
    assert thumbnail.format == "JPEG" and thumbnail.size == (128, 96)
    middle = Image.fromarray(frame_pixels(path, frame=15)).resize((128, 96))
    first = Image.fromarray(frame_pixels(path, frame=1)).resize((128, 96))
    ours = np.asarray(thumbnail.convert("RGB")).astype(int)
    assert np.abs(ours - np.asarray(middle)).mean() < np.abs(ours - np.asarray(first)).mean()


def test_viewport_fits_keeping_the_aspect_and_crops_a_region() -> None:
    pixels = frame_pixels(pydicom_file("JPGExtended.dcm"))  # 256 wide, 1024 high
    fitted = Image.open(
        io.BytesIO(encode(pixels, media_type="image/png", viewport=Viewport(100, 100)))
    )
    assert fitted.size == (25, 100)
    region = encode(pixels, media_type="image/png", viewport=parse_viewport("64,64,10,20,32,32"))
    cropped = np.asarray(Image.open(io.BytesIO(region)))
    assert cropped.shape == (64, 64)
    expected = np.asarray(
        Image.fromarray(pixels[20:52, 10:42]).resize((64, 64), Image.Resampling.LANCZOS)
    )
    assert np.abs(cropped.astype(int) - expected.astype(int)).max() <= 1


@pytest.mark.parametrize(
    ("name", "error", "words"),
    [
        ("reportsi.dcm", NotRenderable, "no image"),  # a structured report
        ("MR_truncated.dcm", NotRenderable, "cannot be decoded"),
        ("JPEG-lossy.dcm", NotRenderable, "JPEG Extended"),  # pylibjpeg refuses its markers
    ],
)
def test_what_cannot_be_rendered_says_why_in_one_line(
    name: str, error: type[Exception], words: str
) -> None:
    with pytest.raises(error) as caught:
        render_frame(pydicom_file(name))
    message = str(caught.value)
    assert words in message and "\n" not in message and len(message) <= 300
    assert message.startswith(name)


def test_a_frame_past_the_end_is_not_found() -> None:
    with pytest.raises(FrameNotFound, match="frame 3 does not exist"):
        frame_pixels(pydicom_file("SC_rgb_rle_2frame.dcm"), frame=3)
    with pytest.raises(FrameNotFound):
        frame_pixels(pydicom_file("CT_small.dcm"), frame=0)


@pytest.mark.parametrize("text", ["1", "a,b", "40,0", "40,-3", "40,400,cubic", "nan,4", "1,2,3,4"])
def test_bad_window_values_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError, match="window="):
        parse_window(text)


@pytest.mark.parametrize("text", ["0,10", "10", "10,10,-1,0,5,5", "99999,10", "a,b"])
def test_bad_viewports_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError, match="viewport="):
        parse_viewport(text)


def test_unsupported_media_type_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="image/gif"):
        render_frame(pydicom_file("CT_small.dcm"), media_type="image/gif")


# -- the routes, over a real uvicorn --------------------------------------------

ROUTE_FILES = ["MR_small.dcm", "examples_ybr_color.dcm", "reportsi.dcm", "CT_small.dcm"]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, Any]]]:
    from dicom_archive.archive.importer import import_paths
    from dicom_archive.archive.store import init_archive
    from tests.web.ui_server import serve

    root = tmp_path_factory.mktemp("rendered") / "archive"
    with init_archive(root) as archive:
        outcomes = list(import_paths(archive, [pydicom_file(n) for n in ROUTE_FILES]))
    assert [o.outcome.value for o in outcomes] == ["imported"] * len(ROUTE_FILES)
    uids = {}
    for name in ROUTE_FILES:
        ds = pydicom.dcmread(pydicom_file(name), stop_before_pixels=True)
        uids[name] = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    with serve(root) as base:
        yield base, uids


def get(url: str, accept: str | None = None) -> tuple[int, str, bytes]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def cache_control(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=30) as response:
        return str(response.headers["Cache-Control"])


def instance_url(base: str, uids: tuple[str, str, str]) -> str:
    study, series, sop = uids
    return f"{base}/studies/{study}/series/{series}/instances/{sop}"


def test_rendered_instance_as_jpeg_and_png(served: tuple[str, dict[str, Any]]) -> None:
    base, uids = served
    status, kind, body = get(instance_url(base, uids["MR_small.dcm"]) + "/rendered")
    assert (status, kind) == (200, "image/jpeg")
    decoded = np.asarray(Image.open(io.BytesIO(body)))
    assert np.abs(decoded.astype(int) - frame_pixels(pydicom_file("MR_small.dcm"))).mean() < 4
    status, kind, body = get(
        instance_url(base, uids["MR_small.dcm"]) + "/rendered", "image/png;q=0.9, image/jpeg;q=0.5"
    )
    assert (status, kind) == (200, "image/png")
    assert np.array_equal(
        np.asarray(Image.open(io.BytesIO(body))), frame_pixels(pydicom_file("MR_small.dcm"))
    )


def test_rendered_parameters(served: tuple[str, dict[str, Any]]) -> None:
    """accept, viewport and window as query parameters (PS3.18 8.3.5.1)."""
    base, uids = served
    url = instance_url(base, uids["CT_small.dcm"]) + "/rendered"
    status, kind, body = get(url + "?accept=image/png&viewport=64,32&window=0,400")
    assert (status, kind) == (200, "image/png")
    image = Image.open(io.BytesIO(body))
    assert image.size == (32, 32)
    wide = get(url + "?accept=image/png&window=0,4000")[2]
    narrow = get(url + "?accept=image/png&window=0,40")[2]

    # a narrow window pushes more pixels to black and white
    def extremes(png: bytes) -> float:
        pixels = np.asarray(Image.open(io.BytesIO(png)))
        return float(np.mean((pixels == 0) | (pixels == 255)))

    assert extremes(narrow) > extremes(wide)
    small = get(url + "?quality=10")[2]
    large = get(url + "?quality=100")[2]
    assert len(small) < len(large)


def test_frames_rendered_and_thumbnails(served: tuple[str, dict[str, Any]]) -> None:
    base, uids = served
    url = instance_url(base, uids["examples_ybr_color.dcm"])
    status, kind, body = get(url + "/frames/30/rendered", "image/png")
    assert (status, kind) == (200, "image/png")
    assert np.array_equal(
        np.asarray(Image.open(io.BytesIO(body))),
        frame_pixels(pydicom_file("examples_ybr_color.dcm"), frame=30),
    )
    assert get(url + "/frames/31/rendered")[0] == 404
    assert get(url + "/frames/1,2/rendered")[0] == 400
    study, series, _ = uids["examples_ybr_color.dcm"]
    for thumb in (
        f"{base}/studies/{study}/thumbnail",
        f"{base}/studies/{study}/series/{series}/thumbnail",
        url + "/thumbnail",
    ):
        status, kind, body = get(thumb)
        assert (status, kind) == (200, "image/jpeg"), thumb
        age = "3600" if "/instances/" in thumb else "60"
        assert cache_control(thumb) == f"private, max-age={age}"
        assert max(Image.open(io.BytesIO(body)).size) == 128


@pytest.mark.parametrize(
    ("suffix", "accept", "status"),
    [
        ("/rendered", "application/dicom", 406),
        ("/rendered", "image/gif, text/html", 406),
        ("/rendered", "*/*", 200),
        ("/rendered", "image/*;q=0.1", 200),
        ("/rendered?viewport=0,0", None, 400),
        ("/rendered?window=1", None, 400),
        ("/rendered?quality=101", None, 400),
        ("/frames/0/rendered", None, 400),
    ],
)
def test_what_a_client_gets_wrong_is_4xx_with_a_reason(
    served: tuple[str, dict[str, Any]], suffix: str, accept: str | None, status: int
) -> None:
    base, uids = served
    got, kind, body = get(instance_url(base, uids["MR_small.dcm"]) + suffix, accept)
    assert got == status
    if status != 200:
        assert kind.startswith("text/plain") and body.count(b"\n") == 1 and len(body) < 300


def test_unknown_and_hostile_uids(served: tuple[str, dict[str, Any]]) -> None:
    """An instance under another study is 404; a UID that is no UID (a path, letters)
    is 400 and never reaches a file."""
    base, uids = served
    _, _, mr_sop = uids["MR_small.dcm"]
    ct_study, ct_series, _ = uids["CT_small.dcm"]
    assert (
        get(f"{base}/studies/{ct_study}/series/{ct_series}/instances/{mr_sop}/rendered")[0] == 404
    )
    assert get(f"{base}/studies/1.2.3/thumbnail")[0] == 404
    for hostile in ("..%2F..%2Fetc%2Fpasswd", "1.2.3.abc", "1..2", "%2e%2e", "1" * 65):
        status, _, body = get(f"{base}/studies/{hostile}/thumbnail")
        assert status in (400, 404), hostile
        assert b"root:" not in body
    status, _, body = get(f"{base}/studies/1.2.3.abc/series/1.2/instances/1.3/rendered")
    assert status == 400 and b"not a UID" in body


def test_an_instance_without_pixels_says_so(served: tuple[str, dict[str, Any]]) -> None:
    base, uids = served
    status, _, body = get(instance_url(base, uids["reportsi.dcm"]) + "/rendered")
    assert status == 422 and b"no image" in body
    study, _, _ = uids["reportsi.dcm"]
    assert get(f"{base}/studies/{study}/thumbnail")[0] == 422


def test_enhanced_multiframe_takes_each_frames_window_and_the_shared_rescale(
    tmp_path: Path,
) -> None:
    """Enhanced objects state rescale and window in functional groups: the per-frame
    window beats the shared one, and both frames share the rescale."""
    from pydicom.dataset import Dataset

    def group(**items: Any) -> Dataset:
        out = Dataset()
        for sequence, values in items.items():
            inner = Dataset()
            for keyword, value in values.items():
                setattr(inner, keyword, value)
            setattr(out, sequence, [inner])
        return out

    raw = np.tile(np.arange(64, dtype=np.uint16) * 50, (32, 1))  # 0..3150
    ds = make_instance(rows=32, columns=64, BitsStored=16, HighBit=15, NumberOfFrames=2,
                       PixelData=np.concatenate([raw, raw]).tobytes())  # fmt: skip
    ds.SharedFunctionalGroupsSequence = [
        group(PixelValueTransformationSequence={"RescaleSlope": "1", "RescaleIntercept": "-1000"},
              FrameVOILUTSequence={"WindowCenter": "0", "WindowWidth": "2000"})
    ]  # fmt: skip
    ds.PerFrameFunctionalGroupsSequence = [
        Dataset(),
        group(FrameVOILUTSequence={"WindowCenter": "1000", "WindowWidth": "500"}),
    ]
    path = write_dataset(ds, tmp_path / "enhanced.dcm")
    values = raw.astype(float) - 1000
    for frame, (center, width) in ((1, (0, 2000)), (2, (1000, 500))):
        expected = np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0, 1) * 255
        assert_close(frame_pixels(path, frame=frame), np.rint(expected))


def test_wado_uri_renders_with_its_own_parameters(tmp_path: Path) -> None:
    """WADO-URI (PS3.18 9) through ``dicom-archive web``: image/jpeg by default,
    image/png, frameNumber, rows/columns, windowCenter/windowWidth, imageQuality."""
    import socket
    import sys
    import time

    from dicom_archive.archive.importer import import_paths
    from dicom_archive.archive.store import init_archive

    root = tmp_path / "archive"
    names = ["CT_small.dcm", "examples_ybr_color.dcm"]
    with init_archive(root) as archive:
        assert all(
            o.outcome.value == "imported" for o in import_paths(archive, map(pydicom_file, names))
        )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    web = subprocess.Popen(
        [sys.executable, "-m", "dicom_archive", "web", "-a", str(root), "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:

        def url(name: str, extra: str = "") -> str:
            ds = pydicom.dcmread(pydicom_file(name), stop_before_pixels=True)
            return (
                f"http://127.0.0.1:{port}/wado?requestType=WADO&studyUID={ds.StudyInstanceUID}"
                f"&seriesUID={ds.SeriesInstanceUID}&objectUID={ds.SOPInstanceUID}{extra}"
            )

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                get(url("CT_small.dcm"))
                break
            except OSError:  # not listening yet
                assert web.poll() is None
                time.sleep(0.2)
        status, kind, body = get(url("CT_small.dcm"))
        assert (status, kind) == (200, "image/jpeg")
        status, kind, body = get(
            url("CT_small.dcm", "&contentType=image/png&windowCenter=0&windowWidth=400")
        )
        assert (status, kind) == (200, "image/png")
        expected = frame_pixels(pydicom_file("CT_small.dcm"), window=Window(0, 400))
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(body))), expected)
        status, _, body = get(
            url("examples_ybr_color.dcm", "&contentType=image/png&frameNumber=7&columns=160")
        )
        assert status == 200 and Image.open(io.BytesIO(body)).size == (160, 120)
        small = get(url("CT_small.dcm", "&imageQuality=5"))[2]
        assert len(small) < len(get(url("CT_small.dcm", "&imageQuality=100"))[2])
        assert get(url("examples_ybr_color.dcm", "&frameNumber=31"))[0] == 404
        assert get(url("CT_small.dcm", "&windowCenter=40"))[0] == 400
        assert get(url("CT_small.dcm", "&rows=0"))[0] == 400
        assert get(url("CT_small.dcm", "&contentType=image/gif"))[0] == 406
    finally:
        web.terminate()
        web.wait(10)
