"""The layers: numerics import no web stack and no client; the client imports no server module."""

import ast
import pathlib

SRC = pathlib.Path(__file__).resolve().parents[1] / "src" / "bncheck"
WEB = {"fastapi", "starlette", "uvicorn", "pydantic", "pydantic_settings", "httpx", "prometheus_client"}


def _imports(package: pathlib.Path):
    """(file, absolute module names it imports, how far a relative import climbs above the package)."""
    for path in package.rglob("*.py"):
        depth = len(path.relative_to(package).parts) - 1  # 0 for a module of the package itself
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                yield path, [a.name for a in node.names], 0
            elif isinstance(node, ast.ImportFrom):
                yield path, [node.module or ""], max(0, node.level - depth)


def test_numerics_import_no_web_stack_no_client_and_no_server():
    for path, names, level in _imports(SRC / "numerics"):
        assert level <= 1, f"{path.name} imports from outside the numerics"
        for name in names:
            assert name.split(".")[0] not in WEB, f"{path.name} imports {name}"
            assert not name.startswith(("bncheck.server", "bncheck.client")), f"{path.name} imports {name}"


def test_the_client_imports_no_server_module():
    for path, names, level in _imports(SRC / "client"):
        assert level <= 1, f"{path.name} imports from outside the client"
        for name in names:
            assert not name.startswith("bncheck.server"), f"{path.name} imports {name}"
            assert name.split(".")[0] not in {"fastapi", "starlette", "uvicorn"}, f"{path.name} imports {name}"


def test_one_top_level_package():
    assert sorted(p.name for p in SRC.parent.iterdir() if p.is_dir() and not p.name.endswith(".egg-info")) == [
        "bncheck"]
