"""Small hand-checked tests of covseg.models that pin what the contract tests (test_models.py) leave loose: parameter
counts worked out by hand, the wiring of skips, gates and unpooling, and the size checks' edge cases."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from covseg.errors import CovsegError
from covseg.models import create_model, fold_batch_norm, nearest_valid_size
from covseg.models.fusion import fuse_for_inference
from covseg.models.segnet import _unpool
from covseg.models.shapes import check_input_size
from covseg.models.unet import DoubleConv, group_norm


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# width 2, depth 2, 1 input channel, 2 classes: channels 2, 4, 8 a level. A plain block (cin -> cout) with a norm:
# two 3x3 convolutions without bias (9 cin cout + 9 cout cout) and two affine norms (2 cout each)
def _block(cin: int, cout: int, norm: bool = True) -> int:
    return 9 * cin * cout + 9 * cout * cout + (4 * cout if norm else 2 * cout)  # no norm: two biases instead


def _unet_w2_d2(norm: bool = True) -> int:
    encoders = _block(1, 2, norm) + _block(2, 4, norm) + _block(4, 8, norm)  # 62 + 232 + 896 with norms
    upsamplers = (8 * 4 * 4 + 4) + (4 * 2 * 4 + 2)  # 2x2 transposed convolutions with bias: 132 + 34
    decoders = _block(8, 4, norm) + _block(4, 2, norm)  # concatenated input: 2 x the level's channels; 448 + 116
    head = 2 * 2 + 2  # 1x1 with bias
    return encoders + upsamplers + decoders + head


@pytest.mark.parametrize("norm", ["batch", "instance", "group"])
def test_a_width_2_depth_2_unet_has_the_parameters_counted_by_hand(norm: str) -> None:
    assert _unet_w2_d2() == 1926
    model = create_model("unet", num_classes=2, width=2, depth=2, norm=norm)
    assert _count(model) == 1926  # every norm is affine (weight and bias a channel), instance norm included
    assert _count(create_model("unet", num_classes=2, width=2, depth=2, norm=norm, batch_norm=False)) == 1886
    assert _unet_w2_d2(norm=False) == 1886


def test_attention_gates_map_to_half_the_levels_channels_counted_by_hand() -> None:
    model = create_model("unet", num_classes=2, width=2, depth=2, attention=True)
    # coarsest first: level 1 (4 channels, inter 2), level 0 (2 channels, inter 1); W_x and W_g 1x1 without bias
    # (C * I each) with batch norm (2 I each), psi I -> 1 without bias and its norm (2): 28 and 11
    assert [g.skip[0].out_channels for g in model.gates] == [2, 1]
    assert [_count(g) for g in model.gates] == [4 * 2 * 2 + 2 * 2 * 2 + 2 + 2, 2 * 1 * 2 + 2 * 2 * 1 + 1 + 2]
    assert _count(model) == 1926 + 39


def test_a_double_conv_ends_in_a_relu() -> None:
    torch.manual_seed(0)
    block = DoubleConv(2, 3).eval()
    assert isinstance(block[-1], torch.nn.ReLU) and sum(isinstance(m, torch.nn.ReLU) for m in block) == 2
    with torch.no_grad():
        assert block(torch.randn(2, 2, 6, 6)).min() >= 0


def test_group_norm_takes_the_greatest_common_divisor_with_eight() -> None:
    assert [group_norm(c).num_groups for c in (24, 4, 2, 6, 20)] == [8, 4, 2, 2, 4]


def _capture(model: torch.nn.Module, x: torch.Tensor) -> dict[str, list]:
    """The encoders' and upsamplers' outputs, each decoder's input and each gate's arguments in one forward pass."""
    seen: dict[str, list] = {"enc": [], "up": [], "dec_in": [], "gate": []}
    hooks = [e.register_forward_hook(lambda m, a, o: seen["enc"].append(o)) for e in model.encoders]
    hooks += [u.register_forward_hook(lambda m, a, o: seen["up"].append(o)) for u in model.upsamplers]
    hooks += [d.register_forward_pre_hook(lambda m, a: seen["dec_in"].append(a[0])) for d in model.decoders]
    hooks += [g.register_forward_hook(lambda m, a, o: seen["gate"].append((a, o))) for g in model.gates]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return seen


def test_each_decoder_reads_the_upsampled_features_then_the_skip() -> None:
    # the concatenation order is part of the checkpoint format: the decoder's first convolution's input channels
    # [:C] take the transposed convolution's output, [C:] the encoder's features at that level
    torch.manual_seed(0)
    model = create_model("unet", num_classes=2, width=2, depth=2).eval()
    seen = _capture(model, torch.rand(1, 1, 16, 16))
    for level, (up, dec_in) in enumerate(zip(seen["up"], seen["dec_in"])):
        skip = seen["enc"][1 - level]  # the coarsest skip first
        c = up.shape[1]
        assert dec_in.shape[1] == 2 * c
        torch.testing.assert_close(dec_in[:, :c], up)
        torch.testing.assert_close(dec_in[:, c:], skip)


def test_each_attention_gate_takes_the_skip_first_and_the_upsampled_features_as_its_signal() -> None:
    torch.manual_seed(0)
    model = create_model("unet", num_classes=2, width=2, depth=2, attention=True).eval()
    seen = _capture(model, torch.rand(1, 1, 16, 16))
    for level, ((args, out), up, dec_in) in enumerate(zip(seen["gate"], seen["up"], seen["dec_in"])):
        skip = seen["enc"][1 - level]
        torch.testing.assert_close(args[0], skip)
        torch.testing.assert_close(args[1], up)
        torch.testing.assert_close(out, skip * model.gates[level].weights(skip, up))
        torch.testing.assert_close(dec_in[:, up.shape[1]:], out)


def test_a_dropout_of_one_is_refused() -> None:
    with pytest.raises(CovsegError, match=r"dropout and decoder_dropout must be in \[0, 1\), got 1.0 and 0.0"):
        create_model("unet", dropout=1.0)
    assert isinstance(create_model("unet", width=2, depth=2, dropout=0.99).dropout, torch.nn.Dropout2d)


def test_unet_upsamples_with_2x2_transposed_convolutions() -> None:
    model = create_model("unet", num_classes=2, width=2, depth=2)
    assert [(type(u), u.in_channels, u.out_channels, u.kernel_size, u.stride) for u in model.upsamplers] == [
        (torch.nn.ConvTranspose2d, 8, 4, (2, 2), (2, 2)), (torch.nn.ConvTranspose2d, 4, 2, (2, 2), (2, 2))]


def test_a_width_4_depth_2_segnet_has_the_parameters_counted_by_hand() -> None:
    model = create_model("segnet", num_classes=2, width=4, depth=2)
    # stages of 4 and 8 channels, two 3x3 convolutions each (no bias) with batch norm (2 a channel)
    encoders = (9 * 1 * 4 + 8) + (9 * 4 * 4 + 8) + (9 * 4 * 8 + 16) + (9 * 8 * 8 + 16)  # 1092
    # the decoder mirrors it: 8 -> 8, then 8 -> 4 (the channel count drops at the stage's last convolution), 4 -> 4 twice
    decoders = (9 * 8 * 8 + 16) + (9 * 8 * 4 + 8) + (9 * 4 * 4 + 8) + (9 * 4 * 4 + 8)  # 1192
    head = 9 * 4 * 2 + 2  # a 3x3 convolution with bias
    assert _count(model.encoders) == encoders == 1092
    assert _count(model.decoders) == decoders == 1192
    assert _count(model) == encoders + decoders + head == 2358
    convs = [m for m in model.decoders.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(8, 8), (8, 4), (4, 4), (4, 4)]
    assert model.head.kernel_size == (3, 3) and model.head.padding == (1, 1)


def _by_hand_unpool(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x``'s 2x2 max-pool, its indices, and ``x`` with every value but each window's maximum zeroed."""
    pooled, indices = F.max_pool2d(x, 2, stride=2, return_indices=True)
    expected = torch.where(x == F.interpolate(pooled, scale_factor=2, mode="nearest"), x, torch.zeros_like(x))
    return pooled, indices, expected


def test_segnet_unpools_each_value_to_where_its_maximum_was() -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 3, 4, 6)  # not square, no ties
    pooled, indices, expected = _by_hand_unpool(x)
    assert (expected != 0).sum() == 2 * 3 * 2 * 3  # one value kept a window
    torch.testing.assert_close(_unpool(pooled, indices), expected)


def test_segnet_unpools_as_onnx_export_writes_it_on_a_non_square_map(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 3, 4, 6)
    pooled, indices, expected = _by_hand_unpool(x)
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    torch.testing.assert_close(_unpool(pooled, indices), expected)


def test_segnets_first_decoder_stage_reads_the_unpooled_bottleneck() -> None:
    torch.manual_seed(0)
    model = create_model("segnet", num_classes=2, width=4, depth=2).eval()
    pooled: list[tuple[torch.Tensor, torch.Tensor]] = []
    decoded_in: list[torch.Tensor] = []
    model.encoders[-1].register_forward_hook(
        lambda m, a, o: pooled.append(F.max_pool2d(o, 2, stride=2, return_indices=True)))
    model.decoders[0].register_forward_pre_hook(lambda m, a: decoded_in.append(a[0]))
    with torch.no_grad():
        model(torch.rand(1, 1, 16, 24))
    values, indices = pooled[0]
    expected = F.max_unpool2d(values, indices, 2, stride=2)
    torch.testing.assert_close(decoded_in[0], expected)
    assert ((decoded_in[0] != 0).sum(dim=(2, 3)) <= 4 * 6).all()  # at most one value a 2x2 window


@pytest.mark.parametrize("height, width", [(32, 0), (0, 32)])
def test_an_empty_side_is_refused(height: int, width: int) -> None:
    with pytest.raises(CovsegError, match=rf"^UNet got an empty image \({height}x{width}\); give it at least 4x4"):
        check_input_size(height, width, 2, "UNet")


def test_a_width_not_divisible_is_refused_when_the_height_is() -> None:
    with pytest.raises(CovsegError, match="needs height and width divisible by 4, got 32x30; resize or pad to 32x32"):
        check_input_size(32, 30, 2, "UNet")
    with pytest.raises(CovsegError, match="got 30x32; resize or pad to 32x32"):
        check_input_size(30, 32, 2, "UNet")
    check_input_size(32, 28, 2, "UNet")


def test_nearest_valid_size_rounds_every_tie_up() -> None:
    # 520 / 16 = 32.5 and 8 / 16 = 0.5: ties go up (banker's rounding would take 512 and 16 -> 0 -> 16 by luck)
    assert [nearest_valid_size(s, 4) for s in (520, 504, 536, 24, 23)] == [528, 512, 544, 32, 16]
    assert [nearest_valid_size(s, 1) for s in (1, 3, 5, 7)] == [2, 4, 6, 8]


def test_folding_gives_an_eval_mode_copy() -> None:
    model = create_model("unet", num_classes=2, width=2, depth=2, norm="instance", dropout=0.5).train()
    folded = fold_batch_norm(model)
    assert not any(m.training for m in folded.modules())
    assert model.training
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():  # dropout off: deterministic, and equal to the eval-mode model
        torch.testing.assert_close(folded(x), folded(x))
        torch.testing.assert_close(folded(x), model.eval()(x))


def test_folding_leaves_a_batch_norm_without_running_statistics() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1),
                                torch.nn.BatchNorm2d(3, track_running_stats=False))
    folded = fold_batch_norm(model)
    assert isinstance(folded[1], torch.nn.BatchNorm2d)
    x = torch.rand(2, 2, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model.eval()(x))


def test_fuse_for_inference_fuses_only_bf16_on_a_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from covseg.models import fusion

    monkeypatch.setattr(fusion, "fused_conv_relu_available", lambda: True)
    folded = fold_batch_norm(create_model("unet", num_classes=2, width=2, depth=2))
    assert fuse_for_inference(folded, torch.float32, torch.device("cpu")) is folded
    assert fuse_for_inference(folded, torch.bfloat16, torch.device("cuda")) is folded
    assert fuse_for_inference(folded, torch.float16, torch.device("cuda")) is folded
    fused = fuse_for_inference(folded, torch.bfloat16, torch.device("cpu"))
    assert fused is not folded and any(isinstance(m, fusion.FusedConvReLU) for m in fused.modules())
