"""moto's TransactWriteItems, made to copy each table once per transaction instead of once per item.

moto (5.x, and LocalStack's moto-ext) deep-copies a table for rollback once for *every item* of a transaction
that touches it, so a 14-item transaction on a table of n items costs 14 n, and the pipeline's transactions (a
submission with its counters, a status change with its counters, the distinct-citizen markers) slow down as the
tables grow. Within one transaction every copy of a table is the same snapshot, so copying it once keeps the
rollback exactly as it was. Emulation only: DynamoDB itself needs none of this.

Pure moto: used by the LocalStack plugin (hooks.py) and, from a checkout, by the in-process sandbox.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


class _CopyEachTableOnce:
    """Stands in for the ``copy`` module inside moto's DynamoDB models during a transaction."""

    def __init__(self) -> None:
        self._local = threading.local()

    def deepcopy(self, value: Any, memo: Any = None) -> Any:
        from moto.dynamodb.models.table import Table

        copies: dict[int, Any] | None = getattr(self._local, "copies", None)
        if copies is None or not isinstance(value, Table):
            return copy.deepcopy(value, memo)
        if id(value) not in copies:
            copies[id(value)] = copy.deepcopy(value, memo)
        return copies[id(value)]

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self._local.copies = {}
        try:
            yield
        finally:
            self._local.copies = None


def install() -> Callable[[], None]:
    """Patch moto's DynamoDB backend; returns the function that undoes it."""
    from moto.dynamodb import models

    shim = _CopyEachTableOnce()
    original = models.DynamoDBBackend.transact_write_items

    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
        with shim.transaction():
            original(self, transact_items)

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
