"""oip_ref - the end-to-end tests' independent client for the Open Inference
Protocol: our own transcription of the published protocol definition
(oipref/grpc_service.proto, not the one in proto/inference/) and the helpers
the protocol tests share (client.py).  See client.py for how the stubs are
generated and why they live in a private descriptor pool.
"""
