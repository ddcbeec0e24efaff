"""FLUX.1 (dev and schnell) through diffusers, as flowctl dynamics (``flowctl.adapters.flux``).

- :class:`FluxDynamics`, :class:`FluxCondition`: the transformer's velocity on unpacked
  (B, C, H, W) latents, with the embedded guidance and optional true CFG, exactly as
  ``FluxPipeline`` computes it; :func:`math_attention` for derivatives through it.
- :func:`flux_grid`, :func:`pipeline_grid`, :func:`flux_sigmas`, :func:`latent_shape`,
  :func:`noise_latents`, :func:`denoise`: the denoising loop on flowctl's sampler, equal to
  ``pipe(..., output_type="latent")`` bit for bit (after :func:`pack_latents`) and resumable at
  any step (:func:`flowctl.sampling.resume`).
- :func:`pack_latents`, :func:`unpack_latents`, :func:`latent_image_ids`: the pipeline's layouts.
- :class:`FluxPromptEncoder`: prompts to conditions through the pipeline's CLIP and T5;
  :class:`FluxPooledEncoder`: the pooled CLIP embedding as the cache's similarity key.
- :class:`CachedFluxPipeline` (module ``pipeline``, imported with diffusers on first use): the
  pipeline's call with the cross-prompt cache in front.

The command line's ``flux`` model family (``flowctl generate "..." --model DIR`` on a
``FluxPipeline`` folder) is in the submodules ``checkpoint`` (``load_pipeline``), ``bench``
(``flux_model``), ``commands`` and ``family``. They, and ``pipeline``, share the SD3 adapter's
checkpoint loading, VAE decode and strategies; this package itself imports nothing of it.

Sigma = 1 is noise, 0 is data; the scheduler's timestep is ``sigma * 1000`` and the transformer
gets ``timestep / 1000``. diffusers is never imported here; the functions work on the objects
given. Errors are flowctl's and those the model families share (``MissingTextEncoderError``,
``UnsupportedSchedulerError``, in :mod:`flowctl.adapters.common`).
"""

from flowctl.adapters.common import MissingTextEncoderError, UnsupportedSchedulerError, math_attention, noise_latents

from .condition import FluxCondition
from .dynamics import FluxDynamics
from .encoding import FluxPooledEncoder, FluxPromptEncoder, has_text_encoders
from .latents import latent_image_ids, pack_latents, unpack_latents
from .loop import calculate_shift, denoise, flux_grid, flux_sigmas, latent_shape, pipeline_grid

__all__ = [
    "CachedFluxPipeline",
    "FluxCondition",
    "FluxDynamics",
    "math_attention",
    "FluxPromptEncoder",
    "FluxPooledEncoder",
    "has_text_encoders",
    "pack_latents",
    "unpack_latents",
    "latent_image_ids",
    "calculate_shift",
    "flux_sigmas",
    "flux_grid",
    "pipeline_grid",
    "latent_shape",
    "noise_latents",
    "denoise",
    "MissingTextEncoderError",
    "UnsupportedSchedulerError",
]


def __getattr__(name: str):
    # The cached pipeline subclasses diffusers' output class: imported (with diffusers) on first use.
    if name == "CachedFluxPipeline":
        from .pipeline import CachedFluxPipeline

        return CachedFluxPipeline
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
