"""JWT authentication: what is accepted, what is refused, on virtual time."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.auth import (
    AuthConfig,
    Authenticator,
    Principal,
    default_secret,
    dev_secret,
    load_es256_public_key,
)
from gateway.errors import ErrorCode, Rejected
from gateway.tokens import main as token_main
from gateway.tokens import mint, parse_ttl

NOW = 1_700_000_000.0
SECRET = "s" * 32
OTHER_SECRET = "o" * 40
PROPS = settings(derandomize=True, max_examples=200, deadline=None)
ROOM_CHARS = "abcAZ09_.:@-"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"sub": "alice", "join": ["lobby"], "publish": [], "exp": NOW + 60}
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


def hs256(payload: dict[str, Any], secret: str = SECRET, **kw: Any) -> str:
    return jwt.encode(payload, secret, algorithm="HS256", **kw)


def refused(auth: Authenticator, token: str, now: float = NOW) -> str:
    with pytest.raises(Rejected) as info:
        auth.authenticate(token, now)
    assert info.value.code == ErrorCode.UNAUTHENTICATED and info.value.fatal
    return info.value.message


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def public_pem(ec_key: ec.EllipticCurvePrivateKey) -> bytes:
    return ec_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture
def hs_auth() -> Authenticator:
    return Authenticator(AuthConfig(hs256_secrets=(SECRET,)))


# ---- HS256 ---------------------------------------------------------------------------------------


def test_hs256_valid_token_gives_its_principal(hs_auth: Authenticator) -> None:
    token = hs256(claims(join=["lobby", "room-*"], publish=["lobby"]))
    p = hs_auth.authenticate(token, NOW)
    assert p == Principal("alice", ("lobby", "room-*"), ("lobby",), NOW + 60 + 30)
    assert p.may_join("room-7") and p.may_join("lobby") and not p.may_join("roomy")
    assert p.may_publish("lobby") and not p.may_publish("room-7")


def test_expiry_is_checked_on_the_callers_clock_with_leeway(hs_auth: Authenticator) -> None:
    token = hs256(claims(exp=NOW + 60))
    p = hs_auth.authenticate(token, NOW + 89.9)  # real clock is years later: irrelevant
    assert not p.expired(NOW + 89.9) and p.expired(NOW + 90)
    assert "expired" in refused(hs_auth, token, NOW + 90)
    # In 2023 time this token (exp = NOW + 60) is valid; pyjwt alone would call it expired today.
    assert hs_auth.authenticate(token, NOW).sub == "alice"


def test_a_token_that_expires_too_far_ahead_is_refused(hs_auth: Authenticator) -> None:
    """A session lasts as long as its token: exp = 1e300 would be a grant that never ends."""
    week = AuthConfig().max_token_lifetime_s
    assert week == 7 * 24 * 3600
    assert hs_auth.authenticate(hs256(claims(exp=NOW + week)), NOW).sub == "alice"
    for exp in (NOW + week + 3600, 1e300, 2**62):
        assert "too far ahead" in refused(hs_auth, hs256(claims(exp=exp)))
    short = Authenticator(AuthConfig(hs256_secrets=(SECRET,), max_token_lifetime_s=600))
    assert "too far ahead" in refused(short, hs256(claims(exp=NOW + 3600)))
    with pytest.raises(ValueError, match="max_token_lifetime_s"):
        AuthConfig(hs256_secrets=(SECRET,), max_token_lifetime_s=float("inf"))


def test_not_before_is_honoured(hs_auth: Authenticator) -> None:
    token = hs256(claims(nbf=NOW + 100, exp=NOW + 1000))
    assert "not valid yet" in refused(hs_auth, token, NOW)
    assert hs_auth.authenticate(token, NOW + 71).sub == "alice"  # 30 s leeway


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (claims(sub=None), "required"),
        (claims(exp=None), "required"),
        (claims(sub=""), "invalid"),
        (claims(sub="x" * 129), "invalid"),
        (claims(sub=7), "sub"),
        (claims(exp="soon"), "number"),
        (claims(exp=True), "number"),
        (claims(join="lobby"), "list"),
        (claims(join=["bad room"]), "invalid"),
        (claims(publish=[1]), "list"),
        (claims(aud="elsewhere"), "audience"),
    ],
)
def test_bad_claims_are_refused(
    hs_auth: Authenticator, payload: dict[str, Any], reason: str
) -> None:
    assert reason in refused(hs_auth, hs256(payload))


def test_wrong_secret_tampering_and_garbage_are_refused(hs_auth: Authenticator) -> None:
    assert "signature" in refused(hs_auth, hs256(claims(), OTHER_SECRET))
    token = hs256(claims(join=["lobby"]))
    header, _, sig = token.split(".")
    forged = b64(json.dumps(claims(join=["*"])).encode())
    assert "signature" in refused(hs_auth, f"{header}.{forged}.{sig}")
    for garbage in ("", "x", "a.b.c", "..", token + "x", token.replace(".", "", 1)):
        refused(hs_auth, garbage)


def test_messages_never_leak_secrets_or_tokens(hs_auth: Authenticator) -> None:
    for token in (hs256(claims(), OTHER_SECRET), hs256(claims(exp=NOW - 100)), "a.b.c"):
        message = refused(hs_auth, token)
        assert SECRET not in message and OTHER_SECRET not in message and token not in message


def test_oversized_token_is_refused_unparsed() -> None:
    auth = Authenticator(AuthConfig(hs256_secrets=(SECRET,), max_token_bytes=256))
    token = hs256(claims(join=[f"room-{i}" for i in range(40)]))
    assert len(token) > 256
    assert "longer than 256" in refused(auth, token)


def test_rotation_accepts_every_configured_secret() -> None:
    both = Authenticator(AuthConfig(hs256_secrets=(OTHER_SECRET, SECRET)))
    assert both.authenticate(hs256(claims()), NOW).sub == "alice"
    assert both.authenticate(hs256(claims(), OTHER_SECRET), NOW).sub == "alice"
    new_only = Authenticator(AuthConfig(hs256_secrets=(OTHER_SECRET,)))
    refused(new_only, hs256(claims()))


def test_audience_and_issuer_when_configured() -> None:
    auth = Authenticator(AuthConfig(hs256_secrets=(SECRET,), audience="skein", issuer="idp"))
    assert auth.authenticate(hs256(claims(aud="skein", iss="idp")), NOW).sub == "alice"
    assert "audience" in refused(auth, hs256(claims(aud="other", iss="idp")))
    assert "issuer" in refused(auth, hs256(claims(aud="skein", iss="other")))
    assert "required" in refused(auth, hs256(claims(iss="idp")))


# ---- ES256 and algorithm pinning -----------------------------------------------------------------


def es_authenticator(ec_key: ec.EllipticCurvePrivateKey, **kw: Any) -> Authenticator:
    return Authenticator(AuthConfig(**kw), es256_keys=[ec_key.public_key()])


def test_es256_valid_and_wrong_key(ec_key: ec.EllipticCurvePrivateKey) -> None:
    auth = es_authenticator(ec_key)
    assert auth.authenticate(jwt.encode(claims(), ec_key, algorithm="ES256"), NOW).sub == "alice"
    other = ec.generate_private_key(ec.SECP256R1())
    assert "signature" in refused(auth, jwt.encode(claims(), other, algorithm="ES256"))


def test_es256_key_files_load_and_rotate(
    tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    new = ec.generate_private_key(ec.SECP256R1())
    files = []
    for name, key in (("old.pem", ec_key), ("new.pem", new)):
        path = tmp_path / name
        path.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        files.append(path)
    auth = Authenticator.from_config(AuthConfig(es256_public_key_files=tuple(files)))
    assert not auth.uses_dev_secret
    for key in (ec_key, new):
        assert auth.authenticate(jwt.encode(claims(), key, algorithm="ES256"), NOW).sub == "alice"
    refused(auth, hs256(claims()))  # no HS256 secret configured: HS256 is not accepted at all
    (tmp_path / "bad.pem").write_text("not a key")
    with pytest.raises(ValueError, match="not a PEM public key"):
        load_es256_public_key(tmp_path / "bad.pem")


def test_algorithm_confusion_is_refused(
    ec_key: ec.EllipticCurvePrivateKey, public_pem: bytes
) -> None:
    """An HS256 token whose HMAC key is the public key's PEM text never passes as ES256."""
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64(json.dumps(claims(join=["*"], publish=["*"])).encode())
    signing_input = f"{header}.{payload}".encode()
    sig = b64(hmac.new(public_pem, signing_input, hashlib.sha256).digest())
    token = f"{header}.{payload}.{sig}"
    refused(es_authenticator(ec_key), token)
    refused(es_authenticator(ec_key, hs256_secrets=(SECRET,)), token)
    # The same HMAC under a header claiming ES256 is not an ES256 signature either.
    es_header = b64(json.dumps({"alg": "ES256", "typ": "JWT"}).encode())
    es_input = f"{es_header}.{payload}".encode()
    es_sig = b64(hmac.new(public_pem, es_input, hashlib.sha256).digest())
    refused(es_authenticator(ec_key), f"{es_header}.{payload}.{es_sig}")


@pytest.mark.parametrize("alg", ["none", "None", "HS512", "RS256", "ES384", "PS256", ""])
def test_other_algorithms_are_refused(alg: str) -> None:
    auth = Authenticator(AuthConfig(hs256_secrets=(SECRET,)))
    header = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    payload = b64(json.dumps(claims(join=["*"])).encode())
    for sig in ("", b64(b"x" * 32)):
        assert "not accepted" in refused(auth, f"{header}.{payload}.{sig}")


def test_unsigned_token_with_real_signature_stripped(hs_auth: Authenticator) -> None:
    token = hs256(claims())
    refused(hs_auth, token.rsplit(".", 1)[0] + ".")


# ---- properties ----------------------------------------------------------------------------------

room_names = st.text(ROOM_CHARS, min_size=1, max_size=20)


@PROPS
@given(prefix=st.text(ROOM_CHARS, min_size=0, max_size=8), room=room_names)
def test_prefix_wildcard_matches_exactly_the_prefixed_rooms(prefix: str, room: str) -> None:
    p = Principal("u", join=(f"{prefix}-*",), publish=("*",))
    assert p.may_join(room) == room.startswith(f"{prefix}-")
    assert p.may_publish(room)


@PROPS
@given(pattern=room_names, room=room_names)
def test_a_pattern_without_star_matches_only_itself(pattern: str, room: str) -> None:
    p = Principal("u", join=(pattern,))
    assert p.may_join(room) == (room == pattern)
    assert not p.may_publish(room)  # publish never follows from join


@PROPS
@given(token=st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b64(b) + "." + b64(b)))
def test_arbitrary_text_is_refused_never_crashes(token: str) -> None:
    auth = Authenticator(AuthConfig(hs256_secrets=(SECRET,)))
    with pytest.raises(Rejected):
        auth.authenticate(token, NOW)


@PROPS
@given(exp_offset=st.integers(-10_000, 10_000), now_offset=st.floats(-20_000, 20_000))
def test_authenticate_agrees_with_expired(exp_offset: int, now_offset: float) -> None:
    auth = Authenticator(AuthConfig(hs256_secrets=(SECRET,)))
    token = hs256(claims(exp=int(NOW) + exp_offset))
    now = NOW + now_offset
    try:
        principal = auth.authenticate(token, now)
    except Rejected:
        assert now >= int(NOW) + exp_offset + 30 or int(NOW) + exp_offset > now + 7 * 86400 + 30
    else:
        assert not principal.expired(now)


# ---- insecure-dev --------------------------------------------------------------------------------


def test_insecure_dev_lets_anyone_do_anything() -> None:
    auth = Authenticator(AuthConfig(mode="insecure-dev"))
    assert auth.config.insecure
    p = auth.authenticate("", NOW, client_name="bob")
    assert p == Principal("bob", ("*",), ("*",), None)
    assert p.may_join("any") and p.may_publish("room") and not p.expired(1e18)
    unsigned = hs256(claims(sub="carol", exp=0), OTHER_SECRET)
    assert auth.authenticate(unsigned, NOW, client_name="bob").sub == "carol"
    assert auth.authenticate("garbage", NOW).sub == "anonymous"
    assert auth.authenticate("", NOW, client_name="\x00bad").sub == "anonymous"


# ---- configuration and secrets -------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        {"mode": "open"},
        {"hs256_secrets": ("short",)},
        {"dev_secret_file": None},
        {"leeway_s": -1},
        {"max_token_bytes": 10},
    ],
)
def test_config_refuses_unsafe_values(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        AuthConfig(**kw)


def test_jwt_mode_needs_a_key() -> None:
    with pytest.raises(ValueError):
        Authenticator(AuthConfig())


def test_dev_secret_is_created_once_private_and_shared(tmp_path: Path) -> None:
    path = tmp_path / "certs" / "dev-jwt-secret"
    secret = dev_secret(path)
    assert len(secret.encode()) >= 32 and dev_secret(path) == secret
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert default_secret(path, {}) == secret
    assert default_secret(path, {"SKEIN_JWT_SECRET": OTHER_SECRET}) == OTHER_SECRET
    auth = Authenticator.from_config(AuthConfig(dev_secret_file=path))
    assert auth.uses_dev_secret
    token = mint(sub="alice", join=["lobby"], publish=[], ttl_s=60, now=NOW, secret=secret)
    assert auth.authenticate(token, NOW).sub == "alice"
    (tmp_path / "short").write_text("abc\n")
    with pytest.raises(ValueError):
        dev_secret(tmp_path / "short")


# ---- minting -------------------------------------------------------------------------------------


def test_mint_round_trips_through_both_algorithms(ec_key: ec.EllipticCurvePrivateKey) -> None:
    pem = ec_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    es = es_authenticator(ec_key, audience="skein")
    token = mint(
        sub="bob",
        join=["room-*"],
        publish=["room-1"],
        ttl_s=3600,
        now=NOW,
        es256_private_key_pem=pem,
        audience="skein",
    )
    p = es.authenticate(token, NOW + 3000)
    assert (p.sub, p.join, p.publish) == ("bob", ("room-*",), ("room-1",))
    with pytest.raises(ValueError):
        mint(sub="bob", join=[], publish=[], ttl_s=60, now=NOW)
    with pytest.raises(ValueError):
        mint(sub="bob", join=["no spaces"], publish=[], ttl_s=60, now=NOW, secret=SECRET)
    with pytest.raises(ValueError):
        mint(sub="bob", join=[], publish=[], ttl_s=60, now=NOW, secret="short")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("3600", 3600), ("90s", 90), ("30m", 1800), ("24h", 86400), ("7d", 604800)],
)
def test_ttl_parsing(text: str, seconds: float) -> None:
    assert parse_ttl(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "-5", "1w", "400d", "h"])
def test_bad_ttls(text: str) -> None:
    with pytest.raises(ValueError):
        parse_ttl(text)


def test_token_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(OTHER_SECRET + "\n")
    args = ["--sub", "alice", "--join", "lobby,room-*", "--publish", "lobby,other"]
    assert token_main([*args, "--ttl", "1h", "--secret-file", str(secret_file)]) == 0
    out, err = capsys.readouterr()
    assert "'other' is not covered by --join" in err
    auth = Authenticator(AuthConfig(hs256_secrets=(OTHER_SECRET,)))
    p = auth.authenticate(out.strip(), time.time())
    assert p.join == ("lobby", "room-*") and p.publish == ("lobby", "other")
    assert token_main(["--sub", "a", "--ttl", "soon", "--secret", SECRET]) == 2
    assert token_main(["--sub", "a", "--secret-file", str(tmp_path / "missing")]) == 1


def test_dev_secret_created_concurrently_is_one_secret(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    path = tmp_path / "dev-jwt-secret"
    with ThreadPoolExecutor(8) as pool:
        found = set(pool.map(lambda _: dev_secret(path), range(16)))
    assert len(found) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["dev-jwt-secret"]  # no temporary files left
