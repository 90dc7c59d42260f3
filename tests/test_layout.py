"""The layout's rules, checked on the source: every stage imports only earlier stages (or
itself), and nothing outside ``vit_deploy/cli`` needs the CLI."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vit_deploy"

# The stage order of docs/architecture.md: a package may import its own rank or lower.
RANKS = {
    "errors": 0,
    "config": 0,
    "preprocess": 0,
    "manifest": 0,
    "batch_profile": 0,
    "storage": 0,
    "labels": 0,
    "kernels": 0,
    "model": 1,
    "checkpoints": 2,
    "assets": 2,  # the bundled checkpoint and its held-out images
    "runtime": 3,
    "export": 4,
    "embed": 5,
    "inspect": 5,
    "bench": 6,
    "serve": 7,
    "cli": 8,
}


def _modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found.append((".".join(parts), path))
    for path in sorted((ROOT / "kernels").glob("*.py")):
        name = "vit_deploy.kernels" + ("" if path.stem == "__init__" else f".{path.stem}")
        found.append((name, path))
    return found


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _imports(module: str, path: Path) -> set[str]:
    """Every vit_deploy module ``path`` imports, at module level or inside a function."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names.add(target)
    return {n for n in names if n.startswith("vit_deploy.")}


def test_every_module_has_a_rank():
    stages = {_stage(m) for m, _ in _modules()} - {None}
    assert stages <= set(RANKS), f"give these a rank in RANKS: {sorted(stages - set(RANKS))}"


def test_no_stage_imports_a_later_one():
    bad = []
    for module, path in _modules():
        here = _stage(module)
        if here is None:  # vit_deploy/__init__.py: lazy re-exports of the public API
            continue
        for target in _imports(module, path):
            there = _stage(target)
            if there in RANKS and RANKS[there] > RANKS[here]:
                bad.append(f"{module} imports {target} ({here} -> later stage {there})")
    assert not bad, "\n".join(bad)


def test_library_imports_without_the_cli():
    """Every module outside cli/ imports with vit_deploy.cli made unimportable."""
    modules = [m for m, _ in _modules() if _stage(m) != "cli"]
    code = (
        "import importlib, importlib.abc, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'vit_deploy.cli' or name.startswith('vit_deploy.cli.'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "failed = []\n"
        f"for name in {modules!r}:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ImportError as exc:\n"
        "        if 'blocked' in str(exc):\n"
        "            failed.append(f'{name}: {exc}')\n"
        "    except Exception:\n"
        "        pass  # an optional dependency missing here is not this test's business\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize("rule", ["tensorrt", "onnx"])
def test_format_packages_hold_their_modules(rule):
    """A format's modules live in its package, not as prefixed files beside it."""
    flat = sorted(p.name for p in (PACKAGE / "export").glob(f"{rule[:3]}_*.py"))
    assert flat == [], f"move {flat} into vit_deploy/export/{rule}/"


def _import_kernels_from_the_root(*python_flags: str) -> subprocess.CompletedProcess:
    """``import kernels`` with the checkout's root first on sys.path, as ``python -c``
    run there puts it."""
    code = "import kernels, sys; print(kernels.__file__); print('kernels.ops' in sys.modules)"
    return subprocess.run(
        [sys.executable, *python_flags, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_root_kernels_folder_does_not_shadow_the_pypi_kernels():
    # transformers imports the PyPI project "kernels" when it is installed; our folder of
    # the same name must not stand in for it when the repo root is on sys.path.
    pytest.importorskip("kernels")  # (pytest's own path holds the root too: it is handed over)
    run = _import_kernels_from_the_root()
    assert run.returncode == 0, run.stderr
    found, ours_loaded = run.stdout.split()
    assert Path(found).parent != ROOT / "kernels"
    assert ours_loaded == "False"


def test_root_kernels_folder_is_no_top_level_package_when_pypi_has_none():
    run = _import_kernels_from_the_root("-S")  # -S: no site-packages, so no PyPI kernels
    assert run.returncode != 0
    assert "ModuleNotFoundError: No module named 'kernels'" in run.stderr
    assert "is vit_deploy.kernels" in run.stderr
