"""The embedded prior: the small text-to-image latent diffusion model that dream3d ships, trained on the shape world.

Training, sampling and evaluating it live here. Guidance loads it (or any Stable-Diffusion-format checkpoint)
through :mod:`dream3d.guidance.prior`, which knows nothing of how it was made.
"""
