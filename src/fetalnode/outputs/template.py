"""Fast path of the output writers: the fixed part of each object built once (by the writer's highdicom
builder, so validated once) and encoded once, the values of each job filled into *slots*.

A writer that registers a :class:`FastPath` gives two functions of its :class:`OutputContext`:

* ``key(ctx)``: everything that changes the *shape* of its object (analysed or not, a finding, how many
  comment lines...). Added to it here: the application, its models, the calling station and the output
  settings (:func:`context_key`), and the source's attributes (:func:`source_key`), all of them except
  those this module perturbs (below).
* ``slots(ctx)``: ``name -> (keyword, value)`` for every value of the job in the object (UIDs, numbers,
  coordinates, text, pixels); the same name may stand at several places of the object (the same keyword
  and value at each).

The source's patient, study and reference attributes (text VRs, UIDs, dates, times, instance number) need
no slot of the writer's: a template is *compiled* from the reference object built for a copy of the source
in which each of them has a unique token value (:func:`perturbed`); every element of the object whose value
is a token is a slot filled from that source attribute. The clock (:data:`CLOCK_KEYWORDS`) is a slot too: the
reference path stamps ``ctx.now`` (:func:`stamp_clock`), the fast path writes the same.

The first job of a key is only remembered (a key seen once costs nothing more than the reference path).
A template becomes active only after two checks, each byte for byte against the reference path's own
bytes: compiled from the perturbed copy of the key's second job (another source instance), it renders that
job exactly; and it renders the next job with the key (another instance again) exactly. Until then, and for a key that failed
:data:`MAX_FAILURES` times, and whenever a job's slots do not fit (a name missing or extra, a value
that cannot be encoded), the job goes the reference path. Sequences and items are written with
undefined length (the reference path encodes its dataset the same way, :func:`encode`), so a slot
changes no length but its own element's; the file meta group length is computed per object.
"""

from __future__ import annotations

import hashlib
import logging
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from io import BytesIO
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset, validate_file_meta
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr, write_data_element
from pydicom.multival import MultiValue
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import DS

from fetalnode.runner import encode_dataset

if TYPE_CHECKING:
    from fetalnode.outputs.registry import OutputContext

log = logging.getLogger(__name__)

Slots = Mapping[str, tuple[str, Any]]

MAX_FAILURES = 3
MAX_KEYS = 256  # templates (and keys seen) kept per writer and application, least recently used dropped
PREAMBLE = bytes(128) + b"DICM"
PIXEL_DATA = 0x7FE00010

# Attributes the reference path sets from ``ctx.now`` (local time; ContributionDateTime in UTC, as before).
CLOCK_DATES = ("InstanceCreationDate", "ContentDate", "DateOfSecondaryCapture", "PresentationCreationDate")
CLOCK_TIMES = ("InstanceCreationTime", "ContentTime", "TimeOfSecondaryCapture", "PresentationCreationTime")
CLOCK_KEYWORDS = (*CLOCK_DATES, *CLOCK_TIMES, "ContributionDateTime")

_TEXT_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
_LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT"}
_STRUCT = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d"}
# Source attributes given a token in the perturbed copy: what a writer copies or refers to per patient/study.
_PERTURBED_VRS = {"AS", "DA", "DS", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UT"}
_PERTURBED_IS = {"InstanceNumber", "SeriesNumber", "AcquisitionNumber"}
_UNPERTURBED_UIDS = {"SOPClassUID", "TransferSyntaxUID"}
_CODECS = {"": "iso8859", "ISO_IR 6": "iso8859", "ISO_IR 100": "latin_1", "ISO_IR 192": "utf-8"}


class SlotError(ValueError):
    """A job's slots do not fit its template (the job then takes the reference path)."""


# --- clock ---------------------------------------------------------------------------------------------


def clock_values(now: datetime) -> dict[str, str]:
    """The value of each clock attribute at ``now`` (timezone-aware)."""
    local = now.astimezone()
    date, time = local.strftime("%Y%m%d"), local.strftime("%H%M%S.%f")
    values = dict.fromkeys(CLOCK_DATES, date) | dict.fromkeys(CLOCK_TIMES, time)
    values["ContributionDateTime"] = now.astimezone(UTC).strftime("%Y%m%d%H%M%S")
    return values


def stamp_clock(ds: Dataset, now: datetime) -> None:
    """Set the clock attributes the builder wrote (top level, Contributing Equipment) to ``now``."""
    values = clock_values(now)
    for keyword in (*CLOCK_DATES, *CLOCK_TIMES):
        if keyword in ds:
            setattr(ds, keyword, values[keyword])
    for item in ds.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = values["ContributionDateTime"]


# --- encoding ------------------------------------------------------------------------------------------


def _header(tag: int, vr: str, length: int) -> bytes:
    if vr in _LONG_VRS:
        return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr.encode(), 0, length)
    if length > 0xFFFF:
        raise SlotError(f"value of {tag:08X} too long for VR {vr}")
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), length)


def _as_text(vr: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(_as_text(vr, v) for v in value)
    if vr == "DS" and isinstance(value, float):
        return str(DS(value, auto_format=True))
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise SlotError(f"no text form for a {type(value).__name__} as {vr}")


def encode_value(tag: int, vr: str, value: Any, codec: str) -> bytes:
    """One element, Explicit VR Little Endian: the encoding a slot gets (compared, at compile time, with
    pydicom's encoding of the reference element, so a difference means no template, never a wrong byte)."""
    if vr in _TEXT_VRS:
        raw = _as_text(vr, value).encode(codec)
        if len(raw) % 2:
            raw += b"\0" if vr == "UI" else b" "
    elif vr in _STRUCT:
        raw = np.asarray(value, dtype="<" + _STRUCT[vr]).ravel().tobytes()
    elif vr in {"OB", "OW", "UN"}:
        raw = bytes(value)
        if len(raw) % 2:
            raw += b"\0"
    else:
        raise SlotError(f"no slot encoding for VR {vr}")
    return _header(tag, vr, len(raw)) + raw


def _pydicom_element(elem: DataElement, encodings: list[str]) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_data_element(fp, elem, encodings)
    return fp.getvalue()


_ITEM = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
_ITEM_END = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
_SEQ_END = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)


@dataclass
class _Writer:
    """Walks a dataset into chunks: fixed bytes, cut at each element ``slot_of`` names."""

    encodings: list[str]
    slot_of: Callable[[DataElement, bytes], str | None] = lambda elem, data: None
    chunks: list[bytes] = field(default_factory=list)
    slots: list[tuple[str, int, str]] = field(default_factory=list)  # (name, tag, VR) after chunk i
    buffer: BytesIO = field(default_factory=BytesIO)

    def dataset(self, ds: Dataset) -> None:
        for elem in ds:  # sorted by tag
            if elem.VR == "SQ":
                self.buffer.write(_header(elem.tag, "SQ", 0xFFFFFFFF))
                for item in elem.value:
                    self.buffer.write(_ITEM)
                    self.dataset(item)
                    self.buffer.write(_ITEM_END)
                self.buffer.write(_SEQ_END)
                continue
            data = _pydicom_element(elem, self.encodings)
            name = self.slot_of(elem, data)
            if name is None:
                self.buffer.write(data)
            else:
                self.chunks.append(self.buffer.getvalue())
                self.buffer = BytesIO()
                self.slots.append((name, elem.tag, str(elem.VR)))

    def done(self) -> list[bytes]:
        return [*self.chunks, self.buffer.getvalue()]


def _meta(ds: Dataset) -> FileMetaDataset:
    meta = FileMetaDataset(ds.file_meta) if "file_meta" in ds.__dict__ and ds.file_meta else FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if "TransferSyntaxUID" not in meta:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
    validate_file_meta(meta, enforce_standard=True)
    del meta.FileMetaInformationGroupLength
    return meta


def _encodings(ds: Dataset) -> tuple[list[str], str]:
    charset = ds.get("SpecificCharacterSet", "")
    charset = charset if isinstance(charset, str) else "\\".join(charset)
    if charset not in _CODECS:
        raise SlotError(f"character set {charset!r} has no fast encoding")
    return [_CODECS[charset]], _CODECS[charset]


def encodable(ds: Dataset) -> bool:
    """Whether :func:`encode` writes ``ds`` (Explicit VR Little Endian, native pixels, a known charset)."""
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID", ExplicitVRLittleEndian) if meta else ExplicitVRLittleEndian
    try:
        _encodings(ds)
    except SlotError:
        return False
    return bool(syntax == ExplicitVRLittleEndian)


def _compile(
    ds: Dataset, slot_of: Callable[[DataElement, bytes], str | None]
) -> tuple[list[bytes], list[tuple[str, int, str]], list[bytes], list[tuple[str, int, str]]]:
    encodings, _ = _encodings(ds)
    correct_ambiguous_vr(ds, is_little_endian=True)
    meta = _Writer(encodings, slot_of)
    meta.dataset(_meta(ds))
    body = _Writer(encodings, slot_of)
    body.dataset(ds)
    return meta.done(), meta.slots, body.done(), body.slots


def _join(chunks: list[bytes], slots: list[tuple[str, int, str]], values: Mapping[str, Any], codec: str) -> bytes:
    parts = [chunks[0]]
    for (name, tag, vr), chunk in zip(slots, chunks[1:], strict=True):
        parts.append(encode_value(tag, vr, values[name], codec))
        parts.append(chunk)
    return b"".join(parts)


def _part10(meta: bytes, body: bytes) -> bytes:
    return PREAMBLE + _header(0x00020000, "UL", 4) + struct.pack("<I", len(meta)) + meta + body


def encode(ds: Dataset) -> bytes:
    """``ds`` as Part 10 bytes, sequences and items of undefined length (the reference path's encoding
    of a writer with a fast path: the template's fixed chunks are this encoding)."""
    meta, _, body, _ = _compile(ds, lambda elem, data: None)
    return _part10(meta[0], body[0])


# --- the source: its key and its perturbed copy ----------------------------------------------------------


def _perturbable(elem: DataElement) -> bool:
    """Whether the attribute gets a token (an empty one does not: whether it is empty is in the key)."""
    if elem.value is None or elem.value == "" or (isinstance(elem.value, list | MultiValue) and not elem.value):
        return False
    if elem.VR == "IS":
        return elem.keyword in _PERTURBED_IS
    if elem.VR == "UI":
        return elem.keyword not in _UNPERTURBED_UIDS
    return elem.VR in _PERTURBED_VRS


def source_key(source: Dataset) -> tuple[Any, ...]:
    """Every source attribute that is not perturbed (so not a slot), with its value: a writer may copy
    any of them (the character set, the orientation, a sequence), so a template serves only a source
    that has the same ones. Pixel data is left out (no writer copies it; a writer's pixels are its slot)."""
    meta = getattr(source, "file_meta", None)
    parts: list[Any] = [str(meta.get("TransferSyntaxUID", "")) if meta else ""]
    for elem in source:
        if elem.tag == PIXEL_DATA or _perturbable(elem):
            parts.append(elem.tag)
        elif elem.VR == "SQ":
            parts.append((elem.tag, hashlib.sha256(repr(elem.value).encode()).hexdigest()))
        else:
            value = elem.value
            parts.append((elem.tag, tuple(value) if isinstance(value, list | MultiValue) else value))
    return tuple(parts)


def context_key(ctx: OutputContext) -> tuple[Any, ...]:
    """What every object may name besides the source and the result: the application and its models,
    the calling station, the output settings (manufacturer, institution)."""
    analysis = ctx.analysis
    return (analysis.application, analysis.models, analysis.model_version, ctx.station_name, repr(ctx.settings))


def _token(elem: DataElement, i: int) -> str:
    vr, n = str(elem.VR), max(1, elem.VM)
    if vr == "UI":
        return f"2.25.{31415926535897932384 + i}"
    if vr == "PN":
        return f"Token{i}^Perturbed"
    if vr in {"LO", "SH", "UC"}:
        return "\\".join(f"TK{i}V{j}" for j in range(n))
    if vr in {"LT", "ST", "UT"}:
        return f"token text {i}"
    if vr == "DA":
        return f"1901{1 + i // 28:02d}{1 + i % 28:02d}"
    if vr == "TM":
        return f"01{i // 60:02d}{i % 60:02d}"
    if vr == "DT":
        return f"19010101{i // 60:02d}{i % 60:02d}00"
    if vr == "AS":
        return f"{100 + i:03d}D"
    if vr == "DS":
        return "\\".join(f"{9000 + i}.{j + 1}" for j in range(n))
    return str(7000 + i)  # IS


def perturbed(source: Dataset) -> tuple[Dataset, dict[str, str]]:
    """A copy of the source with a unique token in each perturbed attribute, and token -> keyword."""
    copy = Dataset()
    copy.update({elem.tag: elem for elem in source})
    tokens: dict[str, str] = {}
    for i, elem in enumerate(list(source)):
        if elem.tag != PIXEL_DATA and _perturbable(elem) and elem.keyword:
            token = _token(elem, i)
            copy[elem.tag] = DataElement(elem.tag, elem.VR, token)
            tokens[token] = elem.keyword
    for name in ("file_meta", "preamble"):
        if name in source.__dict__:
            setattr(copy, name, getattr(source, name))
    return copy, tokens


def _text_of(elem: DataElement) -> str | None:
    if elem.VR not in _TEXT_VRS or elem.value is None:
        return None
    value = elem.value
    if isinstance(value, MultiValue | list | tuple):  # a multi-valued text element (Image Type, ...)
        return "\\".join(str(v) for v in value)
    return str(value)


# --- templates -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Template:
    """Encoded chunks of one object shape, with the slots between them."""

    meta_chunks: list[bytes]
    meta_slots: list[tuple[str, int, str]]
    chunks: list[bytes]
    slots: list[tuple[str, int, str]]
    names: frozenset[str]  # writer and clock slots it needs
    codec: str

    def render(self, values: Mapping[str, Any]) -> bytes:
        """The object of one job; ``values`` must name exactly the template's writer and clock slots
        (and every ``src:`` keyword it uses)."""
        needed = {name for name in values if not name.startswith("src:")}
        if needed != self.names:
            raise SlotError(f"slots differ from the template's: {sorted(needed ^ self.names)[:5]}")
        try:
            meta = _join(self.meta_chunks, self.meta_slots, values, self.codec)
            body = _join(self.chunks, self.slots, values, self.codec)
        except KeyError as exc:
            raise SlotError(f"slot {exc} has no value for this job") from exc
        return _part10(meta, body)


def job_values(ctx: OutputContext, slots: Slots) -> dict[str, Any]:
    """All slot values of one job: the writer's, the clock's, and the source's (``src:<keyword>``)."""
    values: dict[str, Any] = {name: value for name, (_, value) in slots.items()}
    values.update(clock_values(ctx.now))
    for elem in ctx.source:
        if elem.tag != PIXEL_DATA and _perturbable(elem) and elem.keyword:
            values[f"src:{elem.keyword}"] = _text_of(elem) if elem.VR != "IS" else elem.value
    return values


def compile_template(ds: Dataset, slots: Slots, now: datetime, tokens: Mapping[str, str]) -> Template:
    """The template of the reference object ``ds`` (built from a perturbed source with ``tokens``):
    each element is fixed unless its value is a token (a source slot) or it is one of ``slots`` or a
    clock attribute (keyword and encoded bytes equal). An element two slots could fill is an error."""
    _, codec = _encodings(ds)
    clock = {kw: (kw, value) for kw, value in clock_values(now).items()}
    named = {**slots, **clock}
    by_bytes: dict[bytes, list[str]] = {}
    for name, (keyword, value) in named.items():
        tag = tag_for_keyword(keyword)
        vr = dictionary_VR(tag).split(" or ")[0] if tag is not None else ""  # OB or OW: OB (8-bit, 1-bit)
        if tag is None or vr not in _TEXT_VRS | set(_STRUCT) | {"OB", "OW", "UN"}:
            raise SlotError(f"slot {name}: no encoding for {keyword} ({vr or 'unknown'})")
        by_bytes.setdefault(encode_value(tag, vr, value, codec), []).append(name)
    used: set[str] = set()

    def slot_of(elem: DataElement, data: bytes) -> str | None:
        candidates = list(by_bytes.get(data, []))
        text = _text_of(elem)
        if text is not None and text in tokens:
            candidates.append(f"src:{tokens[text]}")
        if len(set(candidates)) > 1:
            raise SlotError(f"{elem.keyword}: slots {sorted(set(candidates))} have the same value")
        if candidates:
            used.add(candidates[0])
            return candidates[0]
        return None

    meta_chunks, meta_slots, chunks, body_slots = _compile(ds, slot_of)
    missing = set(slots) - used
    if missing:
        raise SlotError(f"slots not found in the object: {sorted(missing)[:5]}")
    return Template(
        meta_chunks, meta_slots, chunks, body_slots, frozenset(used | set(clock_values(now))) - _src(used), codec
    )


def _src(names: set[str]) -> set[str]:
    return {name for name in names if name.startswith("src:")}


# --- per writer: the templates of its keys ----------------------------------------------------------------


@dataclass(frozen=True)
class FastPath:
    """A writer's fast path: the key of its object's shape and the slots of one job."""

    key: Callable[[OutputContext], Hashable]
    job_slots: Callable[[OutputContext], Slots]

    def slots(self, ctx: OutputContext) -> dict[str, tuple[str, Any]]:
        """The writer's slots of one job with the object's own UIDs."""
        return {**identity_slots(ctx), **self.job_slots(ctx)}


@dataclass
class _State:
    seen: str = ""  # source SOP Instance UID of the key's first job (a key seen once costs nothing more)
    template: Template | None = None
    learnt_from: str = ""  # source SOP Instance UID the candidate was compiled from
    active: bool = False
    failures: int = 0


Build = Callable[["OutputContext"], Dataset]
Context = Callable[[Dataset], "OutputContext"]  # the job's context for another source (the perturbed one)


@dataclass
class Templates:
    """The templates of one writer and application, learnt from the reference path."""

    fast: FastPath
    states: OrderedDict[Hashable, _State] = field(default_factory=OrderedDict)  # least recently used first
    lock: threading.Lock = field(default_factory=threading.Lock)
    rendered: int = 0  # jobs written by the fast path (tests and the benchmark read it)

    def write(self, ctx: OutputContext, build: Build, context_for: Context) -> tuple[bytes, str]:
        """The job's Part 10 bytes and SOP Instance UID: rendered from an active template of its key, else
        built by the reference path (and learnt from)."""
        try:
            key: Hashable | None = template_key(self.fast, ctx)
        except Exception as exc:  # a key that cannot be made: this job is the reference path's
            log.debug("no template key: %s", exc)
            key = None
        state = self.states.get(key) if key is not None else None
        if state is not None:
            self.states.move_to_end(key)
        if state is not None and state.active and state.template is not None:
            try:
                data = state.template.render(job_values(ctx, self.fast.slots(ctx)))
                self.rendered += 1
                return data, ctx.uids.instance
            except Exception as exc:  # the reference path decides (and raises the builder's own error, if any)
                log.warning("template does not fit this job (%s: %s): reference path", type(exc).__name__, exc)
        ds = reference(ctx, build)
        if not encodable(ds):
            return encode_dataset(ds), str(ds.SOPInstanceUID)
        data = encode(ds)
        if key is not None:
            with self.lock:
                self._learn(key, ctx, data, build, context_for)
        return data, str(ds.SOPInstanceUID)

    def _learn(self, key: Hashable, ctx: OutputContext, data: bytes, build: Build, context_for: Context) -> None:
        """First job of a key: remembered. The next (another instance): a template compiled from it (and
        checked on it). The next: the template checked on it, then active."""
        uid = str(ctx.source.SOPInstanceUID)
        state = self.states.get(key)
        if state is None:
            self.states[key] = _State(seen=uid)
            while len(self.states) > MAX_KEYS:
                self.states.popitem(last=False)
            return
        if state.active or state.failures >= MAX_FAILURES or (state.template is None and uid == state.seen):
            return
        try:
            if state.template is None:
                state.template, state.learnt_from = compile_for(self.fast, ctx, build, context_for, data), uid
            elif uid != state.learnt_from:
                if state.template.render(job_values(ctx, self.fast.slots(ctx))) != data:
                    raise SlotError("the template does not render a second job of its key")
                state.active = True
                log.debug("template of %r active", key)
        except Exception as exc:  # anything unexpected: no template for now, the reference path stays
            state.template, state.failures = None, state.failures + 1
            level = logging.WARNING if state.failures >= MAX_FAILURES else logging.DEBUG
            log.log(level, "no template for %r (%d): %s: %s", key, state.failures, type(exc).__name__, exc)


def template_key(fast: FastPath, ctx: OutputContext) -> Hashable:
    """The key of a job's template: the writer's, :func:`context_key` and :func:`source_key`."""
    key = (fast.key(ctx), context_key(ctx), source_key(ctx.source))
    hash(key)
    return key


def compile_for(
    fast: FastPath, ctx: OutputContext, build: Build, context_for: Context, data: bytes | None = None
) -> Template:
    """The template of ``ctx``'s key, compiled from the reference object of the job with a perturbed
    source and checked to render the job itself as its reference path does (``data``: those bytes, when
    already built); :class:`SlotError` if it does not."""
    source, tokens = perturbed(ctx.source)
    other = context_for(source)
    template = compile_template(reference(other, build), fast.slots(other), other.now, tokens)
    if data is None:
        data = encode(reference(ctx, build))
    if template.render(job_values(ctx, fast.slots(ctx))) != data:
        raise SlotError("the template compiled from the perturbed source does not render the job")
    return template


def identity_slots(ctx: OutputContext) -> dict[str, tuple[str, Any]]:
    """The object's own UIDs, slots of every template."""
    return {
        "uid:instance": ("SOPInstanceUID", ctx.uids.instance),
        "uid:meta-instance": ("MediaStorageSOPInstanceUID", ctx.uids.instance),
        "uid:series": ("SeriesInstanceUID", ctx.uids.series),
    }


def encode_reference(ctx: OutputContext, build: Build) -> tuple[bytes, str]:
    """The reference path of a writer without a fast path: its dataset as pydicom writes it."""
    ds = reference(ctx, build)
    return encode_dataset(ds), str(ds.SOPInstanceUID)


def reference(ctx: OutputContext, build: Build) -> Dataset:
    """The reference path's dataset: the writer's highdicom builder, the clock stamped to ``ctx.now``."""
    ds = build(ctx)
    stamp_clock(ds, ctx.now)
    return ds


def walk(ds: Dataset) -> Iterator[DataElement]:
    """Every element of ``ds``, nested ones too (tests compare objects with it)."""
    for elem in ds:
        yield elem
        if elem.VR == "SQ":
            for item in elem.value:
                yield from walk(item)
