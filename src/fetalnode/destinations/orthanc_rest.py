"""Destination kind ``orthanc``: REST delivery with pyorthanc; every failure is classified transient or permanent."""

from __future__ import annotations

from typing import Any

import httpx
from pyorthanc import Orthanc

from fetalnode.config import DestinationSettings, Settings
from fetalnode.destinations.base import SOURCE, Destination, Item, Receipt, destination_kind, same_pixels
from fetalnode.errors import DeliveryError

# Statuses worth retrying: the server may come back (PS: 5xx gateway/unavailable, 429, 408).
TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}


class OrthancClient:
    """Store instances in Orthanc and check they are there."""

    def __init__(self, settings: DestinationSettings) -> None:
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
                return_raw_response=True,
                timeout=self.settings.timeout,
            )
            self._password = password
        return self._client

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Call a pyorthanc method (raw responses) and classify the outcome."""
        try:
            response: httpx.Response = fn(*args, **kwargs)
        except httpx.TransportError as exc:
            raise DeliveryError(f"Orthanc {what}: {type(exc).__name__}: {exc}", transient=True) from exc
        code = response.status_code
        if 200 <= code < 300:
            return response.json() if "json" in response.headers.get("content-type", "") else response.content
        detail = response.text[:300].replace("\n", " ")
        raise DeliveryError(f"Orthanc {what}: HTTP {code} {detail}".rstrip(), transient=code in TRANSIENT_HTTP)

    def store(self, item: Item) -> Receipt:
        """POST one object; the receipt is Orthanc's instance ID.

        ``AlreadyStored`` counts as success for an output: output UIDs are deterministic, so it is the same
        object. For the source it does only when Orthanc holds these very bytes: an Orthanc that keeps
        another object under the UID (``OverwriteInstances`` false) would get reports on pixels it does not
        hold, so that is a permanent failure (and the outputs, sent after the source, are not sent).
        """
        answer = self._call("store", self._api.post_instances, item.data)
        if not isinstance(answer, dict) or answer.get("Status") not in {"Success", "AlreadyStored"}:
            raise DeliveryError(f"Orthanc store: unexpected answer {answer!r}"[:300], transient=False)
        instance = str(answer["ID"])
        if item.name == SOURCE and answer["Status"] == "AlreadyStored":
            held = self._call("check", self._api.get_instances_id_file, instance)
            if not same_pixels(item.data, held if isinstance(held, bytes) else b""):
                raise DeliveryError(
                    "Orthanc holds another image under this SOP Instance UID and kept it (OverwriteInstances is "
                    "off): no report is sent for pixels it does not hold",
                    transient=False,
                )
        return Receipt(self.name, item.name, instance)

    def probe(self) -> dict[str, Any]:
        about: dict[str, Any] = {"name": self.name, "kind": self.settings.kind, "url": self.url}
        try:
            return {**about, "reachable": True, "version": self.system().get("Version")}
        except DeliveryError as exc:
            return {**about, "reachable": False, "error": str(exc)}

    def system(self) -> dict[str, Any]:
        answer = self._call("system", self._api.get_system)
        return dict(answer) if isinstance(answer, dict) else {}

    @property
    def name(self) -> str:
        return self.settings.name


@destination_kind("orthanc")
def from_settings(destination: DestinationSettings, settings: Settings) -> Destination:
    return OrthancClient(destination)
