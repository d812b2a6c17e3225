"""The project's bundled volumes: small analytic fields generated on first use (not stored in git)."""

from pathlib import Path


def _marschner_lobb(f_m):
    def generate(shape):
        # Imported on use: `python -m datasets.marschner_lobb` must not find the module pre-imported.
        from neurcomp.datasets.marschner_lobb import marschner_lobb

        return marschner_lobb(shape, f_m=f_m)

    return generate


# File name -> (generator(shape) -> float32 (Z, Y, X) array, shape (Z, Y, X)).
# marschner_lobb_<n>: the standard signal (f_M = 6), nearly at the Nyquist rate on a 64^3 grid;
# marschner_lobb_f3_<n>: half the ripple frequency, resolved at 64^3 (the default volume).
GENERATED_VOLUMES = {
    **{f"marschner_lobb_{n}.npy": (_marschner_lobb(6.0), (n, n, n)) for n in (32, 64, 128)},
    **{f"marschner_lobb_f3_{n}.npy": (_marschner_lobb(3.0), (n, n, n)) for n in (32, 64, 128)},
}

DEFAULT_VOLUME = Path(__file__).resolve().parent / "marschner_lobb_f3_64.npy"


def ensure_default_volume(path) -> bool:
    """Generate `path` if its file name is a known generated volume and it is missing.

    Returns True when the file was written now, False otherwise (already there, or not ours).
    """
    path = Path(path)
    entry = GENERATED_VOLUMES.get(path.name)
    if entry is None or path.exists():
        return False
    from neurcomp.data.writers import write_npy  # late import: data.readers imports this package

    generator, shape = entry
    write_npy(path, generator(shape))
    return True
