"""The package layering of README's module map, checked on the import graph (grimp).

Data flows one way: ``core`` and ``protocols`` are pure; ``store`` sits on ``core``; ``live``
and ``agent`` on ``store``; ``api`` wires everything. A package may import only the packages
listed for it below, so an import against the flow fails here, not in review.
"""

from __future__ import annotations

import grimp
import pytest

# For each package of gateway/: the packages of gateway/ it may import.
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "protocols": {"core"},
    "client": {"core"},
    "store": {"core"},
    "live": {"core", "store", "protocols"},
    "durable": {"core", "store", "live"},
    "agent": {"core", "store", "protocols"},
    "integrations": {"core", "store", "agent"},
    "api": {"core", "store", "live", "agent", "durable", "protocols"},
}


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("gateway")


def test_every_subpackage_has_a_layer(graph: grimp.ImportGraph) -> None:
    subpackages = {
        m.split(".")[1]
        for m in graph.modules
        if m.count(".") >= 1 and graph.find_children(".".join(m.split(".")[:2]))
    }
    assert subpackages == set(ALLOWED)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_follow_the_layers(graph: grimp.ImportGraph, package: str) -> None:
    imported = {
        other
        for other in ALLOWED
        if other != package
        and graph.direct_import_exists(
            importer=f"gateway.{package}", imported=f"gateway.{other}", as_packages=True
        )
    }
    assert imported <= ALLOWED[package], (
        f"gateway.{package} imports {sorted(imported - ALLOWED[package])}: against the "
        "layering in README's module map"
    )
