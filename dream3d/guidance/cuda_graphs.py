"""CUDA graphs of a frozen U-Net's no-grad forward.

On a GPU the guidance step is bound by the host, not the card: a diffusers U-Net launches about a thousand
small kernels, and Python issues them one by one (the H200 run of 2026-12-04 spent 24 ms per step in the
embedded prior's 6-M-parameter U-Net, and 43 ms in SD 1.5's). A CUDA graph records those launches once and
replays them with one call. The guidance rules' U-Net calls without gradient (the teacher's CFG prediction,
VSD's student prediction, Zero123's) have fixed shapes for a whole run, so each distinct call is captured once
and replayed every step: the inputs are copied into the graph's own buffers and its output is copied out.

What a replay cannot see, and so is part of the key that picks a graph: the input shapes and dtypes, and the
U-Net's Python-level state, which decides which kernels run: train or eval mode, whether peft adapters are
enabled, which, and merged, and the class embedding that VSD attaches for its student. Assumed constant for a
run, as nothing here changes them: the attention processors and the LoRA scaling. Parameters may change between
replays (the LoRA is trained): a graph reads them where they live, and optimizers update them in place.

A call with gradient, on CPU, or whose capture fails runs the U-Net as usual (a failed capture says why, once).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor


def adapter_state(module: torch.nn.Module, cache: dict) -> tuple:
    """What of ``module``'s peft state decides its forward: (adapters disabled?, active adapters) of its first
    tuner layer, () without adapters. The layer is looked up once per set of adapters (``cache``)."""
    names = tuple(getattr(module, "peft_config", None) or ())
    if not names:
        return ()
    if cache.get("names") != names:
        cache["names"] = names
        cache["layer"] = next((m for m in module.modules() if hasattr(m, "active_adapters") and m is not module), None)
    layer = cache["layer"]
    if layer is None:
        return names
    return names, bool(layer.disable_adapters), tuple(layer.active_adapters), bool(getattr(layer, "merged", False))


class GraphedUNet:
    """Calls ``unet(sample, t, encoder_hidden_states=..., class_labels=..., return_dict=False)[0]``, through a
    captured CUDA graph where it can (see the module's docstring), else eagerly. Same signature, same result."""

    def __init__(self, unet: torch.nn.Module, warmup: int = 2):
        self.unet, self.warmup = unet, warmup
        self.graphs: dict[tuple, tuple] = {}  # key -> (graph, static inputs, static output), or None: eager
        self._adapters: dict = {}
        self.replays = 0  # calls served by a graph (tests and benchmarks read it)

    def _eager(self, sample, t, states, class_labels) -> Tensor:
        return self.unet(sample, t, encoder_hidden_states=states, class_labels=class_labels, return_dict=False)[0]

    def __call__(self, sample: Tensor, t: Tensor, states: Tensor, class_labels: Tensor | None = None) -> Tensor:
        if torch.is_grad_enabled() or not sample.is_cuda or torch.cuda.is_current_stream_capturing():
            return self._eager(sample, t, states, class_labels)
        inputs = (sample, t, states, class_labels)
        key = (
            tuple((tuple(x.shape), x.dtype) if x is not None else None for x in inputs),
            sample.device,
            self.unet.training,
            adapter_state(self.unet, self._adapters),
            id(getattr(self.unet, "class_embedding", None)),
        )
        # (capture and replay act on the current device: the prior may sit on another one than cuda:0)
        with torch.cuda.device(sample.device):
            if key not in self.graphs:
                self.graphs[key] = self._capture(inputs)
            entry = self.graphs[key]
            if entry is None:
                return self._eager(sample, t, states, class_labels)
            graph, static_in, static_out = entry
            for buf, x in zip(static_in, inputs):
                if buf is not None:
                    buf.copy_(x)
            graph.replay()
            self.replays += 1
            return static_out.clone()  # the next replay overwrites the graph's output

    def _capture(self, inputs: tuple) -> tuple | None:
        static_in = tuple(None if x is None else x.detach().clone() for x in inputs)
        try:
            side = torch.cuda.Stream(device=static_in[0].device)
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up off the main stream: library handles, autotuning, workspaces
                for _ in range(self.warmup):
                    self._eager(*static_in)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._eager(*static_in)
        except Exception as e:  # noqa: BLE001 - any capture failure: run this call eagerly from now on
            warnings.warn(
                f"CUDA graph capture of the U-Net failed ({type(e).__name__}: {e}); this call runs eagerly. "
                "Turn graphs off with train.cuda_graphs=false.",
                stacklevel=3,
            )
            return None
        return graph, static_in, static_out
