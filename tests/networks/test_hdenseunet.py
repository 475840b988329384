"""H-DenseUNet: parameter counts, 2.5D slicing, the staged-training switches (2D mode,
freezing) and gradients through both paths."""

import pytest
import torch

from medseg.networks import build_network
from medseg.networks.hdenseunet import _adjacent_slices

SHAPE = (1, 1, 32, 32, 8)


def tiny(**options) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network(
        "hdenseunet", spatial_dims=3, in_channels=1, out_channels=3, preset="tiny", **options
    )


def parameters_of(*modules: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [parameter for module in modules for parameter in module.parameters()]


def test_paper_parameter_counts() -> None:
    with torch.device("meta"):
        network = build_network("hdenseunet", spatial_dims=3, in_channels=1, out_channels=3)
    assert sum(parameter.numel() for parameter in network.parameters()) == 66_041_838
    part_2d = parameters_of(network.dense_2d, network.head_2d)
    assert sum(parameter.numel() for parameter in part_2d) == 49_527_843


def test_adjacent_slices_repeat_the_edges() -> None:
    # Voxel value = 10 * channel + z, so each 2.5D channel tells which slice it came from.
    volume = torch.arange(5.0).expand(1, 2, 4, 4, 5) + 10 * torch.arange(2.0).view(1, 2, 1, 1, 1)
    slices = _adjacent_slices(volume)
    assert slices.shape == (5, 6, 4, 4)
    neighbours = [(0, 0, 1), (0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 4)]
    for z, (below, centre, above) in enumerate(neighbours):
        expected = [below, centre, above, 10 + below, 10 + centre, 10 + above]
        assert slices[z, :, 0, 0].tolist() == expected


def test_2d_mode_sees_only_adjacent_slices() -> None:
    network = tiny(mode="2d").eval()
    volume = torch.randn(*SHAPE)
    changed = volume.clone()
    changed[..., 5] += 1.0
    with torch.no_grad():
        difference = (network(changed) - network(volume)).abs().amax(dim=(0, 1, 2, 3))
    assert difference.shape == (8,)
    assert (difference[[4, 5, 6]] > 0).all()
    assert (difference[[0, 1, 2, 3, 7]] == 0).all()


def test_2d_mode_returns_a_volume_and_leaves_the_3d_part_out() -> None:
    network = tiny(mode="2d").train()
    output = network(torch.randn(*SHAPE))
    assert output.shape == (1, 3, 32, 32, 8)
    output.mean().backward()
    assert all(p.grad is not None for p in parameters_of(network.dense_2d, network.head_2d))
    assert all(p.grad is None for p in parameters_of(network.dense_3d, network.fusion))


def test_residual_scores_start_the_hybrid_output_at_the_2d_scores() -> None:
    network = tiny(residual_scores=True).eval()
    volume = torch.randn(*SHAPE)
    with torch.no_grad():
        hybrid = network(volume)
        network.mode = "2d"
        torch.testing.assert_close(hybrid, network(volume))
    network.mode = "hybrid"
    network.train()
    network(volume).square().mean().backward()
    assert network.fusion[-1].weight.grad.abs().sum() > 0  # the fused head still learns


def test_gradients_reach_the_2d_and_the_3d_path() -> None:
    network = tiny().train()
    network(torch.randn(*SHAPE)).mean().backward()
    for part in (network.dense_2d, network.head_2d, network.dense_3d, network.fusion):
        gradients = [parameter.grad for parameter in part.parameters()]
        assert all(gradient is not None for gradient in gradients)
        assert any(gradient.abs().sum() > 0 for gradient in gradients)


def test_freezing_the_2d_part_stops_its_gradients_and_statistics() -> None:
    network = tiny()
    network.freeze_2d(True)
    network.train()
    assert not network.dense_2d.training and network.dense_3d.training
    statistics = {name: buffer.clone() for name, buffer in network.dense_2d.named_buffers()}
    network(torch.randn(*SHAPE)).mean().backward()
    assert all(p.grad is None for p in parameters_of(network.dense_2d, network.head_2d))
    assert all(p.grad is not None for p in parameters_of(network.dense_3d, network.fusion))
    for name, buffer in network.dense_2d.named_buffers():
        assert torch.equal(buffer, statistics[name]), f"{name} changed while frozen"

    network.freeze_2d(False)
    assert network.dense_2d.training
    network(torch.randn(*SHAPE)).mean().backward()
    assert all(p.grad is not None for p in parameters_of(network.dense_2d, network.head_2d))


def test_wrong_slice_count_size_or_mode_is_refused_clearly() -> None:
    network = tiny()
    with pytest.raises(ValueError, match="built for 8 slices, got Z=7"):
        network(torch.randn(1, 1, 32, 32, 7))
    with pytest.raises(ValueError, match=r"divisible by 32, got \(48, 32\); pad"):
        network(torch.randn(1, 1, 48, 32, 8))
    with pytest.raises(ValueError, match="mode must be one of"):
        network.mode = "3d"
