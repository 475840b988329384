"""Pretrained weights in the layouts the papers start from, renamed to medseg's networks.

Each layout names the network it initialises, recognises its files by their tensor names,
and maps each source name to one medseg name (``None``: a tensor of the source that has
no counterpart, such as an ImageNet classifier, which is dropped). The rules are written
from the key layouts the original code saves:

- ``swin_unetr_ssl``: MONAI's self-supervised Swin UNETR checkpoint (``model_swinvit.pt``,
  Tang et al. CVPR 2022), ``{"state_dict": {"module.patch_embed...", "module.layers1.0
  .blocks.0.mlp.fc1.weight", ...}}``, the layout ``SwinUNETR.load_from`` reads; it
  initialises the Swin encoder (``swinViT``) of ``swin_unetr``.
- ``densenet161_torchvision``: torchvision's ImageNet DenseNet-161 ``state_dict``
  (``features.conv0``, ``features.denseblockB.denselayerL.norm1`` or the older
  ``norm.1`` form, ``features.transitionT``, ``features.norm5``, ``classifier``); it
  initialises the 2D DenseNet encoder (``dense_2d``) of ``hdenseunet``.
- ``swin_t_imagenet``: the official Swin Transformer ImageNet checkpoint
  (``{"model": {"patch_embed...", "layers.0.blocks.0.mlp.fc1.weight",
  "layers.0.downsample...", "norm", "head"}}``, also timm before 0.9); it initialises
  the Swin encoder of ``att_swinunet`` (patch embedding, stages, bottleneck norm).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

Rename = Callable[[str], str | None]


@dataclass(frozen=True)
class WeightLayout:
    """A source layout: its ``name``, the medseg ``network`` it initialises, a ``marker``
    regex one of its tensor names matches, and ``rename`` (source name -> medseg name, or
    None for a tensor that is dropped, raising ``KeyError`` for one it does not know)."""

    name: str
    network: str
    marker: str
    rename: Rename

    def recognises(self, names: Iterable[str]) -> bool:
        """Whether a file with tensors ``names`` is in this layout."""
        return any(re.match(self.marker, name) for name in names)


def _rules(*rules: tuple[str, str | None]) -> Rename:
    """A ``rename`` from ordered (regex, replacement) rules; the first full match wins."""
    compiled = [(re.compile(pattern), replacement) for pattern, replacement in rules]

    def rename(name: str) -> str | None:
        for pattern, replacement in compiled:
            if pattern.fullmatch(name):
                return None if replacement is None else pattern.sub(replacement, name)
        raise KeyError(name)

    return rename


_SWIN_BLOCK = (
    r"(norm1|norm2|attn\.relative_position_bias_table|attn\.relative_position_index"
    r"|attn\.qkv|attn\.proj)"
)
_PARAMETER = r"(weight|bias)"


def _swin_unetr_ssl(name: str) -> str | None:
    # Checkpoints saved from DataParallel prefix "module."; later ones "swin_vit." or
    # "swinViT." (the forms the MONAI tutorials rewrite before loading).
    stripped = re.sub(r"^(module\.)?(swin_vit\.|swinViT\.)?", "", name)
    return _SWIN_UNETR_RULES(stripped)


_SWIN_UNETR_RULES = _rules(
    (r"patch_embed\.proj\.(weight|bias)", r"swinViT.patch_embed.proj.\1"),
    (rf"(layers[1-4]\.0\.blocks\.\d+)\.{_SWIN_BLOCK}(\.{_PARAMETER})?", r"swinViT.\1.\2\3"),
    (r"(layers[1-4]\.0\.blocks\.\d+)\.mlp\.fc([12])\.(weight|bias)", r"swinViT.\1.mlp.linear\2.\3"),
    (r"(layers[1-4]\.0\.downsample\.(reduction|norm)\.(weight|bias))", r"swinViT.\1"),
    (r"layers[1-4]\.0\.blocks\.\d+\.attn_mask", None),
    # The pre-training heads (rotation, contrastive, reconstruction) and final norm.
    (r"(rotation_pre|rotation_head|contrastive_pre|contrastive_head|conv|norm)\b.*", None),
)

_BATCH_NORM = r"(weight|bias|running_mean|running_var|num_batches_tracked)"


def _densenet161(name: str) -> str | None:
    block = re.fullmatch(
        rf"features\.denseblock(\d)\.denselayer(\d+)\.(norm|conv)\.?([12])\.{_BATCH_NORM}", name
    )
    if block:
        index, layer, kind, number, parameter = block.groups()
        block_name = f"dense_2d.blocks.{int(index) - 1}.denselayer{layer}"
        return f"{block_name}.layers.{kind}{number}.{parameter}"
    transition = re.fullmatch(rf"features\.transition(\d)\.(norm|conv)\.{_BATCH_NORM}", name)
    if transition:
        index, kind, parameter = transition.groups()
        return f"dense_2d.transitions.{int(index) - 1}.{kind}.{parameter}"
    return _DENSENET_OTHER(name)


_DENSENET_OTHER = _rules(
    (r"features\.conv0\.weight", "dense_2d.stem.0.weight"),
    (rf"features\.norm0\.{_BATCH_NORM}", r"dense_2d.stem.1.\1"),
    (rf"features\.norm5\.{_BATCH_NORM}", r"dense_2d.bottleneck_norm.0.\1"),
    (r"classifier\.(weight|bias)", None),
)


def _swin_t(name: str) -> str | None:
    stage = re.fullmatch(r"layers\.(\d)\.(.+)", name)
    if stage:
        index, rest = stage.groups()
        return _swin_t_stage(index, rest)
    return _SWIN_T_OTHER(name)


def _swin_t_stage(index: str, rest: str) -> str | None:
    renamed = _SWIN_T_STAGE(rest)
    return None if renamed is None else f"encoder.{index}.{renamed}"


_SWIN_T_STAGE = _rules(
    (rf"(blocks\.\d+)\.{_SWIN_BLOCK}(\.{_PARAMETER})?", r"\1.\2\3"),
    (r"(blocks\.\d+)\.mlp\.fc([12])\.(weight|bias)", r"\1.mlp.linear\2.\3"),
    (r"blocks\.\d+\.attn_mask", None),
    (r"downsample\.(reduction|norm)\.(weight|bias)", r"downsample.\1.\2"),
)

_SWIN_T_OTHER = _rules(
    (r"patch_embed\.(proj|norm)\.(weight|bias)", r"patch_embed.\1.\2"),
    (r"norm\.(weight|bias)", r"bottleneck_norm.\1"),
    (r"head\.(weight|bias)", None),
    (r"absolute_pos_embed", None),
)

LAYOUTS: tuple[WeightLayout, ...] = (
    WeightLayout(
        "swin_unetr_ssl",
        "swin_unetr",
        r"^(module\.)?(swin_vit\.|swinViT\.)?layers1\.0\.blocks\.",
        _swin_unetr_ssl,
    ),
    WeightLayout(
        "densenet161_torchvision", "hdenseunet", r"^features\.denseblock1\.", _densenet161
    ),
    WeightLayout("swin_t_imagenet", "att_swinunet", r"^layers\.0\.blocks\.0\.", _swin_t),
)


def find_layout(names: Iterable[str]) -> WeightLayout | None:
    """The layout whose tensor names ``names`` are in, or None."""
    names = list(names)
    return next((layout for layout in LAYOUTS if layout.recognises(names)), None)
