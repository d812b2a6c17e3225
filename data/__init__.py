"""Volume readers, writers, normalisation, sampling and error metrics."""
