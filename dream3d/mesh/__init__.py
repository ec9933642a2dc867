"""DreamGaussian's mesh stage: density grid -> marching cubes -> cleanup -> UV -> colour back-projection -> refine -> files.

- ``density``: Gaussian opacity field or any ``density_fn`` sampled on a grid, block by block.
- ``extract``: threshold from the field, marching cubes, floaters, welding, Taubin smoothing, decimation.
- ``texture``: xatlas unwrap, per-texel back-projection from ``render_fn`` views, hole filling, refinement.
- ``export``: .glb (written directly), .obj + .mtl + .png, turntable video; all atomic.
- ``stage``: ``MeshConfig`` and the end-to-end ``mesh_from_gaussians`` / ``mesh_from_density_fn``.
"""
