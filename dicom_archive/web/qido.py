"""QIDO-RS (PS3.18 10.6): searches answered from the index, never from the files.

Matching is the C-FIND matching of ``archive/matching.py`` (wildcards, case-insensitive
text, date ranges, UID lists), so the DICOM network and the web agree on every answer.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pydicom.datadict import keyword_for_tag, tag_for_keyword
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from dicom_archive.archive.matching import ATTRIBUTES, FindRequest, Kind, Level, find
from dicom_archive.web import dicomjson
from dicom_archive.web.common import DICOM_JSON, HTTPProblem, archive_access, base_url, valid_uid

_STUDY_KEYS = (
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ModalitiesInStudy",
    "ReferringPhysicianName",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyID",
    "StudyDescription",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)
_SERIES_KEYS = (
    "Modality",
    "SeriesDescription",
    "SeriesNumber",
    "SeriesInstanceUID",
    "BodyPartExamined",
    "NumberOfSeriesRelatedInstances",
)
_INSTANCE_KEYS = ("SOPClassUID", "SOPInstanceUID", "InstanceNumber")
_CONTROL = {"limit", "offset", "includefield", "fuzzymatching"}


def _keyword(name: str) -> str | None:
    """A query key (keyword, or tag as eight hex digits) as a keyword; None if neither."""
    if len(name) == 8:
        try:
            tag = int(name, 16)
        except ValueError:
            pass
        else:
            keyword = keyword_for_tag(tag)
            return keyword or None
    return name if tag_for_keyword(name) is not None else None


def _count(params: Any, name: str) -> int | None:
    values = params.getlist(name)
    if not values:
        return None
    if len(values) > 1:
        raise HTTPProblem(400, f"{name} is given more than once")
    text = values[0].strip()
    if not text.isdigit():
        raise HTTPProblem(400, f"{name}={values[0]!r}: expected a whole number >= 0")
    return int(text)


def _default_keys(level: Level, study_in_path: bool, series_in_path: bool) -> list[str]:
    keys: list[str] = []
    if level is Level.STUDY or not study_in_path:
        keys += _STUDY_KEYS
    if level is Level.SERIES or (level is Level.IMAGE and not series_in_path):
        keys += _SERIES_KEYS
    if level is Level.IMAGE:
        keys += _INSTANCE_KEYS
    keys += ["StudyInstanceUID"]
    if level >= Level.SERIES:
        keys += ["SeriesInstanceUID"]
    return keys


def _search(
    request: Request, level: Level, study: str | None = None, series: str | None = None
) -> Response:
    params = request.query_params
    limit = _count(params, "limit")
    offset = _count(params, "offset") or 0
    fuzzy = params.getlist("fuzzymatching")
    if any(v.lower() not in ("true", "false") for v in fuzzy):
        raise HTTPProblem(400, "fuzzymatching: expected true or false")
    keys = _default_keys(level, study is not None, series is not None)
    unsupported: list[str] = []
    for field in params.getlist("includefield"):
        for name in (n.strip() for n in field.split(",")):
            if not name:
                continue
            if name == "all":
                keys += [k for k, a in ATTRIBUTES.items() if a.level <= level]
                continue
            keyword = _keyword(name)
            if keyword is None:
                raise HTTPProblem(400, f"includefield: {name!r} is not a DICOM keyword or tag")
            if keyword in ATTRIBUTES and ATTRIBUTES[keyword].level <= level:
                keys.append(keyword)
            elif keyword not in ("RetrieveURL", "InstanceAvailability"):
                unsupported.append(keyword)
    criteria: dict[str, str] = {}
    for name in params:
        if name in _CONTROL:
            continue
        keyword = _keyword(name)
        if keyword is None:
            raise HTTPProblem(400, f"{name!r} is not a DICOM keyword or tag, nor a QIDO parameter")
        values = params.getlist(name)
        if len(values) > 1:
            raise HTTPProblem(400, f"{name} is given more than once")
        attribute = ATTRIBUTES.get(keyword)
        if attribute is None or attribute.level > level or attribute.kind is Kind.COMPUTED:
            unsupported.append(keyword)
            continue
        value = values[0]
        if attribute.kind is Kind.UID:
            # QIDO lists UIDs with commas (PS3.18 8.3.4.1), C-FIND with backslashes.
            uids = [u.strip() for u in value.replace("\\", ",").split(",") if u.strip()]
            for uid in uids:
                valid_uid(uid)
            value = "\\".join(uids)
        criteria[keyword] = value
        keys.append(keyword)
    if study is not None:
        criteria["StudyInstanceUID"] = study
    if series is not None:
        criteria["SeriesInstanceUID"] = series
    server_limit = request.app.state.settings.max_results
    capped = limit is None or limit > server_limit
    wanted = server_limit + 1 if capped else limit
    find_request = FindRequest(level, criteria, tuple(dict.fromkeys(keys)))
    archive = archive_access(request).get()
    matches = list(find(archive.index, find_request, limit=wanted, offset=offset))
    headers: dict[str, str] = {}
    warnings = []
    if capped and len(matches) > server_limit:
        matches = matches[:server_limit]
        warnings.append(
            "299 dicom-archive: The number of results exceeded the maximum supported by the "
            "server. Additional results can be requested."
        )
    if unsupported:
        names = ", ".join(dict.fromkeys(unsupported))
        warnings.append(
            f"299 dicom-archive: The following attribute keys are not supported: {names}"
        )
    if warnings:
        headers["Warning"] = ", ".join(warnings)
    root = base_url(request)
    body = [_result(match, level, root) for match in matches]
    return Response(json.dumps(body, ensure_ascii=False), 200, headers, DICOM_JSON)


def _result(match: dict[str, Any], level: Level, root: str) -> dict[str, Any]:
    values = dict(match)
    if not values.get("ModalitiesInStudy"):
        # An empty ModalitiesInStudy crashes OHIF's study list; a study whose series
        # state no modality leaves the attribute out instead.
        values.pop("ModalitiesInStudy", None)
    url = f"{root}/studies/{match['StudyInstanceUID']}"
    if level >= Level.SERIES:
        url += f"/series/{match['SeriesInstanceUID']}"
    if level is Level.IMAGE:
        url += f"/instances/{match['SOPInstanceUID']}"
        values["InstanceAvailability"] = "ONLINE"
    values["RetrieveURL"] = url
    return dicomjson.dataset(values)


def _endpoint(
    level: Level, with_study: bool = False, with_series: bool = False
) -> Callable[[Request], Response]:
    def endpoint(request: Request) -> Response:
        study = valid_uid(request.path_params["study"]) if with_study else None
        series = valid_uid(request.path_params["series"]) if with_series else None
        return _search(request, level, study, series)

    return endpoint


def qido_routes() -> list[BaseRoute]:
    return [
        Route("/studies", _endpoint(Level.STUDY), methods=["GET"]),
        Route("/series", _endpoint(Level.SERIES), methods=["GET"]),
        Route("/instances", _endpoint(Level.IMAGE), methods=["GET"]),
        Route("/studies/{study}/series", _endpoint(Level.SERIES, True), methods=["GET"]),
        Route("/studies/{study}/instances", _endpoint(Level.IMAGE, True), methods=["GET"]),
        Route(
            "/studies/{study}/series/{series}/instances",
            _endpoint(Level.IMAGE, True, True),
            methods=["GET"],
        ),
    ]
