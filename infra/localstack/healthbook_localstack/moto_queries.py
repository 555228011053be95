"""moto's DynamoDB Query, made to read one partition instead of the whole table.

moto (5.x, and LocalStack's moto-ext) answers every Query by listing *all* the table's items, sorted, and keeping
those of the asked partition: a Query costs n log n in the table's size, and the pipeline queries the visits table
(a visit's versions), the aggregates table (a period's counter shards, a marker partition) and the status index (the
sweep) on every visit or run. Under `make bench-load` the emulator spent about half its DynamoDB time there and
slowed down as the tables grew (docs/performance.md). Here a Query on the table itself reads the partition moto
already keeps by hash key, and a Query on an index lists the items without sorting them first (moto sorts the
matches by the index's keys afterwards anyway). And the page a Query returns is copied item by item (scalar
attributes shallowly, sets, lists and maps deeply) instead of with ``copy.deepcopy`` of the whole list, which took
42 % of LocalStack's time under ``make bench-load`` once the Lambda workers were capped (py-spy, 2026-12-07): the
copy is as independent of the table as before. The answers, pages and order are moto's own: only what it looks at
and how it copies change. Emulation only: DynamoDB itself needs none of this.

Pure moto: used by the LocalStack plugin (hooks.py) and testable in process (tests/test_moto_queries.py).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from typing import Any

_scope = threading.local()  # what the Query in progress on this thread needs of all_items()
_SCALAR_TYPES = frozenset({"S", "N", "B", "BOOL", "NULL"})  # immutable values: a copy of the holder will do


def _copy_item(item: Any) -> Any:
    """An Item that shares nothing mutable with ``item``: its attribute dict new, each scalar attribute a new holder
    of the same immutable value, the rest deep-copied. The dict is filled with ``dict.update``: moto's
    LimitedSizeDict sums the item's size again on every ``__setitem__`` (what makes ``deepcopy`` of it slow)."""
    copied = copy.copy(item)
    attrs = dict.__new__(type(item.attrs))
    dict.update(attrs, {name: _copy_scalar(value) if value.type in _SCALAR_TYPES else copy.deepcopy(value)
                        for name, value in item.attrs.items()})
    copied.attrs = attrs
    return copied


def _copy_scalar(value: Any) -> Any:
    holder = object.__new__(type(value))
    holder.__dict__.update(value.__dict__)
    return holder


class _QueryCopy:
    """``copy`` as moto's table module sees it: ``deepcopy`` of the list of Items a Query is about to return is
    done by ``_copy_item``; every other use is the standard module's."""

    def __getattr__(self, name: str) -> Any:
        return getattr(copy, name)

    @staticmethod
    def deepcopy(value: Any, memo: Any = None) -> Any:
        from moto.dynamodb.models.dynamo_type import Item

        if getattr(_scope, "request", None) is not None and isinstance(value, list) \
                and all(type(item) is Item for item in value):
            return [_copy_item(item) for item in value]
        return copy.deepcopy(value, memo)


def install() -> Callable[[], None]:
    """Patch moto's Table.query, Table.all_items and the table module's copy; returns the function that undoes it."""
    from moto.dynamodb.models import table as table_module
    from moto.dynamodb.models.table import Table

    original_query, original_all_items = Table.query, Table.all_items
    original_copy = table_module.copy

    def query(self: Any, hash_key: Any, *args: Any, **kwargs: Any) -> Any:
        index_name = kwargs.get("index_name", args[6] if len(args) > 6 else None)
        _scope.request = (self, None if index_name else hash_key)
        try:
            return original_query(self, hash_key, *args, **kwargs)
        finally:
            _scope.request = None

    def all_items(self: Any) -> list[Any]:
        request = getattr(_scope, "request", None)
        if request is None or request[0] is not self:
            return original_all_items(self)  # a Scan, an export...: moto's sorted list, which pages rely on
        hash_key = request[1]
        if hash_key is None:  # an index: every item, unsorted (the query sorts its matches by the index keys)
            return [item for partition in self.items.values()
                    for item in (partition.values() if self.range_key_attr else (partition,))]
        partition = self.items.get(hash_key)  # .get: self.items is a defaultdict, a lookup must not add to it
        if partition is None:
            return []
        return list(partition.values()) if self.range_key_attr else [partition]

    Table.query, Table.all_items = query, all_items
    table_module.copy = _QueryCopy()  # type: ignore[assignment]

    def undo() -> None:
        Table.query, Table.all_items = original_query, original_all_items
        table_module.copy = original_copy

    return undo
