#!/usr/bin/env python3
"""`/v1/openapi.json` against the server's real answers.

Starts the real binary twice, in dev mode and in token mode (an HMAC
secret, a publish rate of 1/s, and a body deadline of 1 s), validates the
document itself (`openapi-spec-validator`, OpenAPI 3.1), then makes, for
every route and every status the document gives it, a request that
provokes that status, and checks each answer against the document: the
status is one the operation lists, the content type is one its response
lists, required headers are present, and a JSON body validates against the
response's schema (JSON Schema 2020-12 with `jsonschema`, `$ref`s resolved
in the document), as must a documented header's value and, for the stats
stream, its first event and that event's JSON `data` (the `contentSchema`).
Finally every documented (method, path, status) must have been provoked,
except the few in UNPROVOKED, each with the reason.

So a route whose answer changes shape (a field renamed, retyped, added
where the schema is closed), a new status, or a documented status no
longer produced, fails here.

Standard library plus tests/python/requirements.txt. Every wait is bounded;
the servers are stopped whatever the outcome.
"""

import json
import re
import socket
import time
import unittest
from urllib.parse import quote, urlsplit

import httpx
import jsonschema
import jwt
from openapi_spec_validator import validate as validate_spec
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from herald_process import Herald

SECRET = "openapi-test-secret-0123456789abcdef0123"
HTTP_TIMEOUT = httpx.Timeout(10.0)
DOC = "urn:herald:openapi"

# Documented statuses no request of this test provokes, and why.
UNPROVOKED = {
    ("POST", "/v1/publish", "503"): "needs a failing event log or an overloaded server (herald-log's fault tests, tests/e2e/overload)",
    ("GET", "/readyz", "503"): "needs a failing event log (herald-log's fault tests)",
    ("GET", "/v1/topics/{topic}", "503"): "needs a failing event log (herald-log's fault tests)",
    ("DELETE", "/v1/users/{id}/connections", "503"): "needs a cluster whose Redis is down (herald-server's cluster_routes, tests/e2e/cluster*)",
}


def token(**claims):
    now = int(time.time())
    return jwt.encode({"sub": "openapi", "iat": now, "exp": now + 600, **claims}, SECRET, algorithm="HS256")


class Checker:
    """Validates answers against the document and records what was provoked."""

    def __init__(self, spec):
        self.spec = spec
        self.registry = Registry().with_resource(DOC, Resource.from_contents(spec, default_specification=DRAFT202012))
        self.provoked = set()
        self.templates = [
            (path, re.compile("^" + re.sub(r"\\\{[a-z_]+\\\}", "(.+)", re.escape(path)) + "$"))
            for path in spec["paths"]
        ]

    def template(self, path):
        exact = [p for p, _ in self.templates if p == path]
        if exact:
            return exact[0]
        matches = [p for p, rx in self.templates if rx.match(path)]
        assert matches, f"{path} is not in the document"
        return max(matches, key=len)

    def check(self, method, response, expect):
        path = urlsplit(str(response.request.url)).path
        template = self.template(path)
        operation = self.spec["paths"][template].get(method.lower())
        assert operation is not None, f"{method} {template} is not in the document"
        status = str(response.status_code)
        assert status == str(expect), f"{method} {path}: expected {expect}, got {status}: {response.text[:300]}"
        documented = operation["responses"].get(status)
        assert documented is not None, f"{method} {template} answered {status}, not in the document: {response.text[:300]}"
        documented = self.resolve(documented)
        for name, header in documented.get("headers", {}).items():
            value = response.headers.get(name)
            if header.get("required"):
                assert value is not None, f"{method} {path} {status}: no {name} header"
            if value is not None:
                schema = self.resolve(header["schema"])
                typed = int(value) if schema.get("type") == "integer" else value
                errors = list(jsonschema.Draft202012Validator(schema).iter_errors(typed))
                assert not errors, f"{method} {path} {status}: header {name}: {errors[0].message}"
        content = documented.get("content", {})
        media = response.headers.get("content-type", "").split(";")[0].strip()
        if content:
            assert media in content, f"{method} {path} {status}: content type {media!r}, documented {list(content)}"
            if media == "application/json":
                pointer = "/".join(
                    ["#", "paths", template.replace("~", "~0").replace("/", "~1"), method.lower(), "responses", status]
                )
                if "$ref" in operation["responses"][status]:
                    pointer = operation["responses"][status]["$ref"]
                pointer += "/content/application~1json/schema"
                validator = jsonschema.Draft202012Validator({"$ref": DOC + pointer}, registry=self.registry)
                errors = sorted(validator.iter_errors(response.json()), key=str)
                assert not errors, f"{method} {path} {status}: {errors[0].message}\n{response.text[:500]}"
        self.provoked.add((method, template, status))
        return response

    def check_event(self, method, response, event):
        """One parsed SSE event of a 200 stream against the response's schema, and
        a JSON `data` against the schema's `contentSchema`."""
        path = urlsplit(str(response.request.url)).path
        template = self.template(path)
        documented = self.resolve(self.spec["paths"][template][method.lower()]["responses"]["200"])
        schema = self.resolve(documented["content"]["text/event-stream"]["schema"])
        pointer = documented["content"]["text/event-stream"]["schema"]["$ref"]
        validator = jsonschema.Draft202012Validator({"$ref": DOC + pointer}, registry=self.registry)
        errors = sorted(validator.iter_errors(event), key=str)
        assert not errors, f"{method} {path}: event {event}: {errors[0].message}"
        data_schema = schema.get("properties", {}).get("data", {})
        if data_schema.get("contentMediaType") == "application/json":
            pointer = data_schema["contentSchema"]["$ref"]
            validator = jsonschema.Draft202012Validator({"$ref": DOC + pointer}, registry=self.registry)
            data = json.loads(event["data"])
            errors = sorted(validator.iter_errors(data), key=str)
            assert not errors, f"{method} {path}: data {data}: {errors[0].message}"
            return data
        return event["data"]

    def resolve(self, obj):
        while "$ref" in obj:
            node = self.spec
            for part in obj["$ref"].lstrip("#/").split("/"):
                node = node[part.replace("~1", "/").replace("~0", "~")]
            obj = node
        return obj

    def documented(self):
        return {
            (method.upper(), path, status)
            for path, ops in self.spec["paths"].items()
            for method, op in ops.items()
            for status in op["responses"]
        }


def first_event(response, max_lines=1000):
    """The first event of an SSE body, parsed as EventSource does (comments
    skipped, `data` lines joined, an empty `event` left out); bounded by
    `max_lines` and the client's read timeout."""
    event, data = {}, []
    for n, line in enumerate(response.iter_lines()):
        assert n < max_lines, f"no event in the first {max_lines} lines"
        if line == "":
            if data:
                return {**event, "data": "\n".join(data)}
            event = {}
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            data.append(value)
        elif field == "retry" and value.isdigit():
            event["retry"] = int(value)
        elif field in ("event", "id"):
            event[field] = value
    raise AssertionError("the stream ended before its first event")


def read_stats_stream(c, client, url, **kwargs):
    """GET /v1/stats/stream: the head, then (a 200) its first event checked; the stream is then closed."""
    with client.stream("GET", f"{url}/v1/stats/stream", **kwargs) as r:
        if r.status_code != 200:
            r.read()
            return r, None
        c.check("GET", r, 200)
        return r, c.check_event("GET", r, first_event(r))


def open_stream(client, url, expect, **kwargs):
    """GET /v1/events: the head only (a 200 is a stream that does not end)."""
    with client.stream("GET", f"{url}/v1/events", **kwargs) as r:
        if r.status_code != 200:
            r.read()
        return r, expect


class OpenApiTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dev = Herald(["--dev"])
        cls.tok = Herald(["--jwt-secret", SECRET, "--publish-rate-per-sec", "1", "--body-read-timeout-secs", "1"])

    @classmethod
    def tearDownClass(cls):
        cls.dev.stop()
        cls.tok.stop()

    def test_every_route_and_status_matches_the_document(self):
        spec = httpx.get(f"{self.dev.url}/v1/openapi.json", timeout=HTTP_TIMEOUT).json()
        validate_spec(spec)
        c = Checker(spec)
        with httpx.Client(timeout=HTTP_TIMEOUT, follow_redirects=False) as h:
            self.dev_mode(c, h, self.dev.url)
            self.token_mode(c, h, self.tok.url)
        self.body_timeout(c, self.tok.url)
        missing = c.documented() - c.provoked - set(UNPROVOKED)
        self.assertFalse(missing, f"documented but never provoked: {sorted(missing)}")
        stale = set(UNPROVOKED) - c.documented()
        self.assertFalse(stale, f"UNPROVOKED names what the document no longer has: {stale}")

    def dev_mode(self, c, h, url):
        c.check("GET", h.get(f"{url}/v1/openapi.json"), 200)
        c.check("GET", h.get(f"{url}/healthz"), 200)
        c.check("GET", h.get(f"{url}/readyz"), 200)
        c.check("GET", h.get(f"{url}/metrics"), 200)
        c.check("GET", h.get(f"{url}/herald.js"), 200)
        c.check("GET", h.get(f"{url}/"), 200)
        c.check("GET", h.get(f"{url}/dashboard/app.js"), 200)
        c.check("GET", h.get(f"{url}/dashboard/style.css"), 200)
        c.check("GET", h.get(f"{url}/dashboard/nothing.js"), 404)
        r = c.check("GET", h.get(f"{url}/demo", params={"user": "7777"}), 307)
        self.assertEqual(r.headers["location"], "/?user=7777#console")
        # While ann's stream is open, the topics page and the stats stream have her in them.
        with h.stream("GET", f"{url}/v1/events", params={"topic": "news", "user": "ann"}) as held:
            self.assertEqual(held.status_code, 200)
            frame = None
            for _ in range(100):  # bounded: the stream is counted within a few ms
                _, frame = read_stats_stream(c, h, url)
                if frame["users"]:
                    break
                time.sleep(0.05)
            self.assertEqual(frame["users"], [{"id": "ann", "connections": 1}])
            self.assertIn({"topic": "news", "subscribers": 1}, frame["top_topics"])
            page = c.check("GET", h.get(f"{url}/v1/topics", params={"limit": 1}), 200).json()
            self.assertEqual(len(page["topics"]), 1)
        c.check("GET", h.get(f"{url}/v1/topics", params={"limit": 0}), 400)
        for params, status in [({"topic": "news", "user": "ann"}, 200), ({"topic": "bad\x01"}, 400), ({}, 400)]:
            r, expect = open_stream(h, url, status, params=params)
            c.check("GET", r, expect)
        # Wait for ann's stream to be counted (its close is seen, so the
        # online list may be empty again: both shapes are valid).
        c.check("GET", h.get(f"{url}/v1/stats"), 200)
        c.check("GET", h.get(f"{url}/v1/users", params={"limit": 1}), 200)
        c.check("GET", h.get(f"{url}/v1/users", params={"limit": 0}), 400)
        c.check("GET", h.get(f"{url}/v1/users/ann"), 200)
        c.check("DELETE", h.delete(f"{url}/v1/users/ann/connections"), 200)
        c.check("POST", h.post(f"{url}/v1/publish", json={"topics": ["news"], "data": {"a": 1}}), 201)
        c.check("POST", h.post(f"{url}/v1/publish", json=[{"topics": ["news"], "data": "x"}, {"broadcast": True}]), 201)
        c.check("POST", h.post(f"{url}/v1/publish", json={"topics": ["news"], "idempotency_key": "k1"}), 201)
        c.check("POST", h.post(f"{url}/v1/publish", json={"topics": ["news"], "idempotency_key": "k1"}), 200)
        c.check("POST", h.post(f"{url}/v1/publish", params={"topic": "news"}, content="hi",
                               headers={"content-type": "text/plain"}), 201)
        c.check("POST", h.post(f"{url}/v1/publish", json={"topic": "news"}), 400)
        c.check("POST", h.post(f"{url}/v1/publish", json={"topics": [f"t{i}" for i in range(1001)]}), 413)
        c.check("GET", h.get(f"{url}/v1/topics/news"), 200)
        c.check("GET", h.get(f"{url}/v1/topics/nothing-here"), 200)
        c.check("GET", h.get(f"{url}/v1/topics/{quote('bad' + chr(1), safe='')}"), 400)
        # Dev mode answers only loopback names: a rebound host name is 403.
        c.check("GET", h.get(f"{url}/v1/events", params={"topic": "a"}, headers={"host": "evil.example"}), 403)

    def token_mode(self, c, h, url):
        admin = {"authorization": f"Bearer {token(**{'herald.admin': True})}"}
        plain = {"authorization": f"Bearer {token()}"}
        publisher = {"authorization": f"Bearer {token(**{'herald.publish': ['news']})}"}
        c.check("GET", h.get(f"{url}/demo"), 307)
        c.check("GET", h.get(f"{url}/"), 200)
        c.check("GET", h.get(f"{url}/dashboard/sse.js"), 200)
        c.check("GET", h.get(f"{url}/dashboard/index.html"), 404)
        c.check("GET", h.get(f"{url}/herald.js"), 200)
        c.check("GET", h.get(f"{url}/v1/openapi.json"), 200)
        for params, headers, status in [
            ({"topic": "news"}, {}, 401),
            ({"topic": "news"}, plain, 403),
            ({}, plain, 200),
        ]:
            r, expect = open_stream(h, url, status, params=params, headers=headers)
            c.check("GET", r, expect)
        for method, path in [("GET", "/v1/stats"), ("GET", "/v1/users"), ("GET", "/v1/users/openapi"),
                             ("DELETE", "/v1/users/openapi/connections"), ("GET", "/v1/topics/news"),
                             ("GET", "/v1/topics")]:
            c.check(method, h.request(method, f"{url}{path}"), 401)
            c.check(method, h.request(method, f"{url}{path}", headers=plain), 403)
            c.check(method, h.request(method, f"{url}{path}", headers=admin), 200)
        c.check("GET", read_stats_stream(c, h, url)[0], 401)
        c.check("GET", read_stats_stream(c, h, url, headers=plain)[0], 403)
        _, frame = read_stats_stream(c, h, url, headers=admin)
        self.assertIsNotNone(frame)
        c.check("POST", h.post(f"{url}/v1/publish", json={"topics": ["news"]}), 401)
        c.check("POST", h.post(f"{url}/v1/publish", json={"topics": ["other"]}, headers=publisher), 403)
        # The rate is 1/s per subject: the second of two quick publishes is refused.
        rated = {"authorization": f"Bearer {token(sub='rate', **{'herald.publish': ['news']})}"}
        c.check("POST", h.post(f"{url}/v1/publish", json={"topics": ["news"]}, headers=rated), 201)
        c.check("POST", h.post(f"{url}/v1/publish", json={"topics": ["news"]}, headers=rated), 429)

    def body_timeout(self, c, url):
        """A publish whose body stops half-way: 408 after --body-read-timeout-secs 1."""
        host, port = urlsplit(url).hostname, urlsplit(url).port
        tok = token(sub="slow", **{"herald.publish": ["news"]})
        with socket.create_connection((host, port), timeout=10) as s:
            s.sendall(
                (f"POST /v1/publish HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {tok}\r\n"
                 "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"to").encode()
            )
            raw = b""
            deadline = time.monotonic() + 10
            while b"\r\n\r\n" not in raw or len(raw.split(b"\r\n\r\n", 1)[1]) < content_length(raw):
                if time.monotonic() > deadline:
                    break
                chunk = s.recv(65536)
                if not chunk:
                    break
                raw += chunk
        head, _, body = raw.partition(b"\r\n\r\n")
        status = int(head.split(b" ")[1])
        request = httpx.Request("POST", f"{url}/v1/publish")
        headers = [tuple(line.split(b": ", 1)) for line in head.split(b"\r\n")[1:]]
        c.check("POST", httpx.Response(status, headers=headers, content=body, request=request), 408)


def content_length(raw):
    m = re.search(rb"(?i)content-length: *(\d+)", raw)
    return int(m.group(1)) if m else 0


if __name__ == "__main__":
    unittest.main(verbosity=2)
