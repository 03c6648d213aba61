"""Reading a sweep back from MLflow, for the paper: the tables, the figures, the report.

The runs themselves are read by orchestration/records.py (the one home of the MLflow record):
load_runs (one row per trial), load_histories (per-epoch metrics), best_config (the one
definition of "best"; the fine stage uses it), rank_trials, variant_of.

    tables     the papers' tables (ablation, frame shuffle, coarse/fine grid, top trials, best,
               cross-dataset) as Markdown, CSV and LaTeX, optionally beside the paper's numbers
    figures    marginal effects (0 apart from the log axis), pairwise heatmaps, learning curves,
               loss terms, shuffle-robustness bars (matplotlib Figures, saved as PNG)
    paper      the published numbers, with their sources
    report     `python -m analysis.report`: every table and figure an experiment supports
    notebooks  `python -m analysis.notebooks`: run coarse/fine/ablation.ipynb headless
"""
