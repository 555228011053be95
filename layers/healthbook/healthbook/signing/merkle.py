"""Visit digests and RFC 6962 Merkle trees. Pure: no AWS, no I/O.

Two trees use it: the one over a file's accepted visits (``merkle`` in a receipt), and the one over a window of
receipts whose root the platform signs once (``platform_signature.batch``, docs/receipt.md).

A visit's digest is SHA-256 over a canonical JSON of its parsed records. The canonical form includes every
table the visit submitted, personal data (XML1 name, CCCD, card number...) included: the digest is what
proves which records were accepted, so it must cover them all. Only the digest, never the records, leaves
this module; see docs/receipt.md.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any, Literal

from healthbook.validation.results import VisitResult

Side = Literal["L", "R"]
LEAF_PREFIX = b"\x00"  # RFC 6962 §2.1 domain separation: a leaf hash can never pass for an inner node
NODE_PREFIX = b"\x01"


def canonical_json(value: Any) -> bytes:
    """UTF-8 JSON with sorted keys and no whitespace: the one byte form every verifier can rebuild."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def canonical_visit(visit: VisitResult) -> bytes:
    """``{"ma_lk", "standard", "tables": {table_id: [row, ...]}}`` with each row the non-empty raw values.

    Rows keep document order (their order is part of what was submitted); object keys, table ids included,
    are sorted as strings by ``canonical_json`` (so "XML10" sorts before "XML2": simple to rebuild anywhere).
    """
    tables = {table_id: [dict(row) for row in rows.raw] for table_id, rows in visit.tables.items()}
    return canonical_json({"ma_lk": visit.ma_lk, "standard": visit.standard, "tables": tables})


def visit_digest(visit: VisitResult) -> bytes:
    return hashlib.sha256(canonical_visit(visit)).digest()


def leaf_hash(digest: bytes) -> bytes:
    return hashlib.sha256(LEAF_PREFIX + digest).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


class MerkleTree:
    """Built level by level; an odd last node is promoted unchanged, which gives exactly RFC 6962's MTH."""

    def __init__(self, leaves: Sequence[bytes]) -> None:
        if not leaves:
            raise ValueError("a Merkle tree needs at least one leaf (the root of zero leaves is undefined)")
        level = [leaf_hash(bytes(leaf)) for leaf in leaves]
        self._levels: list[list[bytes]] = [level]
        while len(level) > 1:
            paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            if len(level) % 2:
                paired.append(level[-1])
            level = paired
            self._levels.append(level)

    def __len__(self) -> int:
        return len(self._levels[0])

    @property
    def root(self) -> bytes:
        return self._levels[-1][0]

    def proof(self, index: int) -> list[tuple[Side, bytes]]:
        """Siblings from the leaf up; "L" means the sibling is hashed on the left of the running value."""
        if not 0 <= index < len(self):
            raise IndexError(f"leaf {index} is not in a tree of {len(self)}")
        path: list[tuple[Side, bytes]] = []
        for level in self._levels[:-1]:
            if index % 2:
                path.append(("L", level[index - 1]))
            elif index + 1 < len(level):
                path.append(("R", level[index + 1]))
            # else: the last, odd node is promoted without a sibling at this level
            index //= 2
        return path


def root_of(digests: Sequence[bytes]) -> bytes:
    return MerkleTree(digests).root


def proof_sides(index: int, size: int) -> list[Side]:
    """The sides of leaf ``index``'s audit path in a tree of ``size`` leaves, bottom up: the shape every proof of
    that leaf has (``MerkleTree.proof``), so a proof can be checked against the position it claims."""
    if not 0 <= index < size:
        raise IndexError(f"leaf {index} is not in a tree of {size}")
    sides: list[Side] = []
    while size > 1:
        if index % 2:
            sides.append("L")
        elif index + 1 < size:
            sides.append("R")
        index, size = index // 2, (size + 1) // 2
    return sides


def fold_proof(digest: bytes, proof: Sequence[tuple[str, bytes]]) -> bytes | None:
    """The root that ``proof`` leads to from the leaf ``digest``; None when a side is neither "L" nor "R"."""
    running = leaf_hash(digest)
    for side, sibling in proof:
        if side == "L":
            running = node_hash(sibling, running)
        elif side == "R":
            running = node_hash(running, sibling)
        else:
            return None
    return running


def verify_inclusion(digest: bytes, proof: Sequence[tuple[str, bytes]], root: bytes) -> bool:
    return fold_proof(digest, proof) == root
