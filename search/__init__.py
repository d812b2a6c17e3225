"""Multi-objective hyperparameter search with Ax (optional dependency: requirements-search.txt).

``search.space`` reads search-space files, ``search.runner`` trains trials in subprocesses and
``search.cli`` runs the loop behind ``NeurcompSearch.py``.
"""
