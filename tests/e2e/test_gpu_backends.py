"""test_gpu_backends.py - the GPU backend plugins where they cannot run (CI:
no GPU, no driver): they load, their probe says "unavailable: <reason>",
`--backend auto` falls back to the CPU and logs each rejected backend with
its reason, an explicit `--backend cuda` / `hip` (or a device a backend does
not have) stops velod at start-up with that reason, and a repository model
that asks for a GPU in its config.json is UNAVAILABLE with the reason while
its neighbours serve; ListModels and `velo models` say which backend and
device serve each model.

A plugin that was not built (VELO_CUDA / VELO_HIP OFF, or no toolkit) skips
its tests; on a machine where a GPU backend is available the no-driver
tests skip (tests/gpu/run.sh checks that machine).
"""
import re
import subprocess

import pytest

import harness
from harness import velo_pb2, velo_pb2_grpc

GPU_BACKENDS = ("cuda", "hip")


def plugin_path(name):
    return harness.PLUGIN_DIR / ("libvelo-backend-%s.so" % name)


@pytest.fixture(scope="module")
def probes():
    """{backend name: its PROBE column} from velod --list-plugins."""
    rc, out = harness.run_velod_once(["--list-plugins", "--plugin-dir", str(harness.PLUGIN_DIR)],
                                     timeout=60)
    assert rc == 0, out
    found = {}
    for line in out.splitlines():
        cols = line.split()
        if len(cols) >= 6 and cols[1] == "backend":
            found[cols[0]] = line.split(cols[4], 1)[1].strip()
    return found


def unavailable_reason(probes, name):
    """The probe reason of a built GPU plugin that cannot run here, or skip."""
    if not plugin_path(name).exists():
        pytest.skip("the %s plugin was not built (VELO_%s)" % (name, name.upper()))
    probe = probes.get(name)
    assert probe is not None, "%s was built but --list-plugins does not list it: %s" % (name, probes)
    if not probe.startswith("unavailable: "):
        pytest.skip("%s can run on this machine (%s): tests/gpu/run.sh covers it" % (name, probe))
    return probe[len("unavailable: "):]


@pytest.mark.parametrize("name", GPU_BACKENDS)
def test_plugin_loads_without_driver_and_says_why(probes, name):
    reason = unavailable_reason(probes, name)
    vendor = "NVIDIA" if name == "cuda" else "AMD"
    # a reason a person can act on: no driver / no GPU / an old driver / no code for the GPU
    assert re.search(r"no %s GPU (driver )?found|driver|GPU\(s\) found" % vendor, reason), reason
    if name == "cuda":
        # the static runtime's answer without a driver (PITFALLS: error 35, driver version 0)
        assert "cudaErrorInsufficientDriver" in reason or "cudaErrorNoDevice" in reason, reason


@pytest.mark.parametrize("name", GPU_BACKENDS)
def test_plugin_never_links_the_driver(name):
    """libcuda / the ROCm thunk must not be a link-time dependency: the
    plugin has to load where the driver is missing.  Only the entry point
    is exported."""
    path = plugin_path(name)
    if not path.exists():
        pytest.skip("the %s plugin was not built" % name)
    dyn = subprocess.run(["readelf", "-d", "-W", str(path)], capture_output=True, text=True, check=True)
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dyn.stdout)
    assert needed, dyn.stdout
    assert not any(n.startswith("libcuda.so") or n.startswith("libnvidia") for n in needed), needed
    if name == "cuda":
        assert not any(n.startswith("libcudart") for n in needed), "cudart must be static: %s" % needed
    syms = subprocess.run(["nm", "-D", "--defined-only", str(path)], capture_output=True, text=True,
                          check=True)
    exported = [ln.split()[-1] for ln in syms.stdout.splitlines() if ln.strip()]
    assert exported == ["velo_plugin_entry"], exported


def test_auto_falls_back_to_cpu_and_logs_each_rejection(tmp_path, probes):
    reasons = {n: unavailable_reason(probes, n) for n in GPU_BACKENDS if plugin_path(n).exists()
               and probes.get(n, "").startswith("unavailable: ")}
    if not reasons:
        pytest.skip("no GPU plugin that cannot run here")
    if any(probes.get(n, "").startswith("available") for n in GPU_BACKENDS):
        pytest.skip("a GPU backend can run here, so auto does not fall back to the CPU")
    server = harness.Velod(["--model", "%s=%s" % (harness.F32, harness.MODEL_F32)], tmp_path / "velod.log")
    server.start()
    try:
        log = server.log()
        for name, reason in reasons.items():
            line = "backend auto: '%s' rejected: %s" % (name, reason)
            assert line in log, "missing %r in:\n%s" % (line, log[-3000:])
        assert "backend auto: chose 'cpu' (device cpu:0)" in log, log[-3000:]
        with server.channel() as ch:
            r = velo_pb2_grpc.ModelsStub(ch).ListModels(velo_pb2.ListModelsRequest(),
                                                        timeout=harness.CALL_TIMEOUT_S)
        m = next(m for m in r.models if m.name == harness.F32)
        assert (m.backend, m.device, m.state) == ("cpu", "cpu:0", "READY"), m
        cli = harness.run_velo(["models", "--server", server.address])
        assert cli.returncode == 0, cli.stderr
        line = next(ln for ln in cli.stdout.decode().splitlines() if ln.split()[0] == harness.F32)
        assert " cpu " in line and "cpu:0" in line, line
    finally:
        server.stop()


@pytest.mark.parametrize("name", GPU_BACKENDS)
def test_explicit_backend_fails_at_startup_with_the_reason(probes, name):
    reason = unavailable_reason(probes, name)
    rc, out = harness.run_velod_once(["--listen", "127.0.0.1:0", "--backend", name,
                                      "--model", str(harness.MODEL_F32)], timeout=60)
    assert rc == 1, out
    want = "--backend %s: backend '%s' cannot run here: %s" % (name, name, reason)
    assert want in out, out
    assert "listening on" not in out, out


@pytest.mark.parametrize("name", GPU_BACKENDS)
def test_explicit_backend_fails_even_without_models_to_load(tmp_path, probes, name):
    """The check is about the flag, not a model: an empty repository still
    stops at start-up."""
    reason = unavailable_reason(probes, name)
    rc, out = harness.run_velod_once(["--listen", "127.0.0.1:0", "--backend", "%s:0" % name,
                                      "--model-repository", str(tmp_path)], timeout=60)
    assert rc == 1, out
    assert "backend '%s' cannot run here: %s" % (name, reason) in out, out


def test_device_the_backend_does_not_have():
    rc, out = harness.run_velod_once(["--listen", "127.0.0.1:0", "--backend", "cpu:1",
                                      "--model", str(harness.MODEL_F32)], timeout=60)
    assert rc == 1, out
    assert "--backend cpu:1: backend 'cpu' cannot run device cpu:1: it has 1 device (cpu:0), device 1 " \
           "was asked for" in out, out


@pytest.mark.parametrize("value", ["cuda:", "cuda:x", ":1", "cuda:1024", "cu da", "cuda:-1"])
def test_malformed_backend_is_a_usage_error(value):
    rc, out = harness.run_velod_once(["--backend", value], timeout=30)
    assert rc == 2, out
    assert "--backend: backend '%s' is not valid" % value in out, out


def write_model(repo, name, config):
    d = repo / name
    d.mkdir()
    (d / "model.gguf").symlink_to(harness.MODEL_F32)
    (d / "config.json").write_text(config)


def test_repository_gpu_model_unavailable_with_reason(tmp_path, probes):
    reason = unavailable_reason(probes, "cuda")
    repo = tmp_path / "repo"
    repo.mkdir()
    write_model(repo, "on-gpu", '{"file": "model.gguf", "backend": "cuda:1"}')
    write_model(repo, "on-cpu", '{"file": "model.gguf", "backend": "cpu:0"}')
    write_model(repo, "twice", '{"file": "model.gguf", "backend": "cpu:1", "device": 0}')
    write_model(repo, "bad", '{"file": "model.gguf", "backend": "cuda:one"}')
    server = harness.Velod(["--model-repository", str(repo), "--exit-on-error", "false"],
                           tmp_path / "velod.log")
    server.start()
    try:
        with server.channel() as ch:
            r = velo_pb2_grpc.ModelsStub(ch).ListModels(velo_pb2.ListModelsRequest(),
                                                        timeout=harness.CALL_TIMEOUT_S)
        by = {m.name: m for m in r.models}
        assert (by["on-cpu"].state, by["on-cpu"].backend, by["on-cpu"].device) == ("READY", "cpu", "cpu:0")
        assert by["on-gpu"].state == "UNAVAILABLE"
        assert "backend 'cuda' cannot run here: %s" % reason in by["on-gpu"].reason, by["on-gpu"].reason
        assert "key 'backend' names device 1 ('cpu:1') but key 'device' is 0" in by["twice"].reason
        assert "key 'backend': backend 'cuda:one' is not valid" in by["bad"].reason, by["bad"].reason
        cli = harness.run_velo(["models", "--server", server.address])
        out = cli.stdout.decode()
        assert "cannot run here" in out and "cpu:0" in out, out
    finally:
        server.stop()


def test_backend_flag_is_the_default_for_repository_models(tmp_path):
    """--backend applies to repository models whose config.json names none."""
    repo = tmp_path / "repo"
    repo.mkdir()
    write_model(repo, "plain", '{"file": "model.gguf"}')
    rc, out = harness.run_velod_once(["--listen", "127.0.0.1:0", "--backend", "cpu:1",
                                      "--model-repository", str(repo)], timeout=60)
    assert rc == 1 and "device 1 was asked for" in out, out
    server = harness.Velod(["--model-repository", str(repo), "--backend", "cpu:0"], tmp_path / "velod.log")
    server.start()
    try:
        assert "model 'plain' loaded from" in server.log() and "backend cpu:0" in server.log()
    finally:
        server.stop()
