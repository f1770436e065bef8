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

import atexit
import collections
import os
import queue
import re
import subprocess
import threading
import time
import unittest

import httpx
import sseclient
from httpx_sse import connect_sse

USER = "7777"
TOPIC = "news"
HEARTBEAT_SECS = 1
# Bound on the wait for the events and two heartbeats after the last one.
QUIET_TIMEOUT = 15.0
START_TIMEOUT = 20.0
DELIVERY_TIMEOUT = 10.0
HTTP_TIMEOUT = httpx.Timeout(10.0)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_running = set()


@atexit.register
def _kill_leftovers():
    for proc in list(_running):
        if proc.poll() is None:
            proc.kill()


def herald_bin():
    return os.environ.get("HERALD_BIN") or os.path.join(REPO, "target", "release", "herald")


class Herald:
    """`herald serve` on a free port; `url` once it printed its listen line."""

    def __init__(self):
        bin_path = herald_bin()
        if not os.path.exists(bin_path):
            raise RuntimeError(
                f"herald binary not found at {bin_path}: run `cargo build --release -p herald` or set HERALD_BIN"
            )
        self.args = [
            bin_path, "serve", "--dev", "--memory",
            "--listen", "127.0.0.1:0",
            "--heartbeat-secs", str(HEARTBEAT_SECS),
        ]
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "warn")
        self.proc = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        _running.add(self.proc)
        self._log = collections.deque(maxlen=200)  # bounded
        self._stdout_lines = queue.Queue()
        self._drains = [
            threading.Thread(target=self._drain, args=(self.proc.stdout, self._stdout_lines), daemon=True),
            threading.Thread(target=self._drain, args=(self.proc.stderr, None), daemon=True),
        ]
        for t in self._drains:
            t.start()
        try:
            self.url = self._wait_listening()
        except BaseException:
            self.stop()
            raise

    def _drain(self, pipe, lines):
        # Keep reading so the server never blocks on a full pipe.
        for raw in iter(pipe.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self._log.append(line)
            if lines is not None:
                lines.put(line)
        pipe.close()

    def _wait_listening(self):
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(
                    f"herald did not print its listen line within {START_TIMEOUT} s\n{self.output()}"
                )
            try:
                line = self._stdout_lines.get(timeout=min(left, 0.2))
            except queue.Empty:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"herald exited with {self.proc.returncode} before listening\n{self.output()}"
                    )
                continue
            m = re.search(r"herald listening on (http://\S+)", line)
            if m:
                return m.group(1).rstrip("/")

    def output(self):
        return "--- herald output ---\n" + "\n".join(self._log)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        _running.discard(self.proc)
        for t in self._drains:
            t.join(timeout=5)


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
        self.server = Herald()
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
