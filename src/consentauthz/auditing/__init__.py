"""The auditors' wing: read the decision log back (show, query)."""

from .reader import AuditReader

__all__ = ["AuditReader"]
