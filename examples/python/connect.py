"""How the examples connect to proglog: command-line flags and a grpcio channel, plaintext or
TLS (mutual TLS with a client certificate). Copy it along with the example you use."""

from __future__ import annotations

import argparse

import grpc


def add_flags(p: argparse.ArgumentParser) -> None:
    """The connection flags, named as the proglog CLI names them."""
    p.add_argument("--addr", default="127.0.0.1:8400", help="server host:port")
    p.add_argument("--tls-ca-file", help="CA certificate: connect with TLS")
    p.add_argument("--tls-cert-file", help="client certificate, for mutual TLS")
    p.add_argument("--tls-key-file", help="client key, for mutual TLS")
    p.add_argument("--tls-server-name", help="name to check the server certificate for")


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read()


def channel(args: argparse.Namespace) -> grpc.Channel:
    """A plaintext channel, or a TLS one when a CA file is given."""
    options = [
        # Notice a dead server or a silently dropped connection within ~80 s even on a
        # stream with nothing to say: a PING every 60 s, 20 s for its answer. proglog
        # accepts client PINGs at any rate.
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
    ]
    if args.tls_server_name:
        options.append(("grpc.ssl_target_name_override", args.tls_server_name))
    if not args.tls_ca_file:
        return grpc.insecure_channel(args.addr, options=options)
    creds = grpc.ssl_channel_credentials(
        root_certificates=_read(args.tls_ca_file),
        private_key=_read(args.tls_key_file),
        certificate_chain=_read(args.tls_cert_file),
    )
    return grpc.secure_channel(args.addr, creds, options=options)
