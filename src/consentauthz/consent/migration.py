"""What `ledger migrate` leaves in a ledger so that it can still be verified whole.

`consentauthz ledger migrate --partitions N` re-lays a ledger of one partition into N
(docs/design/partitioned-ledger.md, docs/operations.md). Every entry keeps its position
and content; only its partition and its chain link change. So a decision logged before the
migration still replays from `seq <= position` (all of a subject's entries move to one
partition, with their positions), and a token issued before it still means what it meant.
Each new partition's chain starts from an anchor that names the old chain's head (its
identity, position and hash), and every partition's head starts at the old head, so the
first new entry of any partition comes after every moved one. `audit verify` recomputes
the old chain from the moved entries (their positions are exactly 1..head) and the new
chains from their anchors; held checkpoints from before the migration are checked against
the old chain.

The record is kept in `ledger_meta` under MIGRATION_KEY as JSON.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from ..chain import GENESIS, link

MIGRATION_KEY = "migration"


@dataclass(frozen=True, slots=True)
class Migration:
    #: The identity of the ledger of one partition the entries came from.
    from_identity: str
    #: Its head: the entries moved have positions 1..head.
    head: int
    #: Its chain's head hash (GENESIS for an empty ledger).
    head_hash: str
    #: Partitions after the migration.
    partitions: int
    #: When it ran (ISO 8601, UTC).
    at: str

    def anchor(self, part: int) -> str:
        """Where partition `part`'s chain starts: a link over the old chain's head."""
        return link(GENESIS, {"migrated_from": self.from_identity, "head": self.head,
                              "head_hash": self.head_hash, "partition": part,
                              "partitions": self.partitions})

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Migration:
        d: dict[str, Any] = json.loads(text)
        return cls(str(d["from_identity"]), int(d["head"]), str(d["head_hash"]),
                   int(d["partitions"]), str(d["at"]))
