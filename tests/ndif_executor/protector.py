"""NDIF's production import whitelist, re-implemented from its published code, for the stand-in server's third mode.

Source: github.com/ndif-team/ndif, ``src/services/ray/src/ray/nn/security/protected_environment.py`` and
``whitelist.yaml`` (vendored verbatim beside this file), at commit b7ac71f4e4a96fa95b1f155d613eba6069441db1
(branch ``caden/cpu``, 2026-02-21: the newest published revision; MIT licence, (c) Northeastern University).
NDIF's model actor (``deployments/modeling/base.py`` there) runs a request in two guarded phases:

- deserialising: ``with Protector(WHITELISTED_MODULES_DESERIALIZATION)`` — every import, including the
  unpickler resolving a global (``find_class`` imports its module), must be on the ``modules`` or the
  ``deserialization_modules`` list (``transformers``, ``pickle``, ``cloudpickle``, nnsight's own modules);
- executing: ``Protector(WHITELISTED_MODULES, builtins=True)`` — imports only from the ``modules`` list
  (torch, collections, math, einops, typing, operator, enum, numpy, ... — no ``copy``, no ``transformers``,
  no ``dataclasses``, no ``os``), and no builtin off the ``builtins`` list (``open``, ``locals``, ``exec`` ...).

A module that is not whitelisted is not refused at the import itself: the importer hands back an
``UnauthorizedModule`` whose first use raises ``ImportError("Module <name> is not whitelisted")`` — the text
a client sees. A whitelisted module comes back as a read-only copy (``ProtectedModule``) whose submodule
attributes are checked in turn.

What differs from the published file, and why (the rule itself is not changed):
- the published code subclasses nnsight 0.5's ``Patcher``/``Patch`` (gone in nnsight 0.8): `Protector`
  does the same dictionary patching itself;
- it also wraps nnsight 0.5's ``StreamTracer.execute`` (streaming, which futurelens does not use and 0.8 lacks);
- ``restricted_exec`` sets SAFE_BUILTINS in the namespace it is given instead of a plain-dict copy (nnsight
  0.8's block namespace finds globals through ``__missing__``, which a copy loses);
- its RestrictedPython guards are not installed: the published ``restricted_compile`` compiles with the
  plain ``compile`` (its docstring: the AST transform broke nnsight), so those guards are never reached;
- nnsight 0.8 moved the modules the 0.5-era list names (``nnsight.intervention.tracing.base`` ...) to
  ``nnsight.tracing`` / ``nnsight.intervention``, and imports ``linecache``/``zstandard`` inside its own
  functions: the deserialisation list here also admits the nnsight package itself (`NNSIGHT_08`), and an
  import made by nnsight's (or the server's) own code is not checked (`SERVER_PACKAGES`) — what NDIF must
  allow to serve nnsight 0.8 at all. Everything the request's own code imports, and every global the
  unpickler resolves (checked in ``find_class``, since C's unpickler imports on behalf of nnsight's frame),
  is held to the published lists; nothing outside nnsight is added to them.
- the builtins rule is applied to the code the request ships — its block (through ``restricted_exec``, as
  published) and every function it ships (built with `SHIPPED_BUILTINS`) — rather than by deleting builtins
  interpreter-wide: deleted interpreter-wide, transformers' own Mamba forward fails (``locals`` is gone from
  under setuptools' import hook it calls), which no client can change.
- cloudpickle's ``subimport`` answers as the importer did: published, a refused module the server had
  already loaded came back whole (it returns ``sys.modules[name]``), so ``import copy`` at the top of shipped
  code slipped through; the whitelist's intent is that such a module is unusable, and this checks it.
"""

from __future__ import annotations

import ast
import builtins as _builtins
import sys as _sys
import types
from pathlib import Path
from types import ModuleType
from typing import Any

import cloudpickle
import yaml
from nnsight.intervention import serialization

SOURCE = "github.com/ndif-team/ndif@b7ac71f4e4a96fa95b1f155d613eba6069441db1:src/services/ray/src/ray/nn/security/whitelist.yaml"
WHITELIST = yaml.safe_load((Path(__file__).with_name("whitelist.yaml")).read_text())
WHITELISTED_BUILTINS = set(WHITELIST["builtins"])
SERVER_PACKAGES = ("nnsight.", "ndif.")


class WhitelistedModule:
    def __init__(self, name: str, strict: bool = True) -> None:
        self.name, self.strict = name, strict

    def check(self, name: str) -> bool:
        if self.strict:
            return self.name == name
        return self.name == name or name.startswith(self.name + ".")


WHITELISTED_MODULES = [WhitelistedModule(**m) for m in WHITELIST["modules"]]
NNSIGHT_08 = [WhitelistedModule("nnsight", strict=False)]
WHITELISTED_MODULES_DESERIALIZATION = [
    *(WhitelistedModule(**m) for m in WHITELIST["deserialization_modules"]),
    *NNSIGHT_08,
    *WHITELISTED_MODULES,
]


class UnauthorizedModule:
    """Placeholder for a module that is not whitelisted: any use raises NDIF's ImportError."""

    def __init__(self, name: str) -> None:
        object.__setattr__(self, "_module_name", name)

    def _raise_error(self) -> None:
        raise ImportError(f"Module {object.__getattribute__(self, '_module_name')} is not whitelisted")

    def __getattribute__(self, name: str) -> Any:
        if name in ("_module_name", "_raise_error"):
            return object.__getattribute__(self, name)
        object.__getattribute__(self, "_raise_error")()

    def __setattr__(self, name: str, value: Any) -> None:
        self._raise_error()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self._raise_error()

    def __iter__(self) -> Any:
        self._raise_error()

    def __getitem__(self, key: Any) -> Any:
        self._raise_error()

    def __bool__(self) -> bool:
        self._raise_error()

    def __repr__(self) -> str:
        return f"<UnauthorizedModule '{object.__getattribute__(self, '_module_name')}'>"


class ProtectedModule(ModuleType):
    """A read-only copy of a whitelisted module; its submodule attributes must be whitelisted too."""

    def __init__(self, entry: WhitelistedModule) -> None:
        object.__setattr__(self, "_initializing", True)
        super().__init__(entry.name)
        object.__setattr__(self, "whitelist_entry", entry)
        object.__setattr__(self, "_initializing", False)

    def __getattribute__(self, name: str) -> Any:
        attr = super().__getattribute__(name)
        if not isinstance(attr, ModuleType):
            return attr
        entry = self.whitelist_entry
        if entry.strict:
            if self.__name__ != attr.__name__:
                raise AttributeError(f"Module attribute {attr.__name__} is not whitelisted")
        elif not attr.__name__.startswith(self.__name__ + "."):
            raise AttributeError(f"Module attribute {attr.__name__} is not whitelisted")
        protected = ProtectedModule(entry)
        protected.__dict__.update(attr.__dict__)
        return protected

    def __setattr__(self, name: str, value: Any) -> None:
        if object.__getattribute__(self, "_initializing"):
            object.__setattr__(self, name, value)
            return
        raise AttributeError(f"Cannot modify protected module: setting '{name}' is not allowed")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Cannot modify protected module: deleting '{name}' is not allowed")


def _protected(entry: WhitelistedModule, module: ModuleType) -> ProtectedModule:
    protected = ProtectedModule(entry)
    protected.__dict__.update(module.__dict__)
    return protected


class Protector:
    """``with Protector(modules, builtins=...)``: NDIF's import whitelist (and builtins whitelist) while inside.

    As published: ``builtins.__import__`` is replaced interpreter-wide by the whitelisting importer, and with
    ``builtins=True`` every builtin not on the list is removed from the interpreter's builtins while inside.
    An allowed import runs with the guard lifted (the module's own imports are its business), as there.
    """

    def __init__(self, modules: list[WhitelistedModule], builtins: bool = False, unpickler: type | None = None) -> None:
        self.modules, self.builtins, self.unpickler = modules, builtins, unpickler
        # nnsight's unpickler defines no find_class of its own: the C unpickler's is used (and restored).
        self.unpickler_find_class = unpickler.find_class if unpickler is not None else None
        self.table = vars(_builtins)
        self.saved: dict | None = None

    def _import(self, name, globals=None, locals=None, fromlist=(), level=0):
        if name in ("builtins", "__builtins__"):
            return SafeBuiltins()
        if str((globals or {}).get("__name__", "")).startswith(SERVER_PACKAGES):
            # The server's own machinery importing for itself (nnsight 0.8 imports linecache, zstandard ...
            # inside its functions): NDIF's list for nnsight 0.8 must admit those, whatever it is.
            with self._escaped():
                return self.saved["__import__"](name, globals, locals, fromlist, level)
        if level > 0:
            with self._escaped():
                result = self.saved["__import__"](name, globals, locals, fromlist, level)
            name = result.__name__
        entry = next((m for m in self.modules if m.check(name)), None)
        if entry is None:
            return UnauthorizedModule(name)
        if level == 0:
            with self._escaped():
                result = self.saved["__import__"](name, globals, locals, fromlist, level)
        return _protected(entry, result)

    def _escaped(self) -> "_Escape":
        return _Escape(self)

    def subimport(self, name):
        """cloudpickle's ``subimport`` (how a shipped function's module globals, ``copy`` in ``import copy``, are
        rebuilt): it calls ``__import__`` but then returns ``sys.modules[name]``, so a refused module that the
        server happens to have loaded would come back whole. Here it comes back as the importer answered."""
        module = self._import(name)
        if isinstance(module, UnauthorizedModule):
            return module
        return _sys.modules[name]

    def find_class(self, unpickler, module, name):
        """The unpickler resolving a global: its module must be listed (published: it goes through __import__)."""
        if not any(m.check(module) for m in self.modules):
            raise ImportError(f"Module {module} is not whitelisted")
        with self._escaped():
            self.unpickler_find_class(unpickler, module, name)  # imports it, with the guard lifted
        # Resolved again inside, where cloudpickle's subimport is the guarded one.
        found = _sys.modules[module]
        for part in name.split("."):
            found = getattr(found, part)
        return found

    def __enter__(self) -> "Protector":
        if self.saved is None:
            self.saved = dict(self.table)
        self.table["__import__"] = self._import
        if self.builtins:
            # As published, compile and exec become the restricted versions (the block runs through exec).
            self.table["compile"], self.table["exec"] = restricted_compile, self.restricted_exec
        if self.unpickler is not None:
            protector = self
            self.unpickler.find_class = lambda unpickler, module, name: protector.find_class(unpickler, module, name)
            cloudpickle.cloudpickle.subimport = self.subimport
            cloudpickle.cloudpickle._make_function = _make_function
            cloudpickle.cloudpickle._function_setstate = _function_setstate
            serialization._load_function = _load_function
        return self

    def __exit__(self, *exc: Any) -> None:
        self.table.clear()
        self.table.update(self.saved)
        if self.unpickler is not None:
            self.unpickler.find_class = self.unpickler_find_class
            cloudpickle.cloudpickle.subimport = _subimport
            cloudpickle.cloudpickle._make_function = _cloudpickle_make_function
            cloudpickle.cloudpickle._function_setstate = _cloudpickle_function_setstate
            serialization._load_function = _nnsight_load_function

    def safe_builtins(self) -> dict:
        """SAFE_BUILTINS as published: the listed builtins, the guarded import, restricted compile and exec."""
        return dict(SHIPPED_BUILTINS, __import__=self._import, compile=restricted_compile, exec=self.restricted_exec)

    def restricted_exec(self, code, globals=None, locals=None):
        """The published ``restricted_exec``: the code runs with SAFE_BUILTINS as its builtins. (Its
        RestrictedPython guard names are left out: nothing calls them, as ``restricted_compile`` does not
        transform the AST.)"""
        if isinstance(code, str):
            code = restricted_compile(code, "<restricted>", "exec")
        scope = {} if globals is None else globals
        # Set in the namespace given rather than in a plain-dict copy of it, as published: nnsight 0.8 passes
        # a dict subclass that finds the frame's globals through __missing__, which a copy would lose.
        had = dict.__contains__(scope, "__builtins__")
        before = dict.get(scope, "__builtins__")
        dict.__setitem__(scope, "__builtins__", self.safe_builtins())
        try:
            _original_exec(code, scope, locals)
        finally:
            if had:
                dict.__setitem__(scope, "__builtins__", before)
            else:
                dict.__delitem__(scope, "__builtins__")


_original_compile, _original_exec = compile, exec
_subimport = cloudpickle.cloudpickle.subimport
_cloudpickle_make_function = cloudpickle.cloudpickle._make_function
_nnsight_load_function = serialization._load_function
_cloudpickle_function_setstate = cloudpickle.cloudpickle._function_setstate


def _import_now(*args: Any, **kwargs: Any) -> Any:
    """Whatever ``builtins.__import__`` is when called: the guarded importer while a request executes."""
    return _builtins.__import__(*args, **kwargs)


SHIPPED_BUILTINS = {k: getattr(_builtins, k) for k in WHITELISTED_BUILTINS if hasattr(_builtins, k)}
SHIPPED_BUILTINS["__import__"] = _import_now
"""The builtins of every function a request ships: the list only (no ``open``, ``exec``, ``compile`` ...)."""


def _make_function(code, globals, name, argdefs, closure):
    """cloudpickle's, building a shipped function with `SHIPPED_BUILTINS` as its builtins."""
    globals["__builtins__"] = SHIPPED_BUILTINS
    return types.FunctionType(code, globals, name, argdefs, closure)


def _load_function(*args: Any) -> types.FunctionType:
    """nnsight's (how it rebuilds a shipped function from its source), with `SHIPPED_BUILTINS` as its builtins."""
    func = _nnsight_load_function(*args)
    func.__globals__["__builtins__"] = SHIPPED_BUILTINS
    shipped = types.FunctionType(func.__code__, func.__globals__, func.__name__, func.__defaults__, func.__closure__)
    shipped.__kwdefaults__, shipped.__qualname__ = func.__kwdefaults__, func.__qualname__
    shipped.__annotations__ = func.__annotations__
    shipped.__dict__.update(func.__dict__)
    return shipped


def _function_setstate(obj, state):
    """cloudpickle's, then the builtins a function defined at run time inside shipped code inherits."""
    _cloudpickle_function_setstate(obj, state)
    obj.__globals__["__builtins__"] = SHIPPED_BUILTINS
# As published (the file's last line): ast.parse keeps the real compile, whatever the builtins hold.
setattr(ast, "compile", compile)


def restricted_compile(source, filename="<restricted>", mode="exec", flags=0, dont_inherit=False, optimize=-1):
    """As published: the plain compile (security comes from the import guard and the builtins)."""
    return _original_compile(source, filename, mode, flags, dont_inherit, optimize)


class _Escape:
    """The guard lifted for the length of an allowed import, as the published Importer does."""

    def __init__(self, protector: Protector) -> None:
        self.protector = protector

    def __enter__(self) -> None:
        self.protector.__exit__(None, None, None)

    def __exit__(self, *exc: Any) -> None:
        self.protector.__enter__()


class SafeBuiltins(ModuleType):
    """``import builtins`` inside the guard: only the whitelisted builtins."""

    def __init__(self) -> None:
        super().__init__("safe_builtins")

    def __getattribute__(self, name: str) -> Any:
        if name in WHITELISTED_BUILTINS and hasattr(_builtins, name):
            return getattr(_builtins, name)
        raise AttributeError(f"module 'builtins' has no attribute '{name}'")
