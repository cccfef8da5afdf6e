"""The study browser: plain server-rendered HTML pages, usable without JavaScript.

``/`` lists studies with the search of ``dicom-archive query`` (the same
``StudyQuery``/``find_studies``: ``*``/``?`` wildcards, case-insensitive, date ranges)
and the daemon's status; ``/browse/studies/{s}`` shows a study's series with
thumbnails (the WADO-RS thumbnail routes) and a download link (WADO-RS
``/studies/{s}``); ``/browse/studies/{s}/series/{se}`` its instances.

Every value from a file or a URL goes through ``html.escape`` (``e``) and every URL
part through ``quote``: a Patient's Name of ``<script>`` is shown, never run. No
template engine: a few small functions build the pages, and escaping is visible
at each place a value enters.
"""

from __future__ import annotations

import html
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from dicom_archive.archive.daemonstate import CheckInfo, DaemonStatus, read_status
from dicom_archive.archive.layout import ArchivePaths
from dicom_archive.archive.query import StudyQuery, StudyResult, find_studies, parse_date_range
from dicom_archive.archive.store import Archive
from dicom_archive.errors import ArchiveError, UsageError
from dicom_archive.text import strip_control
from dicom_archive.web import lookup

PAGE_SIZE = 50
#: A study's download as WADO-RS asks for it (PS3.18 8.3.3.1: the accept parameter
#: stands for the Accept header a link cannot set).
DOWNLOAD_ACCEPT = 'multipart/related; type="application/dicom"'
_SEARCH_FIELDS = ("patient_name", "patient_id", "modality", "study_date")

_STYLE = """
body{font-family:system-ui,sans-serif;margin:0;color:#1d2733;background:#f4f6f8}
header{background:#1d3557;color:#fff;padding:.6em 1.2em}header a{color:#fff;text-decoration:none}
main{padding:1em 1.2em}table{border-collapse:collapse;width:100%;background:#fff}
th,td{text-align:left;padding:.35em .6em;border-bottom:1px solid #dde3e9;vertical-align:middle}
th{background:#e9eef3}td.n{text-align:right;font-variant-numeric:tabular-nums}
form.search{display:flex;gap:.6em;flex-wrap:wrap;align-items:end;margin-bottom:1em}
form.search label{display:flex;flex-direction:column;font-size:.85em}
.status{background:#fff;border:1px solid #dde3e9;padding:.6em 1em;margin-bottom:1em}
.status dl{display:grid;grid-template-columns:max-content 1fr;gap:.2em 1em;margin:0}
.status dt{font-weight:600}.error{background:#fde8e8;border:1px solid #e0a0a0;padding:.6em 1em}
img.thumb{width:96px;height:96px;object-fit:contain;background:#000;display:block}
.pages{margin:1em 0;display:flex;gap:1em}.muted{color:#66737f}
"""


def e(value: object) -> str:
    """A value as HTML text: escaped, with control characters taken out."""
    return html.escape(strip_control(str(value)), quote=True)


def u(value: str) -> str:
    """A URL path segment."""
    return quote(value, safe="")


def _page(title: str, body: str, status_code: int = 200) -> HTMLResponse:
    document = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{e(title)} · dicom-archive</title><style>{_STYLE}</style></head><body>"
        '<header><a href="/"><strong>dicom-archive</strong></a> · study browser</header>'
        f"<main>{body}</main></body></html>"
    )
    return HTMLResponse(document, status_code=status_code)


def _date(value: str) -> str:
    if len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value


def _size(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if count < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"


def _archive(root: Path) -> Archive:
    return Archive(ArchivePaths(root), lookup.thread_index(root))


# -- the study list ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StudyListPage:
    studies: tuple[StudyResult, ...]
    page: int
    more: bool
    status: DaemonStatus
    totals: tuple[int, int, int, int]
    recent: tuple[tuple[str, str, str, str, int], ...]


def parse_search(params: dict[str, str]) -> tuple[StudyQuery, int]:
    """The search form's fields as ``dicom-archive query`` reads its options."""
    date = params.get("study_date", "").strip()
    try:
        page = int(params.get("page", "1") or "1")
    except ValueError:
        raise UsageError(f"page={params.get('page', '')[:20]!r}: use a whole number") from None
    if page < 1:
        raise UsageError("page: the first page is 1")
    query = StudyQuery(
        patient_name=params.get("patient_name", "").strip() or None,
        patient_id=params.get("patient_id", "").strip() or None,
        modality=params.get("modality", "").strip() or None,
        study_date=parse_date_range(date) if date else None,
    )
    return query, page


def study_list(root: Path, query: StudyQuery, page: int) -> StudyListPage:
    archive = _archive(root)
    status = read_status(archive, errors=5)
    index = archive.index
    with index.read() as db:
        found = itertools.islice(
            find_studies(index, query), (page - 1) * PAGE_SIZE, page * PAGE_SIZE + 1
        )
        studies = tuple(found)
        patients, studies_total = db.execute(
            "SELECT (SELECT COUNT(*) FROM patients), (SELECT COUNT(*) FROM studies)"
        ).fetchone()
        instances, stored = db.execute(
            "SELECT COALESCE(SUM(instance_count), 0), COALESCE(SUM(total_bytes), 0) FROM series"
        ).fetchone()
        # The studies of the last 200 instances imported, newest first (served by the
        # imported_at index, never a scan).
        recent = db.execute(
            "SELECT st.study_instance_uid, p.patient_name, st.description, MAX(i.imported_at), "
            "COUNT(*) FROM (SELECT series_pk, imported_at FROM instances "
            "ORDER BY imported_at DESC LIMIT 200) i JOIN series se ON se.id = i.series_pk "
            "JOIN studies st ON st.id = se.study_pk JOIN patients p ON p.id = st.patient_pk "
            "GROUP BY st.id ORDER BY MAX(i.imported_at) DESC LIMIT 5"
        ).fetchall()
    return StudyListPage(
        studies=studies[:PAGE_SIZE],
        page=page,
        more=len(studies) > PAGE_SIZE,
        status=status,
        totals=(patients, studies_total, instances, stored),
        recent=tuple(tuple(r) for r in recent),
    )


def _search_form(params: dict[str, str]) -> str:
    def field(name: str, label: str, hint: str) -> str:
        return (
            f'<label>{e(label)}<input name="{name}" value="{e(params.get(name, ""))}" '
            f'placeholder="{e(hint)}"></label>'
        )

    return (
        '<form class="search" method="get" action="/">'
        + field("patient_name", "Patient's name", "DOE* or *müller*")
        + field("patient_id", "Patient ID", "PAT-001")
        + field("modality", "Modality", "CT")
        + field("study_date", "Study date", "20240101-20241231")
        + '<button type="submit">Search</button> <a href="/">clear</a></form>'
    )


def _check_text(check: CheckInfo | None) -> str:
    if check is None:
        return "never"
    result = "clean" if check.findings == 0 else f"{check.findings} problems"
    detail = ", ".join(f"{v} {k}" for k, v in sorted(check.counts.items()))
    return f"{check.finished_at}: {check.instances} instances, {result}" + (
        f" ({detail})" if detail else ""
    )


def _status_panel(listing: StudyListPage) -> str:
    status = listing.status
    run = status.run
    patients, studies, instances, stored = listing.totals
    rows: list[tuple[str, str]] = [
        (
            "Archive",
            f"{patients} patients, {studies} studies, {instances} instances, {_size(stored)}",
        )
    ]
    if status.running and run is not None:
        age = "" if status.heartbeat_age is None else f" ({status.heartbeat_age:.0f} s ago)"
        rows += [
            ("Daemon", f"running, pid {run.pid} on {run.hostname}, since {run.started_at}"),
            ("Heartbeat", f"{run.heartbeat_at}{age}"),
            ("Queue", f"{run.queue_depth} files waiting"),
            ("Since start", _counts(run.counts.as_dict())),
        ]
        if status.dicom:
            d = status.dicom
            rows.append(
                (
                    "DICOM",
                    f"{d.get('aeTitle')} on {d.get('bind')}:{d.get('port')}, "
                    f"{d.get('active', 0)} associations open, "
                    f"{d.get('received', 0)} instances received",
                )
            )
    elif run is not None:
        rows.append(("Daemon", f"not running (last run {run.started_at} to {run.stopped_at})"))
    else:
        rows.append(("Daemon", "not running (never ran on this archive)"))
    rows += [
        ("In total", _counts(status.totals.as_dict())),
        ("Rejected", f"{status.totals.rejected} files set aside by the daemon"),
        ("Last check", _check_text(status.last_check)),
        ("Last verify", _check_text(status.last_verify)),
    ]
    recent = "".join(
        f'<li><a href="/browse/studies/{u(uid)}">{e(name or "(no name)")}</a> '
        f"{e(description)} <span class=muted>{e(count)} instances, {e(at)}</span></li>"
        for uid, name, description, at, count in listing.recent
    )
    errors = "".join(
        f"<li>{e(err.at)} {e(err.kind)}: {e(err.path)}: {e(err.message)}</li>"
        for err in status.errors
    )
    body = "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in rows)
    if recent:
        body += f"<dt>Last imports</dt><dd><ul>{recent}</ul></dd>"
    if errors:
        body += f"<dt>Recent errors</dt><dd><ul>{errors}</ul></dd>"
    return f'<section class="status" id="status"><dl>{body}</dl></section>'


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{value} {name}" for name, value in counts.items())


def _study_rows(studies: Iterable[StudyResult]) -> str:
    rows = []
    for study in studies:
        link = f"/browse/studies/{u(study.study_instance_uid)}"
        thumb = f"/studies/{u(study.study_instance_uid)}/thumbnail"
        rows.append(
            "<tr class=study>"
            f'<td><a href="{e(link)}"><img class=thumb loading=lazy alt="" '
            f'src="{e(thumb)}"></a></td>'
            f'<td><a href="{e(link)}">{e(study.patient_name or "(no name)")}</a></td>'
            f"<td>{e(study.patient_id)}</td><td>{e(_date(study.study_date))}</td>"
            f"<td>{e(study.description)}</td><td>{e(', '.join(study.modalities))}</td>"
            f"<td class=n>{study.series_count}</td><td class=n>{study.instance_count}</td>"
            f"<td class=n>{e(_size(study.total_bytes))}</td></tr>"
        )
    return "".join(rows)


def _pager(params: dict[str, str], page: int, more: bool) -> str:
    kept = {k: params[k] for k in _SEARCH_FIELDS if params.get(k)}
    links = []
    if page > 1:
        links.append(
            f'<a rel=prev href="/?{e(urlencode({**kept, "page": page - 1}))}">previous</a>'
        )
    links.append(f"<span>page {page}</span>")
    if more:
        links.append(f'<a rel=next href="/?{e(urlencode({**kept, "page": page + 1}))}">next</a>')
    return f'<nav class="pages">{"".join(links)}</nav>'


async def home(request: Request) -> Response:
    root: Path = request.app.state.archive_root
    params = dict(request.query_params)
    try:
        query, page = parse_search(params)
    except UsageError as exc:
        body = _search_form(params) + f'<p class="error" role="alert">{e(exc)}</p>'
        return _page("Studies", body, status_code=400)
    try:
        listing = await run_in_threadpool(study_list, root, query, page)
    except ArchiveError as exc:
        return _page("Studies", f'<p class="error" role="alert">{e(exc)}</p>', 503)
    if listing.studies:
        table = (
            '<table id="studies"><thead><tr><th></th><th>Patient</th><th>Patient ID</th>'
            "<th>Date</th><th>Description</th><th>Modalities</th><th>Series</th>"
            f"<th>Instances</th><th>Size</th></tr></thead><tbody>{_study_rows(listing.studies)}"
            "</tbody></table>"
        )
    else:
        table = '<p id="studies">No study matches.</p>'
    body = (
        _status_panel(listing)
        + "<h1>Studies</h1>"
        + _search_form(params)
        + table
        + _pager(params, listing.page, listing.more)
    )
    return _page("Studies", body)


# -- a study, a series ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SeriesRow:
    series_instance_uid: str
    number: int | None
    modality: str
    description: str
    body_part: str
    instances: int
    total_bytes: int


@dataclass(frozen=True, slots=True)
class StudyPage:
    study: StudyResult
    birth_date: str
    sex: str
    referring_physician: str


def study_page(root: Path, study_uid: str) -> StudyPage | None:
    lookup.check_uid(study_uid, "study")
    index = lookup.thread_index(root)
    with index.read() as db:
        found = next(find_studies(index, StudyQuery(study_uid=study_uid)), None)
        row = db.execute(
            "SELECT patient_birth_date, patient_sex, referring_physician FROM studies "
            "WHERE study_instance_uid = ?",
            (study_uid,),
        ).fetchone()
    if found is None or row is None:
        return None
    return StudyPage(found, *row)


def _not_found(what: str) -> HTMLResponse:
    return _page(
        "Not found", f'<p class="error" role="alert">{e(what)} is not in the archive.</p>', 404
    )


async def study(request: Request) -> Response:
    root: Path = request.app.state.archive_root
    uid = request.path_params["study"]
    try:
        found = await run_in_threadpool(study_page, root, uid)
    except UsageError as exc:
        return _page("Bad request", f'<p class="error" role="alert">{e(exc)}</p>', 400)
    if found is None:
        return _not_found(f"Study {uid}")
    s = found.study
    facts = [
        ("Patient", s.patient_name or "(no name)"),
        ("Patient ID", s.patient_id),
        ("Birth date", _date(found.birth_date)),
        ("Sex", found.sex),
        ("Study date", _date(s.study_date)),
        ("Description", s.description),
        ("Accession number", s.accession_number),
        ("Referring physician", found.referring_physician),
        ("Study Instance UID", s.study_instance_uid),
        (
            "Contents",
            f"{s.series_count} series, {s.instance_count} instances, {_size(s.total_bytes)}",
        ),
    ]
    download = f"/studies/{u(s.study_instance_uid)}?{urlencode({'accept': DOWNLOAD_ACCEPT})}"
    rows = "".join(
        "<tr class=series>"
        f'<td><a href="{e(_series_link(s.study_instance_uid, se.series_instance_uid))}">'
        f'<img class=thumb loading=lazy alt="series {e(se.series_number or "")} thumbnail" '
        f'src="/studies/{u(s.study_instance_uid)}/series/{u(se.series_instance_uid)}/thumbnail">'
        "</a></td>"
        f"<td class=n>{e(se.series_number if se.series_number is not None else '')}</td>"
        f"<td>{e(se.modality)}</td>"
        f'<td><a href="{e(_series_link(s.study_instance_uid, se.series_instance_uid))}">'
        f"{e(se.description or '(no description)')}</a></td><td>{e(se.body_part)}</td>"
        f"<td class=n>{se.instance_count}</td><td class=n>{e(_size(se.total_bytes))}</td></tr>"
        for se in s.series
    )
    body = (
        f"<h1>{e(s.description or 'Study')}</h1>"
        '<section class="status"><dl>'
        + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in facts)
        + "</dl></section>"
        f'<p><a id="download-zip" href="/studies/{u(s.study_instance_uid)}/archive.zip">'
        "Download the study as ZIP</a> "
        f'or <a id="download" href="{e(download)}">as WADO-RS</a> '
        "<span class=muted>(multipart/related of the stored files; with curl: "
        f"<code>curl -H 'Accept: {e(DOWNLOAD_ACCEPT)}' "
        f"{e(str(request.base_url).rstrip('/'))}/studies/{e(s.study_instance_uid)}</code>)"
        "</span></p>"
        '<table id="series"><thead><tr><th></th><th>Number</th><th>Modality</th>'
        "<th>Description</th><th>Body part</th><th>Instances</th><th>Size</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )
    return _page(s.description or "Study", body)


def _series_link(study_uid: str, series_uid: str) -> str:
    return f"/browse/studies/{u(study_uid)}/series/{u(series_uid)}"


def series_instances(
    root: Path, study_uid: str, series_uid: str
) -> tuple[StudyResult, str, Sequence[tuple[str, int | None, str]]] | None:
    lookup.check_uid(study_uid, "study")
    lookup.check_uid(series_uid, "series")
    index = lookup.thread_index(root)
    with index.read() as db:
        found = next(find_studies(index, StudyQuery(study_uid=study_uid)), None)
        rows = db.execute(
            "SELECT i.sop_instance_uid, i.instance_number, i.sop_class_uid FROM instances i "
            "JOIN series se ON se.id = i.series_pk JOIN studies st ON st.id = se.study_pk "
            "WHERE se.series_instance_uid = ? AND st.study_instance_uid = ? "
            "ORDER BY i.instance_number IS NULL, i.instance_number, i.id LIMIT 1000",
            (series_uid, study_uid),
        ).fetchall()
    if found is None or not rows:
        return None
    description = next(
        (se.description for se in found.series if se.series_instance_uid == series_uid), ""
    )
    return found, description, [tuple(r) for r in rows]


async def series(request: Request) -> Response:
    root: Path = request.app.state.archive_root
    study_uid, series_uid = request.path_params["study"], request.path_params["series"]
    try:
        found = await run_in_threadpool(series_instances, root, study_uid, series_uid)
    except UsageError as exc:
        return _page("Bad request", f'<p class="error" role="alert">{e(exc)}</p>', 400)
    if found is None:
        return _not_found(f"Series {series_uid}")
    s, description, instances = found
    base = f"/studies/{u(study_uid)}/series/{u(series_uid)}/instances"
    cells = "".join(
        f'<figure class=instance><a href="{e(base)}/{u(sop)}/rendered">'
        f'<img class=thumb loading=lazy alt="instance {e(number if number is not None else "")}" '
        f'src="{e(base)}/{u(sop)}/thumbnail"></a>'
        f"<figcaption>{e(number if number is not None else '-')}</figcaption></figure>"
        for sop, number, _ in instances
    )
    body = (
        f'<p><a href="/browse/studies/{u(study_uid)}">{e(s.patient_name or "(no name)")} · '
        f"{e(s.description or 'study')}</a></p><h1>{e(description or 'Series')}</h1>"
        f'<div id="instances" style="display:flex;flex-wrap:wrap;gap:.5em">{cells}</div>'
    )
    return _page(description or "Series", body)


def browser_routes() -> list[BaseRoute]:
    return [
        Route("/", home, methods=["GET"]),
        Route("/browse/studies/{study}", study, methods=["GET"]),
        Route("/browse/studies/{study}/series/{series}", series, methods=["GET"]),
    ]
