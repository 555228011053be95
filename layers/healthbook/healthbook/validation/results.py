"""What validation returns: per file, per visit, issues split by what they block (docs/conformance.md).

A visit is *accepted* (admitted to the health book) when none of its issues blocks it or the file; its
*errors* are the issues that keep it out, its *findings* everything else: admitted and delivered, reported
back to the facility.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from healthbook.validation.cross import TableRows
from healthbook.validation.issues import Issue, VisitIssues

FileKind = Literal["claim", "checkin", "assessment", "unknown"]


@dataclass(slots=True)
class VisitResult:
    ma_lk: str
    standard: str | None
    issues: VisitIssues = field(default_factory=VisitIssues)  # bounded per kind
    tables: dict[str, TableRows] = field(default_factory=dict, repr=False)

    @property
    def errors(self) -> list[Issue]:
        """What keeps the visit (or its whole file) out of the health book."""
        return [i for i in self.issues if i.blocks != "none"]

    @property
    def findings(self) -> list[Issue]:
        return [i for i in self.issues if i.blocks == "none"]

    @property
    def accepted(self) -> bool:
        """Admitted to the health book, as far as the visit itself goes (FileResult.rejected aside)."""
        return all(i.blocks == "none" for i in self.issues)

    def to_dict(self) -> dict[str, Any]:
        return {"ma_lk": self.ma_lk, "accepted": self.accepted, "health_book": self.accepted,
                "errors": [i.to_dict() for i in self.errors],
                "findings": [i.to_dict() for i in self.findings]}


@dataclass(slots=True)
class FileResult:
    path: str
    kind: FileKind = "unknown"
    facility: str | None = None
    errors: list[Issue] = field(default_factory=list)
    visits: list[VisitResult] = field(default_factory=list)
    size: int = 0

    @property
    def rejected(self) -> bool:
        """The whole file is refused: an issue that blocks the file, at file level or in a visit (E015)."""
        return any(i.blocks == "file" for i in self.errors) or any(
            i.blocks == "file" for v in self.visits for i in v.issues)

    @property
    def accepted(self) -> bool:
        """Every visit admitted (findings allowed)."""
        return not self.rejected and bool(self.visits) and all(v.accepted for v in self.visits)

    def admitted(self, visit: VisitResult) -> bool:
        return not self.rejected and visit.accepted

    @property
    def findings(self) -> list[Issue]:
        return [i for v in self.visits for i in v.findings]

    @property
    def issues(self) -> list[Issue]:
        """Every issue: the file's, then each visit's."""
        return [*self.errors, *(i for v in self.visits for i in v.issues)]

    def to_dict(self) -> dict[str, Any]:
        rejected = self.rejected
        visits = [v.to_dict() | ({"accepted": False, "health_book": False} if rejected else {}) for v in self.visits]
        return {"path": self.path, "accepted": self.accepted, "rejected": rejected, "facility": self.facility,
                "errors": [i.to_dict() for i in self.errors], "visits": visits}
