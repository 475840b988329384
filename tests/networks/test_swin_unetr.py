"""Swin UNETR: the paper's parameter count, the input-size message, and that the wrapper
computes exactly what MONAI's network computes."""

import pytest
import torch
from monai.networks.nets import SwinUNETR as MonaiSwinUNETR

from medseg.networks import build_network
from medseg.networks.swin_unetr import PRESETS


def test_paper_parameter_count() -> None:
    # Built on the CPU: MONAI's Swin transformer reads drop-path rates with .item(), which
    # the meta device cannot do.
    network = build_network("swin_unetr", spatial_dims=3, in_channels=4, out_channels=3)
    count = sum(parameter.numel() for parameter in network.parameters())
    assert count == 62_191_941
    assert round(count / 1e6, 2) == 62.19


@pytest.mark.parametrize(("shape", "padded"), [((33, 64), (64, 64)), ((64, 32, 40), (64, 32, 64))])
def test_indivisible_size_names_the_padded_size(shape, padded) -> None:
    network = build_network(
        "swin_unetr", spatial_dims=len(shape), in_channels=1, out_channels=2, preset="tiny"
    )
    with pytest.raises(ValueError, match="divisible by 32") as caught:
        network(torch.randn(1, 1, *shape))
    assert f"pad the input to {padded}" in str(caught.value)
    assert "DivisiblePad(k=32)" in str(caught.value)


def test_single_voxel_bottleneck_is_refused_with_how_to_pad() -> None:
    network = build_network(
        "swin_unetr", spatial_dims=2, in_channels=1, out_channels=2, preset="tiny"
    ).eval()
    with pytest.raises(ValueError, match=r"got \(32, 32\); pad at least one dimension to 64"):
        network(torch.randn(1, 1, 32, 32))
    assert network(torch.randn(1, 1, 32, 64)).shape == (1, 2, 32, 64)


def test_wrapper_computes_what_monai_computes() -> None:
    torch.manual_seed(0)
    ours = build_network(
        "swin_unetr", spatial_dims=2, in_channels=1, out_channels=2, preset="tiny"
    ).eval()
    monai = MonaiSwinUNETR(
        in_channels=1,
        out_channels=2,
        spatial_dims=2,
        use_flash_attention=True,
        **PRESETS["tiny"],
    ).eval()
    monai.load_state_dict(ours.state_dict(), strict=True)
    image = torch.randn(1, 1, 64, 96)
    with torch.no_grad():
        assert torch.equal(ours(image), monai(image))


def test_fused_attention_at_inference_matches_the_unfused_path() -> None:
    torch.manual_seed(0)
    fused, unfused = (
        build_network(
            "swin_unetr",
            spatial_dims=3,
            in_channels=2,
            out_channels=3,
            preset="tiny",
            use_flash_attention=flash,
        ).eval()
        for flash in (True, False)
    )
    unfused.load_state_dict(fused.state_dict(), strict=True)
    image = torch.randn(2, 2, 64, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(fused(image), unfused(image), atol=1e-5, rtol=1e-5)
    # with autograd on (training), MONAI takes the unfused path: the same numbers exactly
    assert torch.equal(fused(image), unfused(image))
