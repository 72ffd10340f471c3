"""conftest.py - pytest fixtures for the end-to-end tests: the llama.cpp
reference, a model variant that adds no BOS token, and one shared velod
(started once per test session, stopped at the end) that serves

  stories260K        ../shared/models/stories260K.gguf (F32)
  stories260K-q8_0   ../shared/models/stories260K-q8_0.gguf
  stories260K-nobos  stories260K.gguf with tokenizer.ggml.add_bos_token = false

Its output goes to velod.log in the session's temporary directory; tests read
it through the fixture (velod.log(), velod.wait_for_log()).

Modules that run a velod of their own define a module-scoped `server`
fixture; server_channel, infer (the Open Inference Protocol stub from
oip_ref/) and textgen then talk to it.
"""
import pytest

import gguf_edit
import harness
from harness import velo_pb2_grpc


@pytest.fixture(scope="session")
def reference():
    return harness.load_reference()


@pytest.fixture(scope="session")
def prompts(reference):
    return reference["prompts"]


@pytest.fixture(scope="session")
def nobos_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "stories260K-nobos.gguf"
    gguf_edit.set_bool_key(harness.MODEL_F32, path, "tokenizer.ggml.add_bos_token", False)
    return path


@pytest.fixture(scope="session")
def velod(tmp_path_factory, nobos_model):
    for f in (harness.VELOD, harness.MODEL_F32, harness.MODEL_Q8):
        if not f.exists():
            pytest.fail("missing %s (build the project; VELO_SHARED_DIR for the models)" % f)
    log = tmp_path_factory.mktemp("velod") / "velod.log"
    server = harness.Velod(["--model", "%s=%s" % (harness.F32, harness.MODEL_F32),
                            "--model", "%s=%s" % (harness.Q8, harness.MODEL_Q8),
                            "--model", "%s=%s" % (harness.NOBOS, nobos_model),
                            # The shared server checks the CPU reference path: on a
                            # machine with a GPU, auto would pick that backend.
                            "--backend", "cpu"], log)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def channel(velod):
    with velod.channel() as ch:
        yield ch


@pytest.fixture(scope="session")
def stub(channel):
    return velo_pb2_grpc.TextGenerationStub(channel)


@pytest.fixture(scope="session")
def models_stub(channel):
    return velo_pb2_grpc.ModelsStub(channel)


# ---- modules that run their own velod ----------------------------------------------------
# A test module that defines a module-scoped fixture `server` (a started
# harness.Velod, e.g. from oip_ref.client.serve) gets these for it.
@pytest.fixture(scope="module")
def server_channel(server):
    with server.channel() as ch:
        yield ch


@pytest.fixture(scope="module")
def infer(server_channel):
    """GRPCInferenceService stub from the tests' own copy of the protocol."""
    from oip_ref import client as oip
    return oip.stub(server_channel)


@pytest.fixture(scope="module")
def textgen(server_channel):
    return velo_pb2_grpc.TextGenerationStub(server_channel)
