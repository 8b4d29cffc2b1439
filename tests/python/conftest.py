"""Fixtures that run the real `proglog` server binary for grpcio clients.

The binary comes from $PROGLOG_BIN, else target/debug/proglog (CARGO_TARGET_DIR is
honoured). Stubs generated from proto/proto come from $PROGLOG_PY_GEN, else
target/pyenv/gen; scripts/python-tests makes both.

Each server gets its own temporary data directory and an explicit free port on
127.0.0.1. The listener uses SO_REUSEPORT, so "nothing listens there right now" is not
enough to own a port: a port is also claimed with an exclusive flock on
$TMPDIR/net-test-ports/<port>, the same scheme as the Rust network tests, and held while
the server runs.
"""

from __future__ import annotations

import ctypes
import fcntl
import os

# grpcio's fork handlers can abort a child between fork and exec when a server is started
# while grpcio's threads run; the children exec at once and need none of its state.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GEN = Path(os.environ.get("PROGLOG_PY_GEN") or ROOT / "target" / "pyenv" / "gen")
if not (GEN / "log" / "v1" / "log_pb2.py").exists():
    raise RuntimeError(
        f"generated stubs not found in {GEN}: run scripts/python-tests "
        "(or set PROGLOG_PY_GEN)"
    )
sys.path.insert(0, str(GEN))

import grpc  # noqa: E402

from health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from log.v1 import log_pb2_grpc  # noqa: E402

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
MiB = 1 << 20


def server_binary() -> Path:
    env = os.environ.get("PROGLOG_BIN")
    if env:
        return Path(env)
    target = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target")
    if not target.is_absolute():
        target = ROOT / target
    return target / "debug" / "proglog"


# --- ports -----------------------------------------------------------------------------

# Below the kernel's ephemeral range (32768 and up here), as the Rust tests do: a port from
# that range can be handed to any `bind(port 0)` the moment the probe below releases it (a
# server's own admin listener on port 0 took the gRPC port chosen for it).
_PORT_LOW, _PORT_SPAN = 20_000, 12_000
_next_port = _PORT_LOW + (os.getpid() * 7919) % _PORT_SPAN


def claim_port():
    """Returns (port, lock file) for a port on 127.0.0.1 that nothing listens on."""
    global _next_port
    lock_dir = Path(tempfile.gettempdir()) / "net-test-ports"
    lock_dir.mkdir(parents=True, exist_ok=True)
    for _ in range(_PORT_SPAN):
        port = _next_port
        _next_port = _PORT_LOW + (_next_port + 1 - _PORT_LOW) % _PORT_SPAN
        try:
            lock = open(lock_dir / str(port), "w")
        except OSError:
            continue
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            continue
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            lock.close()
            continue
        finally:
            probe.close()
        return port, lock
    raise RuntimeError("no free port found")


# --- the server process ----------------------------------------------------------------

def _die_with_parent() -> None:
    """In the child before exec: SIGTERM the server if the test process dies, so that a
    killed pytest leaves no server behind (Linux PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


_running: list["ProglogServer"] = []


class ProglogServer:
    """One `proglog` process, with helpers to make channels and stubs to it."""

    def __init__(self, data_dir: Path, extra_args=(), port: int | None = None, lock=None):
        self.data_dir = Path(data_dir)
        self.extra_args = list(extra_args)
        if port is None:
            port, lock = claim_port()
        self.port = port
        self._lock = lock
        self.address = f"127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None
        self.stderr_path = self.data_dir.parent / f"{self.data_dir.name}.port{port}.stderr"
        self._channels: list[grpc.Channel] = []
        self._default_channel: grpc.Channel | None = None

    # process control

    def start(self) -> "ProglogServer":
        binary = server_binary()
        if not binary.exists():
            raise RuntimeError(f"server binary {binary} not found: build it first")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            str(binary),
            "--data-dir", str(self.data_dir),
            "--listen", self.address,
            *self.extra_args,
        ]
        # Servers run side by side: each takes an admin port of its own unless told one
        # (admin_url reads which from the log).
        if not any(a.startswith("--admin-addr") for a in self.extra_args):
            cmd += ["--admin-addr", "127.0.0.1:0"]
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        env.setdefault("RUST_BACKTRACE", "1")
        self._stderr = open(self.stderr_path, "ab")
        self._stderr.write(f"$ {' '.join(cmd)}\n".encode())
        self._stderr.flush()
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._stderr,
            stderr=self._stderr,
            env=env,
            preexec_fn=_die_with_parent,
        )
        _running.append(self)
        try:
            self.wait_serving(START_TIMEOUT_S)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_serving(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        last = None
        with grpc.insecure_channel(self.address) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"proglog exited with {self.proc.returncode} during start-up:\n"
                        + self.stderr_tail()
                    )
                try:
                    resp = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                    if resp.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                    last = f"status {resp.status}"
                except grpc.RpcError as e:
                    last = f"{e.code()}: {e.details()}"
                time.sleep(0.05)
        raise RuntimeError(
            f"proglog on {self.address} not SERVING after {timeout_s}s (last: {last}):\n"
            + self.stderr_tail()
        )

    def terminate(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, then wait; returns the exit code, or None if it had to be killed."""
        self.close_channels()
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self._finish()
                return None
        self._finish()
        return self.proc.returncode

    def stop(self) -> None:
        code = self.terminate()
        if code is None:
            sys.stderr.write(
                f"\nproglog on {self.address} ignored SIGTERM for {STOP_TIMEOUT_S}s: killed\n"
            )
        elif code != 0:
            sys.stderr.write(f"\nproglog on {self.address} exited with {code}\n")

    def _finish(self) -> None:
        if self in _running:
            _running.remove(self)
        if not self._stderr.closed:
            self._stderr.close()

    def release_port(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    @property
    def admin_url(self) -> str:
        """http://host:port of the admin server (/metrics, /healthz, /readyz), from the
        server's log."""
        mark = "admin HTTP on http://"
        text = self.stderr_path.read_text(errors="replace")
        at = text.rfind(mark)
        if at < 0:
            raise RuntimeError("the server did not log an admin address:\n" + text[-4000:])
        return "http://" + text[at + len(mark):].split()[0]

    def stderr_tail(self, max_bytes: int = 16_000) -> str:
        try:
            data = self.stderr_path.read_bytes()
        except OSError:
            return "(no stderr)"
        if len(data) > max_bytes:
            data = b"...\n" + data[-max_bytes:]
        return data.decode(errors="replace")

    # clients

    def channel(self, options=(), own_connection: bool = False) -> grpc.Channel:
        """A new channel, closed when the server stops. With own_connection, the channel
        does not share grpcio's global subchannel pool, so it opens its own TCP connection
        (grpcio otherwise keeps one connection per target)."""
        opts = list(options)
        if own_connection:
            opts.append(("grpc.use_local_subchannel_pool", 1))
        ch = grpc.insecure_channel(self.address, options=opts)
        self._channels.append(ch)
        return ch

    @property
    def default_channel(self) -> grpc.Channel:
        if self._default_channel is None:
            self._default_channel = self.channel()
        return self._default_channel

    def log(self, channel: grpc.Channel | None = None) -> log_pb2_grpc.LogStub:
        return log_pb2_grpc.LogStub(channel or self.default_channel)

    def admin(self, channel: grpc.Channel | None = None) -> log_pb2_grpc.AdminStub:
        return log_pb2_grpc.AdminStub(channel or self.default_channel)

    def health(self, channel: grpc.Channel | None = None) -> health_pb2_grpc.HealthStub:
        return health_pb2_grpc.HealthStub(channel or self.default_channel)

    def close_channels(self) -> None:
        for ch in self._channels:
            ch.close()
        self._channels.clear()
        self._default_channel = None


class ServerFactory:
    def __init__(self, base: Path):
        self.base = base
        self.servers: list[ProglogServer] = []

    def start(self, *extra_args, data_dir: Path | None = None) -> ProglogServer:
        if data_dir is None:
            data_dir = Path(tempfile.mkdtemp(prefix="data-", dir=self.base))
        srv = ProglogServer(data_dir, extra_args).start()
        self.servers.append(srv)
        return srv

    def restart(self, srv: ProglogServer) -> ProglogServer:
        """Starts a new process on the same data directory and port as a stopped one."""
        again = ProglogServer(srv.data_dir, srv.extra_args, port=srv.port, lock=srv._lock)
        srv._lock = None
        again.start()
        self.servers.append(again)
        return again

    def stop_all(self) -> None:
        for srv in self.servers:
            srv.stop()
            srv.release_port()
        self.servers.clear()


# --- fixtures ----------------------------------------------------------------------------

@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """One server for the whole session, default settings. Tests share its `default`
    topic, so they must use the offsets the server returns, not assume they start at 0."""
    factory = ServerFactory(tmp_path_factory.mktemp("shared"))
    try:
        yield factory.start()
    finally:
        factory.stop_all()


@pytest.fixture
def server_factory(tmp_path_factory):
    """Starts servers private to one test (fresh data dir, optional extra flags)."""
    factory = ServerFactory(tmp_path_factory.mktemp("private"))
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture
def fresh_server(server_factory):
    """A private server with an empty log, default settings."""
    return server_factory.start()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        for srv in list(_running):
            report.sections.append(
                (f"proglog {srv.address} stderr (tail)", srv.stderr_tail())
            )
    return report
