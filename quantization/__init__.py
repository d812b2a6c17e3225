"""Quantize trained Neurcomp networks into a small versioned file, and decode it back.

- ``kmeans``: per-matrix scalar k-means (1..16 bits), vectorised and deterministic.
- ``bitpack``: B-bit index packing with numpy.
- ``format``: the byte layout (see FORMAT.md), checksums and validation.
- ``encode`` / ``decode``: network <-> bytes; ``finetune_codebooks`` trains the centroids.
- ``cli``: the two entry scripts' options, and decoding a file into a volume (NeurcompDequantization.py).
"""
