"""``edgekit serve``: the device's models behind the Open Inference Protocol (KServe v2).

REST (Starlette on uvicorn) and gRPC (grpcio) over one repository of loaded models, with
dynamic batching, hot swaps that follow the encrypted store, and the limits a device on a
network needs. Needs ``edgekit[serve]``; the rest of the runtime imports without it.
"""

from edgekit.runtime.serve.batching import BatchSettings
from edgekit.runtime.serve.protocol import Limits, ProtocolError
from edgekit.runtime.serve.server import TLS, ServeConfig, check_installed, serve

__all__ = ["TLS", "BatchSettings", "Limits", "ProtocolError", "ServeConfig", "check_installed", "serve"]
