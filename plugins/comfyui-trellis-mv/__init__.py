"""trellis-mv in ComfyUI: multi-view conditioning with any registered trellis-mv aggregator on ComfyUI's own sampler.

ComfyUI loads this folder from ``custom_nodes`` as a package and calls :func:`comfy_entrypoint`.
"""

__all__ = ["comfy_entrypoint"]

if __package__:  # pytest also imports this file, as a bare module, when it collects tests/ below it
    from .nodes import comfy_entrypoint
