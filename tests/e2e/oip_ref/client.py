"""client.py - an Open Inference Protocol (KServe v2) client for the
end-to-end tests, built from the tests' own copy of the published protocol
(oipref/grpc_service.proto next to this file), never from proto/inference/:
if velod's definition drifts from the published one, these stubs notice.

How the stubs are made (once per process, at import time):
  - protoc compiles oipref/grpc_service.proto into a FileDescriptorSet and
    grpc_python_plugin writes the gRPC stub module, both into a temporary
    directory that is removed at exit;
  - the messages are built in a PRIVATE descriptor pool, not protobuf's
    default one.  The build's own stubs (proto/inference) define the same
    symbols (inference.ModelInferRequest, ...) and may be imported by other
    tests in the same pytest process; two files defining one symbol in the
    default pool is a hard error ("duplicate symbol").  A private pool keeps
    the wire names identical and the two copies apart;
  - the generated stub module (oipref.grpc_service_pb2_grpc) is loaded
    unchanged, with oipref.grpc_service_pb2 provided by this module.

Tools: protoc and grpc_python_plugin from PATH, or VELO_PROTOC and
VELO_GRPC_PYTHON_PLUGIN (tests/e2e/CMakeLists.txt passes the build's).

Also here: the repository and velod set-up the protocol tests share, tensor
encoding (typed contents, raw bytes, BYTES length prefixes), parameter values,
and text generation over ModelInfer and ModelStreamInfer.
"""
import atexit
import importlib.util
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import types
from pathlib import Path

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

import harness

HERE = Path(__file__).resolve().parent
PROTO_REL = "oipref/grpc_service.proto"


# ---- stub generation ---------------------------------------------------------------------
def _tool(env_name, program):
    path = os.environ.get(env_name, "")
    if not path or path.endswith("-NOTFOUND"):
        path = shutil.which(program)
    if not path:
        raise ImportError("%s not found: install it (Debian: protobuf-compiler, "
                          "protobuf-compiler-grpc) or set %s" % (program, env_name))
    return path


def _message_class(factory, desc):
    get = getattr(message_factory, "GetMessageClass", None)  # protobuf >= 4.22
    return get(desc) if get else factory.GetPrototype(desc)


def _bind(factory, desc):
    """The class for desc, with its nested message classes as attributes
    (ModelInferRequest.InferInputTensor), as generated code has them."""
    cls = _message_class(factory, desc)
    for nested in desc.nested_types:
        if not nested.GetOptions().map_entry:
            setattr(cls, nested.name, _bind(factory, nested))
    return cls


def _generate():
    out = Path(tempfile.mkdtemp(prefix="velo-oipref-"))
    atexit.register(shutil.rmtree, out, True)
    desc_set = out / "oipref.desc"
    cmd = [_tool("VELO_PROTOC", "protoc"), "-I%s" % HERE,
           "--descriptor_set_out=%s" % desc_set,
           "--grpc_out=%s" % out,
           "--plugin=protoc-gen-grpc=%s" % _tool("VELO_GRPC_PYTHON_PLUGIN", "grpc_python_plugin"),
           PROTO_REL]
    r = subprocess.run(cmd, capture_output=True, timeout=60)
    if r.returncode != 0:
        raise ImportError("protoc failed on %s (status %d): %s"
                          % (HERE / PROTO_REL, r.returncode, r.stderr.decode("utf-8", "replace")))

    fds = descriptor_pb2.FileDescriptorSet.FromString(desc_set.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for fp in fds.file:
        pool.Add(fp)
    file_desc = pool.FindFileByName(PROTO_REL)
    factory = message_factory.MessageFactory(pool)

    pkg = types.ModuleType("oipref")
    pkg.__path__ = []
    pb2 = types.ModuleType("oipref.grpc_service_pb2")
    pb2.DESCRIPTOR = file_desc
    pb2.POOL = pool
    for name, desc in file_desc.message_types_by_name.items():
        setattr(pb2, name, _bind(factory, desc))
    pkg.grpc_service_pb2 = pb2
    sys.modules["oipref"] = pkg
    sys.modules["oipref.grpc_service_pb2"] = pb2

    grpc_path = out / "oipref" / "grpc_service_pb2_grpc.py"
    spec = importlib.util.spec_from_file_location("oipref.grpc_service_pb2_grpc", grpc_path)
    pb2_grpc = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = pb2_grpc
    spec.loader.exec_module(pb2_grpc)
    pkg.grpc_service_pb2_grpc = pb2_grpc
    return pb2, pb2_grpc


pb, pb_grpc = _generate()


def stub(channel):
    return pb_grpc.GRPCInferenceServiceStub(channel)


# ---- datatypes ---------------------------------------------------------------------------
# datatype -> (numpy dtype, InferTensorContents field); None: no typed field
# (FP16 and BF16 travel as raw bytes only, as the protocol says).
DATATYPES = {
    "BOOL": (np.bool_, "bool_contents"),
    "UINT8": (np.uint8, "uint_contents"),
    "UINT16": (np.uint16, "uint_contents"),
    "UINT32": (np.uint32, "uint_contents"),
    "UINT64": (np.uint64, "uint64_contents"),
    "INT8": (np.int8, "int_contents"),
    "INT16": (np.int16, "int_contents"),
    "INT32": (np.int32, "int_contents"),
    "INT64": (np.int64, "int64_contents"),
    "FP16": (np.float16, None),
    "FP32": (np.float32, "fp32_contents"),
    "FP64": (np.float64, "fp64_contents"),
    "BYTES": (None, "bytes_contents"),
}


def encode_bytes(elements):
    """The raw form of a BYTES tensor: each element as a 4-byte little-endian
    length and its bytes."""
    return b"".join(struct.pack("<I", len(e)) + bytes(e) for e in elements)


def decode_bytes(buf):
    """The elements of a raw BYTES tensor; raises ValueError if malformed."""
    out, i = [], 0
    while i < len(buf):
        if i + 4 > len(buf):
            raise ValueError("truncated length prefix at byte %d of %d" % (i, len(buf)))
        (n,) = struct.unpack_from("<I", buf, i)
        i += 4
        if i + n > len(buf):
            raise ValueError("element of %d bytes at byte %d overruns %d" % (n, i, len(buf)))
        out.append(bytes(buf[i:i + n]))
        i += n
    return out


def raw_of(datatype, value):
    """The raw_input_contents entry for value (a numpy array, or a list of
    bytes for BYTES)."""
    if datatype == "BYTES":
        return encode_bytes(value)
    dt = DATATYPES[datatype][0]
    return np.ascontiguousarray(value, dtype=np.dtype(dt).newbyteorder("<")).tobytes()


def set_contents(tensor, datatype, value):
    """Puts value into tensor.contents, in the typed field for datatype."""
    field = DATATYPES[datatype][1]
    if field is None:
        raise ValueError("%s has no typed contents field" % datatype)
    rep = getattr(tensor.contents, field)
    if datatype == "BYTES":
        rep.extend(bytes(e) for e in value)
    else:
        rep.extend(np.asarray(value).reshape(-1).tolist())


def add_input(req, name, datatype, shape, value, raw):
    """Appends an input tensor to req with value as typed contents or as
    raw_input_contents."""
    t = req.inputs.add(name=name, datatype=datatype, shape=list(shape))
    if raw:
        req.raw_input_contents.append(raw_of(datatype, value))
    else:
        set_contents(t, datatype, value)
    return t


def param_value(p):
    """The Python value of an InferParameter (None when unset)."""
    kind = p.WhichOneof("parameter_choice")
    return getattr(p, kind) if kind else None


class Output:
    """One output tensor of a response, decoded from raw_output_contents."""

    def __init__(self, name, datatype, shape, raw):
        self.name, self.datatype, self.shape, self.raw = name, datatype, list(shape), raw

    @property
    def value(self):
        """A numpy array of the output's shape, or a list of bytes for BYTES."""
        if self.datatype == "BYTES":
            return decode_bytes(self.raw)
        dt = np.dtype(DATATYPES[self.datatype][0]).newbyteorder("<")
        return np.frombuffer(self.raw, dtype=dt).reshape(self.shape)


def outputs(resp):
    """{name: Output} for a ModelInferResponse whose outputs are in
    raw_output_contents (one entry per output, as velod sends them)."""
    assert len(resp.raw_output_contents) == len(resp.outputs), \
        "%d raw_output_contents for %d outputs" % (len(resp.raw_output_contents), len(resp.outputs))
    out = {}
    for t, raw in zip(resp.outputs, resp.raw_output_contents):
        assert not t.HasField("contents"), "output %s has both contents and raw contents" % t.name
        assert t.name not in out, "output %s sent twice" % t.name
        out[t.name] = Output(t.name, t.datatype, t.shape, raw)
    return out


# ---- text generation ---------------------------------------------------------------------
# The response parameter that flags the last response of a request, with
# Triton's name (docs/protocol.md).
FINAL = "triton_final_response"


def text_request(model, prompt, raw=True, request_id="", **params):
    """A ModelInferRequest for a text-generation model: text_input BYTES [1]
    and params as request parameters (max_tokens=32, temperature=0.0, ...)."""
    req = pb.ModelInferRequest(model_name=model, id=request_id)
    add_input(req, "text_input", "BYTES", [1], [prompt.encode("utf-8")], raw)
    for k, v in params.items():
        harness.set_param(req.parameters, k, v)
    return req


def text_of(resp):
    """The text_output of one response (all its elements, concatenated)."""
    outs = outputs(resp)
    assert "text_output" in outs, "no text_output in response (outputs: %s)" % sorted(outs)
    o = outs["text_output"]
    assert o.datatype == "BYTES", "text_output datatype %s" % o.datatype
    return b"".join(o.value)


def is_final(resp):
    return FINAL in resp.parameters and param_value(resp.parameters[FINAL]) is True


class StreamResult:
    def __init__(self):
        self.responses = []     # ModelInferResponse, in order
        self.errors = []        # error_message of responses that carried one
        self.error_responses = []  # their infer_response (id, model_name)

    @property
    def text(self):
        return b"".join(text_of(r) for r in self.responses).decode("utf-8")


def stream_infer(stub_, requests, timeout=harness.CALL_TIMEOUT_S, close_early=False):
    """Sends requests on one ModelStreamInfer call and collects responses
    until each request (by its id) has had a final response or an error.
    The request side stays open until then (close_early: half-closes right
    after the last request instead); the call must then end with OK.
    Returns {id: StreamResult}.  Raises grpc.RpcError if the call ends with
    an error status."""
    pending = {r.id for r in requests}
    assert len(pending) == len(requests), "give each request of a stream its own id"
    done = threading.Event()

    def feed():
        for r in requests:
            yield r
        if not close_early:
            done.wait(timeout)

    results = {i: StreamResult() for i in pending}
    call = stub_.ModelStreamInfer(feed(), timeout=timeout)
    try:
        # Once every request has its final response, the request side is
        # closed (feed returns) and the server must end the call with OK.
        for msg in call:
            assert pending, "a response after every request was answered: %s" % msg
            rid = msg.infer_response.id
            assert rid in results, (
                "a response with request id %r, not one of %s: an error response must carry "
                "the failed request's id in infer_response.id, as Triton's does (%s)"
                % (rid, sorted(results), msg))
            if msg.error_message:
                results[rid].errors.append(msg.error_message)
                results[rid].error_responses.append(msg.infer_response)
                pending.discard(rid)
            else:
                results[rid].responses.append(msg.infer_response)
                if is_final(msg.infer_response):
                    pending.discard(rid)
            if not pending:
                done.set()
    finally:
        done.set()
    assert not pending, "the stream ended without a final response for %s" % sorted(pending)
    return results


# ---- repository and velod ----------------------------------------------------------------
IDENTITY = "identity"
TEXTGEN = "stories"


def write_model(repo, name, config, gguf=None, gguf_bytes=None):
    """Makes repo/name/ with config.json (a dict, or a str written as is) and,
    when given, a model file model.gguf (copied from gguf, or gguf_bytes)."""
    d = Path(repo) / name
    d.mkdir(parents=True, exist_ok=True)
    if gguf is not None:
        shutil.copyfile(gguf, d / "model.gguf")
    if gguf_bytes is not None:
        (d / "model.gguf").write_bytes(gguf_bytes)
    text = config if isinstance(config, str) else json.dumps(config)
    (d / "config.json").write_text(text)
    return d


def make_repository(root):
    """A model repository with the identity model and the stories260K
    text-generation model (as 'stories')."""
    root = Path(root)
    write_model(root, IDENTITY, {"task": "identity"})
    write_model(root, TEXTGEN, {"task": "text-generation", "file": "model.gguf"},
                gguf=harness.MODEL_F32)
    return root


def start_velod(repo, log_path, *extra):
    """A velod serving repo (more options in extra), started and ready."""
    return harness.Velod(["--model-repository", str(repo)] + list(extra), log_path).start()


def serve(root, *extra, repo=None):
    """For a test module's `server` fixture (conftest.py gives such modules
    server_channel, infer and textgen): `yield from oip.serve(root, ...)`
    runs a velod serving repo (default: make_repository(root / "models"))
    with the options extra and its log in root/velod.log, yields it, and at
    teardown stops it and checks that it exited by itself with status 0."""
    root = Path(root)
    v = start_velod(repo if repo is not None else make_repository(root / "models"),
                    root / "velod.log", *extra)
    yield v
    code, killed = v.stop()
    assert not killed and code == 0, "velod exit status %s (SIGKILL needed: %s)" % (code, killed)


def still_serving(channel, timeout=harness.CALL_TIMEOUT_S):
    """ServerReady is true and an identity round trip works."""
    s = stub(channel)
    assert s.ServerReady(pb.ServerReadyRequest(), timeout=timeout).ready
    req = pb.ModelInferRequest(model_name=IDENTITY)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    add_input(req, "x", "FP32", x.shape, x, raw=True)
    out = outputs(s.ModelInfer(req, timeout=timeout))
    assert np.array_equal(out["x"].value, x)


def vm_rss_kib(pid):
    """VmRSS of process pid in KiB, from /proc/PID/status."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/%d/status" % pid)


def error_of(fn, *args, **kwargs):
    """Calls fn and returns the grpc.RpcError it raises (fails if none)."""
    import grpc
    try:
        r = fn(*args, **kwargs)
    except grpc.RpcError as e:
        return e
    raise AssertionError("expected an error status, got a response: %s" % (r,))
