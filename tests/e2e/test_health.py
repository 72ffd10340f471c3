"""test_health.py - grpc.health.v1.Health: Check and Watch, per service and
for the whole server ("").

- Check answers SERVING for "" and for every service reflection lists, and
  NOT_FOUND for any other name;
- Watch sends the current status at once and keeps the stream open; a name
  velod does not know gets SERVICE_UNKNOWN and the stream stays open too;
- a cancelled Watch is gone from the server (it does not hold up shutdown);
- at shutdown every watcher is told NOT_SERVING, then its stream ends with
  UNAVAILABLE "server is shutting down", at once (not after the grace period).
"""
import queue
import signal
import threading
import time

import grpc
import pytest

import harness
from harness import F32, health_pb2, health_pb2_grpc
from grpc_reflection.v1 import reflection_pb2, reflection_pb2_grpc

Status = health_pb2.HealthCheckResponse
SERVED = ["", "velo.v1.TextGeneration", "velo.v1.Models", "inference.GRPCInferenceService",
          "grpc.health.v1.Health",
          "grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection"]


def listed_services(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    ans = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
        list_services="")]), timeout=harness.CALL_TIMEOUT_S))[0]
    return [s.name for s in ans.list_services_response.service]


class Watcher:
    """A Watch call read by a thread: statuses arrive on a queue, the end as
    ('end', code, details)."""

    def __init__(self, channel, service, timeout=120):
        self.events = queue.Queue()
        self.call = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            for msg in self.call:
                self.events.put(msg.status)
            self.events.put(("end", grpc.StatusCode.OK, ""))
        except grpc.RpcError as e:
            self.events.put(("end", e.code(), e.details()))

    def next(self, timeout=harness.LOG_TIMEOUT_S):
        return self.events.get(timeout=timeout)

    def quiet(self, seconds):
        """True when nothing arrives for seconds."""
        try:
            ev = self.events.get(timeout=seconds)
        except queue.Empty:
            return True
        self.events.put(ev)
        return False


def test_check_every_served_service(channel):
    health = health_pb2_grpc.HealthStub(channel)
    services = [""] + listed_services(channel)
    assert set(SERVED) <= set(services), services
    for name in services:
        r = health.Check(health_pb2.HealthCheckRequest(service=name),
                         timeout=harness.CALL_TIMEOUT_S)
        assert r.status == Status.SERVING, name


def test_check_unknown_service_is_not_found(channel):
    health = health_pb2_grpc.HealthStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        health.Check(health_pb2.HealthCheckRequest(service="velo.v1.Nope"),
                     timeout=harness.CALL_TIMEOUT_S)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "unknown service 'velo.v1.Nope'" in info.value.details()


def test_watch_sends_the_status_at_once_and_stays_open(channel):
    watchers = {name: Watcher(channel, name) for name in SERVED + ["velo.v1.Nope"]}
    try:
        for name, w in watchers.items():
            expected = Status.SERVICE_UNKNOWN if name == "velo.v1.Nope" else Status.SERVING
            assert w.next() == expected, name
        for name, w in watchers.items():
            assert w.quiet(0.3), "%r: the stream ended or sent more" % name
        # Other calls are served meanwhile.
        assert harness.generate(harness.velo_pb2_grpc.TextGenerationStub(channel), F32,
                                "Once", max_tokens=2).completion_tokens == 2
    finally:
        for w in watchers.values():
            w.call.cancel()
    for w in watchers.values():
        assert w.next()[:2] == ("end", grpc.StatusCode.CANCELLED)


def test_watch_ends_at_shutdown_with_not_serving(tmp_path):
    server = harness.Velod(["--model", "%s=%s" % (F32, harness.MODEL_F32)],
                           tmp_path / "velod.log").start()
    try:
        ch = server.channel()
        # Some watchers cancelled first: they must not hold up the shutdown.
        for w in [Watcher(ch, "") for _ in range(20)]:
            assert w.next() == Status.SERVING
            w.call.cancel()
        watchers = {name: Watcher(ch, name) for name in ["", "velo.v1.TextGeneration",
                                                          "velo.v1.Nope"]}
        for name, w in watchers.items():
            assert w.next() in (Status.SERVING, Status.SERVICE_UNKNOWN), name
        time.sleep(0.5)  # the cancellations reach the server
        t0 = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        for name in ["", "velo.v1.TextGeneration"]:
            assert watchers[name].next() == Status.NOT_SERVING, name
        for name, w in watchers.items():
            end = w.next()
            assert end[:2] == ("end", grpc.StatusCode.UNAVAILABLE), (name, end)
            assert "shutting down" in end[2], end
        took = time.monotonic() - t0
        assert took < 2.0, "the watchers were told after %.1f s" % took
        ch.close()
        rc, killed = server.stop()
        assert (rc, killed) == (0, False), server.log()[-2000:]
        log = server.log()
        assert "received SIGTERM: shutting down; 3 call(s) in flight" in log, log[-2000:]
        # Nothing was left for the grace period to cancel.
        assert "cancelling" not in log, log[-2000:]
    finally:
        server.stop()


def test_watch_request_errors(channel):
    """A NUL in the service name is refused like in every text field."""
    w = Watcher(channel, "a\x00b")
    end = w.next()
    assert end[:2] == ("end", grpc.StatusCode.INVALID_ARGUMENT), end
    assert "NUL" in end[2]
