"""THE RULE of futurelens/server (its docstring), checked on the source: what may ship to NDIF."""

from __future__ import annotations

import ast
from pathlib import Path

import futurelens.server

SERVER = Path(futurelens.server.__file__).parent
ALLOWED_MODULES = {"__future__", "torch", "copy", "transformers"}
ALLOWED_FROM_TRANSFORMERS = {"DynamicCache"}


def modules():
    return sorted(p for p in SERVER.glob("*.py") if p.name != "__init__.py")


def test_the_rule_is_written_at_the_top_of_the_package():
    doc = futurelens.server.__doc__
    assert doc.startswith("The server side: every function here may run on an NDIF server. THE RULE")
    assert modules(), "the server package has modules"


def test_only_plain_functions_and_module_level_allowed_imports():
    for path in modules():
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.Import):
                assert {a.name.split(".")[0] for a in node.names} <= ALLOWED_MODULES, (path.name, ast.unparse(node))
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # this package's own functions
                    continue
                assert node.module.split(".")[0] in ALLOWED_MODULES, (path.name, ast.unparse(node))
                if node.module == "transformers":
                    assert {a.name for a in node.names} <= ALLOWED_FROM_TRANSFORMERS, ast.unparse(node)
            elif isinstance(node, ast.FunctionDef):
                assert not node.decorator_list, f"{path.name}:{node.name} is decorated: a wrapper ships the wrong source"
                inner = [n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))]
                assert not inner, f"{path.name}:{node.name} imports inside a function: {ast.unparse(inner[0])}"
                nested = [n for n in ast.walk(node) if isinstance(n, (ast.ClassDef, ast.AsyncFunctionDef))]
                assert not nested, f"{path.name}:{node.name} defines a class inside"
            elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
                continue  # the module docstring
            else:
                raise AssertionError(f"{path.name}: only imports and functions may sit at module level, found {ast.unparse(node)[:80]}")


def test_futurelens_names_the_server_functions_only_through_run_job():
    """Client modules hand server functions to run_job; they never open a trace themselves."""
    root = SERVER.parent
    for path in root.rglob("*.py"):
        if SERVER in path.parents:
            continue
        text = path.read_text()
        assert ".trace(" not in text and ".generate(" not in text and ".session(" not in text or path.name == "remote.py", path
