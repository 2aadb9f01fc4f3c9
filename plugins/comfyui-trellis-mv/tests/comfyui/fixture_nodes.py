"""A test-only ComfyUI custom node: a stand-in image encoder whose output is random tokens from a seed.

It stands where ``CLIPVisionEncode`` stands in a real graph (no vision model weights here), so that the
graph goes through ComfyUI's own ``Hunyuan3Dv2Conditioning`` node like a user's does.
"""

import torch
from comfy.clip_vision import Output


def tokens(seed: int, count: int, width: int) -> torch.Tensor:
    return torch.randn(1, count, width, generator=torch.Generator().manual_seed(seed))


class TrellisMVTestEncoding:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0}), "count": ("INT", {"default": 6}),
                             "width": ("INT", {"default": 32})}}

    RETURN_TYPES = ("CLIP_VISION_OUTPUT",)
    FUNCTION = "encode"
    CATEGORY = "testing"

    def encode(self, seed: int, count: int, width: int):
        out = Output()
        out.last_hidden_state = tokens(seed, count, width)
        return (out,)


NODE_CLASS_MAPPINGS = {"TrellisMVTestEncoding": TrellisMVTestEncoding}
