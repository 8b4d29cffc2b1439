"""TLS, mutual TLS and ACL authorization from a grpcio client, the way a book reader's
client connects: grpc.ssl_channel_credentials with the CA, and a client certificate whose
CN is the ACL subject. Certificates come from `proglog cert` and, separately, from the
openssl CLI (tests/fixtures/openssl-certs.sh)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import grpc
import pytest

from conftest import ROOT, ProglogServer, server_binary
from health.v1 import health_pb2
from log.v1 import log_pb2

FIXTURES = ROOT / "tests" / "fixtures"
MODEL = FIXTURES / "model.conf"
POLICY = FIXTURES / "policy.csv"


def _cli_certs(d: Path, ca_cn: str = "proglog CA", clients=("root", "nobody")) -> Path:
    b = str(server_binary())
    subprocess.run([b, "cert", "ca", "--dir", str(d), "--cn", ca_cn], check=True,
                   capture_output=True)
    subprocess.run([b, "cert", "server", "--dir", str(d), "localhost", "127.0.0.1"],
                   check=True, capture_output=True)
    for cn in clients:
        subprocess.run([b, "cert", "client", "--dir", str(d), cn], check=True,
                       capture_output=True)
    return d


@pytest.fixture(scope="session")
def cli_certs(tmp_path_factory) -> Path:
    d = _cli_certs(tmp_path_factory.mktemp("cli-certs"))
    # From the same CA: a certificate that expires at once.
    subprocess.run([str(server_binary()), "cert", "client", "--dir", str(d), "--days", "0",
                    "--name", "expired-client", "root"], check=True, capture_output=True)
    time.sleep(1.1)
    return d


@pytest.fixture(scope="session")
def openssl_certs(tmp_path_factory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI is not installed: openssl-made certificates untested")
    d = tmp_path_factory.mktemp("openssl-certs")
    subprocess.run(["bash", str(FIXTURES / "openssl-certs.sh"), str(d)], check=True)
    return d


@pytest.fixture(scope="session")
def other_ca(tmp_path_factory) -> Path:
    return _cli_certs(tmp_path_factory.mktemp("other-ca"), ca_cn="another CA", clients=("root",))


def creds(certs: Path, cn: str | None, ca: Path | None = None) -> grpc.ChannelCredentials:
    key = chain = None
    if cn is not None:
        key = (certs / f"{cn}-client-key.pem").read_bytes()
        chain = (certs / f"{cn}-client.pem").read_bytes()
    return grpc.ssl_channel_credentials(
        root_certificates=(ca or certs / "ca.pem").read_bytes(),
        private_key=key,
        certificate_chain=chain,
    )


class TlsServer(ProglogServer):
    """A proglog with TLS flags; the harness checks health as `root` over mutual TLS."""

    def __init__(self, data_dir, certs: Path, extra_args=(), mutual=True):
        self.certs = certs
        self.mutual = mutual
        args = ["--server-tls-cert-file", str(certs / "server.pem"),
                "--server-tls-key-file", str(certs / "server-key.pem")]
        if mutual:
            args += ["--server-tls-ca-file", str(certs / "ca.pem")]
        super().__init__(data_dir, [*args, *extra_args])

    def secure_channel(self, cn: str | None = "root", ca: Path | None = None,
                       name: str | None = None) -> grpc.Channel:
        opts = [("grpc.use_local_subchannel_pool", 1)]
        if name is not None:
            opts.append(("grpc.ssl_target_name_override", name))
        ch = grpc.secure_channel(self.address, creds(self.certs if ca is None else ca, cn),
                                 options=opts)
        self._channels.append(ch)
        return ch

    def wait_serving(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        last = None
        ch = grpc.secure_channel(self.address,
                                 creds(self.certs, "root" if self.mutual else None))
        try:
            health = self.health(ch)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"proglog exited with {self.proc.returncode}:\n"
                                       + self.stderr_tail())
                try:
                    if health.Check(health_pb2.HealthCheckRequest(), timeout=1.0).status == \
                            health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError as e:
                    last = f"{e.code()}: {e.details()}"
                time.sleep(0.05)
        finally:
            ch.close()
        raise RuntimeError(f"not SERVING (last: {last}):\n" + self.stderr_tail())


@pytest.fixture
def tls_server(tmp_path):
    started: list[TlsServer] = []

    def start(certs: Path, *extra, mutual=True) -> TlsServer:
        srv = TlsServer(tmp_path / f"data{len(started)}", certs, extra, mutual).start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()
        srv.release_port()


def produce(srv, ch, value: bytes, topic: str = ""):
    return srv.log(ch).Produce(
        log_pb2.ProduceRequest(record=log_pb2.Record(value=value), topic=topic), timeout=10)


def consume(srv, ch, offset: int, topic: str = ""):
    return srv.log(ch).Consume(log_pb2.ConsumeRequest(offset=offset, topic=topic), timeout=10)


def wait_log(srv, needle: str) -> None:
    deadline = time.monotonic() + 10
    while needle not in srv.stderr_tail(200_000):
        assert time.monotonic() < deadline, f"log never said {needle!r}:\n{srv.stderr_tail()}"
        time.sleep(0.05)


@pytest.mark.parametrize("maker", ["cli_certs", "openssl_certs"])
def test_mutual_tls_root_may_nobody_may_not(request, tls_server, maker):
    certs = request.getfixturevalue(maker)
    srv = tls_server(certs, "--acl-model-file", str(MODEL), "--acl-policy-file", str(POLICY))
    root = srv.secure_channel("root")
    off = produce(srv, root, b"hello").offset
    assert consume(srv, root, off).record.value == b"hello"

    nobody = srv.secure_channel("nobody")
    for call in (lambda: produce(srv, nobody, b"x"), lambda: consume(srv, nobody, off)):
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as e:
        produce(srv, nobody, b"x")
    assert e.value.details() == "nobody not permitted to produce to *"
    # Health stays open.
    assert srv.health(nobody).Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
        health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("maker", ["cli_certs", "openssl_certs"])
def test_tls_without_client_certificate(request, tls_server, maker):
    certs = request.getfixturevalue(maker)
    srv = tls_server(certs, mutual=False)
    ch = srv.secure_channel(None)
    off = produce(srv, ch, b"server-only TLS").offset
    assert consume(srv, ch, off).record.value == b"server-only TLS"


def _unavailable(srv, ch) -> str:
    with pytest.raises(grpc.RpcError) as e:
        srv.health(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE, e.value
    return e.value.details() or ""


def test_rejections_leave_the_server_unharmed(tls_server, cli_certs, other_ca):
    srv = tls_server(cli_certs, "--acl-model-file", str(MODEL), "--acl-policy-file", str(POLICY))

    _unavailable(srv, srv.secure_channel(None))
    wait_log(srv, "peer sent no certificates")

    # A client certificate from a CA the server does not trust.
    ch = grpc.secure_channel(srv.address, grpc.ssl_channel_credentials(
        root_certificates=(cli_certs / "ca.pem").read_bytes(),
        private_key=(other_ca / "root-client-key.pem").read_bytes(),
        certificate_chain=(other_ca / "root-client.pem").read_bytes()),
        options=[("grpc.use_local_subchannel_pool", 1)])
    _unavailable(srv, ch)
    ch.close()
    wait_log(srv, "UnknownIssuer")

    _unavailable(srv, srv.secure_channel("expired"))
    wait_log(srv, "certificate expired")

    # The client refuses the server: unknown CA, or a name the certificate does not carry.
    _unavailable(srv, srv.secure_channel("root", ca=other_ca))
    _unavailable(srv, srv.secure_channel("root", name="wrong.example"))

    # Plaintext to the TLS port.
    plain = grpc.insecure_channel(srv.address, options=[("grpc.use_local_subchannel_pool", 1)])
    with pytest.raises(grpc.RpcError) as e:
        srv.health(plain).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, e.value
    assert "requires TLS" in e.value.details()
    plain.close()
    wait_log(srv, "plaintext connection from")

    # The peer-channel byte (node to node), on a node that serves no peer channel.
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
        s.sendall(b"\x01\x00\x00\x00")
        assert s.recv(100) == b""
    wait_log(srv, "peer connection from")

    assert srv.proc.poll() is None
    root = srv.secure_channel("root")
    assert produce(srv, root, b"still serving").offset >= 0


def test_per_topic_grant_and_policy_reload(tls_server, tmp_path):
    certs = _cli_certs(tmp_path / "certs", clients=("root", "alice"))
    policy = tmp_path / "policy.csv"
    policy.write_text("p, root, *, admin\np, root, *, produce\np, alice, orders, produce\n")
    srv = tls_server(certs, "--acl-model-file", str(MODEL), "--acl-policy-file", str(policy))
    root = srv.secure_channel("root")
    for name in ("orders", "audit"):
        srv.admin(root).CreateTopic(log_pb2.CreateTopicRequest(name=name), timeout=10)

    alice = srv.secure_channel("alice")
    produce(srv, alice, b"o", topic="orders")
    with pytest.raises(grpc.RpcError) as e:
        produce(srv, alice, b"a", topic="audit")
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert e.value.details() == "alice not permitted to produce to audit"

    # A good policy is picked up without a restart.
    policy.write_text("p, root, *, admin\np, alice, *, produce\n")
    deadline = time.monotonic() + 10
    while True:
        try:
            produce(srv, alice, b"a", topic="audit")
            break
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED
            assert time.monotonic() < deadline, srv.stderr_tail()
            time.sleep(0.1)

    # A bad one is refused and the good one stays in force.
    policy.write_text("p, alice, *, produce\nthis is not a policy line\n")
    wait_log(srv, "keeping the previous one")
    produce(srv, alice, b"a", topic="audit")
