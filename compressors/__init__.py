"""Compressors behind one `Codec` interface, registered by name (as CompressAI registers models).

    from neurcomp.compressors import get_codec
    result = get_codec("sz3").compress_to_ratio(values, 100)

``base``: the interface, `CodecResult` and the registry; ``search``: parameter searches for a target
ratio; one module per codec. A new codec is one module plus its import line below.
"""

from neurcomp.compressors.base import CODECS, Codec, CodecResult, compression_ratio, get_codec, register_codec

from neurcomp.compressors import fvsrn, latent, neurcomp, sperr, sz3, zfp  # noqa: E402,F401  (each registers its codec)
from neurcomp.compressors import api  # noqa: E402  (the compressed file from Python: compress, decompress, read_header)

__all__ = ["api", "CODECS", "Codec", "CodecResult", "compression_ratio", "get_codec", "register_codec"]
