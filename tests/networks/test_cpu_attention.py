import copy

import pytest
import torch
import torch.nn as nn
from monai.networks.nets.swin_unetr import BasicLayer

from medseg.networks import build_network
from medseg.networks.cpu_attention import InferenceSwinStage, with_inference_swin_stages
from medseg.networks.pointwise_conv import PointwiseConv, with_pointwise_convs

SWIN_NETWORKS = [
    ("swin_unetr", 4, (64, 32, 32), {}),
    ("swin_unetr", 1, (64, 64), {}),
    ("att_swinunet", 3, (64, 64), {}),
    # window 7 does not tile the 24x20 token grid: padded windows, shifted masks
    ("att_swinunet", 3, (96, 80), {"window_size": 7}),
]


@pytest.mark.parametrize(("name", "in_channels", "roi", "options"), SWIN_NETWORKS)
def test_inference_swin_stages_predict_what_monai_stages_do(name, in_channels, roi, options):
    torch.manual_seed(0)
    network = build_network(
        name,
        spatial_dims=len(roi),
        in_channels=in_channels,
        out_channels=3,
        preset="tiny",
        **options,
    ).eval()
    for module in network.modules():
        if hasattr(module, "relative_position_bias_table"):
            # the initial biases are near zero; large ones make a wrong bias or mask visible
            nn.init.normal_(module.relative_position_bias_table, std=1.0)
    prepared = with_inference_swin_stages(copy.deepcopy(network))
    windows = torch.randn(2, in_channels, *roi)
    with torch.inference_mode():
        expected = network(windows)
        got = prepared(windows)
    assert any(isinstance(m, InferenceSwinStage) for m in prepared.modules())
    assert not any(isinstance(m, BasicLayer) for m in prepared.modules())
    assert prepared.state_dict().keys() == network.state_dict().keys()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", [torch.channels_last_3d, torch.contiguous_format])
def test_pointwise_conv_equals_the_convolution_single_threaded(layout):
    torch.manual_seed(0)
    network = nn.Sequential(nn.Conv3d(6, 5, 1), nn.Conv3d(5, 4, 3, padding=1))
    prepared = with_pointwise_convs(copy.deepcopy(network))
    assert isinstance(prepared[0], PointwiseConv)
    assert type(prepared[1]) is nn.Conv3d
    assert prepared.state_dict().keys() == network.state_dict().keys()
    x = torch.randn(2, 6, 4, 5, 3).contiguous(memory_format=layout)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            got, expected = prepared[0](x), network[0](x)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    if layout == torch.channels_last_3d:
        assert got.is_contiguous(memory_format=torch.channels_last_3d)
