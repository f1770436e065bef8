#!/usr/bin/env python3
"""Herald's token mode with tokens minted in Python by PyJWT.

Starts the real binary ($HERALD_BIN, default target/release/herald) with
`serve --memory --listen 127.0.0.1:0` in token mode (no --dev): an HS256
secret, an RSA and an EC P-256 public key made here with `cryptography`,
leeway 0, and an API key to publish with. Then checks that PyJWT's tokens
are taken or refused as a Python backend would expect: HS256 valid,
expired (401 token_expired), signed with another secret (401
token_invalid), RS256 and ES256 valid, `alg: none` refused; and that an
httpx-sse client subscribed with a valid token receives a published event.

Runs with `python3 tests/python/test_tokens.py` or pytest. Standard library
plus tests/python/requirements.txt. Every wait is bounded; the server is
stopped (SIGTERM, then SIGKILL) whatever the outcome.
"""

import json
import os
import re
import shutil
import tempfile
import threading
import time
import unittest

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from httpx_sse import connect_sse

from herald_process import Herald

SECRET = "python-secret-of-the-token-tests-0123456789"
ADMIN_KEY = "python-admin-key-9f8e7d6c5b4a"
USER = "7777"
DELIVERY_TIMEOUT = 10.0
HTTP_TIMEOUT = httpx.Timeout(10.0)

def pem_public(private_key):
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def claims(sub=USER, **extra):
    now = int(time.time())
    c = {"sub": sub, "iat": now, "exp": now + 600}
    c.update(extra)
    return c


def parse_challenge(value):
    """`Bearer k="v", k2=v2` -> (scheme, {k: v}); raises ValueError on a malformed value."""
    m = re.match(r'\s*([A-Za-z][A-Za-z0-9!#$%&\'*+.^_`|~-]*)(?:\s+(.*))?$', value or "", re.S)
    if not m:
        raise ValueError(f"malformed WWW-Authenticate {value!r}")
    rest = (m.group(2) or "").strip()
    params = {}
    param = re.compile(r'\s*([A-Za-z0-9_.-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s"]*))\s*(?:,|$)')
    pos = 0
    while pos < len(rest):
        p = param.match(rest, pos)
        if not p or p.end() == pos:
            raise ValueError(f"malformed WWW-Authenticate {value!r} at {rest[pos:]!r}")
        quoted = p.group(2)
        params[p.group(1).lower()] = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else p.group(3)
        pos = p.end()
    return m.group(1), params


class Answer:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body)


class TokensTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="herald-pytokens-")
        cls.rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        cls.ec_key = ec.generate_private_key(ec.SECP256R1())
        cls.rsa_pub = os.path.join(cls.dir, "rsa.pub.pem")
        cls.ec_pub = os.path.join(cls.dir, "ec.pub.pem")
        with open(cls.rsa_pub, "wb") as f:
            f.write(pem_public(cls.rsa_key))
        with open(cls.ec_pub, "wb") as f:
            f.write(pem_public(cls.ec_key))
        try:
            cls.server = Herald([
                "--jwt-secret", SECRET,
                "--jwt-public-key", cls.rsa_pub,
                "--jwt-public-key", cls.ec_pub,
                "--jwt-leeway-secs", "0",
                "--api-key", f"{ADMIN_KEY};publish=*;admin",
                "--heartbeat-secs", "300",
            ])
        except BaseException:
            shutil.rmtree(cls.dir, ignore_errors=True)
            raise
        cls.http = httpx.Client(base_url=cls.server.url, timeout=HTTP_TIMEOUT)

    @classmethod
    def tearDownClass(cls):
        cls.http.close()
        cls.server.stop()
        shutil.rmtree(cls.dir, ignore_errors=True)

    def subscribe(self, token, params=None):
        """GET /v1/events with the token; reads the first bytes of a stream, or the whole error body."""
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        with self.http.stream("GET", "/v1/events", params=params or {}, headers=headers) as r:
            if r.status_code == 200:
                first = b""
                for chunk in r.iter_bytes():
                    first += chunk
                    if first:
                        break
                return Answer(r.status_code, r.headers, first.decode("utf-8", "replace"))
            r.read()
            return Answer(r.status_code, r.headers, r.text)

    def assert_opened(self, a, what):
        ctx = f"{what}: {a.status} {a.body[:300]}\n{self.server.output()}"
        self.assertEqual(a.status, 200, ctx)
        self.assertTrue(a.headers.get("content-type", "").startswith("text/event-stream"), ctx)
        self.assertTrue(a.body.startswith("retry:"), ctx)

    def assert_refused(self, a, code, message_re, what):
        ctx = f"{what}: {a.status} {a.body[:300]} www-authenticate={a.headers.get('www-authenticate')!r}"
        self.assertEqual(a.status, 401, ctx)
        self.assertTrue(a.headers.get("content-type", "").startswith("application/json"), ctx)
        err = a.json()["error"]
        self.assertEqual(err["code"], code, ctx)
        self.assertRegex(err["message"], message_re, ctx)
        scheme, params = parse_challenge(a.headers.get("www-authenticate"))
        self.assertEqual(scheme.lower(), "bearer", ctx)
        self.assertEqual(params.get("realm"), "herald", ctx)
        self.assertEqual(params.get("error"), "invalid_token", ctx)
        self.assertTrue(params.get("error_description", "").strip(), ctx)

    def test_hs256_valid(self):
        self.assert_opened(self.subscribe(jwt.encode(claims(), SECRET, algorithm="HS256")), "HS256 with the secret")

    def test_hs256_expired(self):
        now = int(time.time())
        tok = jwt.encode(claims(iat=now - 120, exp=now - 60), SECRET, algorithm="HS256")
        self.assert_refused(self.subscribe(tok), "token_expired", r"(?i)expired", "HS256 expired a minute ago")

    def test_hs256_wrong_secret(self):
        tok = jwt.encode(claims(), "some-other-secret-0123456789abcdef", algorithm="HS256")
        self.assert_refused(self.subscribe(tok), "token_invalid", r"(?i)signature", "HS256 with another secret")

    def test_rs256_valid(self):
        tok = jwt.encode(claims(), self.rsa_key, algorithm="RS256")
        self.assert_opened(self.subscribe(tok), "RS256 with the configured RSA key")

    def test_es256_valid(self):
        tok = jwt.encode(claims(), self.ec_key, algorithm="ES256")
        self.assert_opened(self.subscribe(tok), "ES256 with the configured P-256 key")

    def test_rs256_other_key_refused(self):
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        tok = jwt.encode(claims(), other, algorithm="RS256")
        self.assert_refused(self.subscribe(tok), "token_invalid", r"(?i)signature", "RS256 with a key not configured")

    def test_alg_none_refused(self):
        tok = jwt.encode(claims(), None, algorithm="none")
        self.assertEqual(jwt.get_unverified_header(tok)["alg"], "none")
        self.assert_refused(self.subscribe(tok), "token_invalid", r"(?i)none", "alg none")

    def test_httpx_sse_receives_an_event_with_a_pyjwt_token(self):
        tok = jwt.encode(claims(**{"herald.subscribe": ["news"]}), SECRET, algorithm="HS256")
        got = []
        opened = threading.Event()
        errors = []

        def read():
            try:
                with httpx.Client(timeout=HTTP_TIMEOUT) as client:
                    with connect_sse(client, "GET", f"{self.server.url}/v1/events", params={"topic": "news"},
                                     headers={"Authorization": f"Bearer {tok}"}) as source:
                        source.response.raise_for_status()
                        opened.set()
                        for sse in source.iter_sse():
                            got.append((sse.id, sse.event, sse.data))
                            if len(got) >= 2:
                                return
            except Exception as err:  # reported by the test
                errors.append(err)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        self.assertTrue(opened.wait(DELIVERY_TIMEOUT), f"stream did not open: {errors!r}\n{self.server.output()}")
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        deadline = time.monotonic() + DELIVERY_TIMEOUT
        while time.monotonic() < deadline:
            r = self.http.get(f"/v1/users/{USER}", headers=admin)
            self.assertEqual(r.status_code, 200, r.text)
            if r.json().get("connections") == 1:
                break
            time.sleep(0.05)
        else:
            self.fail("the subscriber never showed up in /v1/users/7777")
        published = []
        for body in ({"topics": ["news"], "data": "headline"}, {"users": [USER], "event": "note", "data": "for you"}):
            r = self.http.post("/v1/publish", json=body, headers=admin)
            self.assertEqual(r.status_code, 201, r.text)
            published.append((r.json()["id"], body.get("event", "message"), body["data"]))
        reader.join(timeout=DELIVERY_TIMEOUT)
        self.assertFalse(reader.is_alive(), f"the client did not get both events: {got}")
        self.assertEqual(errors, [])
        self.assertEqual(got, published, "the topic event and the personal event, as published")


if __name__ == "__main__":
    unittest.main(verbosity=2)
