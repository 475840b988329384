"""Att-SwinU-Net: parameter count, live cross-contextual attention (the released code's is
nearly dead), and any image size through internal padding."""

import pytest
import torch
import torch.nn.functional as F
from monai.networks.blocks import CrossAttentionBlock

from medseg.networks import build_network

SKIPS, DEPTH = 3, 2


def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network(
        "att_swinunet", spatial_dims=2, in_channels=3, out_channels=2, preset="tiny"
    )


def attention_blocks(network: torch.nn.Module) -> list[CrossAttentionBlock]:
    return [module for module in network.modules() if isinstance(module, CrossAttentionBlock)]


def test_paper_parameter_count() -> None:
    # Built on the CPU, which is faster here than the meta device's decomposed ops.
    network = build_network("att_swinunet", spatial_dims=2, in_channels=3, out_channels=1)
    assert sum(parameter.numel() for parameter in network.parameters()) == 32_681_221
    skip_count = sum(parameter.numel() for parameter in network.skip_fusions.parameters())
    assert skip_count == 5_900_832


def test_every_cross_attention_block_gets_gradient() -> None:
    network = tiny().train()
    blocks = attention_blocks(network)
    # Per skip and layer: decoder tokens attend to encoder tokens, and the reverse.
    assert len(blocks) == SKIPS * DEPTH * 2
    network(torch.randn(2, 3, 64, 64)).mean().backward()
    for block in blocks:
        for projection in (block.to_q, block.to_k, block.to_v, block.out_proj):
            assert projection.weight.grad is not None
            assert projection.weight.grad.abs().sum() > 0


def test_changing_attention_weights_changes_most_of_the_output() -> None:
    network = tiny().eval()
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        reference = network(image)
        for block in attention_blocks(network):
            for projection in (block.to_q, block.to_k):
                original = projection.weight.clone()
                projection.weight.add_(0.5 * torch.randn_like(original))
                changed = (network(image) - reference).abs() > 1e-6
                projection.weight.copy_(original)
                # A summary-token path (the released code) would move a few pixels at most.
                assert changed.float().mean() > 0.5


@pytest.mark.parametrize("shape", [(64, 64), (96, 96), (65, 70), (33, 47)])
def test_any_size_equals_the_padded_input_cropped(shape) -> None:
    network = tiny().eval()
    image = torch.randn(1, 3, *shape)
    padded_shape = [-(-size // network.divisor) * network.divisor for size in shape]
    padded = F.pad(image, (0, padded_shape[1] - shape[1], 0, padded_shape[0] - shape[0]))
    with torch.no_grad():
        output = network(image)
        expected = network(padded)[:, :, : shape[0], : shape[1]]
    assert output.shape == (1, 2, *shape)
    assert torch.equal(output, expected)


def test_volumes_are_refused() -> None:
    with pytest.raises(ValueError, match="2D and takes"):
        tiny()(torch.randn(1, 3, 32, 32, 32))
