"""Neurcomp networks (Lu et al. 2021): SIREN layers with residual sine blocks."""

from neurcomp.model.architecture import Architecture, build_architecture, count_parameters, width_for_ratio
from neurcomp.model.neurcomp import Neurcomp, ResidualSineBlock, SineLayer

__all__ = ["Architecture", "build_architecture", "Neurcomp", "ResidualSineBlock", "SineLayer", "count_parameters",
           "width_for_ratio"]
