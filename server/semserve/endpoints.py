"""What the server opens besides its gRPC port (Prometheus /metrics) and what it says about it.

Kept free of torch so the supervisor can check the metrics port before an engine loads anything.
"""

from __future__ import annotations

import logging
import socket

from semserve.config import ConfigError, ServerConfig

log = logging.getLogger("semserve")


def metrics_address(config: ServerConfig) -> tuple[str, int]:
    return config.metrics_host or config.host, config.metrics_port


def _cannot_bind(host: str, port: int, exc: OSError) -> ConfigError:
    return ConfigError(f"cannot bind the metrics port {host}:{port}: {exc.strerror or exc}")


def check_metrics_port(config: ServerConfig) -> None:
    """ConfigError when /metrics could not bind its port (the supervisor asks before any child
    starts; the engine process binds it for real)."""
    if not config.metrics_port:
        return
    host, port = metrics_address(config)
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        raise _cannot_bind(host, port, exc) from None


def bind_metrics(config: ServerConfig) -> None:
    """Serve Prometheus /metrics over HTTP, before any model loads: a port that cannot be bound
    stops the server at once (ConfigError, exit status 2) instead of after minutes of loading."""
    if not config.metrics_port:
        return
    from prometheus_client import start_http_server

    host, port = metrics_address(config)
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        raise _cannot_bind(host, port, exc) from None


def metrics_description(config: ServerConfig) -> str:
    if not config.metrics_port:
        return ""
    host, port = metrics_address(config)
    return f"; metrics on http://{host}:{port}/metrics"


def warn_if_exposed(config: ServerConfig) -> None:
    """One warning for a server reachable beyond this host with neither keys nor TLS."""
    security = config.security
    if config.host not in ("127.0.0.1", "::1", "localhost") and not security.keys and not security.tls:
        log.warning("listening on %s with no API keys and no TLS: anyone who reaches this port can read, write and "
                    "drop collections; see docs/operations.md, Security", config.host)
