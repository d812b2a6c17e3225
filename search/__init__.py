"""Multi-objective hyperparameter search with Ax (optional dependency: requirements-search.txt).

``search.space`` reads search-space files, ``search.runner`` trains trials in subprocesses,
``search.ax_loop`` runs the loop behind ``NeurcompSearch.py`` (``search.cli``), keeping its state in
``search.state``, its MLflow parent run in ``search.tracking`` and its outputs in ``search.reports``.
"""
