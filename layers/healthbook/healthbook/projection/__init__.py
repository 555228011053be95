"""Health-book projection: a stored visit (canonical_visit JSON) -> a QĐ 1332 health-book entry. Pure."""

from __future__ import annotations

from healthbook.projection.project import (
    SCHEMA,
    SensitiveDataError,
    dumps,
    is_hiv_code,
    mapping,
    mapping_sha256,
    project,
    projection_id,
)

__all__ = ["SCHEMA", "SensitiveDataError", "dumps", "is_hiv_code", "mapping", "mapping_sha256", "project",
           "projection_id"]
