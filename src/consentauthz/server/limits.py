"""Sizes the gRPC edge holds to (docs/api.md)."""

from __future__ import annotations

#: The largest message received or sent: large enough for a full batch of maximal
#: requests, small enough to bound memory.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
#: ExportSubjectStream's chunks.
EXPORT_CHUNK_BYTES = 1024 * 1024
