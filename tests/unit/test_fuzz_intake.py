"""Property-based fuzzing of what the SCP and the worker do with untrusted bytes.

Property: whatever bytes arrive, ``read_received`` -> ``check_header`` -> ``decode_for_analysis``
either yields an image or raises ``IntakeRejected`` (which the SCP turns into a DICOM status and
the worker into a recorded rejection). Any other exception is a bug. Bounded: a fixed seed and a
fixed number of examples per seed file, a few seconds in all.
"""

from __future__ import annotations

from io import BytesIO

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.uid import RLELossless

from fetalnode.errors import IntakeRejected
from fetalnode.intake import check_header, decode_for_analysis, read_received
from harness.corpus import SAMPLE, palette_16bit
from tests.conftest import dicom_testfile

pytestmark = [pytest.mark.unit, pytest.mark.filterwarnings("ignore::UserWarning")]
LIMITS = (4_000_000, 50)


def _small_sample(compress: bool) -> bytes:
    ds = dcmread(SAMPLE)
    arr = ds.pixel_array[::8, ::8].copy()
    ds.Rows, ds.Columns = arr.shape
    ds.PixelData = arr.tobytes()
    if compress:
        ds.compress(RLELossless, arr)
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("fuzzseeds")
    return {
        "native": _small_sample(False),
        "rle": _small_sample(True),
        "j2k": dicom_testfile("US1_J2KR.dcm").read_bytes(),
        "palette16": palette_16bit(folder).read_bytes(),
    }


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    return _seeds(tmp_path_factory)


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**7), st.integers(1, 255)),
    st.tuples(st.just("cut"), st.integers(0, 10**7), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10**7), st.integers(0, 255)),
    st.tuples(st.just("zero"), st.integers(0, 10**7), st.integers(1, 64)),
)


def mutate(data: bytes, ops: list[tuple[str, int, int]]) -> bytes:
    buf = bytearray(data)
    for op, pos, arg in ops:
        at = 132 + pos % max(1, len(buf) - 132)  # keep the preamble; mutate meta and dataset
        if op == "flip":
            buf[at] ^= arg
        elif op == "cut":
            del buf[at:]
        elif op == "insert":
            buf[at:at] = bytes([arg])
        else:
            buf[at : at + arg] = bytes(min(arg, len(buf) - at))
        if len(buf) <= 132:
            break
    return bytes(buf)


def intake(data: bytes) -> str:
    try:
        ds = read_received(data)
        check_header(ds, *LIMITS)
        decode_for_analysis(ds, *LIMITS)
    except IntakeRejected as exc:
        assert 0x0100 <= exc.status <= 0xCFFF
        return "rejected"
    return "decoded"


@pytest.mark.parametrize("name", ["native", "rle", "j2k", "palette16"])
def test_mutated_objects_are_decoded_or_rejected_never_crash(seeds: dict[str, bytes], name: str) -> None:
    assert intake(seeds[name]) == "decoded", "the unmutated seed must decode"
    outcomes: list[str] = []

    @seed(20261124)
    @settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(ops=st.lists(mutation, min_size=1, max_size=4))
    def run(ops: list[tuple[str, int, int]]) -> None:
        outcomes.append(intake(mutate(seeds[name], ops)))

    run()
    assert "rejected" in outcomes, "the mutations must reach the rejection paths"
