"""What an HIS does against the portal API (docs/portal-api.md), with nothing but the standard library: take a
token, POST the signed file base64-encoded as a form, poll the result by its transaction id. The demo and the
end-to-end tests use it, so they exercise the API exactly as a hospital's software would.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any


def localstack_api_url(endpoint: str, api_id: str, stage: str) -> str:
    """A REST API's base URL on LocalStack, without the DNS name AWS would give it."""
    return f"{endpoint.rstrip('/')}/restapis/{api_id}/{stage}/_user_request_"


@dataclass(frozen=True)
class Reply:
    status: int  # the HTTP status
    body: dict[str, Any]

    @property
    def code(self) -> str:
        return str(self.body.get("maKetQua", ""))


class PortalClient:
    """One facility's account. ``password`` is the clear password; only its MD5 leaves this object."""

    def __init__(self, base_url: str, *, username: str, password: str, province: str, facility: str,
                 timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.username, self.province, self.facility = username, province, facility
        self.password_md5 = hashlib.md5(password.encode("utf-8")).hexdigest().upper()  # what BHXH asks for
        self.timeout = timeout
        self._token: dict[str, Any] | None = None

    def post(self, path: str, form: dict[str, str], headers: dict[str, str] | None = None) -> Reply:
        data = urllib.parse.urlencode(form).encode("ascii")
        request = urllib.request.Request(f"{self.base_url}{path}", data=data, method="POST", headers={
            "Content-Type": "application/x-www-form-urlencoded", **(headers or {})})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return Reply(response.status, json.loads(response.read() or b"{}"))
        except urllib.error.HTTPError as error:  # 4xx/5xx carry the same envelope
            raw = error.read()
            try:
                body = json.loads(raw) if raw else {}
            except ValueError:
                body = {"raw": raw[:200].decode("utf-8", "replace")}
            return Reply(error.code, body if isinstance(body, dict) else {"raw": body})

    def take_token(self, password_md5: str | None = None) -> Reply:
        reply = self.post("/api/token/take", {"username": self.username,
                                              "password": password_md5 or self.password_md5})
        if reply.code == "200":
            self._token = reply.body["APIKey"]
        return reply

    def _auth(self) -> dict[str, str]:
        if self._token is None:
            reply = self.take_token()
            if reply.code != "200":
                raise RuntimeError(f"token refused: {reply.body}")
        assert self._token is not None
        return {"accessToken": self._token["access_token"], "tokenId": self._token["id_token"],
                "passwordHash": self.password_md5}

    def submit(self, document: bytes, *, check_in: bool = False, facility: str | None = None,
               province: str | None = None, endpoint: str = "QD4750") -> Reply:
        """guiHoSoXml<endpoint> (or checkInKcb<endpoint>); ``facility``/``province`` override the account's."""
        path = f"/api/qd130/checkInKcb{endpoint.replace('QD', 'Qd')}" if check_in else \
            f"/api/qd130/guiHoSoXml{endpoint}"
        return self.post(path, {"username": self.username, "loaiHoSo": "0" if check_in else "130",
                                "maTinh": province or self.province, "maCSKCB": facility or self.facility,
                                "fileHSBase64": base64.b64encode(document).decode("ascii")}, self._auth())

    def lookup(self, transaction_id: str) -> Reply:
        return self.post("/api/qd130/traCuuKetQua", {"username": self.username, "maCSKCB": self.facility,
                                                     "maGiaoDich": transaction_id}, self._auth())

    def wait_for_receipt(self, transaction_id: str, *, timeout: float = 180.0, interval: float = 2.0) -> Reply:
        """Poll the lookup until the receipt is there (200) or something other than 202 comes back."""
        give_up = time.monotonic() + timeout
        while True:
            reply = self.lookup(transaction_id)
            if reply.code != "202" or time.monotonic() >= give_up:
                return reply
            time.sleep(interval)
