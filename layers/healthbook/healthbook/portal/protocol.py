"""BHXH's web service (CV 1245/BHXH-CNTT, Phụ lục I: "Hướng dẫn liên thông dữ liệu ... theo QĐ 4750"), as the
portal API speaks it: paths, headers, form fields, result codes (``maKetQua``) and the JSON replies.

The protocol, as HIS software already speaks it to BHXH:

1. ``POST /api/token/take``, form ``username``, ``password`` (upper-case hex MD5 of the password):
   ``{"maKetQua": "200", "APIKey": {"access_token", "id_token", "token_type": "Bearer", "username",
   "expires_in"}}``, ``expires_in`` the expiry in UTC, ``YYYY-MM-DDTHH:MM:SSZ``.
2. ``POST /api/qd130/guiHoSoXmlQD4750`` (also ``guiHoSoXmlQD3176``, and ``guiHoSoXmlQD130`` of CV 3190 HIS),
   headers ``accessToken``, ``tokenId``, ``passwordHash``, form ``username``, ``loaiHoSo``, ``maTinh``,
   ``maCSKCB``, ``fileHSBase64``: ``{"maKetQua", "maGiaoDich", "thoiGianTiepNhan", "thongDiep"}``.
3. ``POST /api/qd130/checkInKcbQd4750`` (also ``...Qd3176``, ``...Qd130``): the same for a check-in document
   (``CHI_TIEU_TRANG_THAI_KCB``, XML0).

Ours, in the same envelope and with the same headers:

4. ``POST /api/qd130/traCuuKetQua``, form ``username``, ``maCSKCB``, ``maGiaoDich``: the signed receipt
   (``bienNhan``) and ``trangThai`` (200), "being processed" (202) or unknown (404).
5. ``POST /api/qd130/taoLienKetTaiLen``, form ``username``, ``maTinh``, ``maCSKCB``, ``loaiHoSo``: a presigned
   S3 PUT for a file too large for the API (``uploadUrl``, ``uploadMethod``, ``uploadHeaders``, ``maGiaoDich``,
   ``hetHan``: when the link expires, ``yyyyMMddHHmmss`` in Vietnam time like ``thoiGianTiepNhan``).

Decisions (docs/portal-api.md states them):

- ``loaiHoSo``: the submission endpoints accept ``"130"`` (the guide's "mặc định điền 130") and also ``"4750"``
  and ``"3176"``, which some HIS fill in with the decision's number: all three name the same family of files, and
  the validator picks the version of the standard from the visit's dates, never from this field or the path.
  The check-in endpoints accept ``"0"`` only. ``taoLienKetTaiLen`` accepts any of the four.
- Paths are matched case-insensitively (as BHXH's own server does), a trailing ``/`` tolerated; the metadata
  names the canonical spelling. Any other path or a method other than POST: 405.
- Form field names are matched case-insensitively too; a field given twice is a 400 naming it. Header names are
  case-insensitive (HTTP). Blank counts as missing.
- ``fileHSBase64``: line breaks and tabs are ignored, a space is read as ``+`` (an HIS that does not
  percent-encode its form sends ``+``, which form decoding turns into a space; base64 has no space), then strict
  standard base64 with padding. The decoded file must start, after an optional UTF-8 BOM and whitespace, with
  ``<``; else 415.
- A ``Content-Type`` other than ``application/x-www-form-urlencoded`` (multipart, JSON) is a 415; none at all is
  read as a form.

Replies are JSON (``application/json; charset=utf-8``), the HTTP status the result code, never cached.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import parse_qs

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
MAX_FORM_FIELDS = 32  # ours have at most 5; parse_qs raises beyond
FORM_OVERHEAD_BYTES = 64 * 1024  # the other fields, percent-encoding of the base64's "+" and "/"...

# Header names (compared case-insensitively).
ACCESS_TOKEN, TOKEN_ID, PASSWORD_HASH = "accessToken", "tokenId", "passwordHash"
# Form fields.
USERNAME, PASSWORD = "username", "password"
DOCUMENT_TYPE, PROVINCE, FACILITY, FILE = "loaiHoSo", "maTinh", "maCSKCB", "fileHSBase64"
TRANSACTION = "maGiaoDich"

SUBMIT_TYPES = frozenset({"130", "4750", "3176"})
CHECK_IN_TYPES = frozenset({"0"})


class ResultCode(StrEnum):
    """``maKetQua``: a string, and the HTTP status of the reply."""

    OK = "200"
    PROCESSING = "202"
    BAD_REQUEST = "400"
    UNAUTHENTICATED = "401"
    FORBIDDEN = "403"
    NOT_FOUND = "404"
    METHOD_NOT_ALLOWED = "405"
    TOO_LARGE = "413"
    UNSUPPORTED = "415"
    LOCKED = "423"
    THROTTLED = "429"
    INTERNAL = "500"

    @property
    def status(self) -> int:
        return int(self.value)

    @property
    def message_vi(self) -> str:
        return _MESSAGES[self][0]

    @property
    def message_en(self) -> str:
        return _MESSAGES[self][1]


_MESSAGES: dict[ResultCode, tuple[str, str]] = {
    ResultCode.OK: ("Thành công.", "Success."),
    ResultCode.PROCESSING: ("Hồ sơ đang được xử lý.", "The file is being processed; its receipt is not ready yet."),
    ResultCode.BAD_REQUEST: ("Thiếu hoặc sai định dạng trường", "A field is missing or malformed (the message names "
                             "it, never its value)"),
    ResultCode.UNAUTHENTICATED: ("Xác thực không thành công.", "Not authenticated: wrong username or password, or "
                                 "a bad, expired or revoked token, or a tokenId, passwordHash or username that is "
                                 "not the token's."),
    ResultCode.FORBIDDEN: ("Không có quyền thực hiện: mã cơ sở KCB hoặc mã tỉnh không thuộc tài khoản, hoặc tài "
                           "khoản đã bị vô hiệu hóa.", "Not authorised: maCSKCB or maTinh is not the account's "
                           "facility or province, or the account is disabled."),
    ResultCode.NOT_FOUND: ("Không tìm thấy giao dịch.", "Unknown transaction (or another facility's)."),
    ResultCode.METHOD_NOT_ALLOWED: ("Đường dẫn hoặc phương thức không được hỗ trợ.",
                                    "Unknown path, or a method other than POST."),
    ResultCode.TOO_LARGE: ("Dữ liệu vượt quá kích thước cho phép. Với tệp lớn, hãy lấy liên kết tải lên bằng "
                           "/api/qd130/taoLienKetTaiLen rồi tải tệp lên liên kết đó.",
                           "Too large. For a large file, take an upload link from /api/qd130/taoLienKetTaiLen and "
                           "PUT the file there."),
    ResultCode.UNSUPPORTED: ("fileHSBase64 không phải là tệp XML mã hóa base64.",
                             "fileHSBase64 is not base64, or what it decodes to is not XML."),
    ResultCode.LOCKED: ("Tài khoản đang bị tạm khóa do đăng nhập sai nhiều lần.",
                        "The account is locked after repeated failed logins."),
    ResultCode.THROTTLED: ("Vượt quá số yêu cầu cho phép. Vui lòng gửi lại sau.",
                           "Too many requests (files per minute of the facility, or failed logins from this "
                           "address). Try again later."),
    ResultCode.INTERNAL: ("Lỗi hệ thống, vui lòng gửi lại sau.", "Internal error; try again later."),
}


class Action(StrEnum):
    TOKEN = "token"
    SUBMIT = "submit"
    CHECK_IN = "check-in"
    LOOKUP = "lookup"
    UPLOAD_LINK = "upload-link"


@dataclass(frozen=True)
class Endpoint:
    path: str  # canonical spelling
    action: Action

    @property
    def name(self) -> str:
        """The path's last segment, as the inbox object's ``endpoint`` metadata."""
        return self.path.rsplit("/", 1)[-1]


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("/api/token/take", Action.TOKEN),
    Endpoint("/api/qd130/guiHoSoXmlQD4750", Action.SUBMIT),
    Endpoint("/api/qd130/guiHoSoXmlQD3176", Action.SUBMIT),
    Endpoint("/api/qd130/guiHoSoXmlQD130", Action.SUBMIT),
    Endpoint("/api/qd130/checkInKcbQd4750", Action.CHECK_IN),
    Endpoint("/api/qd130/checkInKcbQd3176", Action.CHECK_IN),
    Endpoint("/api/qd130/checkInKcbQd130", Action.CHECK_IN),
    Endpoint("/api/qd130/traCuuKetQua", Action.LOOKUP),
    Endpoint("/api/qd130/taoLienKetTaiLen", Action.UPLOAD_LINK),
)
_BY_PATH = {endpoint.path.lower(): endpoint for endpoint in ENDPOINTS}


def route(method: str, path: str) -> Endpoint | None:
    """The endpoint of a POST to ``path``; None for anything else (405)."""
    if method.upper() != "POST":
        return None
    normalised = path.rstrip("/").lower() if path != "/" else path
    return _BY_PATH.get(normalised)


class FieldError(ValueError):
    """A form field or header is missing, given twice or malformed; ``name`` says which (never its value)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class Form:
    """A parsed form, its field names matched case-insensitively."""

    def __init__(self, fields: Mapping[str, list[str]]) -> None:
        self._values: dict[str, list[str]] = {}
        for name, values in fields.items():
            self._values.setdefault(name.lower(), []).extend(values)

    def get(self, name: str) -> str | None:
        """The field's value, None when absent or blank; FieldError when it is given more than once."""
        values = self._values.get(name.lower(), [])
        if len(values) > 1:
            raise FieldError(name)
        value = values[0].strip() if values else ""
        return value or None

    def require(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise FieldError(name)
        return value


def parse_form(body: str) -> Form:
    """An ``application/x-www-form-urlencoded`` body. FieldError("body") when it cannot be one."""
    try:
        fields = parse_qs(body, keep_blank_values=True, strict_parsing=False, encoding="utf-8", errors="strict",
                          max_num_fields=MAX_FORM_FIELDS)
    except (ValueError, UnicodeDecodeError):
        raise FieldError("body") from None
    return Form(fields)


def is_form(content_type: str | None) -> bool:
    if content_type is None or not content_type.strip():
        return True
    return content_type.split(";", 1)[0].strip().lower() == FORM_CONTENT_TYPE


@dataclass(frozen=True)
class Reply:
    """One JSON reply; ``http`` is the API Gateway proxy response."""

    code: ResultCode
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    def http(self) -> dict[str, Any]:
        headers = {"Content-Type": "application/json; charset=utf-8", "Cache-Control": "no-store",
                   "X-Content-Type-Options": "nosniff", **self.headers}
        return {"statusCode": self.code.status, "headers": headers,
                "body": json.dumps(self.body, ensure_ascii=False, separators=(",", ":")), "isBase64Encoded": False}


def message(code: ResultCode, detail: str | None = None) -> str:
    """``thongDiep``: the code's Vietnamese message, with the field it is about for a 400."""
    if code is ResultCode.BAD_REQUEST:
        return f"{code.message_vi}: {detail or 'body'}."
    return code.message_vi if detail is None else f"{code.message_vi} {detail}"
