#!/usr/bin/env python3
"""`/metrics` as Prometheus reads it, and its counts against known traffic.

Starts the real binary (`serve --dev --memory`), parses `/metrics` with
`prometheus_client.parser` (the Prometheus text format as Prometheus's own
Python client reads it) before and after the test's traffic, and checks
that every counter moved by exactly the traffic made:
- n publishes → `herald_events_published_total` += n, and the log-append
  histogram's count += n;
- k subscribers each receiving the n events → `herald_events_delivered_total`
  += k × n, and `herald_written_bytes_total` += the bytes those frames took;
- a subscription refused for a bad topic → its code's refusal counter += 1;
- a kick → `herald_disconnects_total{reason="kicked"}` += 1;
- a resume with `Last-Event-ID` → the resume catch-up += 1, an unknown one a
  gap += 1;
- a batch of 128 events to the live subscribers → some sampled
  publish-to-write latencies.
Gauges (connections, users) are checked while the streams are open, the
histograms' types and bucket order, and the process figures from /proc.

Standard library plus tests/python/requirements.txt. Every wait is bounded;
the server is stopped whatever the outcome.
"""

import threading
import time
import unittest

import httpx
from prometheus_client.parser import text_string_to_metric_families

from herald_process import Herald

TOPIC = "metrics-test"
SUBSCRIBERS = 3
EVENTS = 5
WAIT = 15.0
HTTP_TIMEOUT = httpx.Timeout(10.0)


def scrape(url):
    """`{(sample name, frozenset(labels)): value}` and `{family: type}`."""
    text = httpx.get(f"{url}/metrics", timeout=HTTP_TIMEOUT).text
    samples, types = {}, {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, types, text


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())), 0.0)


class Stream(threading.Thread):
    """Reads one event stream, recording event ids and the bytes of its frames."""

    def __init__(self, url, params, headers=None):
        super().__init__(daemon=True)
        self.url, self.params, self.headers = url, params, headers or {}
        self.ids = []
        self.event_bytes = 0
        self.opened = threading.Event()
        self.ended = threading.Event()
        self.stop = threading.Event()

    def run(self):
        try:
            with httpx.Client(timeout=httpx.Timeout(WAIT, read=2.0)) as client:
                with client.stream("GET", f"{self.url}/v1/events", params=self.params, headers=self.headers) as r:
                    self.opened.set()
                    frame = b""
                    try:
                        for line in r.iter_lines():
                            if self.stop.is_set():
                                return
                            if line.startswith("id:"):
                                self.ids.append(line[3:].strip())
                            frame += line.encode() + b"\n"
                            if line == "":
                                self.event_bytes += len(frame)
                                frame = b""
                            elif line.startswith(":") or line.startswith("retry:"):
                                frame = b""  # notices: not event frames
                    except httpx.ReadTimeout:
                        pass
        except httpx.HTTPError:
            pass
        finally:
            self.opened.set()
            self.ended.set()


def wait_for(what, predicate, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class MetricsTest(unittest.TestCase):
    def setUp(self):
        self.herald = Herald(["--dev", "--heartbeat-secs", "60"])
        self.url = self.herald.url
        self.streams = []

    def tearDown(self):
        for s in self.streams:
            s.stop.set()
        self.herald.stop()
        for s in self.streams:
            s.join(timeout=5)

    def open(self, params, headers=None):
        s = Stream(self.url, params, headers)
        self.streams.append(s)
        s.start()
        return s

    def gauge(self, name):
        return value(scrape(self.url)[0], name)

    def test_counters_equal_the_traffic_made(self):
        before, types, text = scrape(self.url)
        # The format's families and their types.
        for family, kind in {
            "herald_connections": "gauge",
            "herald_events_published": "counter",
            "herald_events_delivered": "counter",
            "herald_written_bytes": "counter",
            "herald_refusals": "counter",
            "herald_disconnects": "counter",
            "herald_catch_ups": "counter",
            "herald_gaps": "counter",
            "process_resident_memory_bytes": "gauge",
            "process_open_fds": "gauge",
        }.items():
            self.assertEqual(types.get(family), kind, f"{family} in\n{text}")
        self.assertGreater(value(before, "process_resident_memory_bytes"), 1 << 20)
        self.assertGreater(value(before, "process_open_fds"), 3)

        subscribers = [self.open({"topic": TOPIC}) for _ in range(SUBSCRIBERS)]
        kicked = self.open({"user": "kick-me"})
        wait_for("the streams to open", lambda: self.gauge("herald_connections") == SUBSCRIBERS + 1)
        self.assertEqual(self.gauge("herald_users_online"), 1)

        ids = []
        with httpx.Client(timeout=HTTP_TIMEOUT) as client:
            for i in range(EVENTS):
                r = client.post(f"{self.url}/v1/publish", json={"topics": [TOPIC], "data": f"event {i}"})
                self.assertEqual(r.status_code, 201, r.text)
                ids.append(r.json()["id"])
            wait_for("every subscriber to get every event", lambda: all(len(s.ids) == EVENTS for s in subscribers))
            for s in subscribers:
                self.assertEqual(s.ids, ids)

            refused = client.get(f"{self.url}/v1/events", params={"topic": "bad topic\x7f"})
            self.assertEqual(refused.status_code, 400, refused.text)
            code = refused.json()["error"]["code"]

            r = client.delete(f"{self.url}/v1/users/kick-me/connections")
            self.assertEqual(r.status_code, 200, r.text)
            self.assertTrue(kicked.ended.wait(WAIT), "the kicked stream did not end")

        resumed = self.open({"topic": TOPIC}, {"Last-Event-ID": ids[1]})
        wait_for("the resumed stream to catch up", lambda: resumed.ids == ids[2:])
        unknown = self.open({"topic": TOPIC}, {"Last-Event-ID": "not-an-id"})
        wait_for("the unknown resume to replay", lambda: unknown.ids == ids)
        wait_for("the kicked stream to be gone", lambda: self.gauge("herald_connections") == SUBSCRIBERS + 2)

        after, types, text = scrape(self.url)

        def delta(name, **labels):
            return value(after, name, **labels) - value(before, name, **labels)

        self.assertEqual(delta("herald_events_published_total"), EVENTS, text)
        self.assertEqual(delta("herald_log_append_seconds_count"), EVENTS, text)
        # The live subscribers' n each, and the two replays (3 and 5).
        delivered = SUBSCRIBERS * EVENTS + (EVENTS - 2) + EVENTS
        self.assertEqual(delta("herald_events_delivered_total"), delivered, text)
        # Every event frame's bytes, the `retry:` preambles and the
        # `herald.gap` included (all of it is frames handed to sockets).
        frames = sum(s.event_bytes for s in subscribers + [resumed, unknown])
        self.assertGreaterEqual(delta("herald_written_bytes_total"), frames, text)
        self.assertLess(delta("herald_written_bytes_total"), frames + 2048, text)
        self.assertEqual(delta("herald_refusals_total", code=code), 1, text)
        self.assertEqual(
            sum(delta("herald_refusals_total", code=c) for (n, labels) in after if n == "herald_refusals_total"
                for (_, c) in labels),
            1, text)
        self.assertEqual(delta("herald_disconnects_total", reason="kicked"), 1, text)
        self.assertEqual(delta("herald_catch_ups_total", reason="resume"), 2, text)
        self.assertEqual(delta("herald_gaps_total"), 1, text)
        self.assertEqual(delta("herald_connections_opened_total"), SUBSCRIBERS + 3, text)

        # The histograms: types, cumulative buckets ending at +Inf = count.
        for family in ("herald_log_append_seconds", "herald_stream_queue_depth"):
            self.assertEqual(types.get(family), "histogram", f"{family} in\n{text}")
        wait_for("a queue-depth sample (once a second)",
                 lambda: value(scrape(self.url)[0], "herald_stream_queue_depth_count") > 0)
        append_buckets = sorted(
            (float(dict(labels)["le"]), v) for (n, labels), v in after.items() if n == "herald_log_append_seconds_bucket"
        )
        counts = [v for _, v in append_buckets]
        self.assertEqual(counts, sorted(counts), "buckets are cumulative")
        self.assertEqual(append_buckets[-1], (float("inf"), value(after, "herald_log_append_seconds_count")))

        # Publish-to-write latency is sampled (about 1 stream in 64 per
        # event): a batch of 128 events to the live subscribers records some.
        with httpx.Client(timeout=HTTP_TIMEOUT) as client:
            batch = [{"topics": [TOPIC], "data": f"batch {i}"} for i in range(128)]
            r = client.post(f"{self.url}/v1/publish", json=batch)
            self.assertEqual(r.status_code, 201, r.text)
        wait_for("the batch to reach the live subscribers", lambda: all(len(s.ids) == EVENTS + 128 for s in subscribers))
        final, types, text = scrape(self.url)
        self.assertEqual(types.get("herald_publish_to_write_seconds"), "histogram", text)
        self.assertGreater(value(final, "herald_publish_to_write_seconds_count"), 0, text)


if __name__ == "__main__":
    unittest.main(verbosity=2)
