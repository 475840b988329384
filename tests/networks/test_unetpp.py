"""UNet++: the paper's parameter counts, exact pruning equivalence, deep supervision and the
input-size check."""

import pytest
import torch

from medseg.networks import build_network

DEPTH = 4
SHAPES = {2: (32, 32), 3: (32, 16, 16)}


def tiny(spatial_dims: int, **options) -> torch.nn.Module:
    # The tiny preset uses instance norm without running statistics and no dropout, so a
    # head computes the same in training and eval mode.
    torch.manual_seed(0)
    return build_network(
        "unetpp", spatial_dims=spatial_dims, in_channels=2, out_channels=3, preset="tiny", **options
    )


def test_paper_parameter_counts() -> None:
    # Zhou et al., TMI 2019, Fig. 7: the 2D UNet++ (filters 32..512) pruned at L1..L4 has
    # 0.1, 0.5, 2.2 and 9.0 M parameters. Each level is built on its own and counted.
    counts = []
    for level in range(1, DEPTH + 1):
        with torch.device("meta"):
            pruned = build_network(
                "unetpp", spatial_dims=2, in_channels=1, out_channels=1, prune_level=level
            )
        counts.append(sum(parameter.numel() for parameter in pruned.parameters()))
    assert [round(count / 1e6, 1) for count in counts] == [0.1, 0.5, 2.2, 9.0]
    with torch.device("meta"):
        full = build_network("unetpp", spatial_dims=2, in_channels=1, out_channels=1)
    assert [full.level_parameter_count(level) for level in range(1, DEPTH + 1)] == counts


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_pruned_forward_and_every_head_equal_the_full_networks_head(spatial_dims) -> None:
    network = tiny(spatial_dims)
    image = torch.randn(2, 2, *SHAPES[spatial_dims])
    with torch.no_grad():
        heads = network.train()(image)
        network.eval()
        every_head = network(image, every_head=True)
        for level in range(1, DEPTH + 1):
            full_head = heads[DEPTH - level]
            assert torch.equal(network(image, prune_level=level), full_head)
            # prune measures every level from this one forward
            assert torch.equal(every_head[DEPTH - level], full_head)
            pruned = tiny(spatial_dims, prune_level=level).eval()
            state = network.state_dict()
            names = network.level_parameter_names(level)
            pruned.load_state_dict({name: state[name] for name in names}, strict=True)
            assert torch.equal(pruned(image), full_head)


def test_pruned_network_holds_only_its_level() -> None:
    full = tiny(2)
    for level in range(1, DEPTH + 1):
        pruned = tiny(2, prune_level=level)
        assert set(pruned.state_dict()) == set(full.level_parameter_names(level))
        pruned_count = sum(parameter.numel() for parameter in pruned.parameters())
        assert pruned_count == full.level_parameter_count(level)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_deep_supervision_returns_every_head_final_first(spatial_dims) -> None:
    network = tiny(spatial_dims)
    image = torch.randn(2, 2, *SHAPES[spatial_dims])
    with torch.no_grad():
        heads = network.train()(image)
        final = network.eval()(image)
    assert isinstance(heads, list)
    assert len(heads) == DEPTH
    assert all(head.shape == (2, 3, *SHAPES[spatial_dims]) for head in heads)
    assert torch.equal(heads[0], final)
    assert not torch.equal(heads[1], final)


def test_wrong_spatial_size_says_the_divisor_and_how_to_pad() -> None:
    network = tiny(2).eval()
    with pytest.raises(ValueError, match=r"divisible by 16, got \(36, 32\); pad"):
        network(torch.randn(1, 2, 36, 32))
    # Level 2 down-samples only twice, so 36 is a valid size there.
    assert network(torch.randn(1, 2, 36, 32), prune_level=2).shape == (1, 3, 36, 32)


def test_prune_level_out_of_range_raises() -> None:
    network = tiny(2)
    with pytest.raises(ValueError, match=r"prune_level must be in 1\.\.4"):
        network(torch.randn(1, 2, 32, 32), prune_level=5)
    with pytest.raises(ValueError, match=r"prune_level must be in 1\.\.2"):
        tiny(2, prune_level=2)(torch.randn(1, 2, 32, 32), prune_level=3)
