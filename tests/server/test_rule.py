"""THE RULE of futurelens/server (its docstring), checked on the source: what may ship to NDIF."""

from __future__ import annotations

import ast
import builtins
import re
from pathlib import Path

import yaml

import futurelens.server

SERVER = Path(futurelens.server.__file__).parent
# NDIF's published whitelist, vendored verbatim (its source and commit: tests/ndif_executor/protector.py).
WHITELIST_FILE = Path(__file__).parents[1] / "ndif_executor" / "whitelist.yaml"
WHITELIST = yaml.safe_load(WHITELIST_FILE.read_text())
COMMIT = "b7ac71f4e4a96fa95b1f155d613eba6069441db1"


def whitelisted(name: str) -> bool:
    """NDIF's ``WhitelistedModule.check`` over the execution list: strict = that module only, else it and below."""
    return any(name == m["name"] or (not m.get("strict", True) and name.startswith(m["name"] + "."))
               for m in WHITELIST["modules"])


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
                refused = [a.name for a in node.names if not whitelisted(a.name)]
                assert not refused, f"{path.name}: {ast.unparse(node)} imports {refused}, off NDIF's whitelist"
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # this package's own functions
                    continue
                assert whitelisted(node.module), f"{path.name}: {ast.unparse(node)} is off NDIF's whitelist"
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
        assert ".trace(" not in text and ".generate(" not in text and ".session(" not in text or path.name == "dispatch.py", path


def test_the_rule_names_ndifs_published_list_and_its_commit():
    """The docstring's list is the vendored whitelist's ``modules:`` section, in order, at the cited commit."""
    doc = " ".join(futurelens.server.__doc__.split())
    assert "github.com/ndif-team/ndif" in doc and COMMIT in doc and "whitelist.yaml" in doc
    listed = re.search(r"vendored in tests/ndif_executor/\): (.+?)\. Not ", doc).group(1).split(", ")
    assert listed == [m["name"] for m in WHITELIST["modules"]]
    assert COMMIT in (WHITELIST_FILE.parent / "protector.py").read_text()


def test_the_server_calls_only_whitelisted_builtins():
    """A builtin off the list (open, exec, locals, ...) does not exist where a shipped function runs."""
    allowed = set(WHITELIST["builtins"])
    for path in modules():
        tree = ast.parse(path.read_text())
        defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        defined |= {a.asname or a.name.split(".")[0] for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))
                    for a in n.names}
        for fn in (n for n in tree.body if isinstance(n, ast.FunctionDef)):
            local = {a.arg for a in ast.walk(fn) if isinstance(a, ast.arg)}
            local |= {n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
            used = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
            off = {u for u in used - local - defined if hasattr(builtins, u) and u not in allowed}
            assert not off, f"{path.name}:{fn.name} uses builtins off NDIF's list: {sorted(off)}"


def test_the_checks_refuse_what_the_old_server_code_imported():
    """The planted bug these checks exist for: the shared-prefix rollout imported copy and transformers."""
    assert not whitelisted("copy") and not whitelisted("transformers") and not whitelisted("dataclasses")
    assert whitelisted("torch") and whitelisted("torch.nn.functional") and whitelisted("math")
    assert not whitelisted("operator.sub") and whitelisted("operator")  # strict entries admit only themselves
