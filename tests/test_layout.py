"""The layout is the architecture: who may import whom, and what a party-only install needs."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT_PACKAGES = {"hefl", "coordinator", "parties", "tools", "bench"}
# Which project packages each package may import (itself always). The contract imports no
# role, neither role the other; the tools and the benchmarks are one layer above both roles.
ALLOWED = {
    "hefl": set(),
    "coordinator": {"hefl"},
    "parties": {"hefl"},
    "tools": {"hefl", "coordinator", "parties", "bench"},
    "bench": {"hefl", "coordinator", "parties", "tools"},
}
# Installed only by the extras (hefl[coordinator], hefl[tools]), never by hefl[party].
NOT_IN_A_PARTY_INSTALL = [
    "ray",
    "grpc_health",
    "prometheus_client",
    "sklearn",
    "matplotlib",
    "psutil",
    "tqdm",
]


def _imports(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports, wherever the import statement is."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_no_import_crosses_the_layout(package):
    crossings = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for name in sorted(_imports(path) & PROJECT_PACKAGES - {package} - ALLOWED[package])
    ]
    assert crossings == []


def test_the_contract_needs_no_extra():
    heavy = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sorted((ROOT / "hefl").rglob("*.py"))
        for name in sorted(_imports(path) & set(NOT_IN_A_PARTY_INSTALL))
    ]
    assert heavy == []


def _without_extras(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter where the extras' packages cannot be imported."""
    blocked = "import sys\n" + "".join(
        f"sys.modules[{n!r}] = None\n" for n in NOT_IN_A_PARTY_INSTALL
    )
    return subprocess.run(
        [sys.executable, "-c", blocked + code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_party_runs_without_ray_or_the_tools():
    result = _without_extras(
        "import parties.client, parties.keyholder\n"
        "from tools.cli import main\n"
        "main(['party', '--help'])\n"
    )
    assert result.returncode == 0, result.stderr
    assert "--key-holder" in result.stdout


def test_a_tool_says_which_extra_it_needs():
    result = _without_extras("from tools.cli import main\nmain(['simulate'])\n")
    assert result.returncode != 0
    assert "pip install 'hefl[tools]'" in result.stderr


def test_the_coordinator_never_loads_a_secret_key_share_type():
    """Collective mode: the coordinator runs the aggregator's half of every protocol; the module
    that defines a party's key share (hefl.protocols.collective.secret) is imported by parties
    only, so no SecretKeyShare can exist, be unpickled or arrive in its process."""
    secret = "hefl.protocols.collective.secret"
    code = (
        "import sys\n"
        "import coordinator.collective, coordinator.servicer, coordinator.driver\n"
        "import coordinator.server, coordinator.worker, coordinator.training\n"
        f"assert {secret!r} not in sys.modules, 'the coordinator imported the key share type'\n"
        "import parties.collective\n"
        f"assert {secret!r} in sys.modules\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    imports = [
        f"{path.relative_to(ROOT)}"
        for path in sorted((ROOT / "coordinator").rglob("*.py"))
        if secret in path.read_text()
    ]
    assert imports == []
