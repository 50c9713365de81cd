"""How the client commands print protobuf answers (shared by `cli.py` and the command
groups' modules): one JSON form, and enum names without their prefix."""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format


def to_json(msg: Any) -> str:
    return json.dumps(json_format.MessageToDict(msg, preserving_proto_field_name=True),
                      indent=2, sort_keys=True)


def enum_name(enum: Any, value: int, prefix: str) -> str:
    return str(enum.Name(value)).removeprefix(prefix)
