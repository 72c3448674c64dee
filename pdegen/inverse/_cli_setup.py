"""What every ``pdegen invert`` / ``demo`` run sets up first: float64, the persistent compilation
cache, and the name of the sampler a run used."""

from __future__ import annotations

import math
import os


def sampler_name(args, prior) -> str:
    """The sampler a run used: ``--sampler``, or the default for the prior's process."""
    from pdegen.models import default_sampler

    return args.sampler or default_sampler(prior.sde)


def enable_x64():
    """Compute in float64 (posterior statistics and FEM solves are compared to 1e-6 and below)."""
    import jax

    jax.config.update("jax_enable_x64", True)


def enable_compilation_cache():
    """Persist compiled samplers between runs (the demo is mostly compilation on a first run)."""
    import jax

    folder = os.environ.get(
        "PDEGEN_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "pdegen", "jax")
    )
    try:
        os.makedirs(folder, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", folder)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    except (OSError, AttributeError):  # a read-only home: just compile
        return


def check_positive(flag: str, value, *, allow_zero: bool = False) -> None:
    """A ``ValueError`` naming ``flag`` unless ``value`` is finite and positive (or >= 0)."""
    ok = value is not None and math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{flag} must be finite and {bound}, got {value}")
