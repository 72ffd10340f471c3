"""test_hardening.py - requests built to hurt the server are refused cheaply
and clearly, and velod goes on serving:

- a gzip-compressed request that would inflate to 64 MiB is refused
  (UNIMPLEMENTED) without velod's memory growing;
- a NUL byte in any text field is refused (INVALID_ARGUMENT) rather than the
  string being cut at it, while unknown fields from a newer client pass;
- client text repeated in a status message (model and health service names)
  is escaped and cut, never echoed raw;
- an empty model name is INVALID_ARGUMENT for every method that takes one;
- the plugin host names a missing --plugin-dir / VELO_PLUGIN_PATH entry and
  the wrong member of a malformed descriptor.
"""
import re
import shutil
import subprocess
import textwrap

import grpc
import pytest

import harness
from harness import F32, expect_error, health_pb2, health_pb2_grpc, velo_pb2, velo_pb2_grpc

GENERATE = "/velo.v1.TextGeneration/Generate"
TOKENIZE = "/velo.v1.TextGeneration/Tokenize"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
NUL_MESSAGE = "a string field contains a NUL byte (U+0000)"
MIB = 1 << 20


def raw_call(channel, method, data, stream=False, timeout=harness.CALL_TIMEOUT_S):
    """Sends the bytes data to method as they are; returns the raw answers
    (a list for a server-streaming method).  Raises grpc.RpcError."""
    make = channel.unary_stream if stream else channel.unary_unary
    call = make(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    return list(call(data, timeout=timeout)) if stream else call(data, timeout=timeout)


def assert_clean(msg):
    """A status message with nothing raw in it: no control characters."""
    bad = [c for c in msg if ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F]
    assert not bad, "raw control characters %r in %r" % (bad, msg)


def vm_kib(pid, key):
    """A VmXXX line of /proc/PID/status, in KiB."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise AssertionError("no %s in /proc/%d/status" % (key, pid))


@pytest.fixture
def still_serving(stub, prompts):
    """After the test: a normal request is served and is right."""
    yield
    p = prompts[0]
    assert harness.greedy(stub, F32, p["prompt"], 8).ids == p["f32"]["gen_ids"][:8]


# ---- 1. compressed requests ----------------------------------------------------------------
def test_compressed_request_is_refused_without_inflating(tmp_path, prompts):
    """About 64 KB of gzip that inflates to 64 MiB: refused before it is
    inflated (velod's peak memory stays far below the inflated size), and
    velod goes on serving, also on plain channels."""
    inflated = 64 * MIB
    server = harness.Velod(["--model", "%s=%s" % (F32, harness.MODEL_F32)],
                           tmp_path / "velod.log").start()
    try:
        pid = server.proc.pid
        before = vm_kib(pid, "VmHWM")
        with grpc.insecure_channel(server.address, options=harness.CHANNEL_OPTIONS,
                                   compression=grpc.Compression.Gzip) as ch:
            stub = velo_pb2_grpc.TextGenerationStub(ch)

            def huge_generate():  # the request is freed when it returns
                req = velo_pb2.GenerateRequest(model=F32, prompt="a" * inflated, max_tokens=1)
                return list(stub.Generate(req, timeout=120))

            expect_error(huge_generate, grpc.StatusCode.UNIMPLEMENTED, "compression", "disabled")
            # Small compressed requests are refused the same way.
            expect_error(lambda: stub.Tokenize(velo_pb2.TokenizeRequest(model=F32, text="x"),
                                               timeout=harness.CALL_TIMEOUT_S),
                         grpc.StatusCode.UNIMPLEMENTED, "compression")
        peak = vm_kib(pid, "VmHWM")
        assert peak - before < 32 * 1024, "velod's peak RSS grew from %d to %d MiB" % (
            before // 1024, peak // 1024)
        assert server.alive()
        with server.channel() as ch:
            p = prompts[0]
            res = harness.greedy(velo_pb2_grpc.TextGenerationStub(ch), F32, p["prompt"], 8)
            assert res.ids == p["f32"]["gen_ids"][:8]
    finally:
        server.stop()


# ---- 2. NUL bytes and canonical encoding ---------------------------------------------------
def test_nul_in_prompt(stub, still_serving):
    expect_error(lambda: harness.generate(stub, F32, "Once\x00upon", max_tokens=4),
                 grpc.StatusCode.INVALID_ARGUMENT, NUL_MESSAGE)


def test_nul_in_model_name(stub, still_serving):
    expect_error(lambda: harness.generate(stub, F32 + "\x00junk", "Once", max_tokens=4),
                 grpc.StatusCode.INVALID_ARGUMENT, NUL_MESSAGE)


def test_nul_in_stop_string(stub, still_serving):
    expect_error(lambda: harness.generate(stub, F32, "Once", max_tokens=4, stop=["a\x00b"]),
                 grpc.StatusCode.INVALID_ARGUMENT, NUL_MESSAGE)


def test_nul_in_tokenize_text(stub, still_serving):
    for model, text in ((F32, "Once\x00upon"), (F32 + "\x00", "Once")):
        expect_error(lambda: stub.Tokenize(velo_pb2.TokenizeRequest(model=model, text=text),
                                           timeout=harness.CALL_TIMEOUT_S),
                     grpc.StatusCode.INVALID_ARGUMENT, NUL_MESSAGE)


def test_nul_in_health_service(channel, still_serving):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("\x00", "velo.v1.Models\x00"):
        expect_error(lambda: health.Check(health_pb2.HealthCheckRequest(service=service),
                                          timeout=harness.CALL_TIMEOUT_S),
                     grpc.StatusCode.INVALID_ARGUMENT, NUL_MESSAGE)


def test_field_sent_twice_is_refused(channel, still_serving):
    """A non-canonical message (the model field twice) cannot be told apart
    from a cut string, so it is refused the same way."""
    raw = harness.len_field(1, b"x") + velo_pb2.GenerateRequest(
        model=F32, prompt="Once", max_tokens=4).SerializeToString()
    expect_error(lambda: raw_call(channel, GENERATE, raw, stream=True),
                 grpc.StatusCode.INVALID_ARGUMENT, "NUL", "canonical")


def test_unknown_fields_are_accepted(channel, prompts):
    """A newer client's extra fields (a string as field 99, a varint as field
    100) do not change the answer."""
    p = prompts[0]
    req = harness.generate_request(F32, p["prompt"], max_tokens=8, temperature=0.0,
                                   ignore_eos=True)
    raw = (req.SerializeToString() + harness.len_field(99, b"from the future") +
           harness.varint(100 << 3) + harness.varint(300))
    answers = [velo_pb2.GenerateResponse.FromString(b)
               for b in raw_call(channel, GENERATE, raw, stream=True)]
    assert [i for a in answers for i in a.token_ids] == p["f32"]["gen_ids"][:8]

    tok = velo_pb2.TokenizeRequest(model=F32, text=p["prompt"]).SerializeToString()
    out = velo_pb2.TokenizeResponse.FromString(
        raw_call(channel, TOKENIZE, tok + harness.len_field(99, b"x")))
    assert list(out.token_ids) == p["prompt_ids"]

    health = health_pb2.HealthCheckResponse.FromString(
        raw_call(channel, HEALTH_CHECK, harness.varint(7 << 3) + harness.varint(1)))
    assert health.status == health_pb2.HealthCheckResponse.SERVING


# ---- 3. client text in status messages -----------------------------------------------------
def test_model_name_with_control_bytes_is_escaped(channel, stub, still_serving):
    name = b"bad\x1b[31m\nname\xff\xc3\\"
    raw = harness.len_field(1, name) + velo_pb2.GenerateRequest(
        prompt="Once", max_tokens=4).SerializeToString()
    msg = expect_error(lambda: raw_call(channel, GENERATE, raw, stream=True),
                       grpc.StatusCode.NOT_FOUND, "is not loaded", F32)
    assert_clean(msg)
    assert "'bad\\x1B[31m\\x0Aname\\xFF\\xC3\\\\'" in msg, msg

    tok = harness.len_field(1, name) + harness.len_field(2, b"x")
    msg = expect_error(lambda: raw_call(channel, TOKENIZE, tok), grpc.StatusCode.NOT_FOUND,
                       "is not loaded")
    assert_clean(msg)
    assert "bad\\x1B[31m\\x0Aname\\xFF\\xC3\\\\" in msg, msg


def test_utf8_model_name_is_kept(stub, still_serving):
    msg = expect_error(lambda: harness.generate(stub, "modèle-ünïcødé-模型", "x", max_tokens=1),
                       grpc.StatusCode.NOT_FOUND)
    assert "'modèle-ünïcødé-模型'" in msg, msg


def test_unsafe_code_points_are_escaped(stub, still_serving):
    """Valid UTF-8 that could reorder or break a line (a C1 control, the
    right-to-left override, the line separator) is escaped too."""
    msg = expect_error(lambda: harness.generate(stub, "a\u0085b\u202ec\u2028d", "x",
                                                max_tokens=1),
                       grpc.StatusCode.NOT_FOUND)
    assert "'a\\xC2\\x85b\\xE2\\x80\\xAEc\\xE2\\x80\\xA8d'" in msg, msg


def test_long_model_name_is_cut(stub, still_serving):
    for name in ("m" * 100_000, "é" * 100_000):
        msg = expect_error(lambda: harness.generate(stub, name, "x", max_tokens=1),
                           grpc.StatusCode.NOT_FOUND, "is not loaded", F32)
        assert "'" + name[:64] + "...'" in msg, msg[:300]
        assert len(msg) < 1000, "a %d-character message" % len(msg)


def test_health_service_name_is_escaped(channel, still_serving):
    raw = harness.len_field(1, b"svc\r\n\x07\xfe" + b"s" * 5000)
    msg = expect_error(lambda: raw_call(channel, HEALTH_CHECK, raw), grpc.StatusCode.NOT_FOUND,
                       "unknown service")
    assert_clean(msg)
    assert "'svc\\x0D\\x0A\\x07\\xFE" + "s" * 57 + "...'" in msg, msg  # 64 characters
    assert len(msg) < 200, msg


# ---- 4. an empty model name ------------------------------------------------------------------
def test_empty_model_is_invalid_argument_everywhere(stub, still_serving):
    gen = expect_error(lambda: harness.generate(stub, "", "Once", max_tokens=1),
                       grpc.StatusCode.INVALID_ARGUMENT, "model must be set", F32)
    tok = expect_error(lambda: stub.Tokenize(velo_pb2.TokenizeRequest(model="", text="Once"),
                                             timeout=harness.CALL_TIMEOUT_S),
                       grpc.StatusCode.INVALID_ARGUMENT, "model must be set", F32)
    assert gen == tok


# ---- 6. the plugin host ----------------------------------------------------------------------
def env_with(**extra):
    env = harness.clean_env()
    env.update(extra)
    return env


def list_plugins(args, env):
    proc = subprocess.run([str(harness.VELOD), "--list-plugins"] + args,
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")


def test_missing_plugin_dirs_are_named(tmp_path):
    missing = tmp_path / "no-such-dir"
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory\n")
    env_missing = tmp_path / "env-missing"
    out, err = list_plugins(["--plugin-dir", str(missing)],
                            env_with(VELO_PLUGIN_PATH="%s:%s" % (a_file, env_missing)))
    assert re.search(r"WARN.*%s \(from --plugin-dir\) does not exist" % re.escape(str(missing)),
                     err), err
    assert re.search(r"WARN.*%s \(from VELO_PLUGIN_PATH\) is not a directory"
                     % re.escape(str(a_file)), err), err
    assert re.search(r"WARN.*%s \(from VELO_PLUGIN_PATH\) does not exist"
                     % re.escape(str(env_missing)), err), err
    # The real plugins (default locations) are still found.
    assert "text-generation" in out and "cpu" in out, out


BAD_DESCRIPTORS = textwrap.dedent("""\
    #include "velo/plugin.h"
    static const velo_backend_iface small = {.struct_size = 40};
    static const velo_plugin_descriptor desc = {
        .struct_size = sizeof(velo_plugin_descriptor),
        .abi_major = VELO_ABI_MAJOR, .abi_minor = VELO_ABI_MINOR,
        .name = NAME, .kind = VELO_PLUGIN_BACKEND, .version = "0",
        .backend = TABLE,
    };
    VELO_PLUGIN_EXPORT const velo_plugin_descriptor *velo_plugin_entry(uint32_t a, uint32_t b) {
      (void)a; (void)b; (void)small;
      return &desc;
    }
    """)


def test_malformed_descriptor_names_the_member(tmp_path):
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler to build the test plugins")
    src = tmp_path / "bad.c"
    src.write_text(BAD_DESCRIPTORS)
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    for lib, name, table in (("nobackend", '"nobackend"', "NULL"),
                             ("smalltable", '"smalltable"', "&small"),
                             ("noname", '""', "NULL")):
        subprocess.run([cc, "-shared", "-fPIC", "-o", str(plugins / ("libvelo-%s.so" % lib)),
                        "-I", str(harness.ROOT / "sdk" / "include"),
                        "-DNAME=%s" % name, "-DTABLE=%s" % table, str(src)],
                       check=True, timeout=60)
    out, err = list_plugins(["--plugin-dir", str(plugins)], harness.clean_env())
    assert re.search(r"libvelo-nobackend\.so: malformed descriptor \(name 'nobackend', kind \d+\): "
                     r"kind backend but no backend table", err), err
    assert re.search(r"libvelo-smalltable\.so: malformed descriptor .*: "
                     r"backend table struct_size 40 < \d+ expected", err), err
    assert re.search(r"libvelo-noname\.so: malformed descriptor .*: "
                     r"no name; kind backend but no backend table", err), err
    for name in ("nobackend", "smalltable", "noname"):
        assert "libvelo-%s.so" % name not in out, out
