import pytest
import torch
import torch.nn as nn

from medseg.networks import build_network
from medseg.networks.inference_layout import (
    CHANNELS_LAST,
    ChannelsLastInstanceNorm,
    SplitInputConvolution,
    channels_last_for_inference,
    fold_batch_norms,
    inference_network,
    is_channels_last,
)

NETWORKS = [
    ("unetpp", 4, (32, 32, 32)),
    ("swin_unetr", 4, (64, 32, 32)),
    ("hdenseunet", 1, (32, 32, 8)),
    ("unetpp", 1, (64, 64)),
    ("swin_unetr", 1, (64, 64)),
    ("att_swinunet", 3, (64, 64)),
]
INSTANCE_NORMS = (nn.InstanceNorm2d, nn.InstanceNorm3d)
BATCH_NORMS = (nn.BatchNorm2d, nn.BatchNorm3d)


def assert_equal_to_1e5(got, expected):
    scale = expected.abs().max().item()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * scale)


def trained_looking(network):
    """``network`` in eval mode with batch-norm statistics and affines away from their
    initial values, so that folding them into the convolutions is not trivially exact."""
    for module in network.modules():
        if isinstance(module, BATCH_NORMS):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
            nn.init.normal_(module.weight)
            nn.init.normal_(module.bias)
    return network.eval()


@pytest.mark.parametrize(("name", "in_channels", "roi"), NETWORKS)
def test_channels_last_copy_predicts_what_the_network_does(name, in_channels, roi):
    torch.manual_seed(0)
    network = trained_looking(
        build_network(
            name, spatial_dims=len(roi), in_channels=in_channels, out_channels=3, preset="tiny"
        )
    )
    state_before = {key: value.clone() for key, value in network.state_dict().items()}
    windows = torch.randn(2, in_channels, *roi)
    prepared = channels_last_for_inference(network)
    with torch.inference_mode():
        expected = network(windows)
        got = prepared(windows)
    assert_equal_to_1e5(got, expected)
    assert network.state_dict().keys() == state_before.keys()
    assert all(torch.equal(network.state_dict()[k], v) for k, v in state_before.items())
    assert all(p.is_contiguous() for p in network.parameters())
    assert not any(isinstance(m, INSTANCE_NORMS) for m in prepared.modules())
    convolution_weights = [p for p in prepared.parameters() if p.dim() >= 4]
    assert convolution_weights and all(is_channels_last(p) for p in convolution_weights)
    if name == "unetpp":
        assert any(isinstance(m, SplitInputConvolution) for m in prepared.modules())


@pytest.mark.parametrize(("spatial_dims", "norm"), [(2, "batch"), (3, "batch"), (3, "instance")])
def test_unetpp_inference_copy_without_concatenations_or_batch_norms(spatial_dims, norm):
    torch.manual_seed(2)
    network = trained_looking(
        build_network(
            "unetpp",
            spatial_dims=spatial_dims,
            in_channels=2,
            out_channels=2,
            preset="tiny",
            features=(4, 8, 16),
            norm=norm,
        )
    )
    windows = torch.randn(2, 2, *[8] * spatial_dims)
    prepared = channels_last_for_inference(network)
    with torch.inference_mode():
        expected = [network(windows, prune_level=level) for level in (1, 2)]
        got = [prepared(windows, prune_level=level) for level in (1, 2)]
    for one, other in zip(got, expected, strict=True):
        assert_equal_to_1e5(one, other)
    assert not any(isinstance(m, BATCH_NORMS) for m in prepared.modules())
    # three nested-skip nodes of two levels: x0_1, x1_1, x0_2
    assert sum(isinstance(m, SplitInputConvolution) for m in prepared.modules()) == 3


@pytest.mark.parametrize(
    ("convolution", "shape"),
    [
        (nn.Conv3d(12, 5, 3, padding=1), (2, 12, 6, 7, 5)),
        (nn.Conv2d(12, 5, 3, stride=2, padding=1, bias=False), (2, 12, 9, 8)),
    ],
)
def test_a_split_input_convolution_is_the_convolution_of_the_concatenation(convolution, shape):
    torch.manual_seed(3)
    x = torch.randn(shape)
    split = SplitInputConvolution(convolution, [4, 6, 2])
    with torch.inference_mode():
        expected = convolution(x)
        got = split([x[:, :4], x[:, 4:10], x[:, 10:]])
    assert_equal_to_1e5(got, expected)
    with pytest.raises(ValueError, match="add up to the 12 input channels"):
        SplitInputConvolution(convolution, [4, 4])


def test_only_batch_norms_right_after_a_convolution_are_folded():
    torch.manual_seed(4)
    network = trained_looking(
        nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.Dropout(0.3),
            nn.Sequential(nn.BatchNorm2d(4), nn.ReLU()),
            nn.BatchNorm2d(4),
        )
    )
    x = torch.randn(2, 3, 8, 8)
    with torch.inference_mode():
        expected = network(x)
        fold_batch_norms(network)
        got = network(x)
    assert_equal_to_1e5(got, expected)
    assert isinstance(network[2][0], nn.Identity)
    assert isinstance(network[3], nn.BatchNorm2d)  # after a ReLU: not foldable


@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize(
    "shape", [(2, 8, 16, 16, 16), (1, 3, 5, 6, 7), (3, 64, 4, 4, 4), (2, 8, 30, 20), (1, 3, 5, 7)]
)
def test_channels_last_instance_norm_equals_pytorchs(affine, shape):
    torch.manual_seed(1)
    reference = (nn.InstanceNorm2d if len(shape) == 4 else nn.InstanceNorm3d)(
        shape[1], affine=affine
    )
    if affine:
        nn.init.normal_(reference.weight)
        nn.init.normal_(reference.bias)
    norm = ChannelsLastInstanceNorm(reference)
    x = torch.randn(shape) * 3 + 2
    last = x.contiguous(memory_format=CHANNELS_LAST[x.ndim])
    with torch.inference_mode():
        expected = reference(x)
        got = norm(last)
        fallback = norm(x)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)
    assert is_channels_last(got)
    torch.testing.assert_close(fallback, expected, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("value", [7.0, 0.1, -1234.567, 0.0])
@pytest.mark.parametrize("shape", [(2, 8, 6, 10, 10), (2, 3, 64, 32, 8)])
def test_a_constant_channel_gives_exact_zeros(value, shape):
    # as an air window does; PyTorch leaves a residue here that the next norm would blow up
    norm = ChannelsLastInstanceNorm(nn.InstanceNorm3d(shape[1]))
    x = torch.randn(shape)
    x[1, 2] = value
    with torch.inference_mode():
        got = norm(x.contiguous(memory_format=torch.channels_last_3d))
    assert torch.equal(got[1, 2], torch.zeros_like(got[1, 2]))
    assert got[0, 2].std() > 0.5


def test_a_nearly_constant_channel_is_normalised_not_zeroed():
    reference = nn.InstanceNorm3d(4)
    x = torch.randn(2, 4, 6, 10, 10)
    x[0, 1] = 7.0
    x[0, 1, 0, 0, 0] = 7.001
    with torch.inference_mode():
        got = ChannelsLastInstanceNorm(reference)(
            x.contiguous(memory_format=torch.channels_last_3d)
        )
        expected = reference(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=5e-4)
    assert got[0, 1, 0, 0, 0] > 0.1


def test_a_single_voxel_is_refused_as_pytorch_refuses_it():
    norm = ChannelsLastInstanceNorm(nn.InstanceNorm3d(4))
    x = torch.randn(2, 4, 1, 1, 1).contiguous(memory_format=torch.channels_last_3d)
    with pytest.raises(ValueError, match="more than 1 spatial element"):
        norm(x)


def test_only_convolutional_networks_on_the_cpu_get_the_channels_last_copy():
    three_d = build_network("unetpp", spatial_dims=3, in_channels=1, out_channels=2, preset="tiny")
    two_d = build_network("unetpp", spatial_dims=2, in_channels=1, out_channels=2, preset="tiny")
    assert inference_network(three_d, torch.device("cpu")) is not three_d
    assert inference_network(two_d, torch.device("cpu")) is not two_d
    assert inference_network(three_d, torch.device("meta")) is three_d
    linear = nn.Linear(4, 2)
    assert inference_network(linear, torch.device("cpu")) is linear
