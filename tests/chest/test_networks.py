"""xray_seg.chest.networks: InvertedNet's structure, modes, TorchScript export and trainability.

The networks are tiny (a few thousand parameters, inputs of at most 32x48) so the
whole file runs in seconds on two CPU cores; only the parameter count builds the
default (paper-sized) configuration, without running it.
"""

from __future__ import annotations

import io

import pytest
import torch
from monai.bundle import ConfigParser
from torch import nn

from xray_seg.chest.networks import InvertedNet

# TorchScript is what monai.bundle.ckpt_export uses, deprecated or not.
pytestmark = pytest.mark.filterwarnings("ignore:`torch\\.jit\\.:DeprecationWarning")

TINY = (16, 8, 4)  # two poolings: inputs divisible by 4


def _convs(module: nn.Module) -> list[nn.Module]:
    """Non-transposed convolutions, in registration (= execution) order."""
    return [m for m in module.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))]


@pytest.mark.parametrize(
    "spatial_dims, in_channels, out_channels, channels, shape",
    [
        (2, 1, 5, TINY, (2, 32, 48)),  # non-square
        (2, 3, 1, (8, 4), (1, 6, 10)),  # one pooling: divisible by 2 is enough
        (2, 1, 2, (16, 8, 4, 2), (1, 16, 24)),
        (3, 1, 3, TINY, (1, 8, 12, 16)),
        (3, 2, 5, (8, 4), (2, 4, 6, 2)),
    ],
)
def test_output_shape(spatial_dims, in_channels, out_channels, channels, shape) -> None:
    net = InvertedNet(spatial_dims, in_channels, out_channels, channels=channels).eval()
    batch, *spatial = shape
    with torch.no_grad():
        out = net(torch.randn(batch, in_channels, *spatial))
    assert out.shape == (batch, out_channels, *spatial)
    assert out.dtype == torch.float32


def test_spatial_size_not_divisible_is_refused() -> None:
    net = InvertedNet(channels=TINY).eval()
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.randn(1, 1, 32, 30))


@pytest.mark.parametrize(
    "kwargs",
    [{"channels": (16,)}, {"dropout": 1.0}, {"delay": -1}, {"kernel_size": 4}, {"spatial_dims": 4}],
)
def test_invalid_arguments(kwargs) -> None:
    with pytest.raises(ValueError):
        InvertedNet(**kwargs)


def test_default_feature_maps_halve_down_and_double_up() -> None:
    net = InvertedNet()  # the paper-sized default, only inspected
    channels = (256, 128, 64, 32)
    levels = [net.encoder[0]] + [stage[1] for stage in net.encoder[1:]]
    assert len(levels) == len(channels)
    for level, expected in zip(levels, channels):
        assert {conv.out_channels for conv in _convs(level)} == {expected}
    # Inverted relative to U-Net: every pooling halves the feature maps.
    assert all(deep * 2 == shallow for shallow, deep in zip(channels, channels[1:]))
    # Expanding path: every transposed convolution doubles them; deepest first.
    ups = [block.up.conv for block in net.decoder]
    assert [(up.in_channels, up.out_channels) for up in ups] == [(32, 64), (64, 128), (128, 256)]
    assert all(isinstance(up, nn.ConvTranspose2d) and up.stride == (2, 2) for up in ups)
    # Skip connections concatenate: the first conv after each upsampling sees 2x maps.
    assert [_convs(block.convs)[0].in_channels for block in net.decoder] == [128, 256, 512]
    assert net.head.conv.in_channels == 256 and net.head.conv.out_channels == 5
    assert net.head.conv.kernel_size == (1, 1)


def test_elu_activations_and_no_relu() -> None:
    net = InvertedNet(channels=TINY)
    elus = [m for m in net.modules() if isinstance(m, nn.ELU)]
    # One ELU per 3x3 convolution and per upsampling; the 1x1 head stays linear.
    assert len(elus) == len(_convs(net)) - 1 + len(net.decoder)
    banned = (nn.ReLU, nn.PReLU, nn.LeakyReLU, nn.ReLU6)
    assert not [m for m in net.modules() if isinstance(m, banned)]


def test_dropout_after_every_conv_and_after_the_activation() -> None:
    net = InvertedNet(channels=TINY, dropout=0.3)
    dropouts = [m for m in net.modules() if isinstance(m, nn.Dropout)]
    assert len(dropouts) == len(_convs(net)) - 1  # every 3x3 conv, not the head
    assert all(d.p == 0.3 for d in dropouts)
    for stage in net.encoder[0]:
        assert list(stage.adn._modules) == ["A", "D"]  # activation, then dropout (paper)
    assert not [m for m in InvertedNet(channels=TINY, dropout=0.0).modules() if isinstance(m, nn.Dropout)]


def test_dropout_is_active_only_in_train_mode() -> None:
    torch.manual_seed(0)
    net = InvertedNet(channels=TINY, dropout=0.5)
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        net.train()
        assert not torch.equal(net(x), net(x))
        net.eval()
        assert torch.equal(net(x), net(x))
        # Without dropout, train mode is deterministic too: dropout is the only noise.
        plain = InvertedNet(channels=TINY, dropout=0.0).train()
        assert torch.equal(plain(x), plain(x))


@pytest.mark.parametrize("delay", [0, 2, 3])
def test_delayed_subsampling(delay: int) -> None:
    net = InvertedNet(channels=TINY, delay=delay).eval()
    calls: list[str] = []
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
            m.register_forward_hook(lambda mod, inp, out: calls.append(type(mod).__name__))
    with torch.no_grad():
        net(torch.randn(1, 1, 8, 8))
    first_pool = calls.index("MaxPool2d")
    # U-Net pools after two convolutions; InvertedNet after 2 + delay, all at full size.
    assert calls[:first_pool] == ["Conv2d"] * (2 + delay)
    assert calls.count("MaxPool2d") == len(TINY) - 1
    # Deeper levels keep U-Net's two convolutions per level.
    second_pool = calls.index("MaxPool2d", first_pool + 1)
    assert calls[first_pool + 1 : second_pool] == ["Conv2d"] * 2


def test_default_has_four_convolutions_before_the_first_pooling() -> None:
    assert len(_convs(InvertedNet().encoder[0])) == 4


@pytest.mark.parametrize("spatial_dims, shape", [(2, (2, 1, 16, 24)), (3, (1, 1, 8, 8, 12))])
def test_torchscript_round_trip(spatial_dims: int, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    net = InvertedNet(spatial_dims, 1, 3, channels=TINY).eval()
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(net), buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer).eval()
    x = torch.randn(shape)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))
    with pytest.raises(torch.jit.Error, match="divisible"):
        loaded(torch.randn(*shape[:-1], shape[-1] + 2))


def test_batch_norm_option() -> None:
    net = InvertedNet(channels=TINY, norm="batch").eval()
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert all(conv.bias is None for conv in _convs(net)[:-1])  # norm makes the bias redundant
    assert net(torch.randn(1, 1, 8, 8)).shape == (1, 5, 8, 8)


def test_instantiates_from_a_bundle_config() -> None:
    config = {
        "num_classes": 5,
        "network_def": {
            "_target_": "xray_seg.chest.networks.InvertedNet",
            "spatial_dims": 2,
            "in_channels": 1,
            "out_channels": "@num_classes",
            "channels": [16, 8, 4],
            "dropout": 0.1,
        },
    }
    net = ConfigParser(config).get_parsed_content("network_def")
    assert isinstance(net, InvertedNet)
    assert net(torch.randn(1, 1, 8, 8)).shape == (1, 5, 8, 8)


def test_adam_steps_reduce_bce_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    net = InvertedNet(channels=TINY, out_channels=2)
    x = torch.randn(4, 1, 16, 16)
    target = (torch.rand(4, 2, 16, 16) > 0.5).float()
    loss_fn = nn.BCEWithLogitsLoss()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)

    def eval_loss() -> float:
        net.eval()
        with torch.no_grad():
            return loss_fn(net(x), target).item()

    before = eval_loss()
    net.train()
    for _ in range(20):
        optimizer.zero_grad()
        loss = loss_fn(net(x), target)
        loss.backward()
        optimizer.step()
    after = eval_loss()
    assert torch.isfinite(torch.tensor(after))
    assert after < 0.97 * before, (before, after)


def test_parameter_count_of_the_default_configuration() -> None:
    """Default (256, 128, 64, 32), delay 2, 1 -> 5 classes: 4.85 M parameters.

    Most of them are full-resolution 256-map convolutions (4 encoder, 2 decoder);
    MONAI's UNet(channels=(16, 32, 64, 128, 256), num_res_units=2) has 1.63 M.
    """
    count = sum(p.numel() for p in InvertedNet().parameters())
    assert count == 4_850_949
    assert 4.8e6 < count < 4.9e6
    small = sum(p.numel() for p in InvertedNet(channels=(64, 32, 16, 8)).parameters())
    assert small == 304_389
