"""A wheel built from the repository installs into a fresh venv and works there, outside the checkout.

The wheel is built from what a commit holds (tracked files plus untracked ones git does not ignore),
installed with ``--no-deps --no-index`` into a new venv; the heavy dependencies (torch, transformers,
nnsight ...) come from this environment's site-packages through a plain path entry in a ``.pth`` file, which
does not activate this environment's editable futurelens. The test checks that the wheel, not the checkout,
provides futurelens, that every file of the package is in the wheel, and runs ``futurelens --version`` and a
lens on the embedded default model from a folder outside the checkout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import futurelens

ROOT = Path(__file__).resolve().parent.parent


def _source_files() -> list[str]:
    """The repository's files as a commit would hold them."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                         capture_output=True, check=True).stdout.decode()
    return sorted(f for f in out.split("\0") if f and (ROOT / f).is_file())


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, **kwargs)
    assert proc.returncode == 0, f"{args}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_runs_a_lens(tmp_path, default_dir):
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the files a commit holds are unknown")
    src = tmp_path / "src"
    files = _source_files()
    for f in files:
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        (src / f).write_bytes((ROOT / f).read_bytes())

    # the wheel, with every file of the package in it
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"),
         str(src)])
    (wheel,) = (tmp_path / "dist").glob("futurelens-*.whl")
    assert wheel.name.startswith(f"futurelens-{futurelens.__version__}-")
    package = {f for f in files if f.startswith("futurelens/") and "__pycache__" not in f}
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    assert package and package <= names, sorted(package - names)
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "notebooks/"))]

    # a fresh venv: the wheel provides futurelens, this environment only its dependencies
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    target = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (target / "futurelens-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)])

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    where = run([str(python), "-c", "import futurelens; print(futurelens.__file__)"], cwd=outside, env=env).stdout.strip()
    assert Path(where).is_relative_to(venv), where
    version = run([str(venv / "bin" / "futurelens"), "--version"], cwd=outside, env=env)
    assert version.stdout.strip() == f"futurelens {futurelens.__version__}"

    lens = run([str(venv / "bin" / "futurelens"), "lens", "def f(x):", "--layers", "1", "--rollout", "2",
                "--out", "lens.html"], cwd=outside, env=env)
    page = (outside / "lens.html").read_text()
    assert "fl-cell" in page and "shipped with futurelens" in lens.stdout
    assert "Traceback" not in lens.stderr and "Loading weights" not in lens.stderr
