"""The real `herald` binary as a child process, for the Python tests.

`Herald(args)` runs `herald serve --memory --listen 127.0.0.1:0 ARGS...`
($HERALD_BIN, default target/release/herald), reads its output on two
threads (so it never blocks on a full pipe), and sets `url` from the listen
line. Every wait is bounded; `stop()` sends SIGTERM, then SIGKILL; anything
still running at exit is killed.
"""

import atexit
import collections
import os
import queue
import re
import subprocess
import threading
import time

START_TIMEOUT = 20.0

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
    """`herald serve --memory --listen 127.0.0.1:0 ARGS...`; `url` once it printed its listen line."""

    def __init__(self, args):
        bin_path = herald_bin()
        if not os.path.exists(bin_path):
            raise RuntimeError(
                f"herald binary not found at {bin_path}: run `cargo build --release -p herald` or set HERALD_BIN"
            )
        self.args = [bin_path, "serve", "--memory", "--listen", "127.0.0.1:0", *args]
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "warn")
        self.proc = subprocess.Popen(
            self.args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
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
                raise RuntimeError(f"herald did not print its listen line within {START_TIMEOUT} s\n{self.output()}")
            try:
                line = self._stdout_lines.get(timeout=min(left, 0.2))
            except queue.Empty:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"herald exited with {self.proc.returncode} before listening\n{self.output()}")
                continue
            m = re.search(r"herald listening on (http://\S+)", line)
            if m:
                return m.group(1).rstrip("/")

    def output(self):
        return f"args: {' '.join(self.args)}\n--- herald output ---\n" + "\n".join(self._log)

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
