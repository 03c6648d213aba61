"""Run the analysis notebooks headless, papermill-parameterized, several in one kernel.

    python -m analysis.notebooks --tracking-uri sqlite:///mlflow.db --experiment rev2net-synthetic --out reports/notebooks

Each notebook (analysis/coarse.ipynb, fine.ipynb, ablation.ipynb) has a cell tagged `parameters`;
papermill's own `parameterize_notebook` puts the values given here into a cell tagged
`injected-parameters` right after it, so `papermill analysis/coarse.ipynb out.ipynb -p tracking_uri
... -p experiment ...` runs them just as well. Where papermill starts a kernel per notebook,
`execute` starts one for all the notebooks it is given (the imports of MLflow and matplotlib are
paid once) and clears the namespace between them. The notebooks are stored without outputs; the
executed copies go to --out.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import nbformat
from nbclient import NotebookClient
from papermill.parameterize import parameterize_notebook

from orchestration.records import resolve_tracking_uri

HERE = Path(__file__).resolve().parent
NOTEBOOKS = tuple(HERE / f"{name}.ipynb" for name in ("coarse", "fine", "ablation"))


def inject(nb: nbformat.NotebookNode, parameters: dict[str, Any]) -> nbformat.NotebookNode:
    """A copy of `nb` with `parameters` set in an `injected-parameters` cell after its `parameters`
    cell (papermill's convention and code)."""
    if not any("parameters" in c.get("metadata", {}).get("tags", []) for c in nb.cells):
        raise ValueError("the notebook has no cell tagged 'parameters' (papermill's convention)")
    nb = copy.deepcopy(nb)
    nb.metadata.setdefault("papermill", {})   # as papermill's own loader (iorw.load_notebook_node) leaves them
    for cell in nb.cells:
        cell.metadata.setdefault("tags", [])
    return parameterize_notebook(nb, parameters, kernel_name="python3", language="python")


def execute(paths: Sequence[str | Path] = NOTEBOOKS, parameters: Optional[dict[str, Any]] = None, *,
            out: Optional[str | Path] = None, timeout: int = 300,
            cwd: str | Path = HERE) -> list[nbformat.NotebookNode]:
    """Execute `paths` in order in one kernel started in `cwd`, with `parameters` injected into each;
    write the executed copies into `out` when given. Raises nbclient's CellExecutionError, naming
    the cell, when a cell fails."""
    notebooks = [inject(nbformat.read(str(p), as_version=4), parameters or {}) for p in paths]
    client = NotebookClient(notebooks[0], timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(cwd)}})
    reset = nbformat.v4.new_code_cell("%reset -f")
    with client.setup_kernel():
        for i, nb in enumerate(notebooks):
            client.nb = nb
            client.reset_execution_trackers()
            if i:   # a clean namespace, as in a kernel of its own; imported modules stay loaded
                client.execute_cell(reset, 0)
            for index, cell in enumerate(nb.cells):
                client.execute_cell(cell, index)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        for path, nb in zip(paths, notebooks):
            nbformat.write(nb, str(out / Path(path).name))
    return notebooks


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.notebooks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--out", default="reports/notebooks", help="folder for the executed notebooks")
    parser.add_argument("notebooks", nargs="*", help="notebooks to run (default: coarse, fine, ablation)")
    args = parser.parse_args(argv)
    paths = [Path(p).resolve() for p in args.notebooks] or list(NOTEBOOKS)
    uri = resolve_tracking_uri(args.tracking_uri, base=Path.cwd())   # the kernel runs in analysis/
    execute(paths, {"tracking_uri": uri, "experiment": args.experiment}, out=args.out)
    print(f"executed {len(paths)} notebook(s) into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
