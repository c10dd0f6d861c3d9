"""Locust users for bench/failover-locust.sh: each user writes its own keys
with ack=root at a random node, then reads each back with a consistent read
(use_cache=false) at another random node, and now and then a plain read.
A request fails on a non-2xx answer or a wrong value. Every request's start
time, latency and outcome go to $LOCUST_LOG (one line each), so the script
can compute latency over the takeover window."""

import os
import random
import time

from locust import HttpUser, between, events, task

NODES = os.environ["TREECACHE_NODES"].split(",")
LOG = open(os.environ["LOCUST_LOG"], "a", buffering=1)


@events.request.add_listener
def record(request_type, name, response_time, exception, start_time=None, **_):
    started = start_time if start_time is not None else time.time() - response_time / 1000
    LOG.write(f"{started:.3f} {response_time:.1f} {'fail' if exception else 'ok'} {request_type} {name}\n")


class Writer(HttpUser):
    wait_time = between(0.01, 0.05)

    def on_start(self):
        self.me = f"u{random.getrandbits(40):x}"
        self.n = 0
        self.written = []

    def url(self, key):
        return f"{random.choice(NODES)}/kv/{key}"

    @task(4)
    def write_then_read(self):
        self.n += 1
        key, value = f"{self.me}-{self.n % 200}", f"{self.me}:{self.n}"
        with self.client.put(self.url(key) + "?ack=root", data=value, name="put ack=root", catch_response=True) as r:
            if r.status_code not in (200, 201):
                r.failure(f"{r.status_code} {r.text[:120]}")
                return
        if key not in self.written:
            self.written.append(key)
        with self.client.get(self.url(key) + "?use_cache=false", name="get consistent", catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"{r.status_code} {r.text[:120]}")
            elif r.text != value:
                r.failure(f"read {r.text!r}, wrote {value!r}")

    @task(1)
    def plain_read(self):
        if not self.written:
            return
        key = random.choice(self.written)
        with self.client.get(self.url(key), name="get", catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"{r.status_code} {r.text[:120]}")
            elif not r.text.startswith(self.me + ":"):
                r.failure(f"read {r.text!r} for {key}")
