"""Destination kind ``dicomweb``: STOW-RS (PS3.18 10.5) with dicomweb-client; every failure is classified.

Transient (a later attempt may succeed): no connection, a timeout, HTTP 5xx, 408, 425, 429, and a Failure
Reason (0008,1197) that says the origin server could not store the instance *now*: ``A7xx`` Refused out of
Resources and ``0110`` Processing failure (PS3.18 Table I.2-2; neither is a verdict on the object).
Permanent: every other 4xx (401, 403, 404, 409, 415...) and every other Failure Reason (``A9xx``, ``Cxxx``,
``C122``, ``0122``, a server's own code). A 409 stays permanent whatever its Failure Reason: the standard
keeps it for a conflict in the request itself (Study Instance UID mismatch, unsupported SOP Class).
A 2xx answer whose Store Instances Response lists the instance neither as stored nor as failed is transient:
Orthanc's DICOMweb plugin 1.7 answers so when its storage is full, and sending the same object again is harmless.
"""

from __future__ import annotations

import logging
from io import BytesIO
from typing import Any
from urllib.parse import urlparse

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset, dcmread

from fetalnode.config import DestinationSettings, Settings
from fetalnode.destinations.base import Destination, Item, Receipt, destination_kind
from fetalnode.dicom_status import Status, stow_failure_meaning
from fetalnode.errors import ConfigError, DeliveryError, NodeError

log = logging.getLogger(__name__)

TRANSIENT_HTTP = frozenset({408, 425, 429})  # and every 5xx
# Not a property of the request: the server, a proxy or the network may do better next time.
TRANSIENT_TRANSPORT = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)
BODY_CHARS = 300


def transient_failure_reason(code: int) -> bool:
    """Out of resources (``A7xx``) or a processing failure (``0110``): the server's state, not the object's."""
    return 0xA700 <= code <= 0xA7FF or code == Status.PROCESSING_FAILURE


def _items_for(answer: Dataset, keyword: str, sop_instance_uid: str) -> list[Dataset]:
    return [i for i in answer.get(keyword, []) if str(i.get("ReferencedSOPInstanceUID", "")) == sop_instance_uid]


def failure_of(answer: Dataset, sop_instance_uid: str) -> int | None:
    """The Failure Reason the Store Instances Response gives our instance (Failed SOP Sequence), if any;
    an item without one counts as ``0110`` Processing failure (a general failure)."""
    for failed in _items_for(answer, "FailedSOPSequence", sop_instance_uid):
        reason = failed.get("FailureReason")
        return int(reason) if reason is not None else Status.PROCESSING_FAILURE
    return None


STORE_RESPONSE_TAGS = ("00081198", "00081199")  # Failed SOP Sequence, Referenced SOP Sequence


def _answer_of(response: requests.Response) -> Dataset | None:
    """The Store Instances Response Module in an error answer's body (DICOM JSON), if it holds one.

    Read whatever the Content-Type: Orthanc's DICOMweb 1.7 sends its 400 answers without one.
    """
    try:
        body = response.json()
        if isinstance(body, dict) and any(tag in body for tag in STORE_RESPONSE_TAGS):
            return Dataset.from_json(body)
    except (ValueError, TypeError, KeyError):
        pass
    return None


class DicomWebDestination:
    """STOW-RS to ``url`` (the DICOMweb root, e.g. ``http://pacs:8042/dicom-web``), one instance a request.

    HTTP Basic auth from ``username`` and ``resolved_password()``, read again before every request so a
    rotated password file is used without a restart. dicomweb-client's own retries are off: the runner
    retries transient failures with its backoff and audit events.
    """

    def __init__(self, settings: DestinationSettings) -> None:
        self.settings = settings
        self.url = settings.url.rstrip("/")
        self._session = requests.Session()
        try:
            self._client = DICOMwebClient(self.url, session=self._session, timeout=settings.timeout)
        except ValueError as exc:
            raise ConfigError(f"destination {settings.name}: url {settings.url!r}: {exc}") from exc
        self._client.set_http_retry_params(retry=False)
        # dicomweb-client 0.61 sends ``Host: <host>`` without the port on bodies under its chunk size;
        # Orthanc builds the Retrieve URLs of its answer from that header (``http://127.0.0.1/dicom-web/...``).
        url = urlparse(self.url)
        self._client.host = f"{url.hostname}:{url.port}" if url.port else str(url.hostname)

    @property
    def name(self) -> str:
        return self.settings.name

    def _authenticate(self) -> None:
        username = self.settings.username
        self._session.auth = (username, self.settings.resolved_password()) if username else None

    def store(self, item: Item) -> Receipt:
        """STOW-RS one object; the receipt is its Retrieve URL from the answer (else its SOP Instance UID).

        Storing the same object again succeeds (deterministic UIDs: the server holds the same instance).
        """
        try:
            dataset = dcmread(BytesIO(item.data))
            uid = str(dataset.SOPInstanceUID)
        except Exception as exc:  # any parse failure: these bytes will never be stored
            raise DeliveryError(f"STOW-RS {item.name}: not a DICOM Part 10 object: {exc}", transient=False) from exc
        try:
            self._authenticate()
            answer = self._client.store_instances([dataset])
        except ConfigError as exc:  # the password file: fixed by an operator, like a wrong password
            raise DeliveryError(str(exc), transient=False) from exc
        except requests.HTTPError as exc:
            if exc.response is None:
                raise DeliveryError(f"STOW-RS {self.url}: {exc}", transient=False) from exc
            raise self._refusal(exc.response, uid) from exc
        except TRANSIENT_TRANSPORT as exc:
            raise DeliveryError(f"STOW-RS {self.url}: {type(exc).__name__}: {exc}", transient=True) from exc
        except requests.RequestException as exc:  # an invalid URL or answer: retrying sends the same request
            raise DeliveryError(f"STOW-RS {self.url}: {type(exc).__name__}: {exc}", transient=False) from exc
        reason = failure_of(answer, uid)
        if reason is not None:
            raise DeliveryError(
                f"STOW-RS {self.url}: the answer lists {item.name} in its Failed SOP Sequence: "
                f"Failure Reason 0x{reason:04X} {stow_failure_meaning(reason)}",
                transient=transient_failure_reason(reason),
            )
        stored = _items_for(answer, "ReferencedSOPSequence", uid)
        if not stored and "ReferencedSOPSequence" in answer:
            # Orthanc's DICOMweb 1.7 answers 200 with both sequences empty when its storage is full.
            raise DeliveryError(
                f"STOW-RS {self.url}: the answer lists {item.name} neither as stored nor as failed "
                f"({len(answer.ReferencedSOPSequence)} stored, {len(answer.get('FailedSOPSequence', []))} failed)",
                transient=True,
            )
        for warning in (i.WarningReason for i in stored if "WarningReason" in i):
            log.warning("destination %s: %s stored with Warning Reason 0x%04X", self.name, item.name, int(warning))
        retrieve_url = next((str(i.RetrieveURL) for i in stored if i.get("RetrieveURL")), "")
        return Receipt(self.name, item.name, retrieve_url or uid)

    def _refusal(self, response: requests.Response, uid: str) -> DeliveryError:
        """An HTTP error answer as a DeliveryError: the Failure Reason when the body names our instance,
        else the HTTP status and the start of the body."""
        code = response.status_code
        transient = code >= 500 or code in TRANSIENT_HTTP
        answer = _answer_of(response)
        reason = failure_of(answer, uid) if answer is not None else None
        if reason is not None:
            detail = f"Failure Reason 0x{reason:04X} {stow_failure_meaning(reason)}"
            transient = transient or (code != 409 and transient_failure_reason(reason))
        else:
            detail = " ".join(response.text.split())[:BODY_CHARS]
        status = f"STOW-RS {self.url}: HTTP {code} {response.reason}"
        return DeliveryError(f"{status}: {detail}" if detail else status, transient=transient)

    def probe(self) -> dict[str, Any]:
        """An authenticated QIDO-RS ``studies?limit=1``: reachable, and these credentials may search."""
        about: dict[str, Any] = {"name": self.name, "kind": self.settings.kind, "url": self.url}
        try:
            self._authenticate()
            self._client.search_for_studies(limit=1)
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else "?"
            return {**about, "reachable": False, "error": f"QIDO-RS: HTTP {code}"}
        except (requests.RequestException, ValueError, NodeError) as exc:
            return {**about, "reachable": False, "error": f"QIDO-RS: {type(exc).__name__}: {exc}"}
        return {**about, "reachable": True}


@destination_kind("dicomweb")
def from_settings(destination: DestinationSettings, settings: Settings) -> Destination:
    if urlparse(destination.url).scheme not in {"http", "https"}:
        raise ConfigError(
            f'destination {destination.name}: kind dicomweb needs url = "http(s)://host:port/dicom-web" (the DICOMweb root)'
        )
    return DicomWebDestination(destination)
