"""Every notebook runs end to end (papermill, small offline parameters), so none can silently rot."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).parent.parent / "notebooks"
SMALL = {
    "quickstart.ipynb": {"layers": [2, 30], "rollout": 2, "text": "The Eiffel Tower is in"},
    "paper_figure.ipynb": {"n_prefixes": 40, "max_len": 16, "layers": [2], "epochs": 1, "vocab_epochs": 1,
                           "filter_correct": False},
    "mamba.ipynb": {"tiny": True, "n_prefixes": 30, "layers": [2], "epochs": 1},
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
