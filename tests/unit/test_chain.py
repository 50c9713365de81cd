"""The canonical serialisation every hash chain is computed over."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consentauthz import chain
from consentauthz.chain import canonical_json

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20)


def reference(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def test_the_fast_encoder_is_in_use() -> None:
    assert chain._C_ENCODER is not None  # CPython: otherwise every decision pays dumps


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_canonical_json_is_exactly_dumps_with_the_canonical_settings(value: Any) -> None:
    assert canonical_json(value) == reference(value)


def test_what_json_cannot_encode_is_refused() -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        canonical_json({"a": object()})
    with pytest.raises(TypeError):
        canonical_json({("tuple", "key"): 1})
