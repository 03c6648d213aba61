"""The notebooks in analysis/: stored without outputs, parameterized (papermill), only calling the
library, and executing headless (nbclient, one kernel for the three) against a real sweep store."""

from __future__ import annotations

import re

import nbformat
import pytest

from analysis import notebooks


@pytest.fixture(scope="module")
def executed(sweep_store, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("notebooks")
    nbs = notebooks.execute(notebooks.NOTEBOOKS, {"tracking_uri": sweep_store.tracking_uri,
                                                  "experiment": sweep_store.experiment}, out=out, timeout=180)
    return {path.stem: nb for path, nb in zip(notebooks.NOTEBOOKS, nbs)} | {"_out": out}


@pytest.mark.parametrize("path", notebooks.NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_without_outputs_and_parameterized(path):
    nb = nbformat.read(str(path), as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "saved without outputs"
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    assert re.search(r"^tracking_uri = ", tagged[0].source, re.M) and re.search(r"^experiment = ", tagged[0].source, re.M)


@pytest.mark.parametrize("path", notebooks.NOTEBOOKS, ids=lambda p: p.stem)
def test_only_calls_the_library(path):
    nb = nbformat.read(str(path), as_version=4)
    source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    imports = re.findall(r"^\s*(?:from (\S+) import|import (\S+))", source, re.M)
    assert {a or b for a, b in imports} == {"analysis", "orchestration"}, "no other imports"
    assert not re.search(r"^\s*(def|class|for|while|with) ", source, re.M), "no logic of its own"


def test_every_notebook_executes_against_the_store(executed):
    for name in ("coarse", "fine", "ablation"):
        nb = executed[name]
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
        assert not [o for o in outputs if o.output_type == "error"]
        kinds = {k for o in outputs for k in o.get("data", {})}
        assert {"image/png", "text/markdown"} <= kinds, f"{name}: figures and tables rendered"
        injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert len(injected) == 1 and "sqlite:///" in injected[0].source
        assert (executed["_out"] / f"{name}.ipynb").exists()
    markdown = [o["data"]["text/markdown"] for c in executed["ablation"].cells if c.cell_type == "code"
                for o in c.outputs if "text/markdown" in o.get("data", {})]
    assert any("Rev2Net (full)" in m and "paper: UCF101 (%)" in m for m in markdown)


def test_inject_follows_papermill():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("a = 1", metadata={"tags": ["parameters"]}),
                                         nbformat.v4.new_code_cell("print(a)")])
    once = notebooks.inject(nb, {"a": 2, "s": "x"})
    twice = notebooks.inject(once, {"a": 3})
    assert [c.source for c in twice.cells] == ["a = 1", "# Parameters\na = 3\n", "print(a)"]
    assert once.cells[1].source == "# Parameters\na = 2\ns = \"x\"\n"
    assert "tags" not in nb.cells[1].metadata, "the caller's notebook is left as it was"
    with pytest.raises(ValueError, match="parameters"):
        notebooks.inject(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x")]), {})
