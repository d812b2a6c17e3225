"""Rate-distortion benchmarks: classic codecs (SZ3, ZFP) behind one `Codec` interface."""
