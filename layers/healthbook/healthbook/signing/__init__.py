"""Signatures: facility XML-DSig checks, and the platform's signed receipts."""
