"""Pruning layers that physically shrink a Neurcomp network.

Methods (``dropout_technique`` in the config), one module each:

* ``binary`` (``model.pruning.binary``): learned hard masks with a straight-through gradient.
* ``smallify`` (``model.pruning.smallify``): switches with an L1 penalty and sign-variance pruning.
* ``variational_static`` / ``variational`` and ``variational_dynamic``
  (``model.pruning.variational``): variational dropout with learned drop rates.
* ``sbp_log_normal`` (``model.pruning.sbp``): structured Bayesian pruning, truncated log-normal noise.

Each method's module also defines its own option group (a dataclass of ``config.fields.option``
fields, the class attribute ``Options``), registered with the method: a new method is one new module
plus its import line below. ``build_pruning(name, cfg)`` makes a method from a
``config.options.PruningConfig``;
``model.pruning.prunable.PrunableNeurcomp`` puts its gates into a network and ``prune()`` returns
the smaller plain ``Neurcomp``.
"""

from __future__ import annotations

from neurcomp.config.schema import register_method_options

PRUNING_METHODS: dict[str, type] = {}


def register_pruning(*names: str):
    """Class decorator: register a ``PruningMethod`` (and its option group ``cls.Options``, which
    the shared option parser then offers) under one or more technique names."""

    def deco(cls):
        for name in names:
            if name in PRUNING_METHODS:
                raise ValueError(f"pruning method {name!r} is registered twice")
            PRUNING_METHODS[name] = cls
        register_method_options(names, getattr(cls, "Options", None))
        return cls

    return deco


def build_pruning(name: str, cfg, dataset_size: int = 1, **kwargs):
    """The pruning method ``name`` configured by ``cfg`` (a PruningConfig); ``dataset_size`` is the
    number of voxels (the variational methods divide their prior terms by it)."""
    key = (name or "").strip().lower()
    if key not in PRUNING_METHODS:
        from neurcomp.config.errors import ConfigError

        raise ConfigError(f"dropout_technique = {name!r} is not a pruning method; "
                          f"choose one of {', '.join(sorted(PRUNING_METHODS))}")
    return PRUNING_METHODS[key](cfg, dataset_size=dataset_size, **kwargs)


# registration side effects
from neurcomp.model.pruning import binary, sbp, smallify, variational  # noqa: E402,F401
from neurcomp.model.pruning.prunable import PrunableNeurcomp, PruningReport  # noqa: E402

__all__ = ["PRUNING_METHODS", "PrunableNeurcomp", "PruningReport", "build_pruning", "register_pruning"]
