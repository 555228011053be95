"""The portal API's adapters: the portal table (accounts, failed-login counters, per-facility rates) on DynamoDB,
the inbox and the receipts on S3, the token key from Secrets Manager.

The portal table has one key, ``pk`` (S), and a TTL attribute, ``expires_at``:

- ``USER#<username>``: an account: ``username``, ``facility`` (5 digits), ``province`` (2 digits),
  ``secret_hash`` (argon2id PHC string of the upper-case hex MD5 the HIS sends), ``generation`` (N, +1 at every
  rotation: tokens name it, so a rotation revokes them), ``created_at`` / ``rotated_at`` (ISO UTC), ``failures``,
  ``window_start``, ``locked_until`` (N, epoch seconds; 0: not locked), ``disabled`` (BOOL, optional). An
  account never carries ``expires_at``. A username that has no account but has failed logins has an item
  without ``secret_hash``: its counters, with ``expires_at``; registering the name replaces it.
- ``SOURCE#<ip>``: ``failures``, ``window_start``, ``locked_until``, ``expires_at``.
- ``RATE#<facility>#<yyyyMMddHHmm, UTC>``: ``count`` (N, ADD), ``expires_at``.

Failures are counted with conditional UpdateItems (no read-modify-write): one ADD while the window that started
at ``window_start`` is still open, else a new window. The admin operations (``PortalAccounts.register``,
``rotate``, ``unlock``, ``disable``, ``enable``, ``describe``) are what ``healthbook facility add --portal-user``
and ``healthbook facility portal-account`` call.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from healthbook.aws.settings import error_code
from healthbook.kernel import PORTAL_FOLDER, PROVINCE_CODE, is_facility_code, iso_utc, portal_inbox_key
from healthbook.portal.credentials import SecretHasher, is_username, normalise_md5
from healthbook.portal.service import Account, LoginState, Subject, UploadLink
from healthbook.portal.tokens import MIN_KEY_BYTES, TokenKey

CONDITION_FAILED = "ConditionalCheckFailedException"
_MISSING = {"404", "NoSuchKey", "NotFound"}
RATE_TTL_SECONDS = 3600
MAX_RECEIPT_BYTES = 64 * 1024 * 1024  # what the lookup reads at most; a larger receipt is an error


class AccountExists(ValueError):
    """``register`` of a username that already has an account."""


def _n(value: int) -> dict[str, str]:
    return {"N": str(value)}


def _s(value: str) -> dict[str, str]:
    return {"S": value}


def _int(item: dict[str, Any], name: str) -> int:
    value = item.get(name, {}).get("N")
    return int(value) if value is not None else 0


def _str(item: dict[str, Any], name: str) -> str | None:
    value = item.get(name, {}).get("S")
    return str(value) if value is not None else None


def _epoch(moment: datetime) -> int:
    return int(moment.timestamp())


def _instant(seconds: int) -> datetime | None:
    return datetime.fromtimestamp(seconds, UTC) if seconds > 0 else None


class PortalAccounts:
    """The portal table: the service's AttemptStore and RateLimiter, and the accounts' administration."""

    def __init__(self, dynamodb_client: Any, table: str, *, hasher: SecretHasher | None = None) -> None:
        self._ddb = dynamodb_client
        self.table = table
        self._hasher = hasher or SecretHasher()

    # --- administration (the CLI) -----------------------------------------------------------------------------

    def register(self, username: str, *, facility: str, province: str, password_md5: str, now: datetime) -> None:
        """A new account, generation 1. AccountExists when the username has one already."""
        if not is_username(username):
            raise ValueError("a username is 3 to 64 of A-Z a-z 0-9 . _ @ -")
        if not is_facility_code(facility):
            raise ValueError("the facility is a 5-digit MACSKCB")
        if not PROVINCE_CODE.fullmatch(province):
            raise ValueError("the province is a 2-digit code")
        md5 = normalise_md5(password_md5)
        if md5 is None:
            raise ValueError("the password is given as its MD5, 32 hex digits")
        item = {"pk": _s(_user(username)), "username": _s(username), "facility": _s(facility),
                "province": _s(province), "secret_hash": _s(self._hasher.hash(md5)), "generation": _n(1),
                "created_at": _s(iso_utc(now)), "failures": _n(0), "window_start": _n(0), "locked_until": _n(0)}
        try:
            self._ddb.put_item(TableName=self.table, Item=item,
                               ConditionExpression="attribute_not_exists(pk) OR attribute_not_exists(secret_hash)")
        except Exception as exc:
            if error_code(exc) == CONDITION_FAILED:
                raise AccountExists(f"username {username} already has an account") from None
            raise

    def rotate(self, username: str, *, password_md5: str, now: datetime) -> int:
        """A new password; the new generation (every token issued before stops working). KeyError if unknown."""
        md5 = normalise_md5(password_md5)
        if md5 is None:
            raise ValueError("the password is given as its MD5, 32 hex digits")
        updated = self._update_account(username, "SET secret_hash = :h, rotated_at = :t ADD generation :one",
                                       {":h": _s(self._hasher.hash(md5)), ":t": _s(iso_utc(now)), ":one": _n(1)})
        return _int(updated, "generation")

    def unlock(self, username: str) -> None:
        """Forget the user's failed logins and lock. KeyError if unknown."""
        self._update_account(username, "SET failures = :zero, window_start = :zero, locked_until = :zero",
                             {":zero": _n(0)})

    def disable(self, username: str) -> None:
        """Refuse the account's logins and tokens (403) until ``enable``. KeyError if unknown."""
        self._update_account(username, "SET disabled = :yes", {":yes": {"BOOL": True}})

    def enable(self, username: str) -> None:
        self._update_account(username, "REMOVE disabled", None)

    def unlock_source(self, source: str) -> None:
        """Forget a source address's failed logins and lock (nothing to do when it has none)."""
        try:
            self._ddb.update_item(TableName=self.table, Key={"pk": _s(_source(source))},
                                  UpdateExpression="SET failures = :zero, window_start = :zero, locked_until = :zero",
                                  ConditionExpression="attribute_exists(pk)",
                                  ExpressionAttributeValues={":zero": _n(0)})
        except Exception as exc:
            if error_code(exc) != CONDITION_FAILED:
                raise

    def describe(self, username: str) -> dict[str, Any] | None:
        """The account without its secret; None when there is none."""
        item = self._get(_user(username))
        if item is None or "secret_hash" not in item:
            return None
        locked = _instant(_int(item, "locked_until"))
        return {"username": username, "facility": _str(item, "facility"), "province": _str(item, "province"),
                "generation": _int(item, "generation"), "created_at": _str(item, "created_at"),
                "rotated_at": _str(item, "rotated_at"), "failures": _int(item, "failures"),
                "locked_until": iso_utc(locked) if locked else None,
                "disabled": bool(item.get("disabled", {}).get("BOOL", False))}

    def _update_account(self, username: str, expression: str, values: dict[str, Any] | None) -> dict[str, Any]:
        extra = {"ExpressionAttributeValues": values} if values else {}
        try:
            response = self._ddb.update_item(TableName=self.table, Key={"pk": _s(_user(username))},
                                             UpdateExpression=expression,
                                             ConditionExpression="attribute_exists(secret_hash)",
                                             ReturnValues="UPDATED_NEW", **extra)
        except Exception as exc:
            if error_code(exc) == CONDITION_FAILED:
                raise KeyError(username) from None
            raise
        attributes: dict[str, Any] = response.get("Attributes", {})
        return attributes

    def _get(self, pk: str) -> dict[str, Any] | None:
        item: dict[str, Any] | None = self._ddb.get_item(TableName=self.table, Key={"pk": _s(pk)},
                                                         ConsistentRead=True).get("Item")
        return item

    # --- the service's AttemptStore ---------------------------------------------------------------------------

    def login_state(self, username: str) -> LoginState:
        item = self._get(_user(username))
        if item is None:
            return LoginState(account=None)
        secret = _str(item, "secret_hash")
        account = None if secret is None else Account(
            username=username, facility=_str(item, "facility") or "", province=_str(item, "province") or "",
            secret_hash=secret, generation=_int(item, "generation"),
            disabled=bool(item.get("disabled", {}).get("BOOL", False)))
        return LoginState(account=account, locked_until=_instant(_int(item, "locked_until")),
                          failures=_int(item, "failures"))

    def source_locked_until(self, source: str) -> datetime | None:
        item = self._get(_source(source))
        return _instant(_int(item, "locked_until")) if item else None

    def count_failure(self, subject: Subject, *, now: datetime, window: timedelta) -> int:
        guard, expiring = _guard(subject)
        moment = _epoch(now)
        values: dict[str, Any] = {":one": _n(1), ":since": _n(moment - int(window.total_seconds()))}
        add, restart = "ADD failures :one", "SET failures = :one, window_start = :now"
        if expiring:  # counters of a source or of a name without an account go away by themselves
            values[":exp"] = _n(moment + 2 * int(window.total_seconds()))
            add, restart = f"{add} SET expires_at = :exp", f"{restart}, expires_at = :exp"
        key = {"pk": _s(_key(subject))}
        for _ in range(3):  # a concurrent failure may open the window between the two attempts
            try:
                response = self._ddb.update_item(
                    TableName=self.table, Key=key, UpdateExpression=add,
                    ConditionExpression=f"{guard}window_start > :since", ExpressionAttributeValues=values,
                    ReturnValues="UPDATED_NEW")
                return _int(response.get("Attributes", {}), "failures")
            except Exception as exc:
                if error_code(exc) != CONDITION_FAILED:
                    raise
            try:
                self._ddb.update_item(
                    TableName=self.table, Key=key,
                    UpdateExpression=restart,
                    ConditionExpression=f"{guard}(attribute_not_exists(window_start) OR window_start <= :since)",
                    ExpressionAttributeValues={**values, ":now": _n(moment)})
                return 1
            except Exception as exc:
                if error_code(exc) != CONDITION_FAILED:
                    raise
        return 0  # the account appeared or went meanwhile: nothing of this subject to count against

    def lock(self, subject: Subject, *, now: datetime, until: datetime) -> bool:
        guard, expiring = _guard(subject)
        values: dict[str, Any] = {":until": _n(_epoch(until)), ":now": _n(_epoch(now))}
        expression = "SET locked_until = :until"
        if expiring:
            values[":exp"] = _n(_epoch(until) + RATE_TTL_SECONDS)
            expression += ", expires_at = :exp"
        try:
            self._ddb.update_item(TableName=self.table, Key={"pk": _s(_key(subject))}, UpdateExpression=expression,
                                  ConditionExpression=f"{guard}(attribute_not_exists(locked_until) "
                                                      "OR locked_until <= :now)",
                                  ExpressionAttributeValues=values)
        except Exception as exc:
            if error_code(exc) == CONDITION_FAILED:
                return False
            raise
        return True

    def clear_failures(self, username: str) -> None:
        with contextlib.suppress(KeyError):  # gone meanwhile
            self.unlock(username)

    # --- the service's RateLimiter ----------------------------------------------------------------------------

    def take(self, facility: str, *, now: datetime, limit: int) -> bool:
        minute = now.astimezone(UTC).strftime("%Y%m%d%H%M")
        try:
            self._ddb.update_item(TableName=self.table, Key={"pk": _s(f"RATE#{facility}#{minute}")},
                                  UpdateExpression="ADD #count :one SET expires_at = :exp",
                                  ConditionExpression="attribute_not_exists(#count) OR #count < :limit",
                                  ExpressionAttributeNames={"#count": "count"},
                                  ExpressionAttributeValues={":one": _n(1), ":limit": _n(limit),
                                                             ":exp": _n(_epoch(now) + RATE_TTL_SECONDS)})
        except Exception as exc:
            if error_code(exc) == CONDITION_FAILED:
                return False
            raise
        return True


def _user(username: str) -> str:
    return f"USER#{username}"


def _source(source: str) -> str:
    return f"SOURCE#{source}"


def _key(subject: Subject) -> str:
    return _user(subject.name) if subject.kind == "user" else _source(subject.name)


def _guard(subject: Subject) -> tuple[str, bool]:
    """(a condition prefix that keeps an account's counters and a stranger's apart, whether the item expires)."""
    if subject.kind == "source":
        return "", True
    if subject.known:
        return "attribute_exists(secret_hash) AND ", False
    return "attribute_not_exists(secret_hash) AND ", True


# --- S3 -----------------------------------------------------------------------------------------------------

CONTENT_TYPE = "application/xml"
CHANNEL = "portal"


class S3Inbox:
    """The service's Inbox and Presigner: files at ``inbox/<facility>/portal/<maGiaoDich>.xml`` and nowhere else.
    ``kms_key_id`` set: written (and presigned) with SSE-KMS under that key; else the bucket's default.
    ``presign_client``: an S3 client that signs SigV4 (the default one presigns with SigV2)."""

    def __init__(self, s3: Any, *, bucket: str, kms_key_id: str | None = None, presign_client: Any = None) -> None:
        self._s3 = s3
        self._presign = presign_client or s3
        self.bucket = bucket
        self.kms_key_id = kms_key_id

    def key(self, facility: str, transaction_id: str) -> str:
        key = portal_inbox_key(transaction_id)
        if not is_facility_code(facility) or not key.startswith(f"inbox/{facility}/{PORTAL_FOLDER}/"):
            raise ValueError("refusing a key outside the facility's own portal folder")
        return key

    def _params(self, facility: str, transaction_id: str, endpoint: str) -> dict[str, Any]:
        params: dict[str, Any] = {
            "Bucket": self.bucket, "Key": self.key(facility, transaction_id), "ContentType": CONTENT_TYPE,
            "Metadata": {"transaction-id": transaction_id, "channel": CHANNEL, "endpoint": endpoint}}
        if self.kms_key_id:
            params.update(ServerSideEncryption="aws:kms", SSEKMSKeyId=self.kms_key_id)
        return params

    def put(self, facility: str, transaction_id: str, data: bytes, *, endpoint: str) -> str:
        params = self._params(facility, transaction_id, endpoint)
        self._s3.put_object(Body=data, **params)
        return str(params["Key"])

    def exists(self, facility: str, transaction_id: str) -> bool:
        try:
            self._s3.head_object(Bucket=self.bucket, Key=self.key(facility, transaction_id))
        except Exception as exc:
            if error_code(exc) in _MISSING:
                return False
            raise
        return True

    def upload_link(self, facility: str, transaction_id: str, *, endpoint: str, expires_in: int) -> UploadLink:
        params = self._params(facility, transaction_id, endpoint)
        url = str(self._presign.generate_presigned_url("put_object", Params=params, ExpiresIn=expires_in,
                                                       HttpMethod="PUT"))
        headers = {"Content-Type": CONTENT_TYPE}
        headers.update({f"x-amz-meta-{name}": value for name, value in params["Metadata"].items()})
        if self.kms_key_id:
            headers["x-amz-server-side-encryption"] = "aws:kms"
            headers["x-amz-server-side-encryption-aws-kms-key-id"] = self.kms_key_id
        return UploadLink(url=url, headers=headers)


class S3Receipts:
    """The service's ReceiptReader: the receipts ingest wrote."""

    def __init__(self, s3: Any, *, bucket: str, presign_client: Any = None,
                 max_bytes: int = MAX_RECEIPT_BYTES) -> None:
        self._s3 = s3
        self._presign = presign_client or s3
        self.bucket = bucket
        self.max_bytes = max_bytes

    def read(self, key: str) -> bytes | None:
        try:
            body = self._s3.get_object(Bucket=self.bucket, Key=key)["Body"]
        except Exception as exc:
            if error_code(exc) in _MISSING:
                return None
            raise
        try:
            data: bytes = body.read(self.max_bytes + 1)
        finally:
            body.close()
        if len(data) > self.max_bytes:
            raise ValueError(f"the receipt at {key} is larger than {self.max_bytes} bytes")
        return data

    def link(self, key: str, *, expires_in: int) -> str:
        return str(self._presign.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": key},
                                                        ExpiresIn=expires_in))


# --- Secrets Manager ----------------------------------------------------------------------------------------

def load_token_key(secrets: Any, secret_id: str) -> TokenKey:
    """The token key: the secret string is the base64 of at least 32 random bytes (CloudFormation's
    GenerateSecretString with ExcludePunctuation and a length that is a multiple of 4 makes one), or a JSON
    object whose "key" is."""
    text = str(secrets.get_secret_value(SecretId=secret_id)["SecretString"]).strip()
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        document = None
    if isinstance(document, dict):
        text = str(document.get("key", "")).strip()
    try:
        secret = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"secret {secret_id}: the token key must be base64") from None
    if len(secret) < MIN_KEY_BYTES:
        raise ValueError(f"secret {secret_id}: the token key must be at least {MIN_KEY_BYTES} bytes")
    return TokenKey(secret)
