"""Reading a sweep back from MLflow, for the paper: the tables, the figures, the report.

The runs themselves are read by orchestration/records.py (the one home of the MLflow record):
load_runs (one row per trial), load_histories (per-epoch metrics), best_config (the one
definition of "best"; the fine stage uses it), rank_trials, variant_of.

    stats      the statistics: Wilson and bootstrap intervals, McNemar, paired tests, Holm,
               functional ANOVA (grid_anova, fanova), what a sweep cost
    tables     the papers' tables (ablation, frame shuffle, coarse/fine grid, top trials, best,
               cross-dataset) as Markdown, CSV and LaTeX, optionally beside the paper's numbers
    figures    marginal effects (0 apart from the log axis), pairwise heatmaps, learning curves,
               loss terms, shuffle-robustness bars (matplotlib Figures, saved as PNG)
    paper      the published numbers, with their sources
    report     `python -m analysis.report`: the verdict in words, every table and figure an
               experiment supports (`--log-to-parent`: into a stage's parent run)
    mlflow_screenshot  the MLflow compare view of the top trials, in headless chromium
    notebooks  `python -m analysis.notebooks`: run coarse/fine/ablation.ipynb headless
"""
