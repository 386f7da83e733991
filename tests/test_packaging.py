"""The built distribution is what users install: every subpackage, the templates, and the optimum-cli plugin."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "optimum_blockprune"
# The plugin's own root inside our tree, and where it lands in site-packages.
PLUGIN_ROOT = SOURCE / "_optimum_cli"


def _installed_path(directory: Path) -> str:
    if PLUGIN_ROOT in directory.parents:
        return directory.relative_to(PLUGIN_ROOT).as_posix()
    return directory.relative_to(ROOT).as_posix()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    pytest.importorskip("build", reason="`python -m build` (in the dev extra) builds the wheel")
    # Build from a copy of the tracked files, as from an sdist: the checkout's own build/ and egg-info stay untouched.
    work = tmp_path_factory.mktemp("src")
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.split("\0")
    if not any(tracked):
        pytest.skip("not a git checkout: the tracked files cannot be listed")
    for name in filter(None, tracked):
        if (ROOT / name).is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, work / name)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(work)],
        check=True,
        capture_output=True,
    )
    (path,) = out.glob("*.whl")
    return zipfile.ZipFile(path)


def test_the_wheel_holds_every_directory_with_python_files(wheel):
    names = set(wheel.namelist())
    source_dirs = {p.parent for p in SOURCE.rglob("*.py") if "__pycache__" not in p.parts}
    # The plugin root itself and its namespace parents hold no Python files: only the registered leaf ships.
    missing = sorted(
        f"{_installed_path(d)}/{p.name}"
        for d in source_dirs
        for p in d.glob("*.py")
        if f"{_installed_path(d)}/{p.name}" not in names
    )
    assert not missing, f"source files left out of the wheel: {missing}"
    assert "optimum_blockprune/py.typed" in names
    assert "optimum_blockprune/templates/model_card.md.jinja" in names
    assert "optimum/commands/register/blockprune.py" in names
    # The wheel must never own the real optimum package's files, nor ship our plugin twice.
    assert not any(n.startswith("optimum/") and n.endswith("__init__.py") for n in names)
    assert not any(n.startswith("optimum_blockprune/_optimum_cli") for n in names)
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)


def test_the_wheel_declares_the_console_script_and_the_version(wheel):
    from optimum_blockprune import __version__

    entry_points = next(n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt"))
    assert "optimum-blockprune = optimum_blockprune.cli:main" in wheel.read(entry_points).decode()
    metadata = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    assert f"Version: {__version__}" in wheel.read(metadata).decode()
