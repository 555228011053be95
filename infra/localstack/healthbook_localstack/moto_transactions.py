"""moto's TransactWriteItems, made to roll back with an undo log of its items instead of copies of its tables.

moto (5.x, and LocalStack's moto-ext) deep-copies a table for rollback once for *every item* of a transaction
that touches it, so a 14-item transaction on a table of n items costs 14 n, and the pipeline's transactions (a
submission with its counters, a status change with its counters, the distinct-citizen markers) slow down as the
tables grow: an enrolment list of thousands of residents makes thousands of marker transactions on an
aggregates table of tens of thousands of items. Here a transaction copies no table; it notes the items it names
as they were and, when cancelled, puts them back, which leaves the table exactly as moto's rollback would.
Emulation only: DynamoDB itself needs none of this.

Pure moto: used by the LocalStack plugin (hooks.py) and, from a checkout, by the in-process sandbox.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


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


def _touched(backend: Any, transact_items: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any], Any]]:
    """(table, key, the item's attributes before the transaction or None) of every item the transaction names."""
    undo = []
    for entry in transact_items:
        try:
            op_type, op = next(iter(entry.items()))
            table = backend.get_table(op["TableName"])
            if op_type == "Put":
                attrs = op["Item"]
                key = {table.hash_key_attr: attrs[table.hash_key_attr]}
                if table.range_key_attr is not None:
                    key[table.range_key_attr] = attrs[table.range_key_attr]
            else:
                key = op["Key"]
            before = backend.get_item(op["TableName"], key)
        except Exception:  # an item moto cannot even address: it will not write it either
            continue
        undo.append((op["TableName"], key, copy.deepcopy(before.to_json()["Attributes"]) if before else None))
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
