"""``edgekit serve`` as a user runs it: a real process on free ports, and v2 clients for it."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Server:
    info: dict[str, Any]
    process: subprocess.Popen[str]
    log: Path

    @property
    def rest(self) -> str:
        return str(self.info["rest"])

    @property
    def grpc(self) -> str:
        return str(self.info["grpc"])

    def stub(self) -> Any:
        import grpc

        from edgekit.runtime.serve.proto import grpc_predict_v2_pb2_grpc as pb_grpc

        return pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(self.grpc))

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(60)


@contextmanager
def serving(
    *args: str, log: Path, env: Mapping[str, str] | None = None, wait_s: float = 120, nofile: int | None = None
) -> Iterator[Server]:
    """Start ``edgekit serve ARGS --json`` on free ports; SIGTERM it afterwards. Its stderr
    (the access log) goes to ``log``, so that a full pipe never blocks the server. ``nofile``:
    the server's open-files limit (ulimit -n)."""
    command = [sys.executable, "-m", "edgekit", "serve", *args, "--port", "0", "--grpc-port", "0", "--json"]

    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    with open(log, "w") as err:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=err, text=True, env={**os.environ, **(env or {})},
            preexec_fn=limit,
        )
    try:
        assert process.stdout is not None
        line = _first_line(process, wait_s)
        if not line:
            process.wait(30)
            raise AssertionError(f"edgekit serve exited {process.returncode}: {log.read_text()[-2000:]}")
        server = Server(json.loads(line), process, log)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _first_line(process: subprocess.Popen[str], wait_s: float) -> str:
    import selectors

    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and process.poll() is None:
        if selector.select(timeout=0.5):
            return process.stdout.readline()
    return ""


def json_input(name: str, array: np.ndarray, datatype: str) -> dict[str, Any]:
    data = [x.decode() if isinstance(x, bytes) else x for x in array.ravel().tolist()]
    return {"name": name, "shape": list(array.shape), "datatype": datatype, "data": data}


def rest_outputs(response: dict[str, Any]) -> dict[str, np.ndarray]:
    return {o["name"]: np.asarray(o["data"], np.float32).reshape(o["shape"]) for o in response["outputs"]}


def binary_request(inputs: Mapping[str, tuple[np.ndarray, str]], outputs: list[str]) -> tuple[bytes, int]:
    """A request in the binary tensor data extension: the JSON header, then raw tensors."""
    header = {
        "inputs": [{"name": n, "shape": list(a.shape), "datatype": d, "parameters": {"binary_data_size": a.nbytes}}
                   for n, (a, d) in inputs.items()],
        "outputs": [{"name": n, "parameters": {"binary_data": True}} for n in outputs],
    }  # fmt: skip
    raw = json.dumps(header).encode()
    return raw + b"".join(np.ascontiguousarray(a).tobytes() for a, _ in inputs.values()), len(raw)


def binary_outputs(body: bytes, header_length: int) -> dict[str, np.ndarray]:
    header = json.loads(body[:header_length])
    found, at = {}, header_length
    for out in header["outputs"]:
        size = out["parameters"]["binary_data_size"]
        found[out["name"]] = np.frombuffer(body[at : at + size], np.float32).reshape(out["shape"])
        at += size
    assert at == len(body)
    return found


def make_pki(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and localhost, and a client certificate, as
    PEM files: what mutual TLS on a device needs (real keys, made here)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    files: dict[str, Path] = {}

    def issue(
        name: str, issuer: tuple[x509.Name, Any] | None, extensions: list[tuple[Any, bool]]
    ) -> tuple[x509.Name, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"edgekit test {name}")])
        signer_name, signer_key = issuer or (subject, key)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(signer_name)
            .public_key(key.public_key())
        )
        builder = builder.serial_number(x509.random_serial_number()).not_valid_before(
            now - datetime.timedelta(minutes=5)
        )
        builder = builder.not_valid_after(now + datetime.timedelta(days=1))
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        cert = builder.sign(signer_key, hashes.SHA256())
        files[f"{name}.pem"] = folder / f"{name}.pem"
        files[f"{name}.pem"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files[f"{name}.key"] = folder / f"{name}.key"
        files[f"{name}.key"].write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        return subject, key

    ca = issue("ca", None, [(x509.BasicConstraints(ca=True, path_length=0), True)])
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    issue("server", ca, [(x509.SubjectAlternativeName(names), False)])
    issue("client", ca, [(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), False)])
    return files
