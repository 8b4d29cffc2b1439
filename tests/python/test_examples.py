"""The Python examples (examples/python) as a user runs them: scripts in their own processes,
against the real server, plaintext and mutual TLS."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from conftest import GEN, ROOT
from test_tls import cli_certs, tls_server  # noqa: F401 (fixtures)

EXAMPLES = ROOT / "examples" / "python"
TIMEOUT_S = 30


def run(script: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args], input=stdin, text=True,
        capture_output=True, timeout=TIMEOUT_S, env=env())


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(GEN)}


def lines(out: str) -> list[tuple[int, str]]:
    return [(int(o), v) for o, v in (line.split("\t", 1) for line in out.splitlines())]


def metric(srv, series: str) -> float:
    import urllib.request
    with urllib.request.urlopen(srv.admin_url + "/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(series + " "):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_produce_then_consume_to_the_end(fresh_server):
    addr = ["--addr", fresh_server.address]
    words = [f"record {i}" for i in range(300)]  # more than the default window of 256
    p = run("producer.py", *addr, stdin="".join(w + "\n" for w in words))
    assert p.returncode == 0, p.stderr
    assert lines(p.stdout) == list(enumerate(words))

    c = run("consumer.py", *addr, "--offset", "298")
    assert c.returncode == 0, c.stderr
    assert lines(c.stdout) == [(298, "record 298"), (299, "record 299")]

    # Nothing at the offset asked for: said, and a failure, as `proglog consume` does.
    for past in ("300", "5000"):
        c = run("consumer.py", *addr, "--offset", past)
        assert c.returncode == 1 and c.stdout == "", c
        assert f"OUT_OF_RANGE: offset out of range: {past}" in c.stderr, c.stderr
        assert f"no record at offset {past}: the log is empty or ends before it" in c.stderr


def test_follow_sees_new_records_and_stops_on_sigint(fresh_server):
    addr = ["--addr", fresh_server.address]
    assert run("producer.py", *addr, stdin="before\n").returncode == 0
    tail = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "consumer.py"), *addr, "--follow"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    try:
        assert tail.stdout.readline() == "0\tbefore\n"
        assert run("producer.py", *addr, stdin="after\n").returncode == 0
        assert tail.stdout.readline() == "1\tafter\n"
        tail.send_signal(signal.SIGINT)
        assert tail.wait(TIMEOUT_S) == 0, tail.stderr.read()
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.wait()
    # The server saw the client leave: CANCELLED, not a failure.
    series = 'proglog_rpc_requests_total{method="/log.v1.Log/ConsumeStream",code="CANCELLED"}'
    deadline = time.monotonic() + TIMEOUT_S
    while metric(fresh_server, series) != 1.0:
        assert time.monotonic() < deadline, "the cancelled tail was not counted as CANCELLED"
        time.sleep(0.05)


def test_a_failed_stream_reports_what_became_of_the_unanswered_records(fresh_server):
    # A record over the server's limits fails the stream: the server refused it, so it and
    # what followed it were not stored, and the producer says so.
    for big in ("x" * 1_500_000, "x" * (5 << 20)):
        p = run("producer.py", "--addr", fresh_server.address, stdin=f"small\n{big}\nafter\n")
        assert p.returncode == 1
        assert "RESOURCE_EXHAUSTED" in p.stderr, p.stderr
        assert "1 acknowledged" in p.stderr, p.stderr
        assert "not stored" in p.stderr and "outcome unknown" not in p.stderr, p.stderr
    c = run("consumer.py", "--addr", fresh_server.address, "--offset", "0")
    assert c.returncode == 0, c.stderr
    assert lines(c.stdout) == [(0, "small"), (1, "small")], c.stdout


def test_examples_over_mutual_tls(tls_server, cli_certs):
    srv = tls_server(cli_certs, "--acl-model-file", str(ROOT / "tests/fixtures/model.conf"),
                     "--acl-policy-file", str(ROOT / "tests/fixtures/policy.csv"))
    def tls(cn: str) -> list[str]:
        return ["--addr", srv.address, "--tls-ca-file", str(cli_certs / "ca.pem"),
                "--tls-cert-file", str(cli_certs / f"{cn}-client.pem"),
                "--tls-key-file", str(cli_certs / f"{cn}-client-key.pem")]
    p = run("producer.py", *tls("root"), stdin="secret\n")
    assert p.returncode == 0, p.stderr
    c = run("consumer.py", *tls("root"))
    assert lines(c.stdout) == [(0, "secret")], c.stderr
    denied = run("consumer.py", *tls("nobody"))
    assert denied.returncode == 1
    assert "PERMISSION_DENIED: nobody not permitted to consume to *" in denied.stderr
