"""moto's TransactWriteItems, made to roll back with an undo log of its items instead of copies of its tables.

moto (5.x, and LocalStack's moto-ext) deep-copies a table for rollback once for *every item* of a transaction
that touches it, so a 14-item transaction on a table of n items costs 14 n, and the pipeline's transactions (a
submission with its counters, a status change with its counters, the distinct-citizen markers) slow down as the
tables grow: an enrolment list of thousands of residents makes thousands of marker transactions on an
aggregates table of tens of thousands of items. Here a transaction copies no table; it notes the items it names
as they were and, when cancelled, puts them back, which leaves the table exactly as moto's rollback would.
Emulation only: DynamoDB itself needs none of this.

And ``ConflictModel``: DynamoDB's TransactionConflict, which moto never answers. On DynamoDB a transaction that
names an item another transaction is still writing is cancelled (TransactionCanceledException, the reason
``TransactionConflict`` for that item, ``None`` for the others). Requests here are served one at a time, so no two
ever overlap: the model keeps each admitted transaction *in flight* for ``hold_ms`` after it starts, holding every
item it names, and cancels any other transaction that names a held item in that window (docs/faults.md). The
server that serialises the requests calls ``settle()`` once it has let go of its lock, so the caller waits out its
transaction's time in flight, as on DynamoDB, and never meets its own transaction with its next one.

Pure moto: used by the LocalStack plugin (hooks.py) and, from a checkout, by the in-process sandbox.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

CONFLICT_MESSAGE = "Transaction is ongoing for the item"  # DynamoDB's message for the reason


class _NoTableCopies:
    """Stands in for the ``copy`` module inside moto's DynamoDB models during a transaction: a table is not copied
    at all (the transaction keeps an undo log of the items it touches instead); anything else is."""

    def __init__(self) -> None:
        self._local = threading.local()

    def deepcopy(self, value: Any, memo: Any = None) -> Any:
        from moto.dynamodb.models.table import Table

        if getattr(self._local, "active", False) and isinstance(value, Table):
            return value
        return copy.deepcopy(value, memo)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self._local.active = True
        try:
            yield
        finally:
            self._local.active = False


def _item_key(backend: Any, entry: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(table, key) of the item one TransactItems entry names; raises when moto cannot address it."""
    op_type, op = next(iter(entry.items()))
    if op_type != "Put":
        return op["TableName"], op["Key"]
    table = backend.get_table(op["TableName"])
    attrs = op["Item"]
    key = {table.hash_key_attr: attrs[table.hash_key_attr]}
    if table.range_key_attr is not None:
        key[table.range_key_attr] = attrs[table.range_key_attr]
    return op["TableName"], key


def _touched(backend: Any, transact_items: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any], Any]]:
    """(table, key, the item's attributes before the transaction or None) of every item the transaction names."""
    undo = []
    for entry in transact_items:
        try:
            table, key = _item_key(backend, entry)
            before = backend.get_item(table, key)
        except Exception:  # an item moto cannot even address: it will not write it either
            continue
        undo.append((table, key, copy.deepcopy(before.to_json()["Attributes"]) if before else None))
    return undo


def install() -> Callable[[], None]:
    """Patch moto's DynamoDB backend; returns the function that undoes it. A transaction copies no table: it
    records the items it touches as they were, and puts them back (or deletes the new ones) when it is cancelled.
    Like moto's own rollback, this assumes nothing else writes the same items meanwhile (moto is not thread-safe:
    LocalStack's provider serialises DynamoDB requests, the sandbox holds MOTO_LOCK)."""
    from moto.dynamodb import models

    shim = _NoTableCopies()
    original = models.DynamoDBBackend.transact_write_items

    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
        undo = _touched(self, transact_items)
        try:
            with shim.transaction():
                original(self, transact_items)
        except Exception:
            for table_name, key, before in reversed(undo):
                if before is None:
                    if self.get_item(table_name, key) is not None:
                        self.delete_item(table_name, key)
                else:
                    self.put_item(table_name, before)
            raise

    setattr(models, "copy", shim)  # noqa: B010  # the module global moto's code looks up on each call
    models.DynamoDBBackend.transact_write_items = transact_write_items

    def uninstall() -> None:
        setattr(models, "copy", copy)  # noqa: B010
        models.DynamoDBBackend.transact_write_items = original

    return uninstall


@contextmanager
def copy_tables_once() -> Iterator[None]:
    uninstall = install()
    try:
        yield
    finally:
        uninstall()


# --- TransactionConflict ---------------------------------------------------------------------------------------

Rule = Mapping[str, Any]  # {"hold_ms": 20, "from": epoch s, "until": epoch s, "tables_prefix": "...", "id": ...}


class ConflictModel:
    """Cancels a TransactWriteItems that names an item another transaction holds. Switched on in process
    (``switch``) or by a rule source (the LocalStack switchboard, faults.py); off when neither gives a rule.
    ``counts``: transactions considered, those cancelled, and the conflicting items, by table (reset when the
    rule's ``id`` changes); ``report`` is called with them at each conflict and every 100 transactions."""

    def __init__(self, rule_source: Callable[[], Rule | None] | None = None,
                 report: Callable[[Mapping[str, Any]], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rule_source = rule_source
        self.report = report
        self._clock = clock
        self._switched: Rule | None = None
        self._lock = threading.Lock()
        self._held: dict[tuple[str, str], float] = {}  # (table, key) -> clock time it is released
        self._local = threading.local()  # this thread's admitted transaction: its time left in flight
        self._id: object = None
        self.counts: dict[str, Any] = self._zero()

    @staticmethod
    def _zero() -> dict[str, Any]:
        return {"transactions": 0, "conflicts": 0, "conflicting_items": 0, "conflicts_by_table": {}}

    def switch(self, hold_ms: float = 20.0, *, tables_prefix: str | None = None, until: float | None = None) -> None:
        """On, in this process, with fresh counts (the rule source is not asked while switched on)."""
        rule: dict[str, Any] = {"hold_ms": hold_ms, "id": object()}
        if tables_prefix:
            rule["tables_prefix"] = tables_prefix
        if until is not None:
            rule["until"] = until
        self._switched = rule

    def off(self) -> None:
        self._switched = None
        with self._lock:
            self._held.clear()

    def rule(self) -> Rule | None:
        rule = self._switched if self._switched is not None else (self.rule_source() if self.rule_source else None)
        if not rule or not float(rule.get("from", 0)) <= time.time() < float(rule.get("until", float("inf"))):
            return None
        return rule

    def admit(self, backend: Any, transact_items: list[dict[str, Any]]) -> None:
        """Let the transaction through, holding its items for ``hold_ms``; or raise moto's
        TransactionCanceledException, ``TransactionConflict`` for each held item and ``None`` for the others."""
        rule = self.rule()
        if rule is None:
            return
        keys: list[tuple[str, str] | None] = []
        for entry in transact_items:
            try:
                table, key = _item_key(backend, entry)
            except Exception:  # moto will refuse it on its own
                keys.append(None)
                continue
            keys.append((table, json.dumps(key, sort_keys=True)))
        prefix = rule.get("tables_prefix")
        if prefix and not any(k and k[0].startswith(str(prefix)) for k in keys):
            return
        now = self._clock()
        with self._lock:
            if rule.get("id") != self._id:
                self._id, self.counts, self._held = rule.get("id"), self._zero(), {}
            self.counts["transactions"] += 1
            if self.counts["transactions"] % 256 == 0:
                self._held = {k: t for k, t in self._held.items() if t > now}
            held = [i for i, k in enumerate(keys) if k is not None and self._held.get(k, 0.0) > now]
            if not held:
                until = now + float(rule.get("hold_ms", 20.0)) / 1000
                self._held.update((k, until) for k in keys if k is not None)
                self._local.until = until
                snapshot = self._snapshot() if self.counts["transactions"] % 100 == 0 else None
            else:
                self.counts["conflicts"] += 1
                self.counts["conflicting_items"] += len(held)
                by_table = self.counts["conflicts_by_table"]
                for table in sorted({key[0] for i, key in enumerate(keys) if i in held and key is not None}):
                    by_table[table] = by_table.get(table, 0) + 1
                snapshot = self._snapshot()
        if snapshot is not None and self.report is not None:
            self.report(snapshot)
        if not held:
            return
        from moto.dynamodb.exceptions import TransactionCanceledException

        raise TransactionCanceledException([("TransactionConflict", CONFLICT_MESSAGE, None) if i in held
                                            else (None, None, None) for i in range(len(keys))])

    def settle(self) -> None:
        """Wait until this thread's last admitted transaction is no longer in flight (outside the server's lock)."""
        until, self._local.until = getattr(self._local, "until", 0.0), 0.0
        left = until - self._clock()
        if left > 0:
            time.sleep(left)

    def _snapshot(self) -> dict[str, Any]:
        snapshot: dict[str, Any] = json.loads(json.dumps(self.counts))
        snapshot["id"] = self._id if isinstance(self._id, (str, int)) else None
        return snapshot


def install_conflicts(model: ConflictModel) -> Callable[[], None]:
    """Patch moto's TransactWriteItems to ask ``model`` first (over whatever ``install`` put there); returns the
    function that undoes it. A cancelled transaction writes nothing, as on DynamoDB."""
    from moto.dynamodb import models

    original = models.DynamoDBBackend.transact_write_items

    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
        model.admit(self, transact_items)
        original(self, transact_items)

    models.DynamoDBBackend.transact_write_items = transact_write_items
    _INSTALLED.append(model)

    def uninstall() -> None:
        models.DynamoDBBackend.transact_write_items = original
        if model in _INSTALLED:
            _INSTALLED.remove(model)

    return uninstall


_INSTALLED: list[ConflictModel] = []


def settle() -> None:
    """For the server that serialises requests (dynamodb.py), after its lock: every installed model's ``settle``."""
    for model in list(_INSTALLED):
        model.settle()


@contextmanager
def transaction_conflicts(hold_ms: float = 20.0, *, tables_prefix: str | None = None) -> Iterator[ConflictModel]:
    """In process (moto's ``mock_aws``): the conflict model on for the block; yields it, for its counts."""
    model = ConflictModel()
    model.switch(hold_ms, tables_prefix=tables_prefix)
    uninstall = install_conflicts(model)
    try:
        yield model
    finally:
        uninstall()
        model.off()
