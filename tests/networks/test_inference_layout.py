import pytest
import torch
import torch.nn as nn

from medseg.networks import build_network
from medseg.networks.inference_layout import (
    CHANNELS_LAST,
    ChannelsLastInstanceNorm,
    channels_last_for_inference,
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


@pytest.mark.parametrize(("name", "in_channels", "roi"), NETWORKS)
def test_channels_last_copy_predicts_what_the_network_does(name, in_channels, roi):
    torch.manual_seed(0)
    network = build_network(
        name, spatial_dims=len(roi), in_channels=in_channels, out_channels=3, preset="tiny"
    ).eval()
    norms_before = sum(isinstance(m, INSTANCE_NORMS) for m in network.modules())
    windows = torch.randn(2, in_channels, *roi)
    prepared = channels_last_for_inference(network)
    with torch.inference_mode():
        expected = network(windows)
        got = prepared(windows)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert sum(isinstance(m, INSTANCE_NORMS) for m in network.modules()) == norms_before
    assert all(p.is_contiguous() for p in network.parameters())
    assert not any(isinstance(m, INSTANCE_NORMS) for m in prepared.modules())
    convolution_weights = [p for p in prepared.parameters() if p.dim() >= 4]
    assert convolution_weights and all(is_channels_last(p) for p in convolution_weights)


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


@pytest.mark.parametrize("value", [7.0, 0.1, -1234.567])
def test_a_constant_channel_gives_exact_zeros(value):
    # as an air window does; any rounding left here the next norm would blow up
    norm = ChannelsLastInstanceNorm(nn.InstanceNorm3d(8))
    x = torch.randn(2, 8, 6, 10, 10)
    x[1, 3] = value
    got = norm(x.contiguous(memory_format=torch.channels_last_3d))
    assert torch.equal(got[1, 3], torch.zeros_like(got[1, 3]))


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
