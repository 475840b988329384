"""The registry, and the contract every registered network keeps: tiny forward and backward
in each supported dimension, odd sizes handled or refused clearly, and weights that survive
a safetensors round trip. Parametrized over ``medseg.networks.available()``."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from medseg.errors import ConfigError
from medseg.networks import (
    Abilities,
    abilities,
    available,
    build_network,
    input_divisor,
    output_layers,
    register_network,
)

# (network, spatial_dims) -> (a tiny valid spatial size, an awkward one). A registered network
# missing here fails test_cases_cover_the_registry, so a new network cannot skip the contract.
CASES = {
    ("unetpp", 2): ((32, 32), (33, 47)),
    ("unetpp", 3): ((32, 16, 16), (17, 18, 19)),
    ("swin_unetr", 2): ((64, 64), (65, 66)),
    ("swin_unetr", 3): ((64, 32, 32), (33, 34, 35)),
    ("hdenseunet", 3): ((32, 32, 8), (33, 35, 8)),
    ("att_swinunet", 2): ((64, 64), (33, 47)),
}
IN_CHANNELS, OUT_CHANNELS, BATCH = 2, 3, 2


def build_tiny(name: str, spatial_dims: int, **options) -> torch.nn.Module:
    return build_network(
        name,
        spatial_dims=spatial_dims,
        in_channels=IN_CHANNELS,
        out_channels=OUT_CHANNELS,
        preset="tiny",
        **options,
    )


def first_head(output: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    return output[0] if isinstance(output, list) else output


def test_cases_cover_the_registry() -> None:
    assert {name for name, _ in CASES} == set(available())


@pytest.mark.parametrize(("name", "spatial_dims"), sorted(CASES))
def test_forward_and_backward_reach_every_parameter(name: str, spatial_dims: int) -> None:
    torch.manual_seed(0)
    network = build_tiny(name, spatial_dims).train()
    shape = CASES[(name, spatial_dims)][0]
    output = network(torch.randn(BATCH, IN_CHANNELS, *shape))
    heads = output if isinstance(output, list) else [output]
    for head in heads:
        assert head.shape == (BATCH, OUT_CHANNELS, *shape)
        assert torch.isfinite(head).all()
    torch.stack([head.mean() for head in heads]).sum().backward()
    for parameter_name, parameter in network.named_parameters():
        assert parameter.grad is not None, f"{parameter_name} got no gradient"
        assert torch.isfinite(parameter.grad).all(), f"{parameter_name} has a non-finite gradient"


@pytest.mark.parametrize(("name", "spatial_dims"), sorted(CASES))
def test_awkward_size_is_handled_or_refused_with_how_to_pad(name: str, spatial_dims: int) -> None:
    network = build_tiny(name, spatial_dims).eval()
    shape = CASES[(name, spatial_dims)][1]
    try:
        with torch.no_grad():
            output = first_head(network(torch.randn(1, IN_CHANNELS, *shape)))
    except ValueError as error:
        assert "pad" in str(error), f"error does not say how to pad: {error}"
    else:
        assert output.shape == (1, OUT_CHANNELS, *shape)


UNSUPPORTED = [(name, dims) for name in available() for dims in (2, 3) if (name, dims) not in CASES]


@pytest.mark.parametrize(("name", "spatial_dims"), UNSUPPORTED)
def test_unsupported_spatial_dims_are_a_config_error(name: str, spatial_dims: int) -> None:
    with pytest.raises(ConfigError, match=f"spatial_dims={spatial_dims}"):
        build_tiny(name, spatial_dims)


@pytest.mark.parametrize(("name", "spatial_dims"), sorted(CASES))
def test_weights_round_trip_through_safetensors(name, spatial_dims, tmp_path) -> None:
    torch.manual_seed(0)
    network = build_tiny(name, spatial_dims).eval()
    save_file(network.state_dict(), tmp_path / "weights.safetensors")
    torch.manual_seed(1)
    rebuilt = build_tiny(name, spatial_dims).eval()
    rebuilt.load_state_dict(load_file(tmp_path / "weights.safetensors"), strict=True)
    image = torch.randn(1, IN_CHANNELS, *CASES[(name, spatial_dims)][0])
    with torch.no_grad():
        assert torch.equal(first_head(rebuilt(image)), first_head(network(image)))


def test_unknown_network_is_a_config_error_listing_the_names() -> None:
    with pytest.raises(ConfigError) as caught:
        build_network("unet_3000", spatial_dims=2, in_channels=1, out_channels=1)
    for name in available():
        assert name in str(caught.value)


def test_unknown_preset_is_a_config_error_listing_the_presets() -> None:
    with pytest.raises(ConfigError, match="paper, small, tiny"):
        build_network("unetpp", spatial_dims=2, in_channels=1, out_channels=1, preset="huge")


def test_unknown_option_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="bad option"):
        build_network("swin_unetr", spatial_dims=2, in_channels=1, out_channels=1, colour=1)


def test_duplicate_registration_raises_and_keeps_the_first() -> None:
    names = available()
    with pytest.raises(ValueError, match="already registered"):
        register_network(
            "unetpp", network=torch.nn.Identity, presets={}, abilities=Abilities(spatial_dims=(2,))
        )(lambda **options: torch.nn.Identity())
    assert available() == names
    network = build_network("unetpp", spatial_dims=2, in_channels=1, out_channels=1)
    assert type(network).__name__ == "UNetPlusPlus"


@pytest.mark.parametrize(("name", "spatial_dims"), sorted(CASES))
def test_output_layers_are_exactly_the_heads(name: str, spatial_dims: int) -> None:
    network = build_tiny(name, spatial_dims)
    heads = output_layers(network, OUT_CHANNELS)
    assert heads
    network.eval()
    captured = []
    hooks = [head.register_forward_hook(lambda m, i, o: captured.append(o)) for head in heads]
    with torch.no_grad():
        logits = first_head(network(torch.randn(1, IN_CHANNELS, *CASES[(name, spatial_dims)][0])))
    for hook in hooks:
        hook.remove()
    # The final logits are one head's output (cropped back for networks that pad inside).
    assert any(out.shape[1] == OUT_CHANNELS for out in captured)
    with torch.no_grad():
        for head in heads:
            head.bias.add_(10.0)
        shifted = first_head(network(torch.randn(1, IN_CHANNELS, *CASES[(name, spatial_dims)][0])))
    assert shifted.mean() > logits.mean() + 5.0


def test_declared_dimensions_are_the_ones_the_contract_runs() -> None:
    for name in available():
        assert set(abilities(name).spatial_dims) == {dims for n, dims in CASES if n == name}


@pytest.mark.parametrize(("name", "spatial_dims"), sorted(CASES))
def test_declared_divisor_and_fixed_depth_describe_the_valid_sizes(name, spatial_dims) -> None:
    network = build_tiny(name, spatial_dims)
    divisor = input_divisor(network)
    shape = CASES[(name, spatial_dims)][0]
    assert len(divisor) == spatial_dims
    assert all(size % factor == 0 for size, factor in zip(shape, divisor, strict=True))
    depth_option = abilities(name).fixed_depth
    if depth_option is not None:
        depth = getattr(network, depth_option)
        assert shape[-1] == depth
        wrong = (*shape[:-1], depth + 1)
        with pytest.raises(ValueError, match=str(depth)):
            network.eval()(torch.randn(1, IN_CHANNELS, *wrong))


@pytest.mark.parametrize(("name", "spatial_dims"), sorted(CASES))
def test_declared_deep_supervision_is_what_training_mode_returns(name, spatial_dims) -> None:
    network = build_tiny(name, spatial_dims).train()
    with torch.no_grad():
        output = network(torch.randn(1, IN_CHANNELS, *CASES[(name, spatial_dims)][0]))
    assert isinstance(output, list) == abilities(name).deep_supervision


@pytest.mark.parametrize(("name", "spatial_dims"), sorted(CASES))
def test_declared_pruning_builds_and_runs_every_level(name, spatial_dims) -> None:
    shape = CASES[(name, spatial_dims)][0]
    image = torch.randn(1, IN_CHANNELS, *shape)
    if not abilities(name).prunable:
        with pytest.raises(ConfigError, match="prune_level"):
            build_tiny(name, spatial_dims, prune_level=1)
        return
    full = build_tiny(name, spatial_dims).eval()
    assert full.levels == full.depth
    with torch.no_grad():
        for level in range(1, full.levels + 1):
            pruned = build_tiny(name, spatial_dims, prune_level=level).eval()
            assert pruned.levels == level
            assert pruned(image).shape == full(image, prune_level=level).shape
            assert full.level_parameter_count(level) == sum(p.numel() for p in pruned.parameters())


@pytest.mark.parametrize(("name", "spatial_dims"), sorted(CASES))
def test_declared_modes_are_the_ones_a_stage_may_set(name, spatial_dims) -> None:
    network = build_tiny(name, spatial_dims).eval()
    modes = abilities(name).modes
    if not modes:
        assert "mode" not in dir(network)
        return
    image = torch.randn(1, IN_CHANNELS, *CASES[(name, spatial_dims)][0])
    outputs = {}
    for mode in modes:
        network.mode = mode
        with torch.no_grad():
            outputs[mode] = first_head(network(image))
        assert outputs[mode].shape == (1, OUT_CHANNELS, *image.shape[2:])
    assert len({output.sum().item() for output in outputs.values()}) == len(modes)
    with pytest.raises(ValueError, match="mode"):
        network.mode = "unknown"
    network.freeze_2d(True)
    frozen = [p for p in network.parameters() if not p.requires_grad]
    assert frozen and len(frozen) < len(list(network.parameters()))


def test_declared_planned_pooling_accepts_strides() -> None:
    for name in available():
        if abilities(name).planned_pooling:
            network = build_tiny(name, 3, features=[4, 8, 16], strides=[[2, 2, 1], [2, 2, 2]])
            assert input_divisor(network) == (4, 4, 2)
