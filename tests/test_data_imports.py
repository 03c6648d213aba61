"""rev2net/data/: every module imports on its own in a fresh interpreter, and config.py imports
nothing of the package (not even lazily), so that any module can import it (no import cycle
anywhere: tests/test_imports.py)."""

from __future__ import annotations

import ast
import json
import os
import pkgutil
import subprocess
import sys

import rev2net.data

PACKAGE = "rev2net.data"
MODULES = sorted(f"{PACKAGE}.{m.name}" for m in pkgutil.iter_modules(rev2net.data.__path__))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(rev2net.__file__)))


def _python(code: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=ROOT)


def test_every_module_imports_first_in_a_fresh_interpreter():
    """Each module imported first, alone: an import cycle fails for some order of first imports."""
    assert f"{PACKAGE}.config" in MODULES and f"{PACKAGE}.synthetic" in MODULES, MODULES
    runs = {name: _python(f"import {name}") for name in MODULES}  # concurrently: they are independent
    failures = {}
    for name, run in runs.items():
        _, err = run.communicate(timeout=300)
        if run.returncode != 0:
            failures[name] = err.strip().splitlines()[-1] if err.strip() else f"exit status {run.returncode}"
    assert not failures, f"modules that fail to import in a fresh interpreter: {failures}"


def test_config_loads_no_other_rev2net_module():
    """Importing config and building its dataclasses (their checks run in __post_init__) loads only the
    package's own __init__ files beside it."""
    code = ("import json, sys\n"
            "from rev2net.data.config import DataConfig, SyntheticConfig\n"
            "DataConfig(); DataConfig(name='synthetic', synthetic={'classes': 3, 'size': 64}); SyntheticConfig()\n"
            "print(json.dumps(sorted(m for m in sys.modules if m == 'rev2net' or m.startswith('rev2net.'))))\n")
    out, err = _python(code).communicate(timeout=120)
    assert out.strip(), err
    loaded = set(json.loads(out.strip().splitlines()[-1]))
    assert loaded == {"rev2net", PACKAGE, f"{PACKAGE}.config"}, f"rev2net.data.config loaded {sorted(loaded)}"


def _imported(name: str) -> set[str]:
    """Every module name that module `name` imports anywhere in its source (inside functions too);
    `from a import b` counts as both `a` and `a.b` (b may be a module)."""
    with open(os.path.join(ROOT, *name.split(".")) + ".py") as f:
        tree = ast.parse(f.read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_config_imports_nothing_of_the_package_even_lazily():
    ours = sorted(m for m in _imported(f"{PACKAGE}.config") if m == "rev2net" or m.startswith("rev2net."))
    assert not ours, f"rev2net/data/config.py imports {ours}: it must import nothing of rev2net"
