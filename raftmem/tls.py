"""TLS for the HTTP API and between nodes: the one module that builds SSL contexts.

A node holds two contexts: the server's (its certificate; client certificates
verified against `tls.ca_file` as `tls.client_auth` says) and the client's,
for the requests it sends to other nodes (forwarding, list fan-out, batches,
snapshots, membership): peers verified against the same CA, host names
checked, and its own certificate presented (so `client_auth: require` holds
between nodes too). `reload()` re-reads the files into the same contexts
(SIGHUP): connections made afterwards use the new certificate; open ones keep
theirs. A CA once loaded is not forgotten until a restart (OpenSSL adds
verify locations, it never removes them).
"""

from __future__ import annotations

import logging
import ssl

from .config import TlsConfig

log = logging.getLogger(__name__)

_VERIFY = {"none": ssl.CERT_NONE, "request": ssl.CERT_OPTIONAL, "require": ssl.CERT_REQUIRED}


class NodeTls:
    def __init__(self, config: TlsConfig) -> None:
        """`config`: this node's (paths already filled with its id)."""
        self.config = config
        self.server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server.minimum_version = ssl.TLSVersion.TLSv1_2
        self.server.verify_mode = _VERIFY[config.client_auth]
        self.client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        self.client.minimum_version = ssl.TLSVersion.TLSv1_2
        # Between nodes, TLS 1.2: a peer that refuses this node's certificate
        # then fails the handshake, before any request is sent, so a forwarded
        # write is known not to have happened (503, not 504). Under TLS 1.3 the
        # refusal comes after the client has sent its request, as a reset: the
        # write's fate would look unknown.
        self.client.maximum_version = ssl.TLSVersion.TLSv1_2
        self.reloads = 0
        self._load()

    def _load(self) -> None:
        cfg = self.config
        assert cfg.cert_file is not None and cfg.key_file is not None and cfg.ca_file is not None
        for context in (self.server, self.client):
            context.load_cert_chain(cfg.cert_file, cfg.key_file)
            context.load_verify_locations(cafile=cfg.ca_file)

    def reload(self) -> bool:
        """Re-read the certificate, key and CA (SIGHUP). False, and the old ones
        kept, when the new files do not load."""
        try:
            self._load()
        except (OSError, ssl.SSLError) as e:
            log.error("TLS reload failed, the old certificates stay: %s", e)
            return False
        self.reloads += 1
        log.info("TLS certificates reloaded from %s", self.config.cert_file)
        return True
