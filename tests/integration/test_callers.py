"""Callers: bearer-token authentication and the shipped caller policy (policies/callers/),
against a real server on port 0 over plaintext loopback. Unknown callers (and empty or
short tokens) are UNAUTHENTICATED, callers outside their binding PERMISSION_DENIED, both
logged without the token; refused calls write nothing; the caller's name is in every
decision-log entry. Server reflection takes a rule, and neither idle streams nor a flood
of calls can take every worker thread."""

from __future__ import annotations

import json
import logging
import queue
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from consentauthz.app import App
from consentauthz.config import EMPTY_SHA256
from consentauthz.consent.projection import apply_profile
from consentauthz.domain import SubjectProfile, SubjectState
from consentauthz.errors import ConfigError
from consentauthz.v1 import audit_pb2, consent_pb2, decision_pb2, policy_pb2
from consentauthz.validation import parse_token
from tests.certs import (
    Stubs,
    bearer,
    check_request,
    ready,
    start_app,
    stubs,
    token_hash,
    write_callers,
    written,
)
from tests.conftest import POLICIES

CALLERS = ("crm", "email-service", "analytics-job", "auditor", "privacy-admin")
HEALTH = "user.health_and_medical"
SUBJECT = "subject-4711@example.com"


@dataclass
class Secured:
    app: App
    channel: grpc.Channel
    stubs: Stubs
    tokens: dict[str, str]

    def md(self, caller: str) -> list[tuple[str, str]]:
        return bearer(self.tokens[caller])


@pytest.fixture()
def secured(tmp_path: Path) -> Iterator[Secured]:
    tokens = {name: secrets.token_urlsafe(32) for name in CALLERS}
    callers = write_callers(tmp_path / "callers.yaml", {
        name: {"token_sha256": [token_hash(token)]} for name, token in tokens.items()})
    app = start_app(tmp_path / "data", callers_file=callers)
    channel = ready(grpc.insecure_channel(f"127.0.0.1:{app.port}"))
    try:
        yield Secured(app, channel, stubs(channel), tokens)
    finally:
        channel.close()
        app.stop(grace=None)


def code_of(call: Callable[..., Any], *args: Any, **kwargs: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call(*args, **kwargs)
    return err.value.code()


def test_a_known_token_is_the_caller_named_in_the_decision_log(secured: Secured) -> None:
    s = secured
    resp = s.stubs.decisions.Check(check_request(SUBJECT), metadata=s.md("crm"))
    record = s.stubs.audit.GetDecision(audit_pb2.GetDecisionRequest(
        decision_id=resp.decision_id), metadata=s.md("auditor"))
    assert record.caller == "crm"
    # Through a group (email-service is one of `mailers`) and in a batch.
    batch = s.stubs.decisions.BatchCheck(decision_pb2.BatchCheckRequest(items=[
        check_request(SUBJECT), check_request("bob", category="user.name")]),
        metadata=s.md("email-service"))
    for result in batch.results:
        entry = s.stubs.audit.GetDecision(audit_pb2.GetDecisionRequest(
            decision_id=result.response.decision_id), metadata=s.md("privacy-admin"))
        assert entry.caller == "email-service"
    # Audit queries can select by caller.
    found = s.stubs.audit.QueryDecisions(audit_pb2.QueryDecisionsRequest(caller="crm"),
                                         metadata=s.md("auditor"))
    assert [d.decision_id for d in found.decisions] == [resp.decision_id]


@pytest.mark.parametrize("metadata", [
    [],
    bearer("not-a-configured-token"),
    [("authorization", "Basic Y3JtOnNlY3JldA==")],
    [("authorization", "Bearer")],
], ids=["missing", "unknown", "not-bearer", "empty"])
def test_unknown_or_missing_tokens_are_unauthenticated(
        secured: Secured, metadata: list[tuple[str, str]]) -> None:
    before = written(secured.app)
    for call, request in ((secured.stubs.decisions.Check, check_request()),
                          (secured.stubs.consent.RecordConsent, consent_pb2.RecordConsentRequest(
                              subject_id="alice", purpose="marketing",
                              action=consent_pb2.CONSENT_ACTION_GRANT)),
                          (secured.stubs.audit.GetCheckpoint, audit_pb2.GetCheckpointRequest()),
                          (secured.stubs.policy.GetStatus, policy_pb2.GetPolicyStatusRequest())):
        assert code_of(call, request, metadata=metadata) is grpc.StatusCode.UNAUTHENTICATED
    assert written(secured.app) == before


def test_two_authorization_headers_are_refused(secured: Secured) -> None:
    both = [*secured.md("crm"), *secured.md("auditor")]
    assert code_of(secured.stubs.decisions.Check, check_request(),
                   metadata=both) is grpc.StatusCode.UNAUTHENTICATED


def test_the_email_service_cannot_ask_about_other_purposes_or_health_data(
        secured: Secured) -> None:
    s = secured
    before = written(s.app)
    for purpose, category in (
            ("personalize", "user.contact.email"),                 # another purpose
            ("marketing.communications", "user.contact.email"),    # broader than its own
            ("marketing.communications.email", HEALTH),            # health data
            ("marketing.communications.email", "user.health_and_medical.genetic"),
            ("Not A Key!", "user.contact.email")):                 # not a taxonomy key
        assert code_of(s.stubs.decisions.Check, check_request(SUBJECT, purpose, category),
                       metadata=s.md("email-service")) is grpc.StatusCode.PERMISSION_DENIED
    assert written(s.app) == before
    # Inside its binding (a descendant of user.contact) it is answered.
    s.stubs.decisions.Check(check_request(SUBJECT, category="user.contact.phone_number"),
                            metadata=s.md("email-service"))


def test_a_batch_with_one_item_outside_the_binding_is_refused_whole(secured: Secured) -> None:
    s = secured
    before = written(s.app)
    items = [check_request(f"s{i}") for i in range(5)]
    items.insert(3, check_request("x", category=HEALTH))
    with pytest.raises(grpc.RpcError) as err:
        s.stubs.decisions.BatchCheck(decision_pb2.BatchCheckRequest(items=items),
                                     metadata=s.md("email-service"))
    assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "items[3]" in err.value.details()
    assert written(s.app) == before  # not one of the five allowed items was decided


def test_the_analytics_job_cannot_record_or_read_consent(secured: Secured) -> None:
    s = secured
    before = written(s.app)
    grant = consent_pb2.RecordConsentRequest(
        subject_id=SUBJECT, purpose="analytics", action=consent_pb2.CONSENT_ACTION_GRANT,
        method=consent_pb2.COLLECTION_METHOD_AFFIRMATIVE, source="web", notice_version="v1")
    assert code_of(s.stubs.consent.RecordConsent, grant,
                   metadata=s.md("analytics-job")) is grpc.StatusCode.PERMISSION_DENIED
    assert code_of(s.stubs.consent.GetConsentState, consent_pb2.GetConsentStateRequest(
        subject_id=SUBJECT), metadata=s.md("analytics-job")) is grpc.StatusCode.PERMISSION_DENIED
    assert code_of(s.stubs.decisions.Check, check_request(SUBJECT),
                   metadata=s.md("analytics-job")) is grpc.StatusCode.PERMISSION_DENIED
    assert written(s.app) == before
    # What it may do: check analytics purposes. The CRM may record the consent.
    s.stubs.decisions.Check(check_request(SUBJECT, "analytics.reporting", "user.behavior"),
                            metadata=s.md("analytics-job"))
    s.stubs.consent.RecordConsent(grant, metadata=s.md("crm"))
    assert written(s.app)[0] == before[0] + 1


def test_the_erasure_record_names_the_caller_that_asked(secured: Secured) -> None:
    """In the ledger (the erasure's own entry, and so every replay of the subject) and in
    the Art. 15 export, not only in a log line."""
    s = secured
    s.stubs.consent.RecordConsent(consent_pb2.RecordConsentRequest(
        subject_id=SUBJECT, purpose="analytics", action=consent_pb2.CONSENT_ACTION_GRANT,
        method=consent_pb2.COLLECTION_METHOD_AFFIRMATIVE, source="web", notice_version="v1"),
        metadata=s.md("crm"))
    erased = s.stubs.consent.EraseSubject(consent_pb2.EraseSubjectRequest(
        subject_id=SUBJECT), metadata=s.md("privacy-admin"))
    # Erasing again changes nothing: the first erasure (and who asked for it) stands.
    again = s.stubs.consent.EraseSubject(consent_pb2.EraseSubjectRequest(
        subject_id=SUBJECT), metadata=s.md("privacy-admin"))
    assert again.erased_at == erased.erased_at
    first = SubjectProfile(erased_at=datetime(2026, 1, 1, tzinfo=UTC), erased_by="a")
    later = SubjectProfile(erased_at=datetime(2026, 2, 1, tzinfo=UTC), erased_by="b")
    assert apply_profile(apply_profile(SubjectState(), first, 1), later, 2).profile == first
    doc = json.loads(s.stubs.consent.ExportSubject(consent_pb2.ExportSubjectRequest(
        subject_id=SUBJECT), metadata=s.md("privacy-admin")).json)
    assert doc["profile"]["erased_by"] == "privacy-admin"
    parsed = parse_token(erased.consistency_token)
    assert parsed is not None
    recorded = s.app.ledger.state_at(s.app.consent.subject_key(SUBJECT), parsed[1]).profile
    assert recorded.erased_at is not None and recorded.erased_by == "privacy-admin"


def test_rpc_bindings_of_the_shipped_policy(secured: Secured) -> None:
    s = secured
    state = consent_pb2.GetConsentStateRequest(subject_id=SUBJECT)
    checkpoint = audit_pb2.GetCheckpointRequest()
    status = policy_pb2.GetPolicyStatusRequest()
    allowed = {
        ("crm", "state"), ("privacy-admin", "state"),
        ("auditor", "checkpoint"), ("privacy-admin", "checkpoint"),
        ("auditor", "status"), ("privacy-admin", "status"),
    }
    calls = {"state": (s.stubs.consent.GetConsentState, state),
             "checkpoint": (s.stubs.audit.GetCheckpoint, checkpoint),
             "status": (s.stubs.policy.GetStatus, status)}
    for caller in CALLERS:
        for name, (call, request) in calls.items():
            if (caller, name) in allowed:
                call(request, metadata=s.md(caller))
            else:
                assert code_of(call, request, metadata=s.md(caller)) \
                    is grpc.StatusCode.PERMISSION_DENIED, (caller, name)


def test_refusals_are_logged_without_the_token_or_the_subject(
        secured: Secured, caplog: pytest.LogCaptureFixture) -> None:
    s = secured
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-" + secrets.token_urlsafe(16)
    code_of(s.stubs.decisions.Check, check_request(SUBJECT), metadata=bearer(wrong))
    code_of(s.stubs.decisions.Check, check_request(SUBJECT, "personalize"),
            metadata=s.md("email-service"))
    s.stubs.decisions.Check(check_request(SUBJECT), metadata=s.md("crm"))
    refusals = [r.getMessage() for r in caplog.records if r.name == "consentauthz.auth"]
    assert len(refusals) == 2
    assert "DecisionService.Check" in refusals[0] and "UNAUTHENTICATED" in refusals[0]
    assert "unknown bearer token" in refusals[0]
    assert "email-service" in refusals[1] and "PERMISSION_DENIED" in refusals[1]
    assert all(r.levelno == logging.WARNING for r in caplog.records
               if r.name == "consentauthz.auth")
    text = caplog.text + "".join(str(r.args) for r in caplog.records)
    for secret in (wrong, *s.tokens.values(), *(token_hash(t) for t in s.tokens.values()),
                   SUBJECT):
        assert secret not in text


def test_health_needs_no_credentials_and_reflection_needs_a_rule(secured: Secured) -> None:
    s = secured
    health = health_pb2_grpc.HealthStub(s.channel)
    assert health.Check(health_pb2.HealthCheckRequest()).status == \
        health_pb2.HealthCheckResponse.SERVING
    reflect = reflection_pb2_grpc.ServerReflectionStub(s.channel)
    ask = [reflection_pb2.ServerReflectionRequest(list_services="")]
    with pytest.raises(grpc.RpcError) as err:
        list(reflect.ServerReflectionInfo(iter(ask)))
    assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
    # A known caller is not enough: the shipped policy lets the operators reflect.
    with pytest.raises(grpc.RpcError) as err:
        list(reflect.ServerReflectionInfo(iter(ask), metadata=s.md("analytics-job")))
    assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "ServerReflection.ServerReflectionInfo" in err.value.details()
    answers = list(reflect.ServerReflectionInfo(iter(ask), metadata=s.md("auditor")))
    names = {svc.name for svc in answers[0].list_services_response.service}
    assert "consentauthz.v1.DecisionService" in names


class IdleStream:
    """A reflection stream that stays open, sending a request only when asked to."""

    END = None

    def __init__(self, channel: grpc.Channel, metadata: list[tuple[str, str]]) -> None:
        self._requests: queue.Queue[reflection_pb2.ServerReflectionRequest | None] = \
            queue.Queue()
        self.responses = reflection_pb2_grpc.ServerReflectionStub(channel) \
            .ServerReflectionInfo(iter(self._requests.get, self.END), metadata=metadata)

    def ask(self) -> reflection_pb2.ServerReflectionResponse:
        self._requests.put(reflection_pb2.ServerReflectionRequest(list_services=""))
        return next(self.responses)  # type: ignore[no-any-return]

    def close(self) -> None:
        self._requests.put(self.END)
        self.responses.cancel()


def test_idle_reflection_streams_cannot_take_every_worker(secured: Secured) -> None:
    """The server has 4 workers. A caller without a reflection rule is refused before it
    holds one; operators may hold at most half of them with open streams."""
    s = secured
    streams = [IdleStream(s.channel, s.md("analytics-job")) for _ in range(4)]
    try:
        time.sleep(0.5)  # every stream has reached the server
        s.stubs.decisions.Check(check_request(), metadata=s.md("crm"), timeout=5)
        for stream in streams:
            with pytest.raises(grpc.RpcError) as err:
                stream.ask()
            assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
    finally:
        for stream in streams:
            stream.close()
    held = [IdleStream(s.channel, s.md("privacy-admin")) for _ in range(2)]
    try:
        for stream in held:
            assert stream.ask().list_services_response.service  # open, holding a worker
        extra = IdleStream(s.channel, s.md("auditor"))
        with pytest.raises(grpc.RpcError) as err:
            extra.ask()
        assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        extra.close()
        s.stubs.decisions.Check(check_request(), metadata=s.md("crm"), timeout=5)
    finally:
        for stream in held:
            stream.close()
    # A closed stream gives its place back.
    deadline = time.monotonic() + 5
    while True:
        again = IdleStream(s.channel, s.md("auditor"))
        try:
            assert again.ask().list_services_response.service
            break
        except grpc.RpcError as err:
            assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED  # not released yet
            assert time.monotonic() < deadline
            time.sleep(0.05)
        finally:
            again.close()


def test_calls_beyond_the_concurrency_bound_are_refused_not_queued(tmp_path: Path) -> None:
    """One worker admits at most 4 calls at once (running or queued); the rest are
    RESOURCE_EXHAUSTED at once instead of waiting behind them."""
    token = secrets.token_urlsafe(32)
    callers = write_callers(tmp_path / "callers.yaml", {"crm": {"token_sha256": [
        token_hash(token)]}})
    app = start_app(tmp_path / "data", callers_file=callers, workers=1)
    channel = ready(grpc.insecure_channel(f"127.0.0.1:{app.port}"))
    try:
        batch = decision_pb2.BatchCheckRequest(items=[
            check_request(f"s{i}", purpose="marketing") for i in range(200)])
        calls = [stubs(channel).decisions.BatchCheck.future(batch, metadata=bearer(token),
                                                            timeout=60) for _ in range(40)]
        codes = []
        for call in calls:
            try:
                call.result()
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as err:
                codes.append(err.code())
        assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert codes.count(grpc.StatusCode.OK) >= 4
    finally:
        channel.close()
        app.stop(grace=None)


@pytest.mark.parametrize("token", ["", "   ", "x", "fifteen-chars!!"],
                         ids=["empty", "blank", "one", "fifteen"])
def test_empty_or_short_tokens_are_unauthenticated_even_when_configured(
        tmp_path: Path, token: str) -> None:
    good = "sixteen-chars!!!"
    callers = write_callers(tmp_path / "callers.yaml", {
        "crm": {"token_sha256": [token_hash(good)]},
        "privacy-admin": {"token_sha256": [token_hash(token)]}} if token.strip() else {
        "crm": {"token_sha256": [token_hash(good)]}})
    app = start_app(tmp_path / "data", callers_file=callers)
    channel = ready(grpc.insecure_channel(f"127.0.0.1:{app.port}"))
    try:
        s = stubs(channel)
        for metadata in (bearer(token), [("authorization", f"bearer  {token} ")]):
            with pytest.raises(grpc.RpcError) as err:
                s.consent.ExportSubject(consent_pb2.ExportSubjectRequest(subject_id="a"),
                                        metadata=metadata)
            assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
        s.decisions.Check(check_request(), metadata=bearer(good))  # 16 characters will do
    finally:
        channel.close()
        app.stop(grace=None)


def test_anonymous_mode_without_a_callers_file(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    app = start_app(tmp_path / "data")
    channel = ready(grpc.insecure_channel(f"127.0.0.1:{app.port}"))
    try:
        s = stubs(channel)
        resp = s.decisions.Check(check_request())
        assert s.audit.GetDecision(audit_pb2.GetDecisionRequest(
            decision_id=resp.decision_id)).caller == "anonymous"
        # A token is not needed and, with nobody configured, not looked at.
        s.decisions.Check(check_request(), metadata=bearer("anything"))
    finally:
        channel.close()
        app.stop(grace=None)
    assert "no callers configured" in caplog.text
    assert "listening in plaintext on loopback" in caplog.text


def test_with_callers_there_is_no_anonymous_warning(
        caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    caplog.set_level(logging.INFO)
    callers = write_callers(tmp_path / "more.yaml", {"crm": {"token_sha256": [
        token_hash("t")]}})
    app = start_app(tmp_path / "other", callers_file=callers)
    app.stop(grace=None)
    assert "no callers configured" not in caplog.text


def _pack_with(tmp_path: Path, policy_csv: str | None) -> Path:
    pack = tmp_path / "pack"
    shutil.copytree(POLICIES, pack)
    if policy_csv is None:
        shutil.rmtree(pack / "callers")
    else:
        (pack / "callers" / "policy.csv").write_text(policy_csv)
    return pack


@pytest.mark.parametrize(("policy_csv", "message"), [
    (None, "no caller policy"),
    ("p, crm, DecisionService.Chek, *, *\n", "no RPC 'DecisionService.Chek'"),
    ("p, crm, ConsentService.RecordConsent, marketing, *\n", "must use * for both"),
    ("p, crm, DecisionService.Check, marketing.no_such_use, *\n", "not in the taxonomy"),
    ("p, crm, DecisionService.Check\n", "a rule is"),
    ("x, crm, admins\n", "unknown line type"),
], ids=["missing", "unknown-rpc", "bound-write", "unknown-purpose", "short-line", "bad-type"])
def test_a_missing_or_broken_caller_policy_refuses_the_start(
        tmp_path: Path, policy_csv: str | None, message: str) -> None:
    callers = write_callers(tmp_path / "callers.yaml", {"crm": {"token_sha256": [
        token_hash("t")]}})
    with pytest.raises(ConfigError, match="caller policy") as err:
        start_app(tmp_path / "data", policies=_pack_with(tmp_path, policy_csv),
                  callers_file=callers)
    assert message in str(err.value)


def test_a_broken_caller_policy_refuses_the_start_in_anonymous_mode_too(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"policy\.csv:1: a rule is"):
        start_app(tmp_path / "data", policies=_pack_with(tmp_path, "p, crm\n"))


@pytest.mark.parametrize(("text", "message"), [
    ("callers: []\n", "non-empty list"),
    ("callers:\n  - name: Crm\n    token_sha256: [" + "a" * 64 + "]\n", "name must be"),
    ("callers:\n  - name: anonymous\n    token_sha256: [" + "a" * 64 + "]\n", "reserved"),
    ("callers:\n  - name: crm\n", "can never authenticate"),
    ("callers:\n  - name: crm\n    token_sha256: [my-secret-token]\n", "never the token"),
    ("callers:\n  - {name: crm, certificate_names: [dns:a]}\n"
     "  - {name: x, certificate_names: [dns:A]}\n", "also belongs to 'crm'"),
    ("callers:\n  - {name: crm, token: abc}\n", "unknown keys token"),
    ("callers:\n  - {name: crm, certificate_names: [privacy-admin]}\n", "has no type"),
    ("callers:\n  - {name: crm, certificate_names: ['email:crm@example.com']}\n",
     "email addresses in a certificate never identify a caller"),
    (f"callers:\n  - {{name: crm, token_sha256: [{EMPTY_SHA256}]}}\n",
     "SHA-256 of the empty string"),
], ids=["empty", "name", "reserved", "no-credentials", "token-not-hash", "duplicate-cert",
        "unknown-key", "untyped-cert", "email-cert", "empty-token-hash"])
def test_a_bad_callers_file_refuses_the_start(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "callers.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="callers file") as err:
        start_app(tmp_path / "data", callers_file=path)
    assert message in str(err.value)
    assert "my-secret-token" not in str(err.value)
    assert EMPTY_SHA256 not in str(err.value)
