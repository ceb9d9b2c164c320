"""The engine's imports only go down (README, "Layout"): the shared vocabulary at the bottom, then the source,
the destinations, and replication on top; no `dagster` anywhere in it; and no import inside a function except
the lazy ones named here (each keeps a heavy library out of commands that do not need it)."""

from __future__ import annotations

import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[2] / "rds_pipeline" / "engine"

# the layer of each engine module, by dotted path under rds_pipeline.engine (longest prefix wins)
LAYERS = {
    "": 0,  # errors, config, selection, naming, ...: the bottom
    "core": 0,
    "source.catalog": 0,  # the catalog's data classes (selection and core describe tables with them)
    "source": 1,
    "destinations": 2,
    "replication": 3,
}
LAZY = {  # (module, imported): why it is imported inside a function
    ("source.connection", "source.tunnel"): "paramiko loads only for a tunnel",
    ("destinations.factory", "destinations.duckdb"): "duckdb loads only for a DuckDB destination",
    ("destinations.factory", "destinations.postgres"): "a DuckDB user's commands skip the PostgreSQL loader",
}


def layer(module: str) -> int:
    name = module.removeprefix("rds_pipeline.engine").lstrip(".")
    if "." not in name and name not in ("core", "source", "destinations", "replication"):
        return LAYERS[""]
    best = max((p for p in LAYERS if p and (name == p or name.startswith(p + "."))), key=len)
    return LAYERS[best]


def imports(path: Path) -> list[tuple[str, bool, bool]]:
    """(module imported, inside a function, under TYPE_CHECKING) for every import of the file."""
    tree = ast.parse(path.read_text())
    found: list[tuple[str, bool, bool]] = []

    def visit(node: ast.AST, in_function: bool, typing_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ImportFrom) and child.module:
                found.append((child.module, in_function, typing_only))
            elif isinstance(child, ast.Import):
                found.extend((alias.name, in_function, typing_only) for alias in child.names)
            checking = isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test)
            visit(
                child,
                in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)),
                typing_only or checking,
            )

    visit(tree, False, False)
    return found


def test_engine_imports_only_go_down() -> None:
    upward, dagster, inside = [], [], []
    for path in sorted(ENGINE.rglob("*.py")):
        module = ".".join(path.relative_to(ENGINE).with_suffix("").parts).removesuffix(".__init__")
        for imported, in_function, typing_only in imports(path):
            if imported.split(".")[0] == "dagster":
                dagster.append(f"{module} imports {imported}")
            if not imported.startswith("rds_pipeline.engine"):
                continue
            target = imported.removeprefix("rds_pipeline.engine").lstrip(".")
            if layer(imported) > layer(module) and not typing_only:
                upward.append(f"{module} imports {target}")
            if in_function and (module, target) not in LAZY:
                inside.append(f"{module} imports {target} inside a function")
    assert not dagster, dagster
    assert not upward, upward
    assert not inside, inside
    assert layer("rds_pipeline.engine.replication.cdc.flow") == 3 and layer("rds_pipeline.engine.errors") == 0
    assert layer("rds_pipeline.engine.source.catalog") == 0 and layer("rds_pipeline.engine.source.probe") == 1
