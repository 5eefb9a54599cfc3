"""The Open Inference Protocol over gRPC: ``inference.GRPCInferenceService``.

The stubs are generated from ``proto/grpc_predict_v2.proto``. Tensors arrive either as typed
``contents`` or as ``raw_input_contents``; outputs go back raw, as Triton sends them. A
protocol error is a gRPC status with the same one line the REST side sends.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from concurrent import futures
from typing import TypeVar

import grpc
import numpy as np

from edgekit.runtime.serve.proto import grpc_predict_v2_pb2 as pb
from edgekit.runtime.serve.proto import grpc_predict_v2_pb2_grpc as pb_grpc
from edgekit.runtime.serve.protocol import (
    Limits,
    ProtocolError,
    TensorSpec,
    datatype,
    decode_tensor,
    from_buffer,
    from_list,
    raw_bytes,
    select_outputs,
)
from edgekit.runtime.serve.repository import Repository
from edgekit.runtime.serve.rest import EXTENSIONS, SERVER_NAME, model_metadata

log = logging.getLogger("edgekit.serve")
access = logging.getLogger("edgekit.serve.access")

_Code = grpc.StatusCode
CODES = {
    400: _Code.INVALID_ARGUMENT, 401: _Code.UNAUTHENTICATED, 404: _Code.NOT_FOUND,
    408: _Code.DEADLINE_EXCEEDED, 413: _Code.RESOURCE_EXHAUSTED, 503: _Code.UNAVAILABLE,
    504: _Code.DEADLINE_EXCEEDED,
}  # fmt: skip

_CONTENTS = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}  # fmt: skip
"""Which typed field of InferTensorContents holds each datatype (FP16 only travels raw)."""

Reply = TypeVar("Reply")


class Servicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, repository: Repository, limits: Limits, timeout_s: float, token: bytes | None) -> None:
        self.repository, self.limits, self.timeout_s = repository, limits, timeout_s
        self.expected = b"Bearer " + token if token else None

    def _call(self, context: grpc.ServicerContext, what: str, answer: Callable[[], Reply]) -> Reply:
        started, code = time.perf_counter(), grpc.StatusCode.OK
        try:
            if self.expected is not None and not self._authorized(context):
                raise ProtocolError(
                    401, "a bearer token is required: send metadata authorization: Bearer TOKEN"
                )
            return answer()
        except ProtocolError as exc:
            code = CODES.get(exc.status, grpc.StatusCode.INVALID_ARGUMENT)
            message = str(exc)
        except Exception as exc:  # logged here; one line on the wire
            log.exception("internal error in %s", what)
            code, message = grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}"
        finally:
            access.info("grpc %s %s %.2f ms", what, code.name, (time.perf_counter() - started) * 1000)
        context.abort(code, message)
        raise AssertionError("abort raises")  # pragma: no cover

    def _authorized(self, context: grpc.ServicerContext) -> bool:
        assert self.expected is not None
        given = dict(context.invocation_metadata()).get("authorization", "")
        return hmac.compare_digest(str(given).encode(), self.expected)

    def ServerLive(  # the proto's names
        self, request: pb.ServerLiveRequest, context: grpc.ServicerContext
    ) -> pb.ServerLiveResponse:
        return self._call(context, "ServerLive", lambda: pb.ServerLiveResponse(live=True))

    def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.ServicerContext
    ) -> pb.ServerReadyResponse:
        return self._call(
            context, "ServerReady", lambda: pb.ServerReadyResponse(ready=bool(self.repository.names()))
        )

    def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.ServicerContext
    ) -> pb.ModelReadyResponse:
        return self._call(context, "ModelReady", lambda: pb.ModelReadyResponse(
            ready=self.repository.ready(request.name, request.version or None)))

    def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.ServicerContext
    ) -> pb.ServerMetadataResponse:
        import edgekit

        return self._call(context, "ServerMetadata", lambda: pb.ServerMetadataResponse(
            name=SERVER_NAME, version=edgekit.__version__, extensions=list(EXTENSIONS)))

    def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.ServicerContext
    ) -> pb.ModelMetadataResponse:
        def answer() -> pb.ModelMetadataResponse:
            found = model_metadata(self.repository, request.name, request.version or None)
            tensors = {key: [pb.ModelMetadataResponse.TensorMetadata(**t) for t in found[key]]
                       for key in ("inputs", "outputs")}  # fmt: skip
            return pb.ModelMetadataResponse(
                name=found["name"], versions=found["versions"], platform=found["platform"], **tensors
            )

        return self._call(context, "ModelMetadata", answer)

    def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.ServicerContext
    ) -> pb.ModelInferResponse:
        return self._call(context, "ModelInfer", lambda: self._infer(request))

    def _infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        name, version = request.model_name, request.model_version or None
        served = self.repository.get(name, version)
        inputs = self._inputs(request, {t.name: t for t in served.inputs})
        served, future = self.repository.infer(name, version, inputs)
        try:
            arrays = future.result(self.timeout_s)
        except futures.TimeoutError:
            future.cancel()
            raise ProtocolError(504, f"{served.name} did not answer within {self.timeout_s:g} s") from None
        except Exception as exc:  # the engine's own error types
            raise ProtocolError(400, f"{served.name} v{served.version}: {exc}") from None
        wanted = [(o.name, True) for o in request.outputs] or None
        reply = pb.ModelInferResponse(
            model_name=served.name, model_version=str(served.version), id=request.id
        )
        for out_name, array, _ in select_outputs(served.output_names, arrays, wanted):
            reply.outputs.add(name=out_name, datatype=datatype(array.dtype), shape=list(array.shape))
            reply.raw_output_contents.append(raw_bytes(array))
        return reply

    def _inputs(self, request: pb.ModelInferRequest, specs: dict[str, TensorSpec]) -> dict[str, np.ndarray]:
        raw = list(request.raw_input_contents)
        if raw and len(raw) != len(request.inputs):
            raise ProtocolError(400, f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs")
        inputs: dict[str, np.ndarray] = {}
        for index, tensor in enumerate(request.inputs):
            shape = list(tensor.shape)
            _, dtype, _ = decode_tensor(tensor.name, tensor.datatype, shape, specs, self.limits)
            if raw:
                inputs[tensor.name] = from_buffer(tensor.name, raw[index], dtype, shape)
            elif tensor.datatype in _CONTENTS:
                data = getattr(tensor.contents, _CONTENTS[tensor.datatype])
                inputs[tensor.name] = from_list(tensor.name, list(data), dtype, shape)
            else:
                raise ProtocolError(
                    400, f"input '{tensor.name}': {tensor.datatype} travels in raw_input_contents"
                )
        return inputs


def add_service(server: grpc.Server, servicer: Servicer) -> None:
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
