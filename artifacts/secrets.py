"""Which environment variable names hold secrets, and redaction of their values.

One rule for everything that puts environment into Ray job metadata or prints it: `vitrine
submit` and the Serve deploy never put a secret-looking variable into a runtime_env (the
dashboard, the Jobs API and `ray list` show runtime_envs to anyone who can reach them), and
`vitrine jobs` prints what the cluster holds only through :func:`redact`.

A name is secret-looking when it contains SECRET, TOKEN, PASSWORD, PASSWD, CREDENTIAL or
PRIVATE, or when its last word is KEY/KEYS or it ends in KEY_ID (``AWS_ACCESS_KEY_ID``,
``VITRINE_API_KEY``). AWS calls the access key id an identifier, not a secret, but it names the
key pair and is useless without it: it stays out too, so credentials either travel whole or not
at all. ``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION``, ``AWS_PROFILE``, ``VITRINE_STORAGE`` and
the like are settings, not secrets.
"""

from __future__ import annotations

import re

REDACTED = "***"

_SECRET_WORDS = ("SECRET", "TOKEN", "PASSWORD", "PASSWD", "CREDENTIAL", "PRIVATE")
# Words, not substrings, for KEY: MONKEY_PATCH or KEYBOARD_LAYOUT are not keys.
_KEY_NAME = re.compile(r"(^|_)(KEYS?|KEY_ID)$")
# NAME=value (shell, `--env`) and "NAME": "value" (JSON) inside strings such as an entrypoint.
_ASSIGNMENT = re.compile(r"\b([A-Za-z_][A-Za-z0-9_]*)=(\"[^\"]*\"|'[^']*'|\S+)")
_JSON_PAIR = re.compile(r"\"([A-Za-z_][A-Za-z0-9_]*)\"(\s*:\s*)\"(?:[^\"\\]|\\.)*\"")


def is_secret_name(name: str) -> bool:
    """True for an environment variable (or mapping key) whose value must not be shown or forwarded."""
    upper = str(name).upper()
    return any(word in upper for word in _SECRET_WORDS) or bool(_KEY_NAME.search(upper))


def secret_names(names) -> list[str]:
    """The secret-looking ones among ``names``, sorted."""
    return sorted(n for n in names if is_secret_name(n))


def without_secrets(env: dict) -> dict:
    """``env`` less its secret-looking names (what may travel in a runtime_env)."""
    return {k: v for k, v in env.items() if not is_secret_name(k)}


def redact(obj):
    """A copy of ``obj`` with the values of secret-looking keys replaced by ``"***"``, recursively
    through dicts, lists and tuples; strings keep their text but lose the values of secret-looking
    ``NAME=value`` and ``"NAME": "value"`` pairs (an entrypoint or a message can hold them)."""
    if isinstance(obj, dict):
        return {k: (REDACTED if is_secret_name(k) and obj[k] not in (None, "") else redact(v))
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact(v) for v in obj)
    if isinstance(obj, str):
        return _redact_text(obj)
    return obj


def _redact_text(text: str) -> str:
    if "=" in text:
        text = _ASSIGNMENT.sub(lambda m: f"{m.group(1)}={REDACTED}" if is_secret_name(m.group(1)) else m.group(0),
                               text)
    if '"' in text:
        text = _JSON_PAIR.sub(lambda m: f'"{m.group(1)}"{m.group(2)}"{REDACTED}"' if is_secret_name(m.group(1))
                              else m.group(0), text)
    return text
