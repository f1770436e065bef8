#!/usr/bin/env python3
"""Herald's stream as the most used Python SSE clients read it.

Starts the real binary ($HERALD_BIN, default target/release/herald) with
`serve --dev --memory --listen 127.0.0.1:0 --heartbeat-secs 1`, subscribes
with httpx-sse (and with sseclient-py over an httpx stream), publishes over
HTTP an event to the user, a typed event to a topic, a broadcast and an event
whose data has several lines, then stays subscribed for at least two
heartbeats after the last one. The client must have yielded exactly the
published events (ids from the publish answers, types, data) and nothing
else: httpx-sse 0.4 dispatches an empty `message` event on any blank line
once it has seen a field (`retry:`, or the `id:` it keeps from an earlier
event), so a preamble or a heartbeat that ends with a blank line shows up
there as an event nobody published.

Standard library plus tests/python/requirements.txt. Every wait is bounded;
the server is stopped (SIGTERM, then SIGKILL) whatever the outcome.
"""

import threading
import time
import unittest

import httpx
import sseclient
from httpx_sse import connect_sse

from herald_process import Herald

USER = "7777"
TOPIC = "news"
HEARTBEAT_SECS = 1
# Bound on the wait for the events and two heartbeats after the last one.
QUIET_TIMEOUT = 15.0
DELIVERY_TIMEOUT = 10.0
HTTP_TIMEOUT = httpx.Timeout(10.0)


class Reader(threading.Thread):
    """Runs a client's event loop and records (id, type, data) per event."""

    def __init__(self, events):
        super().__init__(daemon=True)
        self._events = events  # callable(opened: threading.Event) -> iterator
        self._lock = threading.Lock()
        self._got = []
        self.opened = threading.Event()
        self.error = None

    def run(self):
        try:
            for ev in self._events(self.opened):
                with self._lock:
                    self._got.append(ev)
        except Exception as err:  # reported by the test, not swallowed
            self.error = err

    def received(self):
        with self._lock:
            return list(self._got)


class WireTap:
    """Counts heartbeat lines (`:`) on the wire since the last field line.

    A chunk is counted once the client asks for the next one, so a count
    means the client has already read those heartbeats.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._partial = b""
        self._heartbeats_since_field = 0

    def feed(self, chunk):
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        with self._lock:
            for line in lines:
                line = line.rstrip(b"\r")
                if line == b":":
                    self._heartbeats_since_field += 1
                elif line and not line.startswith(b":"):
                    self._heartbeats_since_field = 0

    def heartbeats_since_field(self):
        with self._lock:
            return self._heartbeats_since_field


class TappedStream(httpx.SyncByteStream):
    def __init__(self, inner, tap):
        self._inner = inner
        self._tap = tap

    def __iter__(self):
        for chunk in self._inner:
            yield chunk
            self._tap.feed(chunk)

    def close(self):
        self._inner.close()


class TappedTransport(httpx.HTTPTransport):
    """httpx's own transport; response bodies also go through a WireTap."""

    def __init__(self, tap):
        super().__init__()
        self._tap = tap

    def handle_request(self, request):
        response = super().handle_request(request)
        response.stream = TappedStream(response.stream, self._tap)
        return response


def stream_params():
    return {"user": USER, "topic": TOPIC}


def httpx_sse_events(url, tap):
    def events(opened):
        with httpx.Client(timeout=HTTP_TIMEOUT, transport=TappedTransport(tap)) as client:
            with connect_sse(client, "GET", f"{url}/v1/events", params=stream_params()) as source:
                source.response.raise_for_status()
                opened.set()
                for sse in source.iter_sse():
                    yield (sse.id, sse.event, sse.data)

    return events


def sseclient_events(url, tap):
    def events(opened):
        with httpx.Client(timeout=HTTP_TIMEOUT, transport=TappedTransport(tap)) as client:
            headers = {"Accept": "text/event-stream"}
            with client.stream("GET", f"{url}/v1/events", params=stream_params(), headers=headers) as response:
                response.raise_for_status()
                opened.set()
                for ev in sseclient.SSEClient(response.iter_bytes()).events():
                    yield (ev.id, ev.event, ev.data)

    return events


class ClientsTest(unittest.TestCase):
    def setUp(self):
        self.server = Herald(["--dev", "--heartbeat-secs", str(HEARTBEAT_SECS)])
        self.addCleanup(self.server.stop)
        self.http = httpx.Client(base_url=self.server.url, timeout=HTTP_TIMEOUT)
        self.addCleanup(self.http.close)

    def publish(self, body):
        r = self.http.post("/v1/publish", json=body)
        self.assertEqual(r.status_code, 201, f"publish {body}: {r.status_code} {r.text}")
        return r.json()["id"]

    def wait_online(self, reader):
        self.assertTrue(reader.opened.wait(DELIVERY_TIMEOUT), f"stream did not open: {reader.error!r}")
        deadline = time.monotonic() + DELIVERY_TIMEOUT
        while time.monotonic() < deadline:
            if self.http.get("/v1/stats").json().get("users_online") == 1:
                return
            time.sleep(0.05)
        self.fail("the subscriber never showed up in /v1/stats")

    def check_client(self, events):
        tap = WireTap()
        reader = Reader(events(self.server.url, tap))
        reader.start()
        self.wait_online(reader)

        published = []
        data = "hello 7777"
        published.append((self.publish({"users": [USER], "data": data}), "message", data))
        data = '{"headline":"rain"}'
        published.append(
            (self.publish({"topics": [TOPIC], "event": "story", "data": {"headline": "rain"}}), "story", data)
        )
        data = "to everyone"
        published.append((self.publish({"broadcast": True, "event": "notice", "data": data}), "notice", data))
        data = "line one\nline two\n\nline four"
        published.append((self.publish({"users": [USER], "data": data}), "message", data))

        # Stay subscribed until the client has read at least two heartbeats
        # after the last event (one every 1-2 s on an idle stream).
        deadline = time.monotonic() + QUIET_TIMEOUT
        while time.monotonic() < deadline and reader.is_alive():
            if len(reader.received()) >= len(published) and tap.heartbeats_since_field() >= 2:
                break
            time.sleep(0.02)
        got = reader.received()
        self.assertIsNone(reader.error, f"client failed: {reader.error!r}")
        self.assertTrue(reader.is_alive(), "the stream ended early")
        self.assertGreaterEqual(
            tap.heartbeats_since_field(), 2,
            f"no two heartbeats after the last event within {QUIET_TIMEOUT} s; the client yielded {got}",
        )
        self.assertEqual(got, published, "the client yielded exactly the published events, nothing else")

        # End the stream from the server side; the client ends without
        # having yielded anything more.
        r = self.http.delete(f"/v1/users/{USER}/connections")
        self.assertEqual(r.status_code, 200, r.text)
        reader.join(timeout=DELIVERY_TIMEOUT)
        self.assertFalse(reader.is_alive(), "the client did not see the stream end")
        self.assertEqual(reader.received(), published)

    def test_httpx_sse(self):
        self.check_client(httpx_sse_events)

    def test_sseclient_py(self):
        self.check_client(sseclient_events)


if __name__ == "__main__":
    unittest.main(verbosity=2)
