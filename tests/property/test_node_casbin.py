"""Casbin on both sides (issue 13): the shipped model.conf and pack load in node-casbin (npm
`casbin`, the engine of the Casbin online editor policy authors reach for) and decide
exactly as the engine (and so pycasbin) does, over thousands of generated requests.

node and the package come from tests/node (package-lock.json, installed by `make test`
with `npm ci`)."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from consentauthz.engine import FACTS, CompiledPolicy
from consentauthz.engine.reference import write_reference_files

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
REQUESTS = 4000


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is required: install Node.js 20+ (Debian: apt-get install -y nodejs "
                    "npm), then run `make test`")
    if not (NODE_DIR / "node_modules" / "casbin").is_dir():
        pytest.fail("node-casbin is not installed: run `make test` (it runs "
                    "`npm ci --prefix tests/node`)")
    return node


def _requests(compiled: CompiledPolicy, n: int) -> list[list[object]]:
    """Every mapped jurisdiction and an unmapped one, every fact alone and in random sets,
    purposes and categories from the whole taxonomy and the keys rules name."""
    rng = random.Random(20261207)
    tax = compiled.policy.taxonomy
    purposes = sorted(tax.purposes.keys())
    categories = sorted(tax.categories.keys())
    named_p = sorted({r.purpose for r in compiled.rules} & set(purposes)) or purposes
    named_c = sorted({r.category for r in compiled.rules} & set(categories)) or categories
    jurisdictions = [*sorted(compiled.jurisdictions), "JP"]
    facts = sorted(FACTS)
    out: list[list[object]] = []
    for i in range(n):
        jurisdiction = jurisdictions[i % len(jurisdictions)]
        purpose = rng.choice(named_p if i % 2 else purposes)
        category = rng.choice(named_c if i % 3 else categories)
        chosen = ([facts[i % len(facts)]] if i % 5 == 0
                  else rng.sample(facts, rng.randint(0, 4)))
        out.append([compiled.jurisdiction_token(jurisdiction), purpose, category,
                    sorted(chosen)])
    return out


def test_node_casbin_decides_the_shipped_pack_as_the_engine_does(
        shipped_policy: CompiledPolicy, tmp_path: Path) -> None:
    node = _node()
    model, csv = write_reference_files(shipped_policy.policy, tmp_path)
    requests = _requests(shipped_policy, REQUESTS)
    (tmp_path / "requests.json").write_text(json.dumps(requests))
    done = subprocess.run(
        [node, str(NODE_DIR / "casbin_parity.js"), str(model), str(csv),
         str(tmp_path / "requests.json")],
        capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    answers = json.loads(done.stdout)
    assert len(answers) == len(requests)
    mismatches = []
    outcomes = set()
    for (token, purpose, category, facts), (allowed, fields) in zip(
            requests, answers, strict=True):
        rule = shipped_policy.first_match(str(token), str(purpose), str(category),
                                          frozenset(facts))
        ours = [rule is not None and rule.effect.value == "ALLOW",
                list(rule.fields) if rule is not None else []]
        outcomes.add((ours[0], rule.reason.value if rule else ""))
        if [allowed, fields] != ours:
            mismatches.append(f"{token} {purpose} {category} {facts}: node {allowed} "
                              f"{fields}, engine {ours}")
    assert not mismatches, f"{len(mismatches)} of {len(requests)} differ:\n" + "\n".join(
        mismatches[:10])
    # The sample reaches allows and denies for several reasons, not one kind of answer.
    assert len(outcomes) >= 8, outcomes


def test_the_earlier_matcher_does_not_parse_in_node_casbin(
        shipped_policy: CompiledPolicy, tmp_path: Path) -> None:
    """Why model.conf is written as it is: the same matcher with ` (` groups and a bare
    `in` fails in node-casbin (the engine still accepts it, for packs written before)."""
    from consentauthz.engine.compiled import _EARLIER_MODEL
    node = _node()
    model, csv = write_reference_files(shipped_policy.policy, tmp_path)
    model.write_text(_EARLIER_MODEL)
    (tmp_path / "requests.json").write_text(json.dumps(_requests(shipped_policy, 50)))
    done = subprocess.run(
        [node, str(NODE_DIR / "casbin_parity.js"), str(model), str(csv),
         str(tmp_path / "requests.json")],
        capture_output=True, text=True, timeout=300, check=False)
    ours = [[r is not None and r.effect.value == "ALLOW", list(r.fields) if r else []]
            for r in (shipped_policy.first_match(str(t), str(p), str(c), frozenset(f))
                      for t, p, c, f in _requests(shipped_policy, 50))]
    assert done.returncode != 0 or json.loads(done.stdout) != ours
