"""The pure decision: (request, subject state, policy) -> Decision. No I/O.

The only package that imports casbin.
"""

from __future__ import annotations

import logging

from .compiled import CANONICAL_MODEL, UNKNOWN_JURISDICTION, CompiledPolicy, Rule
from .facts import ALWAYS, FACTS, Facts, derive_facts

# pycasbin logs request tuples; never let it (DESIGN: no personal data in logs).
for _name in ("casbin", "casbin.enforcer", "casbin.policy", "casbin.role"):
    _logger = logging.getLogger(_name)
    _logger.setLevel(logging.CRITICAL + 1)
    _logger.propagate = False

__all__ = [
    "ALWAYS",
    "CANONICAL_MODEL",
    "FACTS",
    "UNKNOWN_JURISDICTION",
    "CompiledPolicy",
    "Facts",
    "Rule",
    "derive_facts",
]
