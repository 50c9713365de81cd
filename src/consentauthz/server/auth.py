"""Caller authentication and authorisation: the interceptor in front of every service.

A call is authenticated by its client certificate (mutual TLS) or else by
`authorization: Bearer <token>` metadata, whose SHA-256 is compared with the configured
hashes. A certificate's names are typed, as the callers file lists them: `dns:`, `uri:`
and `ip:` for its subjectAltName entries of those types, `cn:` for its subject CN only
when it has no subjectAltName extension at all; email SANs name nobody. A call is then
authorised by the caller policy (engine/callers.py) for its RPC (`Service.Method`, server
reflection included) and, for Check and BatchCheck, for every purpose and data category it
asks about. Unknown caller: UNAUTHENTICATED; not allowed: PERMISSION_DENIED; both logged
with the caller, the RPC and the reason, never a token or a request value. Health stays
open (load balancers probe it without credentials). Refused calls never reach a
servicer, so nothing is decided, logged as a decision or written.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, cast

import grpc
from cryptography import x509
from cryptography.x509.oid import NameOID

from ..engine.callers import NO_KEY, CallerPolicy
from ..errors import ConfigError, PolicyError
from ..policy import Taxonomy
from ..v1 import audit_pb2, consent_pb2, decision_pb2, policy_pb2
from .identity import bound_caller

log = logging.getLogger("consentauthz.auth")

HEALTH_PREFIX = "/grpc.health.v1.Health/"
REFLECTION_PREFIXES = ("/grpc.reflection.v1alpha.ServerReflection/",
                       "/grpc.reflection.v1.ServerReflection/")
#: gRPC method path -> the RPC's name in the caller policy, `Service.Method`. Server
#: reflection is one of them: it holds a worker thread for as long as its stream is open,
#: so it takes a rule (`ServerReflection.*`) like any other RPC.
RPCS: Mapping[str, str] = {
    **{f"/{service.full_name}/{method.name}": f"{service.name}.{method.name}"
       for file in (decision_pb2.DESCRIPTOR, consent_pb2.DESCRIPTOR, audit_pb2.DESCRIPTOR,
                    policy_pb2.DESCRIPTOR)
       for service in file.services_by_name.values()
       for method in service.methods},
    **{f"{prefix}ServerReflectionInfo": "ServerReflection.ServerReflectionInfo"
       for prefix in REFLECTION_PREFIXES},
}
_BEARER = "bearer "
#: Shorter bearer tokens are refused before any hash is compared: an empty one is what an
#: unset $TOKEN gives, and a short one is guessable. Generated tokens are 43 characters.
MIN_TOKEN_LENGTH = 16
#: Certificates whose names are remembered (PEM -> names); emptied when full.
CERTIFICATE_MEMO_LIMIT = 1024
if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
else:
    Handler = grpc.RpcMethodHandler


class CallerEntry(Protocol):
    """One configured caller (config.CallerConfig)."""

    @property
    def name(self) -> str: ...
    @property
    def certificate_names(self) -> tuple[str, ...]: ...
    @property
    def token_sha256(self) -> tuple[str, ...]: ...


class PolicyText(Protocol):
    """The caller policy's files as read (config.CallerPolicyText)."""

    @property
    def model_text(self) -> str: ...
    @property
    def policy_text(self) -> str: ...
    @property
    def source(self) -> str: ...


class Refused(Exception):
    def __init__(self, code: grpc.StatusCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _canonical(kind: str, value: str) -> str | None:
    """`kind:value` as config.certificate_name writes a callers-file entry (DNS names in
    lower case, IP addresses as `ipaddress` prints them, URIs and CNs as they are). A
    value that is no valid entry of its kind equals no entry, so it names nobody; None
    for an IP SAN that is not an address."""
    if kind == "dns":
        return f"dns:{value.lower()}"
    if kind == "ip":
        try:
            return f"ip:{ipaddress.ip_address(value)}"
        except ValueError:
            return None
    return f"{kind}:{value}"


def certificate_names(pem: bytes) -> frozenset[str]:
    """The typed names of a client certificate: its DNS, URI and IP subjectAltName
    entries; its subject CN only when it has no subjectAltName extension at all (one with
    only email or other entries names nobody); never an email address. ValueError when the
    certificate does not parse."""
    cert = x509.load_pem_x509_certificate(pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        # Two CNs are ambiguous: neither names the certificate.
        name = (_canonical("cn", cns[0].value) if len(cns) == 1
                and isinstance(cns[0].value, str) else None)
        return frozenset({name} if name else ())
    names = (_canonical(kind, str(value))
             for kind, cls in (("dns", x509.DNSName), ("uri", x509.UniformResourceIdentifier),
                               ("ip", x509.IPAddress))
             for value in san.get_values_for_type(cls))
    return frozenset(n for n in names if n is not None)


class Authenticator:
    """Credentials -> caller name, or Refused(UNAUTHENTICATED)."""

    def __init__(self, callers: Iterable[CallerEntry]) -> None:
        self._by_certificate: dict[str, str] = {}
        self._tokens: list[tuple[bytes, str]] = []
        self._memo: dict[bytes, frozenset[str]] = {}
        for c in callers:
            self._by_certificate.update(dict.fromkeys(c.certificate_names, c.name))
            self._tokens += [(bytes.fromhex(h), c.name) for h in c.token_sha256]

    def _peer_names(self, pem: bytes) -> frozenset[str]:
        names = self._memo.get(pem)
        if names is None:
            try:
                names = certificate_names(pem)
            except ValueError:
                raise Refused(grpc.StatusCode.UNAUTHENTICATED,
                              "the client certificate cannot be read") from None
            if len(self._memo) >= CERTIFICATE_MEMO_LIMIT:
                self._memo.clear()
            self._memo[pem] = names
        return names

    def authenticate(self, context: grpc.ServicerContext) -> str:
        token_caller = self._token_caller(context)
        # Set only under mutual TLS (without --client-ca no certificate is requested), and
        # then on every connection: the handshake refuses peers without one. Not
        # peer_identities(): it mixes every kind of SAN (email too) and the CN into one
        # flat set of strings, so an email SAN could pass for another caller's CN.
        # A list of PEM certificates (grpc-stubs says bytes), the peer's own first.
        pems = cast(Mapping[str, Sequence[bytes]], context.auth_context()).get("x509_pem_cert")
        if pems:
            names = {self._by_certificate.get(n) for n in self._peer_names(pems[0])}
            names.discard(None)
            if not names:
                raise Refused(grpc.StatusCode.UNAUTHENTICATED,
                              "the client certificate names no configured caller")
            if len(names) > 1:
                raise Refused(grpc.StatusCode.UNAUTHENTICATED,
                              "the client certificate names more than one caller")
            caller = str(names.pop())
            if token_caller is not None and token_caller != caller:
                raise Refused(grpc.StatusCode.UNAUTHENTICATED,
                              "the bearer token and the client certificate name different "
                              "callers")
            return caller
        if token_caller is None:
            raise Refused(grpc.StatusCode.UNAUTHENTICATED,
                          "no credentials: send a client certificate (mutual TLS) or "
                          "'authorization: Bearer <token>' metadata")
        return token_caller

    def _token_caller(self, context: grpc.ServicerContext) -> str | None:
        values = [v for k, v in context.invocation_metadata() if k == "authorization"]
        if not values:
            return None
        value = values[0]
        if len(values) > 1 or not isinstance(value, str) \
                or not value[:len(_BEARER)].lower() == _BEARER:
            raise Refused(grpc.StatusCode.UNAUTHENTICATED,
                          "the authorization metadata must be one 'Bearer <token>'")
        token = value[len(_BEARER):].strip()
        if len(token) < MIN_TOKEN_LENGTH:
            raise Refused(grpc.StatusCode.UNAUTHENTICATED,
                          f"the bearer token is empty or shorter than {MIN_TOKEN_LENGTH} "
                          "characters")
        digest = hashlib.sha256(token.encode()).digest()
        found = None
        for expected, name in self._tokens:  # every hash, so the time says nothing
            if hmac.compare_digest(digest, expected):
                found = name
        if found is None:
            raise Refused(grpc.StatusCode.UNAUTHENTICATED, "unknown bearer token")
        return found


def _asked_about(rpc: str, request: Any) -> Sequence[tuple[str, str]]:
    """The (purpose, data category) pairs a request asks about; none (also a request that
    did not parse, or an empty batch): (NO_KEY, NO_KEY), which only a `*` rule allows."""
    if rpc == "DecisionService.Check" and isinstance(request, decision_pb2.CheckRequest):
        return [(request.purpose, request.data_category)]
    if rpc == "DecisionService.BatchCheck" and _batch(request):
        return [(item.purpose, item.data_category) for item in request.items]
    return [(NO_KEY, NO_KEY)]


def _batch(request: Any) -> bool:
    return isinstance(request, decision_pb2.BatchCheckRequest) and len(request.items) > 0


class CallerGuard(grpc.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(self, authenticator: Authenticator, policy: CallerPolicy) -> None:
        self._authenticator = authenticator
        self._policy = policy

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails],
                                                       Handler | None],
                          handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(HEALTH_PREFIX):
            return handler
        rpc = RPCS.get(method)
        if rpc is None:
            # Not ours, not health, not reflection: nothing else is served; refuse.
            return _wrap(handler, lambda request, context: self._refuse(
                context, method, None, Refused(grpc.StatusCode.PERMISSION_DENIED,
                                               "not a known RPC")))
        return _wrap(handler, lambda request, context: self._admit(context, rpc, request))

    def _admit(self, context: grpc.ServicerContext, rpc: str, request: Any) -> str:
        caller = None
        try:
            caller = self._authenticator.authenticate(context)
            if not self._policy.allows(caller, rpc):
                pairs = _asked_about(rpc, request)
                if not self._policy.allows_all(caller, rpc, pairs):
                    raise Refused(grpc.StatusCode.PERMISSION_DENIED, self._why(
                        caller, rpc, request, pairs))
            return caller
        except Refused as refused:
            self._refuse(context, rpc, caller, refused)

    def _why(self, caller: str, rpc: str, request: Any,
             pairs: Sequence[tuple[str, str]]) -> str:
        # Request values are caller text (and could hold personal data): name the item,
        # not its purpose or category.
        if rpc == "DecisionService.BatchCheck" and _batch(request):
            bad = [i for i, (p, c) in enumerate(pairs)
                   if not self._policy.allows(caller, rpc, p, c)]
            return (f"items[{bad[0]}] (and {len(bad) - 1} more) ask about a purpose or data "
                    "category outside the caller's binding" if len(bad) > 1 else
                    f"items[{bad[0]}] asks about a purpose or data category outside the "
                    "caller's binding")
        if rpc == "DecisionService.Check":
            return "the purpose or data category is outside the caller's binding"
        return "the caller policy does not allow this RPC"

    @staticmethod
    def _refuse(context: grpc.ServicerContext, label: str, caller: str | None,
                refused: Refused) -> NoReturn:
        if caller is None:
            log.warning("refused %s: %s: %s (peer %s)", label, refused.code.name,
                        refused.reason, context.peer())
            context.abort(refused.code, f"unauthenticated: {refused.reason}"
                          if refused.code is grpc.StatusCode.UNAUTHENTICATED else refused.reason)
        else:
            log.warning("refused %s for caller %s: %s: %s", label, caller, refused.code.name,
                        refused.reason)
            context.abort(refused.code, f"caller {caller!r} may not call {label}: "
                          f"{refused.reason}")
        raise AssertionError("unreachable: abort raises")


def _wrap(handler: Handler, admit: Callable[[Any, grpc.ServicerContext], str]) -> Handler:
    """The same handler, admitting the call first. A unary request is admitted with its
    message (Check and BatchCheck are bound by what they ask about); streaming ones before
    their first message, on the RPC alone."""
    des, ser = handler.request_deserializer, handler.response_serializer
    if handler.unary_unary is not None:
        unary_unary = handler.unary_unary

        def handle_unary_unary(request: Any, context: grpc.ServicerContext) -> Any:
            with bound_caller(admit(request, context)):
                return unary_unary(request, context)
        return grpc.unary_unary_rpc_method_handler(handle_unary_unary, des, ser)
    if handler.unary_stream is not None:
        unary_stream = handler.unary_stream

        def handle_unary_stream(request: Any, context: grpc.ServicerContext) -> Any:
            admit(request, context)
            return unary_stream(request, context)
        return grpc.unary_stream_rpc_method_handler(handle_unary_stream, des, ser)
    if handler.stream_unary is not None:
        stream_unary = handler.stream_unary

        def handle_stream_unary(requests: Any, context: grpc.ServicerContext) -> Any:
            admit(None, context)
            return stream_unary(requests, context)
        return grpc.stream_unary_rpc_method_handler(handle_stream_unary, des, ser)
    stream_stream = handler.stream_stream
    assert stream_stream is not None

    def handle_stream_stream(requests: Any, context: grpc.ServicerContext) -> Any:
        admit(None, context)
        return stream_stream(requests, context)
    return grpc.stream_stream_rpc_method_handler(handle_stream_stream, des, ser)


def caller_guard(callers: Sequence[CallerEntry], policy: PolicyText | None,
                 taxonomy: Taxonomy) -> CallerGuard | None:
    """The interceptor for these callers, or None when there are none (every call is then
    `anonymous`). A caller policy that is present is checked either way, so a broken one
    refuses the start before callers are switched on."""
    compiled = None
    if policy is not None:
        try:
            compiled = CallerPolicy(policy.model_text, policy.policy_text, policy.source,
                                    rpcs=set(RPCS.values()), callers=[c.name for c in callers],
                                    taxonomy=taxonomy)
        except PolicyError as exc:
            raise ConfigError(f"the caller policy in {policy.source} does not load:\n  "
                              + "\n  ".join(exc.problems)) from None
    if not callers:
        return None
    if compiled is None:
        raise ConfigError("callers are configured (--callers) but there is no caller policy: "
                          "add callers/model.conf and callers/policy.csv to the policy "
                          "directory (docs/security.md)")
    return CallerGuard(Authenticator(callers), compiled)
