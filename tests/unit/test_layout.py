"""The layout's rules that import-linter (`make lint`) does not see: no import tucked inside a function
to dodge a cycle, no product code that reads tests/, no settings read while a module is imported."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("cli", "bench", "producer", "workers", "db", "tagger", "migrations")
FIRST_PARTY = {*PRODUCT, "tests"}


def product_files() -> list[Path]:
    return sorted(path for top in PRODUCT for path in (ROOT / top).rglob("*.py"))


def test_first_party_imports_sit_at_the_top_of_their_module():
    """Inside a function, only optional third-party dependencies (vllm, llama_cpp, torch) may be
    imported: they may not be installed. One of ours imported late is a cycle being dodged."""
    late = []
    for path in product_files():
        for function in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
                late += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names
                         if n.split(".")[0] in FIRST_PARTY]
    assert late == []


def test_the_product_never_reads_the_tests_folder():
    offenders = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path in product_files()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
        and (node.value == "tests" or node.value.startswith(("tests/", "tests.")))
    ]
    assert offenders == []


def test_importing_any_module_reads_no_settings():
    """Settings are read by the entry point and passed down: a bad TAGGER_* variable cannot break an import."""
    modules = sorted(
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for path in product_files()
        if path.parts[-2:] != ("migrations", "env.py") and "versions" not in path.parts
        and path.name != "__main__.py"
    )
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    env = {"TAGGER_BATCH_SIZE": "0", "TAGGER_BACKEND": "nosuch", "TAGGER_DATABASE_URL": "notaurl",
           "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", code, *modules], env=env, cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("package", ["cli", "producer", "workers", "db", "tagger"])
def test_every_layer_is_a_folder_of_its_own(package):
    assert (ROOT / package / "__init__.py").is_file()
