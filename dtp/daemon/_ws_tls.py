"""TLS for the daemon's WebSocket listener (``[daemon] websocket_cert`` and
``websocket_key``): ``wss://`` served directly, which a page loaded over https needs,
without a TLS proxy in front (behind one, every client has the proxy's address for the
per-address admission bounds: docs/protocol.md §8.6).

What the files hold and when they are read (at the config's parse, at start, at each
reload): docs/daemon.md, ``[daemon]``'s ``websocket_cert`` and ``websocket_key``.
"""

from __future__ import annotations

import datetime
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

__all__ = ["CertificateInfo", "TlsFileError", "read_certificate", "server_context"]

#: The ``--check`` warns of a certificate that ends within this many days.
EXPIRY_WARNING_DAYS = 14


class TlsFileError(ValueError):
    """A certificate or key file that cannot serve: ``key`` names the config key
    (``websocket_cert`` or ``websocket_key``) whose file is at fault."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class CertificateInfo:
    """What the certificate says, for ``--check`` and the logs."""

    subject: str
    names: tuple[str, ...]
    """Its subject alternative names (DNS names and IP addresses), what clients check."""
    not_after: datetime.datetime
    chain: int
    """Certificates in the file (1: no intermediates)."""

    def days_left(self, now: datetime.datetime | None = None) -> float:
        now = now or datetime.datetime.now(datetime.UTC)
        return (self.not_after - now).total_seconds() / 86400


def _read(path: Path, key: str, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsFileError(key, f"cannot read the {what} {path}: {exc.strerror or exc}") from None


def read_certificate(cert: Path, key: Path) -> CertificateInfo:
    """Check that ``cert`` holds a PEM certificate chain and ``key`` the unencrypted PEM
    private key of its first certificate; what the certificate says. TlsFileError
    naming the file and why otherwise."""
    cert_pem = _read(cert, "websocket_cert", "certificate file")
    key_pem = _read(key, "websocket_key", "key file")
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise TlsFileError(
            "websocket_cert", f"{cert} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        ) from None
    try:
        private = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise TlsFileError(
            "websocket_key",
            f"{key} is encrypted: the daemon takes an unencrypted key file "
            "(mode 0600, readable by the daemon's user alone)",
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise TlsFileError(
            "websocket_key", f"{key} holds no PEM private key (-----BEGIN PRIVATE KEY-----)"
        ) from None
    leaf = chain[0]
    public = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    ours = leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if public != ours:
        raise TlsFileError(
            "websocket_key",
            f"{key} is not the key of the certificate in {cert} "
            f"({leaf.subject.rfc4514_string() or 'no subject'})",
        )
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(
            [str(n) for n in san.get_values_for_type(x509.DNSName)]
            + [str(n) for n in san.get_values_for_type(x509.IPAddress)]
        )
    except x509.ExtensionNotFound:
        names = ()
    return CertificateInfo(
        subject=leaf.subject.rfc4514_string(),
        names=names,
        not_after=leaf.not_valid_after_utc,
        chain=len(chain),
    )


def server_context(cert: Path, key: Path) -> tuple[ssl.SSLContext, CertificateInfo]:
    """A TLS server context serving ``cert`` with ``key`` (checked by
    :func:`read_certificate` first, for its clear errors), and what the certificate
    says."""
    info = read_certificate(cert, key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    load(context, cert, key)
    return context, info


def load(context: ssl.SSLContext, cert: Path, key: Path) -> None:
    """Load ``cert`` and ``key`` into ``context``: the connections it accepts from now on
    are served with them (a reload's renewed certificate)."""
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise TlsFileError("websocket_cert", f"{cert} with {key}: {exc}") from None
