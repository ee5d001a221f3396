"""API keys: bearer tokens for the routes that cost or change something.

Keys live in a file that a Kubernetes Secret fills (mounted at ``api_keys_file``, by default
``$VITRINE_API_KEYS_FILE``), never in ``serve/config.yaml`` or a runtime_env, which the dashboard
shows. One key a line::

    # name   scopes          key
    nightly  embed           3f0c...   (at least 24 characters)
    shop-fe  search          9a1b...

Scopes: ``embed`` (``POST /v1/embed``: raw embeddings, 256 images a request) and ``search``
(``/v1/classify`` and ``/v1/search``, only when ``search_requires_key`` is on; the public page
then cannot search without a key). ``*`` grants all. Only SHA-256 digests of the keys are kept
in memory and compared in constant time. The file is re-read when it changes (Secret rotation
rewrites the mounted file), at most every ``RELOAD_S`` seconds. With no key file, routes that
need a key answer 403: a write route is never open because a file is missing.

401 (with ``WWW-Authenticate: Bearer``): no key, or a key that is not in the file. 403: a known
key without the scope, or no keys configured at all.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import time
from dataclasses import dataclass

log = logging.getLogger("vitrine.serve")

SCOPES = ("embed", "search")
MIN_KEY_CHARS = 24
RELOAD_S = 5.0
KEYS_FILE_ENV = "VITRINE_API_KEYS_FILE"
_KEY = re.compile(r"^[A-Za-z0-9._~+/=-]+$")  # RFC 6750 b64token characters


class AuthError(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Key:
    name: str
    scopes: frozenset
    digest: bytes


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def parse_keys(text: str, *, source: str = "the key file") -> list[Key]:
    """The keys of a key file's text; a malformed line raises ValueError naming its number (never its key)."""
    keys, names = [], set()
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 3:
            raise ValueError(f"{source} line {number}: expected 'name scopes key'")
        name, scopes, token = fields
        wanted = frozenset(SCOPES) if scopes == "*" else frozenset(scopes.split(","))
        if not wanted <= set(SCOPES):
            raise ValueError(f"{source} line {number}: unknown scope in {scopes!r}; use {', '.join(SCOPES)} or *")
        if len(token) < MIN_KEY_CHARS or not _KEY.match(token):
            raise ValueError(f"{source} line {number}: a key needs at least {MIN_KEY_CHARS} characters "
                             "of letters, digits and -._~+/=")
        if name in names:
            raise ValueError(f"{source} line {number}: key name {name!r} twice")
        names.add(name)
        keys.append(Key(name, wanted, _digest(token)))
    return keys


class ApiKeys:
    """The keys of one file, re-read when it changes; ``check`` answers who a request is."""

    def __init__(self, path: str = ""):
        self.path = path or os.environ.get(KEYS_FILE_ENV, "")
        self._keys: list[Key] = []
        self._stamp = None
        self._checked = float("-inf")
        self.problem = "no API key file configured (api_keys_file or $VITRINE_API_KEYS_FILE)"
        self._reload()

    def _reload(self) -> None:
        self._checked = time.monotonic()
        if not self.path:
            return
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            if stamp == self._stamp:
                return
            with open(self.path, encoding="utf-8") as f:
                keys = parse_keys(f.read(), source="API key file")
        except FileNotFoundError:
            self._keys, self._stamp, self.problem = [], None, "the API key file does not exist"
            return
        except (OSError, ValueError) as exc:  # keep the keys we had: a half-written rotation must not lock out
            log.error("cannot read the API key file %s (%s); %s", self.path, exc,
                      f"keeping the {len(self._keys)} keys read before" if self._keys else "no keys are valid")
            if not self._keys:
                self.problem = "the API key file is unreadable"
            return
        self._keys, self._stamp = keys, stamp
        self.problem = "" if keys else "the API key file holds no keys"
        log.info("API keys loaded: %s", ", ".join(f"{k.name} ({','.join(sorted(k.scopes))})" for k in keys) or "none")

    def check(self, authorization: str | None, scope: str) -> str:
        """The name of the key that ``authorization`` (the header's value) carries, if it has
        ``scope``; raises :class:`AuthError` otherwise."""
        if time.monotonic() - self._checked >= RELOAD_S:
            self._reload()
        if not self._keys:
            raise AuthError(403, f"this route needs an API key with scope {scope!r}, and the service has none "
                                 f"configured ({self.problem})")
        scheme, _, token = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError(401, f"this route needs an API key: send 'Authorization: Bearer <key>' (scope {scope!r})")
        digest = _digest(token.strip())
        found = None
        for key in self._keys:  # every key compared, in constant time: no timing hint of which matched
            if hmac.compare_digest(key.digest, digest):
                found = key
        if found is None:
            raise AuthError(401, "unknown API key")
        if scope not in found.scopes:
            raise AuthError(403, f"API key {found.name!r} lacks the scope {scope!r}")
        return found.name
