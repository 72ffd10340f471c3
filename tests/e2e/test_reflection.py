"""test_reflection.py - gRPC server reflection, grpc.reflection.v1alpha and
grpc.reflection.v1, as standard tools use it.

A client that knows only the reflection protos (the stubs in
build/python/grpc_reflection/{v1alpha,v1}) lists velod's services, fetches
their file descriptors with their dependencies, builds the message classes
from them at run time (descriptor_pool + message_factory) and calls
velo.v1.TextGeneration/Generate with them: the greedy text must be the
llama.cpp reference.  No velo stub is used for any of it.  Then every kind of
request the protocol has, including the ones that must answer NOT_FOUND, and
a malformed request.
"""
import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

import harness
from grpc_reflection.v1 import reflection_pb2 as refl_v1
from grpc_reflection.v1 import reflection_pb2_grpc as refl_v1_grpc
from grpc_reflection.v1alpha import reflection_pb2 as refl_v1alpha
from grpc_reflection.v1alpha import reflection_pb2_grpc as refl_v1alpha_grpc

N_TOKENS = 16

# The services velod serves whatever else it serves.
REQUIRED_SERVICES = {
    "velo.v1.TextGeneration",
    "velo.v1.Models",
    "inference.GRPCInferenceService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
}

VERSIONS = {
    "v1alpha": (refl_v1alpha, refl_v1alpha_grpc),
    "v1": (refl_v1, refl_v1_grpc),
}


class Reflection:
    """One reflection protocol version on a channel: ask() sends requests on
    one ServerReflectionInfo stream and returns the answers."""

    def __init__(self, channel, version):
        self.pb, grpc_mod = VERSIONS[version]
        self.stub = grpc_mod.ServerReflectionStub(channel)

    def ask(self, *requests):
        answers = list(self.stub.ServerReflectionInfo(iter(requests),
                                                      timeout=harness.CALL_TIMEOUT_S))
        assert len(answers) == len(requests)
        for req, ans in zip(requests, answers):
            assert ans.original_request == req
        return answers

    def one(self, **fields):
        return self.ask(self.pb.ServerReflectionRequest(**fields))[0]

    def services(self):
        ans = self.one(list_services="")
        assert ans.WhichOneof("message_response") == "list_services_response"
        return [s.name for s in ans.list_services_response.service]

    def files(self, **fields):
        """The FileDescriptorProtos of a file_descriptor_response."""
        ans = self.one(**fields)
        assert ans.WhichOneof("message_response") == "file_descriptor_response", ans
        return [descriptor_pb2.FileDescriptorProto.FromString(b)
                for b in ans.file_descriptor_response.file_descriptor_proto]

    def error(self, **fields):
        ans = self.one(**fields)
        assert ans.WhichOneof("message_response") == "error_response", ans
        return ans.error_response


@pytest.fixture(params=sorted(VERSIONS))
def refl(request, channel):
    return Reflection(channel, request.param)


def message_class(pool, name):
    desc = pool.FindMessageTypeByName(name)
    if hasattr(message_factory, "GetMessageClass"):  # protobuf >= 4.22
        return message_factory.GetMessageClass(desc)
    return message_factory.MessageFactory(pool).GetPrototype(desc)


def build_pool(files):
    """A fresh descriptor pool (not the default one, where the velo stubs of
    other tests live) with every file, dependencies first."""
    pool = descriptor_pool.DescriptorPool()
    by_name = {f.name: f for f in files}
    added = set()

    def add(f):
        if f.name in added:
            return
        for dep in f.dependency:
            assert dep in by_name, "%s imports %s, which reflection did not send" % (f.name, dep)
            add(by_name[dep])
        pool.Add(f)
        added.add(f.name)
    for f in files:
        add(f)
    return pool


def services_of(files):
    """{full service name: ServiceDescriptorProto} declared in files."""
    out = {}
    for f in files:
        for s in f.service:
            out[(f.package + "." if f.package else "") + s.name] = s
    return out


# ---- the Done-when check: list everything, then call Generate from descriptors alone --------
def test_list_describe_and_call_generate(refl, channel, prompts):
    listed = refl.services()
    assert len(listed) == len(set(listed)), listed
    assert REQUIRED_SERVICES <= set(listed), listed

    files = {}
    for name in listed:
        got = refl.files(file_containing_symbol=name)
        # The file declaring the service comes first, then its dependencies.
        assert name in services_of(got[:1]), (name, [f.name for f in got])
        for f in got:
            files[f.name] = f
    declared = services_of(files.values())
    for name in listed:
        assert declared[name].method, "%s has no methods" % name

    # Every service the files declare that is not listed really is not served.
    for name, svc in declared.items():
        if name in listed:
            continue
        call = channel.unary_unary("/%s/%s" % (name, svc.method[0].name),
                                   request_serializer=lambda b: b,
                                   response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as info:
            call(b"", timeout=harness.CALL_TIMEOUT_S)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED, (name, info.value.details())

    # Generate, with classes made from the descriptors velod sent.
    pool = build_pool(list(files.values()))
    method = pool.FindServiceByName("velo.v1.TextGeneration").methods_by_name["Generate"]
    assert method.server_streaming and not method.client_streaming
    request_cls = message_class(pool, method.input_type.full_name)
    response_cls = message_class(pool, method.output_type.full_name)
    p = prompts[0]
    req = request_cls(model=harness.F32, prompt=p["prompt"], max_tokens=N_TOKENS,
                      temperature=0.0, ignore_eos=True)
    generate = channel.unary_stream("/velo.v1.TextGeneration/Generate",
                                    request_serializer=request_cls.SerializeToString,
                                    response_deserializer=response_cls.FromString)
    answers = list(generate(req, timeout=harness.CALL_TIMEOUT_S))
    text = "".join(a.text for a in answers)
    ids = [i for a in answers for i in a.token_ids]
    assert text == harness.pieces_text(p["f32"]["gen_pieces_hex"], N_TOKENS)
    assert ids == p["f32"]["gen_ids"][:N_TOKENS]
    assert answers[-1].finish_reason == "length"

    # And a method of the Open Inference Protocol, the same way.
    live = pool.FindServiceByName("inference.GRPCInferenceService").methods_by_name["ServerLive"]
    live_req = message_class(pool, live.input_type.full_name)
    live_resp = message_class(pool, live.output_type.full_name)
    call = channel.unary_unary("/inference.GRPCInferenceService/ServerLive",
                               request_serializer=live_req.SerializeToString,
                               response_deserializer=live_resp.FromString)
    assert call(live_req(), timeout=harness.CALL_TIMEOUT_S).live is True


# ---- each kind of request -------------------------------------------------------------------
def test_file_by_filename_carries_dependencies(refl):
    for svc in refl.services():
        first = refl.files(file_containing_symbol=svc)[0]
        got = refl.files(file_by_filename=first.name)
        assert got[0] == first
        names = {f.name for f in got}
        for f in got:
            assert set(f.dependency) <= names, (f.name, list(f.dependency), names)


def test_file_containing_symbol_finds_every_kind_of_symbol(refl):
    velo = refl.files(file_by_filename="velo/v1/velo.proto")[0]
    health = refl.files(file_by_filename="grpc/health/v1/health.proto")[0]
    pkg = velo.package
    symbols = [
        "velo.v1.TextGeneration",                        # service
        "velo.v1.TextGeneration.Generate",               # method
        "velo.v1.GenerateRequest",                       # message
        "velo.v1.GenerateRequest.prompt",                # field
        "grpc.health.v1.HealthCheckResponse.ServingStatus",  # nested enum
        "grpc.health.v1.HealthCheckResponse.SERVING",    # enum value (in the enum's scope)
        "grpc.health.v1.HealthCheckResponse.status",     # field
        "grpc.reflection.v1.ServerReflectionRequest.message_request",  # oneof
    ]
    # Every message of velo.proto, nested ones included.
    def walk(scope, msgs):
        for m in msgs:
            symbols.append(scope + m.name)
            walk(scope + m.name + ".", m.nested_type)
            for e in m.enum_type:
                symbols.append(scope + m.name + "." + e.name)
    walk(pkg + ".", velo.message_type)
    for e in velo.enum_type:
        symbols.append(pkg + "." + e.name)
    for sym in symbols:
        got = refl.files(file_containing_symbol=sym)
        owner = got[0].name
        if sym.startswith("velo.v1."):
            assert owner == velo.name, sym
        elif sym.startswith("grpc.health.v1."):
            assert owner == health.name, sym
        else:
            assert owner.startswith("grpc/reflection/"), (sym, owner)


def test_unknown_names_are_not_found_and_the_stream_goes_on(refl):
    ask = refl.pb.ServerReflectionRequest
    answers = refl.ask(
        ask(file_by_filename="no/such.proto"),
        ask(file_containing_symbol="velo.v1.NoSuchThing"),
        ask(file_containing_symbol="velo.v1"),           # a package is not a symbol
        ask(file_containing_extension=refl.pb.ExtensionRequest(
            containing_type="velo.v1.GenerateRequest", extension_number=1000)),
        ask(file_containing_extension=refl.pb.ExtensionRequest(
            containing_type="no.Such", extension_number=1)),
        ask(all_extension_numbers_of_type="no.Such"),
        ask(list_services=""),
    )
    for ans, needle in zip(answers[:6], ["no/such.proto", "velo.v1.NoSuchThing", "'velo.v1'",
                                         "no extension number 1000", "no.Such", "no.Such"]):
        assert ans.WhichOneof("message_response") == "error_response", ans
        assert ans.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
        assert needle in ans.error_response.error_message, ans.error_response.error_message
    assert answers[6].WhichOneof("message_response") == "list_services_response"


def test_all_extension_numbers_of_a_known_type(refl):
    ans = refl.one(all_extension_numbers_of_type="velo.v1.GenerateRequest")
    assert ans.WhichOneof("message_response") == "all_extension_numbers_response", ans
    assert ans.all_extension_numbers_response.base_type_name == "velo.v1.GenerateRequest"
    assert list(ans.all_extension_numbers_response.extension_number) == []
    # A service is not a message type.
    err = refl.error(all_extension_numbers_of_type="velo.v1.TextGeneration")
    assert err.error_code == grpc.StatusCode.NOT_FOUND.value[0]


def test_host_is_echoed_and_an_empty_request_is_unimplemented(refl):
    ans = refl.one(host="velod.example", list_services="")
    assert ans.valid_host == "velod.example"
    err = refl.error()
    assert err.error_code == grpc.StatusCode.UNIMPLEMENTED.value[0]
    assert "list_services" in err.error_message


def test_undecodable_request_ends_the_stream(channel, refl):
    """Bytes that are no ServerReflectionRequest: INVALID_ARGUMENT, and the
    server goes on answering."""
    method = "/grpc.reflection.%s.ServerReflection/ServerReflectionInfo" % (
        "v1" if refl.pb is refl_v1 else "v1alpha")
    call = channel.stream_stream(method, request_serializer=lambda b: b,
                                 response_deserializer=lambda b: b)
    with pytest.raises(grpc.RpcError) as info:
        list(call(iter([b"\xff\xff\xff"]), timeout=harness.CALL_TIMEOUT_S))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert "ServerReflectionRequest" in info.value.details()
    assert REQUIRED_SERVICES <= set(refl.services())


def test_client_closing_at_once_ends_with_ok(refl):
    assert list(refl.stub.ServerReflectionInfo(iter([]), timeout=harness.CALL_TIMEOUT_S)) == []


def test_many_requests_on_one_stream(refl):
    ask = refl.pb.ServerReflectionRequest
    reqs = [ask(file_containing_symbol="velo.v1.TextGeneration"), ask(list_services="")] * 50
    answers = refl.ask(*reqs)
    assert [a.WhichOneof("message_response") for a in answers] == [
        "file_descriptor_response", "list_services_response"] * 50
