"""The Ray-join check against a cluster with Ray's own TLS (``RAY_USE_TLS``): a real
`ray start --head` on loopback whose nodes speak TLS with a throwaway CA made here. The check
joins over TLS with Ray's certificate variables, and without them refuses at once saying what to
set instead of retrying until its deadline; a plaintext gRPC server given to a TLS-configured
coordinator is refused the same way."""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import tempfile
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from coordinator.ray_pool import RayJoinRefused, check_join
from tests.deployment import ray_head, ray_joining_coordinator, stopped_once_joined

WAIT_S = 120.0  # a hang guard, never a measured duration


@dataclass(frozen=True)
class RayTls:
    """Ray's TLS variables for one node: its certificate and key, and the cluster's CA."""

    cert: Path
    key: Path
    ca: Path

    def environment(self) -> dict[str, str]:
        return {
            "RAY_USE_TLS": "1",
            "RAY_TLS_SERVER_CERT": str(self.cert),
            "RAY_TLS_SERVER_KEY": str(self.key),
            "RAY_TLS_CA_CERT": str(self.ca),
        }


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ray_tls(folder: Path) -> RayTls:
    """A throwaway CA and one certificate it signed for 127.0.0.1, which Ray's nodes use both
    as servers and as clients."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("hefl test Ray CA"))
        .issuer_name(_name("hefl test Ray CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("ray-node"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = RayTls(folder / "node.pem", folder / "node.key", folder / "ca.pem")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    files.key.chmod(0o600)
    return files


@pytest.fixture(scope="module")
def tls_cluster() -> Iterator[tuple[str, RayTls]]:
    """A one-node Ray cluster (`ray start --head`) on loopback with Ray's TLS; yields its
    address and the TLS files its nodes (and a coordinator) use."""
    temp = Path(tempfile.mkdtemp(prefix="hefl-tls-", dir="/tmp"))  # Ray's socket paths are short
    tls = make_ray_tls(temp)
    home = temp / "home"  # without a token of Ray's (~/.ray/auth_token): TLS alone
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env |= tls.environment() | {"HOME": str(home)}
    try:
        with ray_head(temp, env) as address:
            yield address, tls
    finally:
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def no_ray_tls(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """This process without Ray's TLS or token variables."""
    for name in list(os.environ):
        if name.startswith(("RAY_TLS_", "RAY_AUTH")) or name == "RAY_USE_TLS":
            monkeypatch.delenv(name)
    return monkeypatch


def test_the_join_check_speaks_tls_with_rays_certificate_variables(tls_cluster, no_ray_tls):
    address, tls = tls_cluster
    for name, value in tls.environment().items():
        no_ray_tls.setenv(name, value)

    check_join(address, timeout_s=WAIT_S)


def test_without_them_the_check_refuses_at_once_saying_what_to_set(tls_cluster, no_ray_tls):
    address, _ = tls_cluster

    with pytest.raises(RayJoinRefused) as refused:
        check_join(address, timeout_s=WAIT_S)

    message = str(refused.value)
    assert message.startswith(f"the Ray cluster at {address} uses Ray's TLS and this process")
    assert "set RAY_USE_TLS=1, and RAY_TLS_SERVER_CERT, RAY_TLS_SERVER_KEY and RAY_TLS_CA_CERT" in (
        message
    )


def test_rays_tls_variables_naming_no_file_are_refused(tls_cluster, no_ray_tls, tmp_path):
    address, tls = tls_cluster
    for name, value in tls.environment().items():
        no_ray_tls.setenv(name, value)
    no_ray_tls.setenv("RAY_TLS_SERVER_KEY", str(tmp_path / "missing.key"))

    with pytest.raises(RayJoinRefused) as refused:
        check_join(address, timeout_s=WAIT_S)

    assert str(refused.value).startswith(f"cannot join Ray at {address} over TLS: ")
    assert "missing.key" in str(refused.value)


def test_a_plaintext_server_is_refused_to_a_process_with_rays_tls(no_ray_tls, tmp_path):
    """A gRPC server without TLS where the cluster should be (a real one, serving nothing)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    for name, value in make_ray_tls(tmp_path).environment().items():
        no_ray_tls.setenv(name, value)
    try:
        with pytest.raises(RayJoinRefused) as refused:
            check_join(f"127.0.0.1:{port}", timeout_s=WAIT_S)
    finally:
        server.stop(0)

    assert str(refused.value) == (
        f"the Ray cluster at 127.0.0.1:{port} does not use TLS but this process does "
        "(RAY_USE_TLS=1): unset RAY_USE_TLS, or start the cluster's nodes with Ray's TLS"
    )


def test_hefl_coordinator_joins_a_tls_cluster_with_rays_certificate_variables(
    tls_cluster, tmp_path
):
    """Past the check, Ray's own join (``ray.init``) reads the same variables."""
    address, tls = tls_cluster
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_TLS_"))}
    env |= tls.environment() | {"HOME": str(home)}
    process, log = ray_joining_coordinator(tmp_path, address, env)
    stopped_once_joined(process, log, wait_s=WAIT_S)
    assert process.returncode == 0, log.read_text(errors="replace")
