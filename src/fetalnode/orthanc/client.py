"""REST delivery to Orthanc with pyorthanc; classifies every failure as transient or permanent."""

from __future__ import annotations

import logging
from typing import Any

import httpx
from pyorthanc import Orthanc

from fetalnode.config import OrthancSettings
from fetalnode.errors import DeliveryError

log = logging.getLogger(__name__)

# Statuses worth retrying: the server may come back (PS: 5xx gateway/unavailable, 429, 408).
TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}


class OrthancClient:
    """Store instances in Orthanc and check they are there."""

    def __init__(self, settings: OrthancSettings) -> None:
        self.url = settings.url.rstrip("/")
        self.settings = settings
        self._password: str | None = None
        self._client: Orthanc | None = None

    @property
    def _api(self) -> Orthanc:
        """The pyorthanc client, rebuilt when the password (file) changes: a rotated secret or a
        corrected one is used by the next attempt without restarting the node."""
        password = self.settings.resolved_password()
        if self._client is None or password != self._password:
            self._client = Orthanc(
                self.url,
                username=self.settings.username or None,
                password=password or None,
                timeout=self.settings.timeout,
            )
            self._password = password
        return self._client

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except httpx.HTTPStatusError as exc:
            code = exc.response.status_code
            detail = exc.response.text[:300].replace("\n", " ")
            raise DeliveryError(f"Orthanc {what}: HTTP {code} {detail}", transient=code in TRANSIENT_HTTP) from exc
        except httpx.TransportError as exc:
            raise DeliveryError(f"Orthanc {what}: {type(exc).__name__}: {exc}", transient=True) from exc

    def store(self, data: bytes) -> dict[str, Any]:
        """POST one DICOM file; returns Orthanc's answer (``ID``, ``Status``, ``ParentStudy``...).

        ``AlreadyStored`` counts as success: output UIDs are deterministic, so it is the same object.
        """
        answer = self._call("store", self._api.post_instances, data)
        if not isinstance(answer, dict) or answer.get("Status") not in {"Success", "AlreadyStored"}:
            raise DeliveryError(f"Orthanc store: unexpected answer {answer!r}"[:300], transient=False)
        return answer

    def instance_exists(self, orthanc_id: str) -> bool:
        try:
            self._call("get instance", self._api.get_instances_id, orthanc_id)
        except DeliveryError as exc:
            if "HTTP 404" in str(exc):
                return False
            raise
        return True

    def find_instances(self, level_query: dict[str, str]) -> list[str]:
        """Orthanc IDs of instances matching a DICOM query, e.g. ``{"SOPInstanceUID": uid}``."""
        answer = self._call("find", self._api.post_tools_find, json={"Level": "Instance", "Query": level_query})
        return list(answer) if isinstance(answer, list) else []

    def system(self) -> dict[str, Any]:
        answer = self._call("system", self._api.get_system)
        return dict(answer) if isinstance(answer, dict) else {}
