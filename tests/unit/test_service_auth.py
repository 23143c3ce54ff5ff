"""Service auth and settings: token digests, token files, constant-time comparison, the loopback rule."""

from __future__ import annotations

import hmac
import re
import stat
from unittest import mock

import pytest

from autotune.errors import SpecError
from autotune.service import auth, local_token
from autotune.service.auth import Tokens, bearer, digest, parse_token_file, tokens_from_env
from autotune.service.settings import is_loopback, make_settings

ABC = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
"""SHA-256 of "abc": FIPS 180-2, Appendix B.1."""
EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
"""SHA-256 of the empty string (FIPS 180-4 test vectors, NIST CSRC example values)."""


def test_digest_is_sha256_hex() -> None:
    assert digest("abc") == ABC
    assert digest("") == EMPTY


def test_token_file_named_unnamed_comments(tmp_path) -> None:
    f = tmp_path / "tokens"
    f.write_text(f"# team tokens\n\nalice:{ABC}\n  {EMPTY.upper()}  \n")
    tokens = parse_token_file(f)
    assert tokens.named == (("alice", ABC), ("file-4", EMPTY))
    assert tokens.match("abc") == "alice"
    assert tokens.match("") == "file-4"
    assert tokens.match("abd") is None


@pytest.mark.parametrize("line, where", [
    ("abc", "line 1"),                      # a plain token, not a digest
    (f"alice:{ABC[:-1]}", "line 1"),       # 63 hex digits
    (f"bad name:{ABC}", "name 'bad name'"),
])
def test_token_file_bad_lines_name_the_line(tmp_path, line, where) -> None:
    f = tmp_path / "tokens"
    f.write_text(line + "\n")
    with pytest.raises(SpecError, match=f"^token-file: .*{where}"):
        parse_token_file(f)


def test_token_file_empty_missing_and_duplicate_names(tmp_path) -> None:
    f = tmp_path / "tokens"
    f.write_text("# nothing\n")
    with pytest.raises(SpecError, match="holds no token digests"):
        parse_token_file(f)
    with pytest.raises(SpecError, match="cannot read"):
        parse_token_file(tmp_path / "missing")
    f.write_text(f"a:{ABC}\na:{EMPTY}\n")
    with pytest.raises(SpecError, match="token name 'a' is given twice"):
        parse_token_file(f)


def test_env_tokens_are_hashed_and_named_in_order() -> None:
    tokens = tokens_from_env(" abc, ,xyz ")
    assert tokens.named[0] == ("env-1", ABC)
    assert [n for n, _ in tokens.named] == ["env-1", "env-2"]
    assert "abc" not in repr(tokens) and ABC not in repr(tokens)
    assert not tokens_from_env(None) and not tokens_from_env(" , ")


@pytest.mark.parametrize("presented", ["abc", "nope", ""])
def test_every_digest_is_compared_in_constant_time(presented) -> None:
    """Three accepted digests: compare_digest runs three times whether the first, none or the last matches."""
    tokens = Tokens((("a", ABC), ("b", digest("other")), ("c", EMPTY)))
    with mock.patch.object(auth.hmac, "compare_digest", wraps=hmac.compare_digest) as spy:
        tokens.match(presented)
    assert spy.call_count == 3
    assert all(len(c.args[0]) == len(c.args[1]) == 64 for c in spy.call_args_list)


@pytest.mark.parametrize("header, token", [
    ("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("Basic abc", None), ("Bearer", None), ("", None), (None, None)])
def test_bearer_header(header, token) -> None:
    assert bearer(header) == token


@pytest.mark.parametrize("host, loop", [("127.0.0.1", True), ("127.8.0.1", True), ("::1", True),
                                        ("localhost", True), ("0.0.0.0", False), ("10.0.0.5", False),
                                        ("example.org", False)])
def test_loopback(host, loop) -> None:
    assert is_loopback(host) is loop


def test_settings_refuse_non_loopback_without_tokens() -> None:
    with pytest.raises(SpecError, match=r"^host: 0\.0\.0\.0 is not a loopback address; binding it needs tokens"):
        make_settings(host="0.0.0.0", storage="sqlite:///x.db")
    ok = make_settings(host="0.0.0.0", storage="sqlite:///x.db", tokens=tokens_from_env("abc"))
    assert ok.host == "0.0.0.0" and ok.tokens.match("abc") == "env-1"


@pytest.mark.parametrize("field, value", [("port", 70000), ("max_concurrent_studies", 0), ("max_spec_bytes", 10),
                                          ("max_trials", 0), ("poll_s", 0), ("bogus", 1)])
def test_settings_bad_values_name_the_field(field, value) -> None:
    with pytest.raises(SpecError, match=f"^{field}: "):
        make_settings(storage="sqlite:///x.db", **{field: value})


def test_settings_mask_the_storage_password() -> None:
    s = make_settings(storage="postgresql+psycopg://u:hunter2@db/autotune")
    assert "hunter2" not in s.display_storage and "***" in s.display_storage


def test_serve_refuses_a_public_host_without_tokens(cli, monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("AUTOTUNE_TOKENS", raising=False)
    code, out, err = cli(["serve", "--host", "0.0.0.0", "--storage", f"sqlite:///{tmp_path}/a.db"])
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: host: 0.0.0.0 is not a loopback address")


@pytest.mark.parametrize("env, expected", [
    ({"AUTOTUNE_TOKEN_FILE": "/srv/at/token", "XDG_STATE_HOME": "/x"}, "/srv/at/token"),
    ({"XDG_STATE_HOME": "/var/state"}, "/var/state/autotune/serve-token"),
    ({"XDG_STATE_HOME": "relative/dir"}, "HOME/.local/state/autotune/serve-token"),  # XDG: relative is ignored
    ({"XDG_STATE_HOME": ""}, "HOME/.local/state/autotune/serve-token"),
    ({}, "HOME/.local/state/autotune/serve-token"),
])
def test_local_token_path(env, expected, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert str(local_token.token_path(env)) == expected.replace("HOME", str(tmp_path))


def test_made_token_is_private_and_only_its_digest_kept(tmp_path) -> None:
    path = tmp_path / "state" / "autotune" / "serve-token"
    tokens = local_token.make_token(path)
    token = local_token.read_token(path)
    # token_urlsafe(32): 32 random bytes in unpadded base64url, ceil(32 * 4 / 3) = 43 characters
    assert token is not None and len(token) == 43 and re.fullmatch(r"[A-Za-z0-9_-]{43}", token)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert tokens.named == (("local", digest(token)),) and tokens.match(token) == "local"
    assert token not in repr(tokens) and digest(token) not in repr(tokens)
    path.chmod(0o644)
    again = local_token.make_token(path)  # a new start: a new token, the file private again, nothing else left
    assert local_token.read_token(path) != token and again.match(token) is None
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["serve-token"]
    assert local_token.read_token(tmp_path / "missing") is None


def test_made_token_unwritable_is_one_line(tmp_path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(SpecError, match=r"^local-token-file: cannot write .*file/serve-token: "):
        local_token.make_token(tmp_path / "file" / "serve-token")
