"""``hefl provision``: a project's root CA and one startup kit per site.

Layout of a project folder (only ``ca/`` must stay with the project's administrator; each other
folder is copied to its site and nowhere else)::

    ca/ca.key, ca/ca.pem       the root CA (ECDSA P-256); the key signs site certificates only
    sites.json                 public directory: every site's role, certificate fingerprint and,
                               for parties, the Ed25519 key that verifies its signatures
    coordinator/               ca.pem, tls.pem (server certificate, with the given DNS names and
                               IP addresses), tls.key
    <party>/                   ca.pem, tls.pem (client certificate), tls.key, signing.key

Running it again adds the sites that are new and leaves every existing one as it is, so other
sites keep working; ``--renew NAME`` re-issues one site's certificate and keys (its fingerprint
and signing key change, so rosters that named it need the new ones from ``sites.json``).
Private keys are written 0600 from their first byte.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hefl.errors import InvalidArgument
from hefl.identity import (
    CA_FILE,
    CERT_FILE,
    KEY_FILE,
    ROLE_COORDINATOR,
    ROLE_PARTY,
    SIGNING_KEY_FILE,
    certificate_identity,
    check_name,
    write_private,
)

SITES_FILE = "sites.json"
COORDINATOR_KIT = "coordinator"
VALID_DAYS = 825


@dataclass(frozen=True)
class ProvisionedSite:
    name: str
    role: str
    kit: Path
    fingerprint: str
    signing_public_key: str  # hex; empty for the coordinator
    created: bool


def provision(
    project: Path,
    *,
    parties: Sequence[str],
    coordinator_hosts: Sequence[str] = ("localhost", "127.0.0.1"),
    renew: Sequence[str] = (),
    project_name: str = "hefl",
) -> list[ProvisionedSite]:
    """Create or extend a project's CA and startup kits; returns every site of the project.

    Raises:
        InvalidArgument: A bad or reserved site name, or ``renew`` names an unknown site.
    """
    for name in parties:
        check_name("party", name)
        if name in (COORDINATOR_KIT, "ca"):
            raise InvalidArgument(f"{name!r} is reserved; choose another party name")
    project.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _certificate_authority(project, project_name)
    known = _read_sites(project)
    unknown = [n for n in renew if n not in known and n not in parties and n != COORDINATOR_KIT]
    if unknown:
        raise InvalidArgument(f"cannot renew unknown sites {unknown}")
    wanted = {
        COORDINATOR_KIT: ROLE_COORDINATOR,
        **{n: ROLE_PARTY for n in known if n != COORDINATOR_KIT},
    }
    wanted.update({name: ROLE_PARTY for name in parties})
    sites = []
    for name, role in wanted.items():
        kit = project / name
        fresh = name in renew or not (kit / CERT_FILE).is_file()
        if fresh:
            _issue_kit(kit, name, role, ca_key, ca_cert, project_name, coordinator_hosts)
        sites.append(_describe(kit, name, role, created=fresh))
    _write_sites(project, sites)
    return sites


def _certificate_authority(
    project: Path, project_name: str
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    folder = project / "ca"
    key_path, cert_path = folder / "ca.key", folder / CA_FILE
    if key_path.is_file() and cert_path.is_file():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key, x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, project_name),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{project_name} root CA"),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=10 * 365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_private(key_path, _pem_private(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def _issue_kit(
    kit: Path,
    name: str,
    role: str,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    project_name: str,
    hosts: Sequence[str],
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, project_name),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
                    x509.NameAttribute(NameOID.COMMON_NAME, name),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if role == ROLE_COORDINATOR:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        ).add_extension(x509.SubjectAlternativeName(_alt_names(hosts)), critical=False)
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    kit.mkdir(parents=True, exist_ok=True)
    (kit / CA_FILE).write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    (kit / CERT_FILE).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_private(kit / KEY_FILE, _pem_private(key))
    if role == ROLE_PARTY:
        write_private(kit / SIGNING_KEY_FILE, _pem_private(Ed25519PrivateKey.generate()))


def _alt_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _pem_private(key: ec.EllipticCurvePrivateKey | Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def signing_public_key(kit: Path) -> bytes:
    """The raw Ed25519 public key of a party kit's signing key."""
    key = serialization.load_pem_private_key((kit / SIGNING_KEY_FILE).read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _describe(kit: Path, name: str, role: str, *, created: bool) -> ProvisionedSite:
    identity = certificate_identity((kit / CERT_FILE).read_bytes())
    return ProvisionedSite(
        name=name,
        role=role,
        kit=kit,
        fingerprint=identity.fingerprint,
        signing_public_key=signing_public_key(kit).hex() if role == ROLE_PARTY else "",
        created=created,
    )


def _read_sites(project: Path) -> dict[str, dict[str, str]]:
    path = project / SITES_FILE
    if not path.is_file():
        return {}
    return {site["name"]: site for site in json.loads(path.read_text())["sites"]}


def _write_sites(project: Path, sites: list[ProvisionedSite]) -> None:
    entries = [
        {
            "name": site.name,
            "role": site.role,
            "fingerprint": site.fingerprint,
            "signing_public_key": site.signing_public_key,
        }
        for site in sorted(sites, key=lambda s: (s.role != ROLE_COORDINATOR, s.name))
    ]
    text = json.dumps({"sites": entries}, indent=1) + "\n"
    # The directory is public: every kit carries a copy (parties check rosters against it).
    for folder in [project, *(site.kit for site in sites)]:
        (folder / SITES_FILE).write_text(text)


def remove_project(project: Path) -> None:
    """Delete a throwaway project (simulations provision one per run)."""
    shutil.rmtree(project, ignore_errors=True)
