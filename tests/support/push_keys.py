"""Key material for the local push servers, generated per test run with `cryptography`.

- a test CA and a server certificate for Apple's APNs host names, so a client trusts the local APNs
  only through an SSL context that trusts this CA;
- an ES256 key in Apple's .p8 form (PKCS#8 PEM) with its key id and team id;
- a Google service account (RSA key, client email, token URI) like the JSON a Firebase console hands out.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

APNS_HOSTS = ("api.push.apple.com", "api.development.push.apple.com")


def _pem_private(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _pem_public(key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey) -> str:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@dataclass(frozen=True)
class Tls:
    """A CA certificate (PEM) and a server certificate + key it signed (PEM)."""

    ca_pem: str
    cert_pem: str
    key_pem: str

    def write(self, directory: Path) -> tuple[Path, Path, Path]:
        """Write ca.pem, server.pem and server.key into `directory`; return their paths."""
        directory.mkdir(parents=True, exist_ok=True)
        paths = (directory / "ca.pem", directory / "server.pem", directory / "server.key")
        for path, text in zip(paths, (self.ca_pem, self.cert_pem, self.key_pem), strict=True):
            path.write_text(text)
        return paths


def make_tls(names: tuple[str, ...] = APNS_HOSTS) -> Tls:
    """A fresh CA and a server certificate for `names` (plus 127.0.0.1), valid for a day."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "memharbor test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return Tls(
        ca_pem=ca_cert.public_bytes(serialization.Encoding.PEM).decode(),
        cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
        key_pem=_pem_private(key),
    )


@dataclass(frozen=True)
class ApnsKey:
    """An APNs auth key as Apple issues it: the .p8 PEM, its key id, the team id, and the public half."""

    team_id: str
    key_id: str
    p8: str
    public_pem: str

    def env(self, bundle_id: str) -> dict[str, str]:
        """The APNS_* variables for this key (the key inline, with `\\n` escapes)."""
        return {
            "APNS_TEAM_ID": self.team_id,
            "APNS_KEY_ID": self.key_id,
            "APNS_BUNDLE_ID": bundle_id,
            "APNS_KEY_CONTENT": self.p8.replace("\n", "\\n"),
        }


def make_apns_key() -> ApnsKey:
    """A fresh P-256 key with random 10-character key and team ids."""
    key = ec.generate_private_key(ec.SECP256R1())
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"
    team = "".join(secrets.choice(alphabet) for _ in range(10))
    kid = "".join(secrets.choice(alphabet) for _ in range(10))
    return ApnsKey(team_id=team, key_id=kid, p8=_pem_private(key), public_pem=_pem_public(key.public_key()))


@dataclass(frozen=True)
class ServiceAccount:
    """A Google service account key file's content and its public key."""

    info: dict[str, Any]
    public_pem: str

    @property
    def json(self) -> str:
        return json.dumps(self.info)

    @property
    def client_email(self) -> str:
        return str(self.info["client_email"])

    @property
    def key_id(self) -> str:
        return str(self.info["private_key_id"])


def make_service_account(project_id: str, token_uri: str) -> ServiceAccount:
    """A fresh RSA-2048 service account for `project_id` whose tokens come from `token_uri`."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    email = f"firebase-adminsdk-test@{project_id}.iam.gserviceaccount.com"
    info = {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": secrets.token_hex(20),
        "private_key": _pem_private(key),
        "client_email": email,
        "client_id": str(secrets.randbelow(10**20)),
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": f"https://www.googleapis.com/robot/v1/metadata/x509/{email}",
    }
    return ServiceAccount(info=info, public_pem=_pem_public(key.public_key()))
