"""API keys (serve/auth.py) without Ray: the key file's rules, scopes, rotation, and what is refused."""

import os
import time

import pytest

from serve import auth
from serve.auth import ApiKeys, AuthError, parse_keys

A = "key-a-0123456789abcdefghijkl"
B = "key-b-0123456789abcdefghijkl"


def keyfile(tmp_path, text: str):
    path = tmp_path / "api-keys"
    path.write_text(text)
    return path


def refused(keys: ApiKeys, header, scope: str) -> tuple[int, str]:
    with pytest.raises(AuthError) as err:
        keys.check(header, scope)
    return err.value.status, err.value.reason


def test_scopes_and_refusals(tmp_path):
    keys = ApiKeys(str(keyfile(tmp_path, f"# comment\nnightly embed {A}\n\nshop search {B}  # the shop's frontend\n")))
    assert keys.check(f"Bearer {A}", "embed") == "nightly"
    assert keys.check(f"bearer   {B} ", "search") == "shop"
    assert refused(keys, None, "embed")[0] == 401
    assert refused(keys, f"Basic {A}", "embed")[0] == 401
    assert refused(keys, "Bearer ", "embed")[0] == 401
    status, reason = refused(keys, f"Bearer {A}x", "embed")
    assert (status, reason) == (401, "unknown API key")
    status, reason = refused(keys, f"Bearer {B}", "embed")
    assert status == 403 and "'shop' lacks the scope 'embed'" in reason and B not in reason


def test_no_key_file_means_closed_not_open(tmp_path, monkeypatch):
    monkeypatch.delenv(auth.KEYS_FILE_ENV, raising=False)
    status, reason = refused(ApiKeys(""), f"Bearer {A}", "embed")
    assert status == 403 and "none configured" in reason
    assert refused(ApiKeys(str(tmp_path / "missing")), f"Bearer {A}", "embed")[0] == 403
    assert refused(ApiKeys(str(keyfile(tmp_path, "# nothing yet\n"))), f"Bearer {A}", "embed")[0] == 403
    monkeypatch.setenv(auth.KEYS_FILE_ENV, str(keyfile(tmp_path, f"all * {A}\n")))
    env_keys = ApiKeys("")
    assert env_keys.check(f"Bearer {A}", "embed") == "all" and env_keys.check(f"Bearer {A}", "search") == "all"


@pytest.mark.parametrize("line,words", [
    ("nightly embed", "expected 'name scopes key'"),
    ("nightly admin " + A, "unknown scope"),
    ("nightly embed short", "at least 24 characters"),
    ("nightly embed " + "k" * 20 + "\"<>{}", "at least 24 characters"),
    (f"x embed {A}\nx search {B}", "twice"),
])
def test_malformed_key_files_name_the_line_never_the_key(line, words):
    with pytest.raises(ValueError, match=words) as err:
        parse_keys(line)
    assert A not in str(err.value) and B not in str(err.value) and "line " in str(err.value)


def test_rotation_is_picked_up_and_a_broken_rewrite_keeps_the_old_keys(tmp_path, monkeypatch):
    path = keyfile(tmp_path, f"nightly embed {A}\n")
    keys = ApiKeys(str(path))
    assert keys.check(f"Bearer {A}", "embed") == "nightly"
    monkeypatch.setattr(auth, "RELOAD_S", 0.0)
    path.write_text(f"nightly embed {B}\n")
    os.utime(path, ns=(time.time_ns() + 10**9,) * 2)  # a new mtime even on coarse clocks
    assert keys.check(f"Bearer {B}", "embed") == "nightly"
    assert refused(keys, f"Bearer {A}", "embed")[0] == 401  # the rotated-out key no longer works
    path.write_text("nightly embed")  # a half-written file: keep serving with the keys read before
    os.utime(path, ns=(time.time_ns() + 2 * 10**9,) * 2)
    assert keys.check(f"Bearer {B}", "embed") == "nightly"
    path.unlink()  # the Secret removed: nothing is valid any more
    assert refused(keys, f"Bearer {B}", "embed")[0] == 403
