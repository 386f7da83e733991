"""Importing the package is cheap: no torch, transformers or datasets until a heavy name is used."""

from __future__ import annotations

import subprocess
import sys


def test_import_is_lean():
    script = (
        "import sys, optimum_blockprune as ob\n"
        "from optimum_blockprune import BlockRemovalConfig, cli\n"
        "BlockRemovalConfig(num_blocks_to_remove=2)\n"
        "heavy = [m for m in ('torch', 'transformers', 'datasets', 'accelerate') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert ob.Pruner.__name__ == 'Pruner' and 'torch' not in sys.modules\n"
        "import optimum_blockprune.distillation as d\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
        "d.distillation_loss\n"
        "assert 'transformers' not in sys.modules  # the pure loss needs torch only\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)


def test_public_names_resolve():
    import optimum_blockprune as ob

    for name in ob.__all__:
        assert getattr(ob, name) is not None, name


def test_readme_architecture_table_is_generated_from_the_registry():
    from pathlib import Path

    from optimum_blockprune.architectures import architecture_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start, end = "<!-- architecture-table:start -->\n", "\n<!-- architecture-table:end -->"
    assert readme[readme.index(start) + len(start) : readme.index(end)] == architecture_table()


def test_readme_method_and_energy_tables_are_generated_from_the_registries():
    from pathlib import Path

    from optimum_blockprune.energies import energy_table
    from optimum_blockprune.methods import method_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for name, table in (("method", method_table()), ("energy", energy_table())):
        start, end = f"<!-- {name}-table:start -->\n", f"\n<!-- {name}-table:end -->"
        assert readme[readme.index(start) + len(start) : readme.index(end)] == table
