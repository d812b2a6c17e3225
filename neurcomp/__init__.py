"""Neurcomp Compression as one namespace: ``neurcomp.config``, ``neurcomp.data``, ``neurcomp.model``, ...

The packages keep their place at the top of the repository (``config/``, ``data/``, ``model/``, ...), so
the layout and the root scripts stay as they were. Every import goes through this namespace, so a
notebook's own ``config.py`` or the HuggingFace ``datasets`` package no longer shadows ours.

In a source checkout this folder extends its search path to the repository root, where the packages
are; ``pip install .`` installs them inside ``neurcomp/`` (pyproject.toml, ``package-dir``), where the
default path finds them.
"""

import os

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isfile(os.path.join(_ROOT, "config", "schema.py")):  # a source checkout, not site-packages
    __path__.append(_ROOT)
