"""Orthanc Python-plugin script of the harness: the users in ``Harness.ReadOnlyUsers`` may only read.

Any request but GET from them is refused by Orthanc's HTTP server with ``403 Forbidden``, as an
authorization plugin refuses a user without the right: a real 403 for the destination tests.
Runs inside Orthanc (``PythonScript``), not in the test process.
"""

import base64
import binascii
import json
from typing import Any

import orthanc  # type: ignore[import-not-found]  # provided by Orthanc's Python plugin

READ_ONLY = frozenset(json.loads(orthanc.GetConfiguration()).get("Harness", {}).get("ReadOnlyUsers", []))


def basic_user(authorization: str) -> str:
    """The user name of a ``Basic`` Authorization header ("" for anything else)."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "basic":
        return ""
    try:
        return base64.b64decode(token, validate=True).decode("utf-8").partition(":")[0]
    except (binascii.Error, UnicodeDecodeError):
        return ""


def allow(uri: str, **request: Any) -> bool:
    if request["method"] == orthanc.HttpMethod.GET:
        return True
    return basic_user(request.get("headers", {}).get("authorization", "")) not in READ_ONLY


orthanc.RegisterIncomingHttpRequestFilter(allow)
