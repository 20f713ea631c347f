"""The server side: every function here may run on an NDIF server. THE RULE for code in this package:

1. Plain module-level functions over torch, builtins and nnsight envoys. Nothing else
   crosses the wire: no futurelens classes or dataclass instances (their generated
   methods have no source and ship as CPython bytecode, which breaks across Python
   versions), no decorators (a ``functools.wraps`` wrapper ships the original's source
   with the wrapper's defaults), no client-only objects (tokenizers, configs, tqdm).
2. Imports at module level only, and only of modules on NDIF's production import whitelist for
   executing code, and of functions in this package (``from .traces import x``). That list is
   the ``modules:`` section of ``whitelist.yaml`` in NDIF's published server (github.com/ndif-team/ndif,
   ``src/services/ray/src/ray/nn/security/whitelist.yaml``, commit b7ac71f4e4a96fa95b1f155d613eba6069441db1;
   vendored in tests/ndif_executor/): builtins, torch, collections, nnsight.intervention.envoy, time,
   numpy, sympy, nnterp, math, einops, urllib3, typing, _operator, operator, pandas, enum, __future__.
   Not ``copy``, not ``dataclasses``, not ``transformers`` (allowed there only while a request is
   deserialised: a class named here would be built while it executes). futurelens uses torch alone.
   ``nnsight.register`` ships futurelens by value: each function is rebuilt from its
   source with just the globals it names, so a function-level ``from ..x import y`` has
   no ``__name__`` to resolve against there. Builtins are that file's ``builtins:`` list too
   (no ``open``, ``exec``, ``locals`` ...).
3. Every function takes ``model`` (the nnsight model envoy, ``LensModel.nn``) and
   ``spec`` (a plain dict: module paths, sizes and flags, built client-side by
   `futurelens.models.LensModel.spec`) first, then plain arguments: lists, ints, floats,
   dicts and CPU tensors. Devices are found here, on the server (the client's model is
   weightless, on the meta device), and results go back to the CPU.
4. Bounded inputs and outputs: a job returns reductions (top-k ids, per-row numbers,
   a trained tensor), never ``[B, T, vocab]`` activations; the client splits work into
   requests of bounded payload (`futurelens.dispatch.run_job`, ``max_request_mb``).

`futurelens.dispatch.run_job` calls these: directly when local, inside one nnsight session
(one NDIF request) when remote. The client side (argument checks, chunking, resume,
error translation) lives in `futurelens.tracing` and the stages that call it.
Executed by NDIF's own server code in tests/ndif_executor, under that whitelist as NDIF's model actor
enforces it (tests/ndif_executor/protector.py); tests/server/test_rule.py checks the rule on the source.
"""
