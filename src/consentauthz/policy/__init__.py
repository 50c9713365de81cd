"""Policy packs: load and validate model, rules, settings and taxonomy into a PolicySet."""

from .loader import PolicyLine, PolicySet, load_policy_set, paused_gc, split_policy_line
from .settings import PolicySettings
from .store import PolicyStore
from .taxonomy import Hierarchy, Taxonomy

__all__ = [
    "Hierarchy",
    "PolicyLine",
    "PolicySet",
    "PolicySettings",
    "PolicyStore",
    "Taxonomy",
    "load_policy_set",
    "paused_gc",
    "split_policy_line",
]
