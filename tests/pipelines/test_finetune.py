"""``train.init_from``: weights from a medseg model or from the papers' pretrained layouts
land in the right tensors, nothing else moves, and a short fine-tune learns.

The pretrained files are built here in each original layout, with the tensor names the
original code saves (written out below, not derived from medseg's renaming) and the
shapes of medseg's tiny presets.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from medseg.errors import ConfigError
from medseg.networks import build_network
from medseg.pipelines.model_dir import InferenceSpec, ModelConfig, NetworkSpec
from medseg.pipelines.training.finetune import initialise_from
from medseg.transforms.presets import Preprocessing

CLASSES = {"mode": "classes", "names": ["background", "lesion"], "values": [[0], [1]]}


def model_config(name: str, spatial_dims: int, in_channels: int, labels: dict) -> ModelConfig:
    out_channels = len(labels["names"])
    roi = [32, 32, 8] if name == "hdenseunet" else [32] * spatial_dims
    return ModelConfig(
        network=NetworkSpec(
            name=name,
            preset="tiny",
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=out_channels,
        ),
        preprocessing=Preprocessing(
            layout="folder",
            modality="ct",
            channels=[f"c{i}" for i in range(in_channels)],
            spatial_dims=spatial_dims,
            patch_size=roi,
        ),
        labels=labels,
        inference=InferenceSpec(roi_size=roi),
    )


def tiny(config: ModelConfig, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    spec = config.network
    return build_network(
        spec.name,
        spatial_dims=spec.spatial_dims,
        in_channels=spec.in_channels,
        out_channels=spec.out_channels,
        preset="tiny",
    )


def swin_unetr_ssl(pretrained: torch.nn.Module) -> tuple[dict, dict[str, str]]:
    """MONAI's self-supervised checkpoint: ``{"state_dict": {"module.<encoder name>"}}``,
    MLP layers named fc1/fc2, plus the pre-training heads."""
    state, moved = {}, {}
    for name, tensor in pretrained.state_dict().items():
        if name.startswith("swinViT."):
            key = "module." + name.removeprefix("swinViT.").replace("mlp.linear", "mlp.fc")
            state[key], moved[name] = tensor.clone(), key
    state["module.rotation_head.weight"] = torch.randn(4, 96)
    state["module.contrastive_head.weight"] = torch.randn(512, 96)
    state["module.conv.0.weight"] = torch.randn(48, 96, 3, 3, 3)
    return {"state_dict": state}, moved


def densenet161_torchvision(pretrained: torch.nn.Module) -> tuple[dict, dict[str, str]]:
    """torchvision's DenseNet ``state_dict`` (``features.*``, ``classifier.*``) for the 2D
    encoder, one dense layer in the older ``norm.1`` spelling, no batch counters."""
    state, moved = {}, {}
    for name, tensor in pretrained.state_dict().items():
        if not name.startswith("dense_2d.") or name.endswith("num_batches_tracked"):
            continue
        parts = name.split(".")[1:]
        if parts[0] == "stem":
            key = f"features.{'conv0' if parts[1] == '0' else 'norm0'}.{parts[-1]}"
        elif parts[0] == "blocks":
            block, layer, kind = int(parts[1]) + 1, parts[2], parts[4]
            if (block, layer, kind) == (1, "denselayer1", "norm1"):
                kind = "norm.1"
            key = f"features.denseblock{block}.{layer}.{kind}.{parts[-1]}"
        elif parts[0] == "transitions":
            key = f"features.transition{int(parts[1]) + 1}.{parts[2]}.{parts[-1]}"
        elif parts[0] == "bottleneck_norm":
            key = f"features.norm5.{parts[-1]}"
        else:
            continue  # the decoder is not part of an ImageNet DenseNet
        state[key], moved[name] = tensor.clone(), key
    state["classifier.weight"] = torch.randn(1000, 30)
    state["classifier.bias"] = torch.randn(1000)
    return state, moved


def swin_t_imagenet(pretrained: torch.nn.Module) -> tuple[dict, dict[str, str]]:
    """The official Swin Transformer checkpoint: ``{"model": {"patch_embed.*",
    "layers.I.blocks.J.*", "layers.I.downsample.*", "norm.*", "head.*"}}``."""
    state, moved = {}, {}
    for name, tensor in pretrained.state_dict().items():
        if name.startswith("patch_embed."):
            key = name
        elif name.startswith("encoder."):
            key = "layers." + name.removeprefix("encoder.").replace("mlp.linear", "mlp.fc")
        elif name.startswith("bottleneck_norm."):
            key = "norm." + name.rsplit(".", 1)[1]
        else:
            continue
        state[key], moved[name] = tensor.clone(), key
    state["layers.0.blocks.1.attn_mask"] = torch.zeros(16, 16, 16)
    state["head.weight"] = torch.randn(1000, 192)
    state["head.bias"] = torch.randn(1000)
    return {"model": state}, moved


LAYOUTS: dict[str, tuple[str, int, int, Callable, str, tuple[int, ...]]] = {
    # layout: network, spatial dims, input channels, file builder, suffix, input shape
    "swin_unetr_ssl": ("swin_unetr", 3, 1, swin_unetr_ssl, ".pt", (64, 32, 32)),
    "densenet161_torchvision": (
        "hdenseunet",
        3,
        1,
        densenet161_torchvision,
        ".safetensors",
        (32, 32, 8),
    ),
    "swin_t_imagenet": ("att_swinunet", 2, 3, swin_t_imagenet, ".pth", (64, 64)),
}


def write_weights(state: dict, path: Path) -> Path:
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, path)
    else:
        torch.save(state, path)
    return path


def loss_falls(network: torch.nn.Module, shape: tuple[int, ...], channels: int) -> bool:
    """Whether one Adam step on a fixed batch lowers its cross-entropy (one step: a
    Swin UNETR step takes seconds on a CPU)."""
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(1, channels, *shape, generator=generator)
    target = (image[:, 0] > 0.5).long()
    optimizer = torch.optim.Adam(network.parameters(), lr=3e-3)
    network.train()
    losses = []
    for _ in range(2):
        output = network(image)
        logits = output[0] if isinstance(output, list | tuple) else output
        loss = F.cross_entropy(logits, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses[-1] < losses[0]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_pretrained_layouts_move_their_encoder_and_learn(layout, tmp_path, caplog) -> None:
    name, dims, channels, build_file, suffix, shape = LAYOUTS[layout]
    config = model_config(name, dims, channels, CLASSES)
    pretrained_file, moved = build_file(tiny(config, seed=1))
    path = write_weights(pretrained_file, tmp_path / f"pretrained{suffix}")
    network, fresh = tiny(config, seed=0), tiny(config, seed=0).state_dict()
    source = pretrained_file.get("state_dict") or pretrained_file.get("model") or pretrained_file

    with caplog.at_level(logging.INFO, logger="medseg"):
        result = initialise_from(network, path, config)

    assert result.layout == layout
    assert sorted(result.loaded) == sorted(moved)
    after = network.state_dict()
    for target, key in moved.items():
        assert torch.equal(after[target], source[key]), target
    unchanged = [n for n in after if n not in moved]
    assert unchanged, "the decoder and head keep their initialisation"
    for target in unchanged:
        assert torch.equal(after[target], fresh[target]), target
    assert any(key.startswith(("classifier", "head", "module.rotation")) for key in result.dropped)
    assert f"loaded {len(moved)} of the network's {len(after)} tensors" in caplog.text
    assert loss_falls(network, shape, channels)


def test_a_shape_mismatch_is_named(tmp_path) -> None:
    single = model_config("swin_unetr", 3, 1, CLASSES)
    state, _ = swin_unetr_ssl(tiny(single, seed=1))
    path = write_weights(state, tmp_path / "model_swinvit.pt")
    four_channels = model_config("swin_unetr", 3, 4, CLASSES)
    with pytest.raises(ConfigError, match=r"model_swinvit\.pt: tensor swinViT\.patch_embed\.proj"):
        initialise_from(tiny(four_channels, seed=0), path, four_channels)


def test_weights_for_another_network_are_refused(tmp_path) -> None:
    densenet = model_config("hdenseunet", 3, 1, CLASSES)
    state, _ = densenet161_torchvision(tiny(densenet, seed=1))
    path = write_weights(state, tmp_path / "densenet161.pth")
    swin = model_config("swin_unetr", 3, 1, CLASSES)
    with pytest.raises(ConfigError, match="densenet161_torchvision weights initialise hdenseunet"):
        initialise_from(tiny(swin, seed=0), path, swin)


class Payload:
    def __reduce__(self):  # a pickle that would run code when loaded
        return (Path.touch, (Path("/tmp/i19-finetune-pwned"),))


def test_a_pickle_that_is_more_than_tensors_is_refused_not_run(tmp_path) -> None:
    path = tmp_path / "weights.pth"
    path.write_bytes(pickle.dumps({"state_dict": {"x": Payload()}}))
    config = model_config("swin_unetr", 3, 1, CLASSES)
    with pytest.raises(ConfigError, match=r"weights\.pth: not a weights file medseg can read"):
        initialise_from(tiny(config, seed=0), path, config)
    assert not Path("/tmp/i19-finetune-pwned").exists()


def test_a_medseg_model_with_other_labels_gets_a_new_head(
    ct_model_dir, untrained_model, tmp_path, caplog
) -> None:
    from medseg.datasets.base import LabelScheme
    from medseg.pipelines.model_dir import open_model

    def liver_model(name: str, features: list[int]) -> tuple[ModelConfig, torch.nn.Module]:
        return open_model(
            untrained_model(
                tmp_path / name,
                layout="lits",
                modality="ct",
                channels=["ct"],
                labels=LabelScheme.classes({"liver": 1}),
                patch_size=[16, 16, 16],
                features=features,
            )
        )

    _, source_network = open_model(ct_model_dir)
    config, network = liver_model("target", [4, 8, 16])
    fresh = {k: v.clone() for k, v in network.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="medseg"):
        result = initialise_from(network, ct_model_dir, config)
    assert result.layout == "medseg" and result.reinitialised
    after, pretrained = network.state_dict(), source_network.state_dict()
    for name in after:
        expected = fresh[name] if name in result.reinitialised else pretrained[name]
        assert torch.equal(after[name], expected), name
    assert "the labels differ, so the output head" in caplog.text

    wider_config, wider_network = liver_model("wider", [8, 16, 32])
    with pytest.raises(ConfigError, match=r"lits-tiny: tensor \S+ has shape \[4, 1, 3, 3, 3\]"):
        initialise_from(wider_network, ct_model_dir, wider_config)
