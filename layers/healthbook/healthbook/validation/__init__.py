"""Validation of facility submissions against the standard: see engine.validate_bytes."""

from healthbook.validation.engine import Options, validate_bytes, validate_path
from healthbook.validation.results import FileResult, VisitResult

__all__ = ["FileResult", "Options", "VisitResult", "validate_bytes", "validate_path"]
