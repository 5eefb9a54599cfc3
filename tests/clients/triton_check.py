"""Run by tests/test_serve_clients.py in a virtualenv of its own that holds NVIDIA's Triton
client and no edgekit: ``python triton_check.py REST_ADDRESS GRPC_ADDRESS CASE.npz OUT.npz``.

The case holds the fusion model's inputs; every answer (HTTP with binary and with JSON
tensors, gRPC) is written to OUT.npz for the test to compare with ``Model.predict``.
"""

import sys

import numpy as np
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http


def ask(client, module, inputs, binary):
    tensors = []
    for name, datatype in (("image", "FP32"), ("ids", "INT64")):
        tensor = module.InferInput(name, inputs[name].shape, datatype)
        if module is triton_http:
            tensor.set_data_from_numpy(inputs[name], binary_data=binary)
        else:
            tensor.set_data_from_numpy(inputs[name])
        tensors.append(tensor)
    wanted = [
        module.InferRequestedOutput(n, binary_data=binary)
        if module is triton_http
        else module.InferRequestedOutput(n)
        for n in ("boxes", "scores")
    ]
    answer = client.infer("fusion", tensors, outputs=wanted, request_id="triton-1")
    response = answer.get_response(as_json=True) if module is triton_grpc else answer.get_response()
    assert response["id"] == "triton-1" and response["model_version"] == "1", response
    return {n: answer.as_numpy(n) for n in ("boxes", "scores")}


def main():
    rest, grpc_address, case, out = sys.argv[1:5]
    inputs = dict(np.load(case))
    found = {}
    for label, module, address in (("http", triton_http, rest), ("grpc", triton_grpc, grpc_address)):
        client = module.InferenceServerClient(address)
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("fusion")
        metadata = client.get_server_metadata(**({"as_json": True} if module is triton_grpc else {}))
        assert metadata["name"] == "edgekit" and "binary_tensor_data" in metadata["extensions"]
        for binary in (True, False) if module is triton_http else (True,):
            for name, array in ask(client, module, inputs, binary).items():
                found[f"{label}-{'binary' if binary else 'json'}-{name}"] = array
    np.savez(out, **found)


main()
