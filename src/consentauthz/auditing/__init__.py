"""The auditors' wing: read, verify, replay and explain the decision log; subject reports."""

from .auditor import Auditor
from .reader import AuditReader
from .replay import Replay, Replayer
from .report import SubjectReport, build_report, render_html, report_dict
from .story import Story, tell

__all__ = [
    "AuditReader",
    "Auditor",
    "Replay",
    "Replayer",
    "Story",
    "SubjectReport",
    "build_report",
    "render_html",
    "report_dict",
    "tell",
]
