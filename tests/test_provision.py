"""`hefl provision`: kits with private keys for their owner only, and sites that survive
re-provisioning of others."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from hefl.errors import InvalidArgument
from hefl.identity import ROLE_COORDINATOR, ROLE_PARTY, TlsFiles
from parties.identity import PartyIdentity
from tools.provision import provision


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_project_has_a_kit_per_site_with_private_keys_0600(tmp_path):
    sites = provision(tmp_path, parties=["hospital-a", "hospital-b"])

    assert sorted((s.name, s.role) for s in sites) == [
        ("coordinator", ROLE_COORDINATOR),
        ("hospital-a", ROLE_PARTY),
        ("hospital-b", ROLE_PARTY),
    ]
    assert _mode(tmp_path / "ca" / "ca.key") == 0o600
    for name in ("hospital-a", "hospital-b"):
        assert _mode(tmp_path / name / "tls.key") == 0o600
        assert _mode(tmp_path / name / "signing.key") == 0o600
        identity = PartyIdentity.load(tmp_path / name)
        assert identity.name == name
    server = TlsFiles.load(tmp_path / "coordinator")
    assert server.identity.role == ROLE_COORDINATOR
    assert not (tmp_path / "coordinator" / "signing.key").exists()
    directory = json.loads((tmp_path / "sites.json").read_text())
    assert (tmp_path / "hospital-a" / "sites.json").read_text() == (
        tmp_path / "sites.json"
    ).read_text()
    keys = {s["name"]: s["signing_public_key"] for s in directory["sites"]}
    assert (
        keys["hospital-a"]
        == PartyIdentity.load(tmp_path / "hospital-a").signing_key.public_bytes.hex()
    )


def test_adding_or_renewing_a_site_leaves_the_others_as_they_were(tmp_path):
    first = {s.name: s.fingerprint for s in provision(tmp_path, parties=["a", "b"])}
    added = {s.name: s for s in provision(tmp_path, parties=["c"])}
    assert {n: added[n].fingerprint for n in first} == first
    assert added["c"].created and not added["a"].created

    renewed = {s.name: s.fingerprint for s in provision(tmp_path, parties=[], renew=["b"])}
    assert renewed["b"] != first["b"]
    assert renewed["a"] == first["a"] and renewed["coordinator"] == first["coordinator"]


@pytest.mark.parametrize("name", ["coordinator", "ca", "../escape", ""])
def test_reserved_and_unsafe_names_are_refused(tmp_path, name):
    with pytest.raises(InvalidArgument):
        provision(tmp_path, parties=[name])


def test_a_key_readable_by_others_is_refused(tmp_path):
    provision(tmp_path, parties=["a"])
    (tmp_path / "a" / "tls.key").chmod(0o644)
    with pytest.raises(InvalidArgument, match="readable by others"):
        TlsFiles.load(tmp_path / "a")
