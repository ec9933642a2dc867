"""Differentiable renderers: Gaussians, volumes and meshes, each with a pure-PyTorch backend and a CUDA one.\n\nThis package never imports dream3d."""
