"""Recipes learn: a recipe's ``small`` variant, trained as ``medseg train`` runs it,
segments generated held-out cases with validation Dice >= 0.9; every shipped config is
valid and builds its network.

Learning is shown for Swin UNETR on BraTS, 2D UNet++ on EM and Att-SwinU-Net on ISIC on
any machine. The LiTS x H-DenseUNet small variant peaks at 0.85-0.89 on its 96 x 96 x 32
phantoms, whose tumours are a few voxels; its full-length run on 160 x 160 x 48 phantoms
(``lits_hdenseunet_small_gpu``) reaches 0.9 but is tested only where a CUDA device is
present, as on a 2-core CPU it would take about 40 minutes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

# recipe -> (layout, phantom cases, phantom shape): the data each config's header names.
RECIPES = {
    "brats_swin_unetr_small": ("brats", 10, (64, 64, 48)),
    "em_unetpp_small": ("em", 5, (128, 128, 12)),
    "isic_att_swinunet_small": ("isic", 40, (256, 192)),
    "lits_hdenseunet_small_gpu": ("lits", 10, (160, 160, 48)),
}
NEEDS_CUDA = {"lits_hdenseunet_small_gpu"}


# layout -> tiny phantom shape: enough to discover the layout's channels and labels.
TINY_SHAPES = {"brats": (16, 16, 16), "lits": (32, 32, 16), "em": (32, 32, 8), "isic": (32, 32)}


@pytest.fixture(scope="module")
def layout_indexes(tmp_path_factory):
    """Layout -> the ``DatasetIndex`` of one tiny phantom case (its channels and labels)."""
    from medseg.datasets import discover
    from medseg.datasets.synthetic import synthesize

    indexes = {}
    for layout, shape in TINY_SHAPES.items():
        root = tmp_path_factory.mktemp(layout)
        synthesize(layout, root, cases=1, shape=shape, seed=0)
        indexes[layout] = discover(layout, root)
    return indexes


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda path: path.stem)
def test_every_shipped_config_is_valid_and_maps_its_patch_to_its_labels(path, layout_indexes):
    from medseg.config import load_config
    from medseg.networks import abilities, build_network, input_divisor

    config = load_config(path)
    index = layout_indexes[config.data.layout]
    in_channels = len(index.channels) * config.transforms.slices
    out_channels = index.labels.out_channels
    patch = list(config.transforms.patch_size)
    network = build_network(
        config.network.name,
        spatial_dims=len(patch),
        in_channels=in_channels,
        out_channels=out_channels,
        preset=config.network.preset,
        **config.network.options,
    ).eval()
    divisor = input_divisor(network)
    assert all(size % factor == 0 for size, factor in zip(patch, divisor, strict=True))
    # The smallest input the network takes (a paper-size forward on the patch would take
    # minutes), with the patch's depth where the network fixes it.
    smallest = [2 * divisor[0], *divisor[1:]]
    if abilities(config.network.name).fixed_depth is not None:
        smallest[-1] = patch[-1]
    with torch.no_grad():
        logits = network(torch.zeros(1, in_channels, *smallest))
    assert logits.shape == (1, out_channels, *smallest)


@pytest.mark.slow
@pytest.mark.parametrize(
    "recipe",
    [
        pytest.param(
            recipe,
            marks=pytest.mark.skipif(
                recipe in NEEDS_CUDA and not torch.cuda.is_available(),
                reason="needs a CUDA device (about 40 minutes on a 2-core CPU)",
            ),
        )
        for recipe in RECIPES
    ],
)
def test_small_recipe_learns_its_phantom_task(tmp_path, recipe, medseg_cli):
    from medseg.datasets.synthetic import synthesize

    layout, cases, shape = RECIPES[recipe]
    data, run = tmp_path / "data", tmp_path / "run"
    synthesize(layout, data, cases=cases, shape=shape, seed=0)
    overrides = [f"data.root={data}", f"output={run}", "tracking.enabled=false"]
    result = medseg_cli(
        "train", CONFIGS / f"{recipe}.yaml", *(f"--set={item}" for item in overrides)
    )
    assert result.code == 0, result.err
    summary = json.loads((run / "training_summary.json").read_text())
    per_label = {
        key.removeprefix("val/dice/"): round(value, 3)
        for key, value in summary["validation"].items()
        if key.startswith("val/dice/")
    }
    assert summary["best_metric"] >= 0.9, per_label
    assert (run / "model" / "weights.safetensors").is_file()
