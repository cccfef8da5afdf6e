"""De-identification by PS3.15 Annex E, driven by the standard's own Table E.1-1.

The table (vendored under ``data/``, see its README for the edition) gives each
attribute an action in the Basic Application Level Confidentiality Profile and, per
option, the action that replaces it. What this module decides, and why:

- **Compound actions** (``X/Z``, ``X/D``, ``Z/D``, ``X/Z/D``, ``X/Z/U*``) mean "the
  first unless the IOD needs the attribute present (Type 2) or non-empty (Type 1)".
  Without per-IOD types at hand we keep the IOD valid whatever it is: an attribute the
  input carries stays, with the least information that is valid in any IOD (``X/Z`` ->
  empty, the others -> a dummy value, ``X/Z/U*`` -> kept with its UIDs replaced).
  A *sequence* cannot be given a dummy value that means anything, and its items may
  carry names (an institution's or operator's code meaning), so a compound action on
  a sequence leaves it empty, except ``X/Z/U*``, whose items are kept and cleaned.
- **Options** replace the basic action where their column has one; several options on
  one attribute: a date option decides for dates (``--shift-dates`` never lets a real
  date through because another option says keep), otherwise K beats C.
- **C (clean)** shifts dates with ``--shift-dates`` and keeps times (whole days move,
  so every interval is kept); on text it removes every word of the instance's own
  identifying values (names, IDs, accession number, institution, station, birth and
  study dates) and keeps the rest. It cannot know what else a free text says.
- **A sequence whose action is D** (Content Sequence, Graphic Annotation Sequence,
  Person Identification Code Sequence, Verifying Observer Sequence...) keeps its items'
  structure, enumerations (CS), numbers, coordinates and UIDs (instance UIDs replaced),
  and every text, name, code, date and time in it becomes a dummy: the profile asks for
  a dummy value; keeping an SR's content is the Clean Structured Content option, which
  is not offered.
- **Everything else not in the table is kept**, sequences are walked to any depth with the
  same table, private attributes (odd groups) are removed (Retain Safe Private keeps
  those the file declares safe in (0008,0300)), curves (50xx) removed, and
  a whole overlay group (60xx) goes with its Overlay Data: what is left would describe
  a plane that is no longer there.
- **Replacement values** are keyed hashes (see pseudonyms.py): UIDs ``2.25.N``, Patient
  ID ``ANON-XXXXXXXXXXXX`` and Name ``ANON^XXXXXXXXXXXX`` per patient and project, a date
  offset per patient and project. Pixel Data and everything else not touched are
  written back as read.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

from dicom_archive.archive.pseudonyms import Keyer

TABLE_FILE = "confidentiality_profile_attributes.json"
PROFILE_EDITION = "2024e"
METHOD_NAME = f"dicom-archive PS3.15 E.1-1 ({PROFILE_EDITION})"

DateMode = Literal["remove", "retain", "shift"]

_DATE_FULL = "rtnLongFullDatesOpt"
_DATE_MODIFIED = "rtnLongModifDatesOpt"
_DATE_COLUMNS = (_DATE_FULL, _DATE_MODIFIED)

_PATIENT_NAME = 0x00100010
_PATIENT_ID = 0x00100020
_ISSUER_OF_PATIENT_ID = 0x00100021
_PATIENT_BIRTH_DATE = 0x00100030

#: CID 7050 De-identification Method: the profile, then one code per option.
PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")
_CODE_FULL_DATES = ("113106", "Retain Longitudinal Temporal Information Full Dates Option")
_CODE_MODIFIED_DATES = (
    "113107",
    "Retain Longitudinal Temporal Information Modified Dates Option",
)


@dataclass(frozen=True, slots=True)
class _OptionSpec:
    column: str
    code: str
    meaning: str


_OPTIONS = {
    "clean_descriptors": _OptionSpec("cleanDescOpt", "113105", "Clean Descriptors Option"),
    "retain_patient_characteristics": _OptionSpec(
        "rtnPatCharsOpt", "113108", "Retain Patient Characteristics Option"
    ),
    "retain_device_identity": _OptionSpec("rtnDevIdOpt", "113109", "Retain Device Identity Option"),
    "retain_institution_identity": _OptionSpec(
        "rtnInstIdOpt", "113112", "Retain Institution Identity Option"
    ),
    "retain_uids": _OptionSpec("rtnUIDsOpt", "113110", "Retain UIDs Option"),
    "retain_safe_private": _OptionSpec("rtnSafePrivOpt", "113111", "Retain Safe Private Option"),
}


@dataclass(frozen=True, slots=True)
class DeidOptions:
    """The profile's options chosen for one export; ``project`` scopes every pseudonym."""

    dates: DateMode = "remove"
    clean_descriptors: bool = False
    retain_patient_characteristics: bool = False
    retain_device_identity: bool = False
    retain_institution_identity: bool = False
    retain_uids: bool = False
    retain_safe_private: bool = False
    project: str = "default"

    def columns(self) -> tuple[str, ...]:
        """The table columns of the chosen options other than the date ones."""
        return tuple(spec.column for name, spec in _OPTIONS.items() if getattr(self, name))

    def method_codes(self) -> list[tuple[str, str]]:
        """(code value, meaning) in CID 7050 for the profile and each chosen option."""
        codes = [PROFILE_CODE]
        if self.dates == "retain":
            codes.append(_CODE_FULL_DATES)
        elif self.dates == "shift":
            codes.append(_CODE_MODIFIED_DATES)
        codes.extend((s.code, s.meaning) for n, s in _OPTIONS.items() if getattr(self, n))
        return codes


@dataclass(frozen=True, slots=True)
class ProfileRule:
    """One row of Table E.1-1: the basic action and each option's action."""

    tag: str
    name: str
    basic: str
    options: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Profile:
    """Table E.1-1 keyed by tag, plus its rows that name tag patterns."""

    rules: Mapping[int, ProfileRule]
    curves: ProfileRule  # (50xx,xxxx)
    overlays: Mapping[int, ProfileRule]  # element -> rule, for (60xx,eeee)
    private: ProfileRule  # (gggg,eeee) where gggg is odd

    def rule_for(self, tag: int) -> ProfileRule | None:
        group = tag >> 16
        if group & 1:
            return self.private
        rule = self.rules.get(tag)
        if rule is not None:
            return rule
        if 0x5000 <= group <= 0x50FF:
            return self.curves
        if 0x6000 <= group <= 0x60FF:
            return self.overlays.get(tag & 0xFFFF)
        return None


@functools.cache
def load_profile() -> Profile:
    """The vendored Table E.1-1, parsed once per process."""
    text = resources.files("dicom_archive.archive").joinpath("data", TABLE_FILE).read_text("utf-8")
    rules: dict[int, ProfileRule] = {}
    overlays: dict[int, ProfileRule] = {}
    curves = private = None
    for row in json.loads(text):
        options = {k: v for k, v in row.items() if k.endswith("Opt") and v}
        rule = ProfileRule(row["tag"], row["name"], row["basicProfile"], options)
        group, element = row["tag"][1:5], row["tag"][6:10]
        if row["tag"].startswith("(GGGG,EEEE)"):
            private = rule
        elif group == "50XX":
            curves = rule
        elif group == "60XX":
            overlays[int(element, 16)] = rule
        else:
            rules[int(group + element, 16)] = rule
    if curves is None or private is None or 0x3000 not in overlays:
        raise RuntimeError(f"{TABLE_FILE}: the curve, overlay or private rows are missing")
    return Profile(rules, curves, overlays, private)


#: Compound actions resolved so that any IOD stays valid (see the module docstring).
_LEAF_RESOLUTION = {"X/Z": "Z", "X/D": "D", "Z/D": "D", "X/Z/D": "D", "X/Z/U*": "U"}
_SEQUENCE_RESOLUTION = {"X/Z": "Z", "X/D": "Z", "Z/D": "Z", "X/Z/D": "Z", "X/Z/U*": "U"}


def resolve_action(rule: ProfileRule, options: DeidOptions, *, is_sequence: bool) -> str:
    """One of X, Z, D, U, K, C for this attribute under these options."""
    if options.dates != "remove" and any(c in rule.options for c in _DATE_COLUMNS):
        column = _DATE_FULL if options.dates == "retain" else _DATE_MODIFIED
        chosen = rule.options.get(column)
        if chosen:
            return chosen
    codes = [rule.options[c] for c in options.columns() if c in rule.options]
    if "K" in codes:
        return "K"
    if "C" in codes:
        return "C"
    table = _SEQUENCE_RESOLUTION if is_sequence else _LEAF_RESOLUTION
    return table.get(rule.basic, rule.basic)


_DUMMY_TEXT = "ANONYMIZED"
_DUMMY = {
    "AE": _DUMMY_TEXT,
    "AS": "000Y",
    "CS": _DUMMY_TEXT,
    "DA": "19000101",
    "DS": "0",
    "DT": "19000101000000",
    "IS": "0",
    "LO": _DUMMY_TEXT,
    "LT": _DUMMY_TEXT,
    "PN": _DUMMY_TEXT,
    "SH": _DUMMY_TEXT,
    "ST": _DUMMY_TEXT,
    "TM": "000000",
    "UC": _DUMMY_TEXT,
    "UR": "urn:dicom-archive:anonymized",
    "UT": _DUMMY_TEXT,
}
#: In a D sequence, these VRs are replaced even where the table says nothing: text,
#: names, codes, dates and times. Enumerations (CS), numbers, coordinates and UIDs keep
#: the items' structure (instance UIDs are the table's U anyway).
_DUMMY_IN_SEQUENCE = frozenset(
    {"AE", "AS", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UR", "UT"}
)
_TEXT_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"})
_NUMBER_VRS = frozenset({"FD", "FL", "SL", "SS", "UL", "US", "SV", "UV", "AT"})


def _dummy(vr: str) -> Any:
    if vr in _DUMMY:
        return _DUMMY[vr]
    if vr in _NUMBER_VRS:
        return 0
    return b"\x00\x00"  # OB, OW, UN and the other binary VRs: an even length


#: Top-level attributes whose words are removed from text that is kept "cleaned".
_IDENTIFYING_SOURCES = (
    0x00100010,  # Patient's Name
    0x00100020,  # Patient ID
    0x00101000,  # Other Patient IDs
    0x00101001,  # Other Patient Names
    0x00101005,  # Patient's Birth Name
    0x00101060,  # Patient's Mother's Birth Name
    0x00101040,  # Patient's Address
    0x00102154,  # Patient's Telephone Numbers
    0x00080050,  # Accession Number
    0x00200010,  # Study ID
    0x00080090,  # Referring Physician's Name
    0x00081050,  # Performing Physician's Name
    0x00081060,  # Name of Physician(s) Reading Study
    0x00081070,  # Operators' Name
    0x00321032,  # Requesting Physician
    0x00080080,  # Institution Name
    0x00080081,  # Institution Address
    0x00081040,  # Institutional Department Name
    0x00081010,  # Station Name
    0x00181000,  # Device Serial Number
)
_IDENTIFYING_DATES = (0x00100030, 0x00080020, 0x00080021, 0x00080022, 0x00080023)
_WORD_SPLIT = re.compile(r"[\s\^=,;/\\()]+")
_MIN_WORD = 3


def _identifying_pattern(ds: Dataset, with_dates: bool) -> re.Pattern[str] | None:
    """A regex matching every identifying word of ``ds``'s own values, or None."""
    words: set[str] = set()
    for tag in _IDENTIFYING_SOURCES:
        for value in _text_values(ds, tag):
            if len(value) >= 2:
                words.add(value)
            words.update(w for w in _WORD_SPLIT.split(value) if len(w) >= _MIN_WORD)
    if with_dates:
        for tag in _IDENTIFYING_DATES:
            for value in _text_values(ds, tag):
                digits = value.replace(".", "")
                if len(digits) == 8 and digits.isdigit():
                    y, m, d = digits[:4], digits[4:6], digits[6:]
                    words.update({digits, f"{y}-{m}-{d}", f"{d}.{m}.{y}", f"{d}/{m}/{y}"})
                    words.update({f"{m}/{d}/{y}", f"{y}/{m}/{d}"})
    if not words:
        return None
    alternatives = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    return re.compile(rf"(?<![0-9A-Za-z])(?:{alternatives})(?![0-9A-Za-z])", re.IGNORECASE)


def _text_values(ds: Dataset, tag: int) -> Iterator[str]:
    if tag not in ds:
        return
    value = ds[tag].value
    for item in value if isinstance(value, MultiValue | list) else [value]:
        text = str(item).strip() if item is not None else ""
        if text:
            yield text


def shift_date(value: str, days: int) -> str | None:
    """``value`` (DA, or the date part of a DT) moved back ``days`` days, keeping its
    precision; None when it is no date (it is then emptied, never kept)."""
    digits = value.strip().replace(".", "") if len(value.strip()) == 10 else value.strip()
    if not digits.isdigit() or len(digits) not in (4, 6, 8):
        return None
    padded = digits + "0101"[len(digits) - 4 :] if len(digits) < 8 else digits
    try:
        moved = dt.date(int(padded[:4]), int(padded[4:6]), int(padded[6:8]))
        moved -= dt.timedelta(days=days)
    except (ValueError, OverflowError):
        return None
    return moved.strftime("%Y%m%d")[: len(digits)]


def shift_datetime(value: str, days: int) -> str | None:
    """A DT value moved back ``days`` days; time, fraction and UTC offset kept."""
    text = value.strip()
    body, sign, zone = text, "", ""
    for marker in ("+", "-"):
        position = text.find(marker, 4)
        if position != -1:
            body, sign, zone = text[:position], marker, text[position + 1 :]
            break
    date_part = body[:8]
    shifted = shift_date(date_part, days)
    if shifted is None:
        return None
    return shifted + body[8:] + (sign + zone if sign else "")


@dataclass(slots=True)
class InstanceResult:
    """What de-identifying one data set produced besides the data set itself."""

    mappings: set[tuple[str, str, str]] = field(default_factory=set)
    modality: str = ""
    sop_class: str = ""
    burned_in: str = ""  # "YES", "" (absent) or the stated value
    recognizable_features: str = ""


class Deidentifier:
    """Applies the profile under one set of options and one project's keys."""

    def __init__(self, options: DeidOptions, keyer: Keyer, profile: Profile | None = None):
        self.options = options
        self.keyer = keyer
        self.profile = profile or load_profile()
        # Only options that can say C on text need the instance's identifying words.
        self.cleans = bool(options.columns())

    def apply(self, ds: Dataset) -> InstanceResult:
        """De-identify ``ds`` in place (File Meta included)."""
        result = InstanceResult(
            modality=str(ds.get("Modality", "") or ""),
            sop_class=str(ds.get("SOPClassUID", "") or ""),
            burned_in=str(ds.get("BurnedInAnnotation", "") or "").strip().upper(),
            recognizable_features=str(ds.get("RecognizableVisualFeatures", "") or "").upper(),
        )
        patient_key = self._patient_key(ds)
        walk = _Walk(
            self,
            result,
            pseudonym=self.keyer.patient_id(patient_key),
            offset=self.keyer.date_offset_days(patient_key),
            scrub=_identifying_pattern(ds, self.options.dates != "retain") if self.cleans else None,
        )
        result.mappings.add(("patient", patient_key, walk.pseudonym))
        if self.options.dates == "shift":
            result.mappings.add(("date-offset", patient_key, f"-{walk.offset} days"))
        walk.dataset(ds, top=True)
        self._stamp(ds, walk.pseudonym)
        return result

    @staticmethod
    def _patient_key(ds: Dataset) -> str:
        """The patient, as the pseudonym and the date offset are keyed: Patient ID and
        its issuer; without an ID, the name and birth date."""

        def text(tag: int) -> str:
            value = ds.get(tag)
            return "" if value is None or value.value is None else str(value.value).strip()

        patient_id = text(_PATIENT_ID)
        if patient_id:
            return json.dumps([patient_id, text(_ISSUER_OF_PATIENT_ID)], ensure_ascii=False)
        return json.dumps(["", text(_PATIENT_NAME), text(_PATIENT_BIRTH_DATE)], ensure_ascii=False)

    def _stamp(self, ds: Dataset, pseudonym: str) -> None:
        # ANON^CODE: a family and a given name (a PN without ^ is the retired form).
        ds.PatientName = pseudonym.replace("-", "^", 1)
        ds.PatientID = pseudonym
        ds.PatientIdentityRemoved = "YES"
        names = [METHOD_NAME] + [meaning[:64] for _, meaning in self.options.method_codes()[1:]]
        ds.DeidentificationMethod = names if len(names) > 1 else names[0]
        items = []
        for value, meaning in self.options.method_codes():
            item = Dataset()
            item.CodeValue = value
            item.CodingSchemeDesignator = "DCM"
            item.CodeMeaning = meaning
            items.append(item)
        ds.DeidentificationMethodCodeSequence = Sequence(items)
        ds.LongitudinalTemporalInformationModified = {
            "remove": "REMOVED",
            "retain": "UNMODIFIED",
            "shift": "MODIFIED",
        }[self.options.dates]
        meta = ds.file_meta
        for tag in list(meta.keys()):
            if tag not in (0x00020001, 0x00020002, 0x00020010):
                del meta[tag]  # AE titles, private information: rewritten or gone
        if "SOPClassUID" in ds:
            meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.preamble = b"\x00" * 128  # a preamble may carry anything (TIFF headers, text)


@dataclass(slots=True)
class _Walk:
    """One data set's de-identification: the table applied at every depth."""

    owner: Deidentifier
    result: InstanceResult
    pseudonym: str
    offset: int
    scrub: re.Pattern[str] | None
    #: Inside a sequence whose action is D: what the table does not name is dummied too.
    dummy: bool = False

    def dataset(self, ds: Dataset, *, top: bool = False) -> None:
        profile, options = self.owner.profile, self.owner.options
        overlay_data = profile.overlays[0x3000]
        tags = list(ds.keys())  # (iterating a Dataset yields elements, not tags)
        drop_groups = {
            tag >> 16
            for tag in tags
            if 0x6000 <= tag >> 16 <= 0x60FF
            and tag & 0xFFFF == 0x3000
            and resolve_action(overlay_data, options, is_sequence=False) == "X"
        }
        safe = _safe_private_blocks(ds) if top and options.retain_safe_private else {}
        for tag in tags:
            group, element = tag >> 16, tag & 0xFFFF
            if element == 0 or group in drop_groups:
                del ds[tag]  # group lengths would be stale once anything changes
                continue
            rule = profile.rule_for(tag)
            raw = ds.get_item(tag)
            vr = raw.VR if raw is not None and raw.VR else _vr_of(tag)
            if rule is None:
                if vr == "SQ":
                    self.sequence(ds[tag].value)
                elif self.dummy and vr in _DUMMY_IN_SEQUENCE:
                    elem = ds[tag]
                    if elem.value not in (None, "", b""):
                        elem.value = _dummy(elem.VR)
                continue
            action = resolve_action(rule, options, is_sequence=vr == "SQ")
            if rule is profile.private and action != "X":
                action = _private_action(safe, ds, tag) if top else "X"
            if action == "X":
                del ds[tag]
            elif not (top and tag in (_PATIENT_ID, _PATIENT_NAME)):
                # (the Patient ID and Name become the pseudonym once the walk is done)
                self.element(ds, BaseTag(tag), action)

    def sequence(self, items: Sequence) -> None:
        for item in items:
            self.dataset(item)

    def element(self, ds: Dataset, tag: BaseTag, action: str) -> None:
        elem = ds[tag]
        vr = elem.VR
        if vr == "SQ":
            if action == "Z":
                elem.value = Sequence()
            elif action == "D" and not self.dummy:
                self.dummy = True
                try:
                    self.sequence(elem.value)
                finally:
                    self.dummy = False
            else:  # U, K, C: the items stay, cleaned by the same table
                self.sequence(elem.value)
            return
        if action == "Z":
            elem.value = None
        elif action == "D":
            elem.value = self._uids(elem.value) if vr == "UI" else _dummy(vr)
        elif action == "U":
            if self.owner.options.retain_uids:
                return
            elem.value = self._uids(elem.value)
        elif action == "C":
            self._clean(elem)
        # K: kept as read

    def _uids(self, value: Any) -> Any:
        if value is None or value == "":
            return value
        values = list(value) if isinstance(value, MultiValue | list) else [value]
        mapped = []
        for original in values:
            text = str(original).strip()
            new = self.owner.keyer.uid(text) if text else ""
            if text:
                self.result.mappings.add(("uid", text, new))
            mapped.append(new)
        return mapped if len(mapped) > 1 else mapped[0]

    def _clean(self, elem: Any) -> None:
        vr = elem.VR
        if vr in ("DA", "DT"):
            if self.owner.options.dates != "shift":
                elem.value = None  # no rule cleans a date except by shifting it
                return
            shift = shift_date if vr == "DA" else shift_datetime
            values = elem.value if isinstance(elem.value, MultiValue) else [elem.value]
            moved = [shift(str(v), self.offset) if v else "" for v in values]
            cleaned = [v or "" for v in moved]
            elem.value = cleaned if len(cleaned) > 1 else cleaned[0]
        elif vr in _TEXT_VRS and self.scrub is not None and elem.value is not None:
            pattern = self.scrub
            values = elem.value if isinstance(elem.value, MultiValue) else [elem.value]
            cleaned = [pattern.sub("**", str(v)) for v in values]
            elem.value = cleaned if len(cleaned) > 1 else cleaned[0]
        # TM and the rest: kept (dates move by whole days, so times keep every interval)


#: (private group, creator) -> its block's offsets kept as they are (None: the whole
#: block is SAFE) and the offsets with an action of their own (D, Z, X or U).
_SafeBlocks = dict[tuple[int, str], tuple[frozenset[int] | None, dict[int, str]]]


def _safe_private_blocks(ds: Dataset) -> _SafeBlocks:
    """What the instance's Private Data Element Characteristics Sequence (0008,0300)
    says about its private blocks (PS3.3 C.12.1.1.7): the standard's own way for a
    file to declare which private attributes are safe (PS3.15 E.3.10). Blocks it does
    not describe, or calls UNSAFE without actions, are removed."""
    blocks: _SafeBlocks = {}
    for item in ds.get("PrivateDataElementCharacteristicsSequence", None) or []:
        group = item.get("PrivateGroupReference")
        creator = str(item.get("PrivateCreatorReference", "") or "").strip()
        status = str(item.get("BlockIdentifyingInformationStatus", "") or "").upper()
        if group is None or not creator:
            continue
        actions: dict[int, str] = {}
        for action_item in item.get("DeidentificationActionSequence", None) or []:
            code = str(action_item.get("DeidentificationAction", "") or "").upper()
            for offset in _numbers(action_item.get("IdentifyingPrivateElements")):
                if code in ("D", "Z", "X", "U"):
                    actions[offset & 0xFF] = code
        if status == "SAFE":
            blocks[(int(group), creator)] = (None, actions)
        elif status == "MIXED":
            kept = frozenset(n & 0xFF for n in _numbers(item.get("NonidentifyingPrivateElements")))
            blocks[(int(group), creator)] = (kept, actions)
        elif actions:
            blocks[(int(group), creator)] = (frozenset(), actions)
    return blocks


def _numbers(value: Any) -> list[int]:
    if value is None or value == "":
        return []
    return [int(v) for v in value] if isinstance(value, MultiValue | list) else [int(value)]


def _private_action(blocks: _SafeBlocks, ds: Dataset, tag: int) -> str:
    """K, an action of the file's own, or X for a private element under Retain Safe
    Private; a private creator stays while its block keeps anything."""
    group, element = tag >> 16, tag & 0xFFFF
    if 0x0010 <= element <= 0x00FF:  # a private creator
        creator = str(ds[tag].value or "").strip()
        entry = blocks.get((group, creator))
        keeps = entry is not None and (entry[0] is None or entry[0] or entry[1])
        return "K" if keeps else "X"
    creator_tag = (group << 16) | (element >> 8)
    if element < 0x1000 or creator_tag not in ds:
        return "X"
    entry = blocks.get((group, str(ds[creator_tag].value or "").strip()))
    if entry is None:
        return "X"
    kept, actions = entry
    offset = element & 0xFF
    if offset in actions:
        return actions[offset]
    return "K" if kept is None or offset in kept else "X"


def _vr_of(tag: int) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"
