"""TLS and mTLS credentials for the gRPC port, re-read when the files change.

gRPC asks ``CertificateFiles.fetch`` for a configuration at every new handshake
(``grpc.dynamic_ssl_server_credentials``): it returns a new one when a file changed or after
SIGHUP, None otherwise. Connections already open keep the certificate they were made with, so
a rotation (cert-manager renewing a Kubernetes secret, say) drops no call. Files are checked
with the standard library's ``ssl`` before use: a key that does not match its certificate, or a
half-written file, is refused at start (ConfigError) and, on a reload, logged while the previous
certificate stays in force.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from pathlib import Path

import grpc

from semserve.config import ConfigError, SecurityConfig

log = logging.getLogger(__name__)


class CertificateFiles:
    def __init__(self, cert: Path, key: Path, client_ca: Path | None):
        self.cert, self.key, self.client_ca = Path(cert), Path(key), Path(client_ca) if client_ca else None
        self._stamp: tuple | None = None
        self._reload_requested = False
        self._lock = threading.Lock()

    def _paths(self) -> list[Path]:
        return [p for p in (self.cert, self.key, self.client_ca) if p is not None]

    def _current_stamp(self) -> tuple:
        return tuple((s.st_mtime_ns, s.st_size, s.st_ino) for s in (os.stat(p) for p in self._paths()))

    def load(self) -> grpc.ServerCertificateConfiguration:
        """Read and check the files; ConfigError when they are not a usable certificate and key."""
        stamp = self._current_stamp()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(self.cert, self.key)
            if self.client_ca is not None:
                context.load_verify_locations(self.client_ca)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"TLS files {', '.join(map(str, self._paths()))} are not usable: {exc}") from None
        config = grpc.ssl_server_certificate_configuration(
            [(self.key.read_bytes(), self.cert.read_bytes())],
            root_certificates=self.client_ca.read_bytes() if self.client_ca is not None else None,
        )
        self._stamp = stamp
        return config

    def request_reload(self) -> None:
        """SIGHUP: the next handshake re-reads the files even if they look unchanged."""
        self._reload_requested = True

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC at each handshake: a new configuration, or None to keep the current one."""
        with self._lock:
            try:
                if not self._reload_requested and self._current_stamp() == self._stamp:
                    return None
                self._reload_requested = False
                config = self.load()
            except (ConfigError, OSError) as exc:
                log.error("TLS: %s; the previous certificate stays in force", exc)
                return None
            log.info("TLS: certificate reloaded from %s", self.cert)
            return config


def server_credentials(config: SecurityConfig) -> tuple[grpc.ServerCredentials, CertificateFiles] | None:
    """Credentials for ``add_secure_port``, or None for a plaintext port."""
    if not config.tls:
        return None
    files = CertificateFiles(config.tls_cert, config.tls_key, config.tls_client_ca)
    credentials = grpc.dynamic_ssl_server_credentials(
        files.load(), files.fetch, require_client_authentication=config.tls_client_ca is not None
    )
    return credentials, files
