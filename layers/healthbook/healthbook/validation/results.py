"""What validation returns: per file, per visit, issues split into errors and warnings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from healthbook.validation.cross import TableRows
from healthbook.validation.issues import Issue

FileKind = Literal["claim", "checkin", "assessment", "unknown"]


@dataclass(slots=True)
class VisitResult:
    ma_lk: str
    standard: str | None
    issues: list[Issue] = field(default_factory=list)
    tables: dict[str, TableRows] = field(default_factory=dict, repr=False)

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "warning"]

    @property
    def accepted(self) -> bool:
        return not any(i.severity == "error" for i in self.issues)

    def to_dict(self) -> dict[str, Any]:
        return {"ma_lk": self.ma_lk, "accepted": self.accepted,
                "errors": [i.to_dict() for i in self.errors],
                "warnings": [i.to_dict() for i in self.warnings]}


@dataclass(slots=True)
class FileResult:
    path: str
    kind: FileKind = "unknown"
    facility: str | None = None
    errors: list[Issue] = field(default_factory=list)
    visits: list[VisitResult] = field(default_factory=list)
    size: int = 0

    @property
    def accepted(self) -> bool:
        return not self.errors and bool(self.visits) and all(v.accepted for v in self.visits)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "accepted": self.accepted, "facility": self.facility,
                "errors": [i.to_dict() for i in self.errors], "visits": [v.to_dict() for v in self.visits]}
