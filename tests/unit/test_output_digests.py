"""Golden digests: an output object's bytes change only with its writer's revision.

Every (writer, application) pair of the built-in writers builds its object on the reference path (the
highdicom builder, encoded as the node encodes it) for the fixed jobs of ``tests/output_cases.py`` (fixed
clock, station and output settings, stand-in analyses), and the SHA-256 of each object is compared with
``output_digests.json``, keyed by writer, application and ``revision=`` of ``register_output``. The
revision is part of every output's SOP Instance UID: an object whose bytes change must get a new one, or
the changed object would hide behind the UID of the old one in every archive that holds it.

When a writer's object changes on purpose: raise its ``revision=``, then regenerate the table with

    FETALNODE_DIGESTS=update .venv/bin/pytest tests/unit/test_output_digests.py

``update`` writes the digests of new revisions (and of new jobs) and refuses to change those of a revision
already in the table. ``rewrite`` rewrites everything: only for a change that is not a writer's (pydicom,
highdicom or the banner font upgraded, a job added to the set), which the table's ``made_with`` shows.
Pixel data is hashed on its own and compared only where the pixel-drawing libraries and the banner font
are those the table was made with (they draw the captures' text and lines).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from importlib.metadata import version
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from fetalnode import __version__, dicomio
from fetalnode.outputs.capture import banner_font
from fetalnode.outputs.template import encode, reference
from tests.output_cases import Case, all_cases, builder, builtin_writers, context, registered_as

pytestmark = pytest.mark.unit

TABLE = Path(__file__).with_name("output_digests.json")
MODE = os.environ.get("FETALNODE_DIGESTS", "")  # "", "update" or "rewrite"
REGENERATE = "FETALNODE_DIGESTS=update .venv/bin/pytest tests/unit/test_output_digests.py"
PIXEL_LIBRARIES = ("pillow", "numpy", "opencv-python-headless", "font")


def made_with() -> dict[str, str]:
    """What the bytes depend on besides the writers: the encoders, the drawing libraries, the banner font."""
    libraries = {"fetalnode": __version__}
    for name in ("pydicom", "highdicom", "pillow", "numpy", "opencv-python-headless"):
        try:
            libraries[name] = version(name)
        except Exception:
            libraries[name] = "absent"
    font = banner_font(12)
    path = getattr(font, "path", None)
    libraries["font"] = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16] if path else "Pillow's default"
    return libraries


def digests(data: bytes) -> dict[str, str]:
    """SHA-256 of the object, its Pixel Data value (native, the last element) hashed apart."""
    ds = dcmread(BytesIO(data))
    pixels = bytes(ds.PixelData) if "PixelData" in ds else b""
    if pixels and data.endswith(pixels):
        return {"object": _sha(data[: -len(pixels)]), "pixels": _sha(pixels)}
    return {"object": _sha(data)}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def key(name: str, application: str, revision: int) -> str:
    return f"{name} | {application or 'any'} | revision {revision}"


def current(cases: list[Case]) -> dict[str, dict[str, dict[str, str]]]:
    """Digests of every built-in (writer, application) pair's object for each job of its application."""
    table: dict[str, dict[str, dict[str, str]]] = {}
    for writer in builtin_writers():
        for application in writer.builders:
            entry: dict[str, dict[str, str]] = {}
            for case in cases:
                build = builder(writer, case)
                if build is None or registered_as(writer, case.analysis) != application:
                    continue
                ds = reference(context(writer, case), build)
                data = encode(ds) if application in writer.fast else dicomio.encode(ds)
                entry[case.label] = digests(data)
            assert entry, f"no job of tests/output_cases.py for output {writer.name!r} of {application!r}: add one"
            table[key(writer.name, application, writer.revisions.get(application, 0))] = entry
    return table


def differences(now: dict[str, dict[str, str]], then: dict[str, dict[str, str]], pixels: bool) -> list[str]:
    """The jobs whose digests differ (Pixel Data only when ``pixels``: drawn by the same libraries)."""
    out = []
    for label, digest in now.items():
        old = then.get(label)
        if old is None:
            continue
        parts = ["object", "pixels"] if pixels else ["object"]
        if any(digest.get(p) != old.get(p) for p in parts):
            out.append(label)
    return out


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> list[Case]:
    return all_cases(tmp_path_factory.mktemp("golden"))


def test_an_output_changes_its_bytes_only_with_its_revision(cases: list[Case]) -> None:
    table: dict[str, Any] = json.loads(TABLE.read_text()) if TABLE.exists() else {"made_with": {}, "objects": {}}
    recorded: dict[str, dict[str, dict[str, str]]] = table["objects"]
    now, env = current(cases), made_with()
    changed_env = {k: f"{table['made_with'].get(k)} -> {v}" for k, v in env.items() if table["made_with"].get(k) != v}
    pixels = not any(name in changed_env for name in PIXEL_LIBRARIES)
    note = (
        f" The table was made with other libraries ({changed_env}): if no writer changed, they changed the "
        f"bytes; then rewrite the table: FETALNODE_DIGESTS=rewrite {REGENERATE.split(' ', 1)[1]}"
        if changed_env
        else ""
    )
    changed = {k: differences(v, recorded[k], pixels) for k, v in now.items() if k in recorded}
    changed = {k: labels for k, labels in changed.items() if labels}
    if MODE in ("update", "rewrite"):
        assert MODE == "rewrite" or not changed, (
            f"refusing to change the digests of a revision already in the table: {changed}. "
            f"Raise the writer's revision= first.{note}"
        )
        TABLE.write_text(json.dumps({"made_with": env, "objects": now}, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"{TABLE.name} written ({MODE}): {len(now)} outputs")
    messages = [
        f"output {k.split(' | ')[0]!r} for application {k.split(' | ')[1]!r}: the bytes of its object changed "
        f"({', '.join(labels)}) but its revision did not. Raise revision= in its register_output (part of the "
        f"SOP Instance UID: a changed object must not hide behind the old one's UID), then regenerate the "
        f"table: {REGENERATE}"
        for k, labels in changed.items()
    ]
    messages += [
        f"no digests for {k}: a new output or revision? Regenerate the table: {REGENERATE}"
        for k in now.keys() - recorded.keys()
    ]
    messages += [
        f"{k} is in the table but no writer has it (revision raised or output gone): regenerate it: {REGENERATE}"
        for k in recorded.keys() - now.keys()
    ]
    messages += [
        f"{k}: jobs {sorted(now[k].keys() ^ recorded[k].keys())} are not in both the table and the job set: "
        f"regenerate it: {REGENERATE}"
        for k in now.keys() & recorded.keys()
        if now[k].keys() != recorded[k].keys()
    ]
    assert not messages, "\n".join(messages) + note
    if not pixels:
        warnings.warn(
            f"Pixel Data not compared: drawn by other libraries than the table's ({changed_env})", stacklevel=1
        )
