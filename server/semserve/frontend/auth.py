"""API keys with roles, checked on every RPC but health, by the server's one handler (frontend/handlers.py).

Keys file (``--api-keys-file``): one key per line, ``ROLE SHA256-HEX [LABEL]``, ``#`` comments.
Only hashes are stored, so the file is no secret worth stealing; ``semserve api-key --role R``
makes a key and its line. A caller sends ``authorization: Bearer KEY``. Roles nest: ``read``
(inference, search, reading collections, GetInfo, reflection) < ``write`` (+ Upsert, Delete,
Create/DropCollection) < ``admin`` (+ LoadModel/UnloadModel, and GetInfo's filesystem paths).

A missing or unknown key is UNAUTHENTICATED, a key without the role PERMISSION_DENIED. The
presented key's hash is compared with every stored hash (``hmac.compare_digest``, no early
exit), so timing says nothing about which or how many bytes matched. Keys are never logged.
The file is re-read when it changes (checked at most once a second, and on SIGHUP); a file that
no longer parses keeps the previous keys and logs why.

Without a keys file the data plane is open (bind to loopback, or put the server behind
something that authenticates), and ``--admin-token`` alone guards AdminService as one admin key.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from semserve.config import ROLES, ConfigError, SecurityConfig

log = logging.getLogger(__name__)

READ, WRITE, ADMIN = ROLES
_RANK = {role: rank for rank, role in enumerate(ROLES)}
_CHECK_EVERY_S = 1.0

# Methods beyond ``read``; health needs no key; everything else (reflection included) needs read.
_WRITE_METHODS = {f"/semserve.v1.SearchService/{m}" for m in
                  ("Upsert", "BulkUpsert", "UpsertStream", "Delete", "CreateCollection", "DropCollection")}
_ADMIN_SERVICE = "/semserve.v1.AdminService/"
_OPEN_SERVICE = "/grpc.health.v1.Health/"


def required_role(method: str) -> str | None:
    """The least role that may call ``method`` (a full gRPC method name); None for none."""
    if method.startswith(_OPEN_SERVICE):
        return None
    if method.startswith(_ADMIN_SERVICE):
        return ADMIN
    if method in _WRITE_METHODS:
        return WRITE
    return READ


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return "ssk_" + secrets.token_urlsafe(32)


def parse_keys(text: str, source: str) -> list[tuple[bytes, str]]:
    """(sha256 digest, role) per line of a keys file; ConfigError naming the line otherwise."""
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) < 2 or parts[0] not in _RANK:
            raise ConfigError(f"{source} line {number}: expected 'ROLE SHA256-HEX [LABEL]' with ROLE one of "
                              f"{', '.join(ROLES)}")
        try:
            digest = bytes.fromhex(parts[1])
        except ValueError:
            digest = b""
        if len(digest) != 32:
            raise ConfigError(f"{source} line {number}: the second field must be a SHA-256 hex digest (64 hex "
                              "digits; `semserve api-key` prints one)")
        entries.append((digest, parts[0]))
    return entries


class ApiKeys:
    """The keys a server accepts, from the keys file and the admin token, kept current."""

    def __init__(self, config: SecurityConfig):
        self.path = Path(config.api_keys_file) if config.api_keys_file is not None else None
        self._token_entries = [(hashlib.sha256(config.admin_token.encode()).digest(), ADMIN)] if config.admin_token else []
        self._file_entries: list[tuple[bytes, str]] = []
        self._stamp: tuple | None = None
        self._checked_at = 0.0
        self._lock = threading.Lock()
        if self.path is not None:
            self._load(self._file_stamp())

    @property
    def file_enabled(self) -> bool:
        return self.path is not None

    @property
    def enabled(self) -> bool:
        return self.path is not None or bool(self._token_entries)

    def _file_stamp(self) -> tuple:
        stat = os.stat(self.path)
        return stat.st_mtime_ns, stat.st_size, stat.st_ino

    def _load(self, stamp: tuple) -> None:
        entries = parse_keys(self.path.read_text(), str(self.path))
        self._file_entries, self._stamp = entries, stamp
        log.info("API keys: %d key(s) from %s", len(entries), self.path)

    def reload(self, force: bool = False) -> None:
        """Re-read the file if it changed (or ``force``); keep the old keys if it cannot be read."""
        if self.path is None:
            return
        with self._lock:
            self._checked_at = time.monotonic()
            try:
                stamp = self._file_stamp()
                if force or stamp != self._stamp:
                    self._load(stamp)
            except (OSError, ConfigError) as exc:
                log.error("API keys: %s; the previous keys stay in force", exc)

    def role_of(self, key: str) -> str | None:
        """The role of ``key``, or None; compares against every stored hash whatever matches."""
        if self.path is not None and time.monotonic() - self._checked_at >= _CHECK_EVERY_S:
            self.reload()
        digest = hashlib.sha256(key.encode()).digest()
        role = None
        for stored, stored_role in self._file_entries + self._token_entries:
            if hmac.compare_digest(stored, digest) and (role is None or _RANK[stored_role] > _RANK[role]):
                role = stored_role
        return role


def bearer_key(metadata) -> str | None:
    for name, value in metadata or ():
        if name == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer "):].strip()
    return None


@dataclass(frozen=True)
class Decision:
    allowed: bool
    code: grpc.StatusCode = grpc.StatusCode.OK
    message: str = ""


class Authorizer:
    """Who may call what; asked by the server's handler on every call, and by the services that vary
    their answers."""

    def __init__(self, keys: ApiKeys):
        self.keys = keys

    def caller_role(self, metadata) -> str | None:
        key = bearer_key(metadata)
        return self.keys.role_of(key) if key else None

    def is_admin(self, metadata) -> bool:
        return self.keys.enabled and self.caller_role(metadata) == ADMIN

    def decide(self, method: str, metadata) -> Decision:
        needed = required_role(method)
        if needed is None:
            return Decision(True)
        if not self.keys.file_enabled and needed != ADMIN:
            return Decision(True)  # no keys file: the data plane is open
        if not self.keys.enabled:
            return Decision(False, grpc.StatusCode.PERMISSION_DENIED,
                            "model management is disabled on this server; start it with --api-keys-file (an admin "
                            "key) or --admin-token to enable it")
        key = bearer_key(metadata)
        role = self.keys.role_of(key) if key else None
        if role is None:
            what = "an unknown API key" if key else "no API key"
            return Decision(False, grpc.StatusCode.UNAUTHENTICATED,
                            f"{what}: send 'authorization: Bearer <key>' metadata with a key this server accepts")
        if _RANK[role] < _RANK[needed]:
            name = method.rsplit("/", 1)[-1]
            return Decision(False, grpc.StatusCode.PERMISSION_DENIED,
                            f"this key's role is {role!r}; {name} needs the {needed!r} role")
        return Decision(True)


def denying(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that ends the call with ``code``."""

    async def deny(_request, context):
        await context.abort(code, message)

    options = dict(request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(deny, **options)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(deny, **options)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(deny, **options)
    return grpc.stream_stream_rpc_method_handler(deny, **options)
