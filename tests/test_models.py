"""The contract every registered model passes (as segmentation_models.pytorch's base tests)."""
from __future__ import annotations

import pytest
import torch

from covseg.errors import CovsegError
from covseg.models import MODELS, create_model, fold_batch_norm, fuse_conv_relu_bf16, nearest_valid_size
from covseg.models.fusion import fused_conv_relu_available
from covseg.models.unet import BLOCKS, NORMS, AttentionGate, ResidualDoubleConv

# every registered model, and every U-Net block, in a small size: (registry name, options)
VARIANTS = {
    "unet": ("unet", {"width": 4, "depth": 2}),
    "unet-residual": ("unet", {"width": 4, "depth": 2, "block": "residual"}),
    "unet-instance": ("unet", {"width": 4, "depth": 2, "norm": "instance"}),
    "unet-group": ("unet", {"width": 8, "depth": 2, "norm": "group"}),
    "unet-attention": ("unet", {"width": 4, "depth": 2, "attention": True}),
    "segnet": ("segnet", {"width": 4, "depth": 2}),
}


@pytest.fixture(params=sorted(VARIANTS))
def variant(request) -> str:
    """A key of :data:`VARIANTS`."""
    return request.param


def small(variant: str, **options) -> torch.nn.Module:
    name, defaults = VARIANTS[variant]
    return create_model(name, **{**defaults, **options})


def test_the_contract_covers_every_model_and_block() -> None:
    assert {name for name, _ in VARIANTS.values()} == set(MODELS)
    assert {opts.get("block", "plain") for name, opts in VARIANTS.values() if name == "unet"} == set(BLOCKS)
    assert {opts.get("norm", "batch") for name, opts in VARIANTS.values() if name == "unet"} == set(NORMS)


@pytest.mark.parametrize("num_classes", [2, 4])
def test_forward_shape_any_valid_size(variant: str, num_classes: int) -> None:
    model = small(variant, num_classes=num_classes)
    for h, w in [(32, 32), (16, 48), (64, 20)]:
        out = model(torch.rand(2, 1, h, w))
        assert out.shape == (2, num_classes, h, w)


def test_backward_reaches_every_parameter(variant: str) -> None:
    torch.manual_seed(0)
    model = small(variant, num_classes=3)
    model(torch.rand(2, 1, 32, 32)).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_bad_size_names_nearest_valid_size(variant: str) -> None:
    model = small(variant, num_classes=2)
    with pytest.raises(CovsegError, match="resize or pad to 36x32"):
        model(torch.rand(1, 1, 35, 30))


def test_state_dict_round_trip(variant: str) -> None:
    torch.manual_seed(0)
    a = small(variant, num_classes=2).eval()
    b = small(variant, num_classes=2).eval()
    b.load_state_dict(a.state_dict())
    x = torch.rand(1, 1, 32, 32)
    torch.testing.assert_close(a(x), b(x))


def test_channels_last_and_bf16_autocast(variant: str) -> None:
    torch.manual_seed(0)
    model = small(variant, num_classes=2).eval()
    x = torch.rand(2, 1, 32, 32)
    ref = model(x)
    cl = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(cl, ref, atol=1e-5, rtol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x)
    assert low.shape == ref.shape and torch.isfinite(low).all()


def test_folding_batch_norm_keeps_the_function_and_the_original(variant: str) -> None:
    torch.manual_seed(0)
    model = small(variant, num_classes=3)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    if VARIANTS[variant][1].get("norm") in ("instance", "group"):
        assert not norms  # nothing to fold: instance or group norm stays, and the function with it
        x = torch.rand(2, 1, 32, 32)
        with torch.inference_mode():
            torch.testing.assert_close(fold_batch_norm(model)(x), model.eval()(x))
        return
    assert norms
    for bn in norms:  # statistics far from the initial (0, 1), so that an unfolded norm would show
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.3, 3.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.3, 0.3)
    folded = fold_batch_norm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert model.training and sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == len(norms)
    x = torch.rand(2, 1, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), model.eval()(x), atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not fused_conv_relu_available(), reason="oneDNN's bf16 convolution + ReLU needs AVX512-BF16 or AMX")
def test_fused_conv_relu_gives_the_bf16_logits_of_the_folded_model(variant: str) -> None:
    from covseg.models.fusion import FusedConvReLU

    torch.manual_seed(0)
    folded = fold_batch_norm(small(variant, num_classes=3)).to(memory_format=torch.channels_last)
    fused = fuse_conv_relu_bf16(folded)
    count = sum(isinstance(m, FusedConvReLU) for m in fused.modules())
    if VARIANTS[variant][1].get("norm") in ("instance", "group"):
        assert count == 0  # a norm between convolution and ReLU stops the fusion
    else:  # every ReLU inside a Sequential follows a convolution there (the residual block's outer one does not)
        in_sequential = sum(isinstance(m, torch.nn.ReLU) for seq in folded.modules()
                            if isinstance(seq, torch.nn.Sequential) for m in seq.children())
        assert count == in_sequential > 0
        assert not any(isinstance(m, FusedConvReLU) for m in folded.modules())  # the folded model is untouched
    x = torch.rand(2, 1, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
        assert torch.equal(fused(x).float(), folded(x).float())


def _fusion_count(layers: list[torch.nn.Module], monkeypatch) -> int:
    """How many FusedConvReLU a plain Sequential of ``layers`` becomes (fusion forced on: the structure only)."""
    from covseg.models import fusion

    monkeypatch.setattr(fusion, "fused_conv_relu_available", lambda: True)
    fused = fusion.fuse_conv_relu_bf16(torch.nn.Sequential(*layers))
    return sum(isinstance(m, fusion.FusedConvReLU) for m in fused.modules())


def test_fusion_takes_a_convolution_and_the_relu_that_consumes_it(monkeypatch) -> None:
    conv = lambda **kw: torch.nn.Conv2d(2, 3, 3, **kw)  # noqa: E731
    relu, identity = torch.nn.ReLU, torch.nn.Identity
    assert _fusion_count([conv(padding=1), identity(), relu()], monkeypatch) == 1
    assert _fusion_count([conv(padding=1), relu(), torch.nn.Conv2d(3, 3, 3, padding=1), relu()], monkeypatch) == 2
    # cases whose ReLU does not consume the convolution's output, or whose convolution the fused op cannot run
    assert _fusion_count([conv(padding=1), torch.nn.Dropout(0.1), relu()], monkeypatch) == 0
    assert _fusion_count([conv(padding=1), torch.nn.BatchNorm2d(3), relu()], monkeypatch) == 0
    assert _fusion_count([conv(padding=1, padding_mode="reflect"), relu()], monkeypatch) == 0
    assert _fusion_count([conv(padding="same"), relu()], monkeypatch) == 0
    assert _fusion_count([relu(), conv(padding=1)], monkeypatch) == 0  # a convolution last
    hooked = conv(padding=1)
    hooked.register_forward_hook(lambda module, args, out: None)
    assert _fusion_count([hooked, relu()], monkeypatch) == 0

    class Residual(torch.nn.Sequential):  # a Sequential whose forward is its own
        def forward(self, x):
            return super().forward(x) + x

    from covseg.models import fusion

    monkeypatch.setattr(fusion, "fused_conv_relu_available", lambda: True)
    block = fusion.fuse_conv_relu_bf16(torch.nn.Sequential(Residual(torch.nn.Conv2d(2, 2, 3, padding=1), relu())))
    assert not any(isinstance(m, fusion.FusedConvReLU) for m in block.modules())


def test_fused_conv_relu_leaves_the_model_where_unavailable(monkeypatch) -> None:
    from covseg.models import fusion

    model = small("unet", num_classes=2)
    monkeypatch.setattr(fusion, "fused_conv_relu_available", lambda: False)
    assert fusion.fuse_conv_relu_bf16(model) is model


@pytest.mark.parametrize("norm,norm_type", [("instance", torch.nn.InstanceNorm2d), ("group", torch.nn.GroupNorm)])
def test_instance_and_group_norm_unets_treat_each_image_alone_even_in_training(norm: str, norm_type: type) -> None:
    # batch norm in training mode mixes the images of a batch; instance and group norm do not: an image's logits are
    # the same alone as beside another, and in training and eval mode alike (no running statistics)
    torch.manual_seed(0)
    model = create_model("unet", num_classes=2, width=8, depth=2, norm=norm).train()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    # two per block: 3 encoder, 2 decoder blocks
    assert sum(isinstance(m, norm_type) for m in model.modules()) == 2 * (2 + 1 + 2)
    a, b = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32) * 3
    with torch.no_grad():
        alone = model(a)
        together = model(torch.cat([a, b]))[:1]
        torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(model.eval()(a), alone, atol=1e-5, rtol=1e-4)
    batch = create_model("unet", num_classes=2, width=8, depth=2).train()
    with torch.no_grad():
        assert not torch.allclose(batch(torch.cat([a, b]))[:1], batch(a), atol=1e-3)


def test_group_norm_splits_channels_into_eight_groups_or_fewer_and_normalises_each() -> None:
    from covseg.models.unet import group_norm

    assert [group_norm(c).num_groups for c in (16, 256, 12, 1)] == [8, 8, 4, 1]
    norm = group_norm(16)
    x = torch.randn(2, 16, 5, 7) * torch.arange(1, 17).view(1, 16, 1, 1) + 3
    # by hand: channels 2g and 2g+1 of each image share one mean and one (biased) variance, eps 1e-5
    grouped = x.view(2, 8, 2 * 5 * 7)
    expected = ((grouped - grouped.mean(-1, keepdim=True))
                / torch.sqrt(grouped.var(-1, unbiased=False, keepdim=True) + 1e-5)).view_as(x)
    torch.testing.assert_close(norm(x), expected, atol=1e-5, rtol=1e-5)
    model = create_model("unet", num_classes=2, width=16, depth=2, norm="group", attention=True)
    gates = [m for m in model.modules() if isinstance(m, AttentionGate)]
    assert gates and all(g.psi[1].num_groups == 1 for g in gates)  # the one-channel map: one group


def test_unknown_norm_is_refused() -> None:
    with pytest.raises(CovsegError, match="norm must be one of batch, instance, group, got 'layer'"):
        create_model("unet", norm="layer")


def test_unet_reference_size_has_31m_parameters() -> None:
    model = create_model("unet", num_classes=2, width=64, depth=4)
    assert sum(p.numel() for p in model.parameters()) == 31_036_546


def test_segnet_encoder_is_vgg16() -> None:
    model = create_model("segnet", num_classes=4)
    convs = [m for m in model.encoders.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 13
    assert [c.out_channels for c in convs] == [64] * 2 + [128] * 2 + [256] * 3 + [512] * 6
    bns = [m for m in model.encoders.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 13


def test_segnet_upsamples_only_by_unpooling() -> None:
    # SegNet learns no up-sampling: the decoder has no transposed convolutions, so spatial size can only
    # come back through max-unpooling with the encoder's indices.
    model = create_model("segnet", num_classes=2, width=4, depth=3)
    assert not any(isinstance(m, (torch.nn.ConvTranspose2d, torch.nn.Upsample)) for m in model.modules())


def test_unknown_model_and_bad_options() -> None:
    with pytest.raises(CovsegError, match="unknown model 'fcn'"):
        create_model("fcn")
    with pytest.raises(CovsegError, match="bad options"):
        create_model("unet", colour=3)


def test_nearest_valid_size() -> None:
    assert nearest_valid_size(500, 4) == 496
    assert nearest_valid_size(504, 4) == 512
    assert nearest_valid_size(3, 4) == 16


# the extra heads are 1x1 convolutions with bias, 3 outputs each, on the 1/2- and 1/4-size decoder levels:
# U-Net's have 8 and 16 channels (width * 2**level), SegNet's stage outputs 4 and 8 (the stage below's width)
@pytest.mark.parametrize("name, head_inputs", [("unet", (8, 16)), ("segnet", (4, 8))])
def test_deep_supervision_outputs_levels_only_while_training(name: str, head_inputs: tuple[int, int]) -> None:
    model = create_model(name, num_classes=3, width=4, depth=3, deep_supervision=True)
    outputs = model(torch.rand(2, 1, 32, 48))
    assert [tuple(o.shape) for o in outputs] == [(2, 3, 32, 48), (2, 3, 16, 24), (2, 3, 8, 12)]
    model.eval()
    assert model(torch.rand(2, 1, 32, 48)).shape == (2, 3, 32, 48)
    plain = create_model(name, num_classes=3, width=4, depth=3)
    extra = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in plain.parameters())
    assert extra == sum(c * 3 + 3 for c in head_inputs)


def test_residual_block_adds_its_first_convolution_to_its_second() -> None:
    torch.manual_seed(0)
    block = ResidualDoubleConv(3, 5).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        h = block.first(x)
        expected = torch.relu(block.second(h) + h)
        torch.testing.assert_close(block(x), expected)
        # with the second convolution's branch silenced the block is its first half: relu(0 + h) = h
        block.second[0].weight.zero_()
        block.second[1].bias.zero_()
        torch.testing.assert_close(block(x), h)
    assert (h >= 0).all() and h.shape == (2, 5, 8, 8)


def test_unet_dropout_drops_bottleneck_channels_while_training_only() -> None:
    torch.manual_seed(0)
    plain = create_model("unet", num_classes=2, width=4, depth=2)
    dropped = create_model("unet", num_classes=2, width=4, depth=2, dropout=0.5)
    dropped.load_state_dict(plain.state_dict())  # dropout has no weights: the same state dict fits
    x = torch.randn(2, 1, 16, 16)
    plain.eval()
    dropped.eval()
    with torch.no_grad():
        torch.testing.assert_close(dropped(x), plain(x))  # eval: the identity
    bottleneck = dropped.encoders[-1]
    captured: list[torch.Tensor] = []
    dropped.dropout.register_forward_hook(lambda module, inputs, output: captured.append(output))
    dropped.train()
    torch.manual_seed(1)
    with torch.no_grad():
        features = bottleneck(dropped.pool(dropped.encoders[1](dropped.pool(dropped.encoders[0](x)))))
        dropped(x)
    # Dropout2d: each (image, channel) map is either zeroed or kept and scaled by 1 / (1 - p)
    out = captured[0]
    zeroed = out.abs().amax(dim=(2, 3)) == 0
    assert 0 < zeroed.sum() < zeroed.numel()
    kept = ~zeroed
    torch.testing.assert_close(out[kept], 2 * features[kept])


def test_unet_decoder_dropout_drops_each_lower_decoder_levels_channels_while_training_only() -> None:
    torch.manual_seed(0)
    plain = create_model("unet", num_classes=2, width=4, depth=3, deep_supervision=True)
    dropped = create_model("unet", num_classes=2, width=4, depth=3, deep_supervision=True, decoder_dropout=0.5)
    dropped.load_state_dict(plain.state_dict())  # dropout has no weights: the same state dict fits
    assert len(dropped.decoder_dropouts) == 2  # the levels at 1/4 and 1/2 of the input; none at full size
    x = torch.randn(4, 1, 16, 16)
    plain.eval()
    dropped.eval()
    with torch.no_grad():
        torch.testing.assert_close(dropped(x), plain(x))  # eval: the identity
    decoded: list[torch.Tensor] = []
    after: list[torch.Tensor] = []
    for decoder in dropped.decoders:
        decoder.register_forward_hook(lambda module, inputs, output: decoded.append(output))
    for dropout in dropped.decoder_dropouts:
        dropout.register_forward_hook(lambda module, inputs, output: after.append(output))
    dropped.train()
    torch.manual_seed(1)
    with torch.no_grad():
        outputs = dropped(x)
    assert [tuple(a.shape[-2:]) for a in after] == [(4, 4), (8, 8)]
    for features, out in zip(decoded, after):  # Dropout2d: each map zeroed, or kept and scaled by 1 / (1 - p)
        zeroed = out.abs().amax(dim=(2, 3)) == 0
        assert 0 < zeroed.sum() < zeroed.numel()
        torch.testing.assert_close(out[~zeroed], 2 * features[~zeroed])
    # the head reads the top decoder level as it is; the aux heads read the levels before their dropout
    torch.testing.assert_close(outputs[0], dropped.head(decoded[2]))
    torch.testing.assert_close(outputs[1], dropped.aux_heads[0](decoded[1]))
    torch.testing.assert_close(outputs[2], dropped.aux_heads[1](decoded[0]))
    with pytest.raises(CovsegError, match=r"decoder_dropout must be in \[0, 1\)"):
        create_model("unet", decoder_dropout=1.0)


def test_residual_unet_has_the_plain_ones_parameters_and_rejects_unknown_blocks() -> None:
    plain = create_model("unet", num_classes=2, width=16, depth=4)
    residual = create_model("unet", num_classes=2, width=16, depth=4, block="residual")
    assert sum(p.numel() for p in residual.parameters()) == sum(p.numel() for p in plain.parameters())
    assert sum(isinstance(m, ResidualDoubleConv) for m in residual.modules()) == 2 * 4 + 1
    with pytest.raises(CovsegError, match="block must be one of plain, residual"):
        create_model("unet", block="dense")


@pytest.mark.parametrize("name", ["unet", "segnet"])
@pytest.mark.parametrize("options, message", [({"num_classes": 0}, "num_classes must be a whole number >= 1, got 0"),
                                              ({"in_channels": -1}, "in_channels must be a whole number >= 1, got -1"),
                                              ({"num_classes": 2.5}, "got 2.5"), ({"num_classes": True}, "got True")])
def test_a_network_without_outputs_or_inputs_is_refused(name: str, options: dict, message: str) -> None:
    with pytest.raises(CovsegError, match=f"bad options for model .{name}.: .*{message}"):
        create_model(name, **options)


def test_attention_gate_weighs_each_skip_pixel_by_its_coefficient() -> None:
    """The gate returns the skip times alpha in (0, 1), with alpha computed by hand from its 1x1 convolutions."""
    torch.manual_seed(0)
    gate = AttentionGate(6, 5, 3, batch_norm=False).eval()
    skip, signal = torch.randn(2, 6, 8, 8), torch.randn(2, 5, 8, 8)
    w_x, w_g, psi = gate.skip[0], gate.gate[0], gate.psi[0]
    conv = torch.nn.functional.conv2d
    by_hand = torch.sigmoid(conv(torch.relu(conv(skip, w_x.weight, w_x.bias) + conv(signal, w_g.weight, w_g.bias)),
                                 psi.weight, psi.bias))
    with torch.no_grad():
        alpha = gate.weights(skip, signal)
        torch.testing.assert_close(alpha, by_hand)
        torch.testing.assert_close(gate(skip, signal), skip * by_hand)
    assert alpha.shape == (2, 1, 8, 8) and 0 < alpha.min() and alpha.max() < 1


def test_attention_unet_gates_every_skip_with_the_upsampled_decoder_features() -> None:
    """One gate per skip connection (coarsest first); each sees the skip and the transposed convolution's output,
    and what it returns (not the raw skip) is what the decoder block concatenates."""
    torch.manual_seed(0)
    model = create_model("unet", num_classes=2, width=4, depth=3, attention=True).eval()
    plain = create_model("unet", num_classes=2, width=4, depth=3)
    assert [g.skip[0].in_channels for g in model.gates] == [16, 8, 4]
    extra = sum(p.numel() for p in model.gates.parameters())
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in plain.parameters()) + extra > 0
    seen: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    hooks = [g.register_forward_hook(lambda m, args, out: seen.append((tuple(args[0].shape), tuple(args[1].shape))))
             for g in model.gates]
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        gated = model(x)
        for hook in hooks:
            hook.remove()
        for g in model.gates:  # a gate that passes its skip through unchanged changes the output
            g.forward = lambda skip, signal: skip
        ungated = model(x)
    assert seen == [((1, 16, 8, 8), (1, 16, 8, 8)), ((1, 8, 16, 16), (1, 8, 16, 16)), ((1, 4, 32, 32), (1, 4, 32, 32))]
    assert not torch.allclose(gated, ungated)
    assert len(create_model("unet", width=4, depth=3).gates) == 0


@pytest.mark.parametrize("options, train, batch, reason", [
    ({"norm": "instance"}, False, 2, "instance norm"),  # even in eval mode and on a batch of two
    ({"norm": "batch"}, True, 1, "batch norm while training on a batch of one"),
    ({"norm": "group", "width": 2}, False, 1, "group norm of one channel a group on a batch of one"),  # 8 channels
])
def test_a_one_pixel_bottleneck_its_norm_cannot_take_is_refused_in_one_line(options: dict, train: bool, batch: int,
                                                                           reason: str) -> None:
    # before: a bare torch ValueError ("Expected more than 1 spatial element ...") from inside the bottleneck
    model = create_model("unet", num_classes=2, **{"width": 4, "depth": 2, **options}).train(train)
    message = (f"^UNet with depth 2 got a 4x4 image, whose bottleneck is 1x1, too small for {reason}; give it at "
               r"least 8x8 pixels \(2 x 2\*\*depth a side\)$")
    with pytest.raises(CovsegError, match=message):
        model(torch.rand(batch, 1, 4, 4))
    for h, w in [(8, 4), (4, 8), (8, 8)]:  # a bottleneck of two pixels or more is enough
        assert model(torch.rand(batch, 1, h, w)).shape == (batch, 2, h, w)


def test_a_one_pixel_bottleneck_its_norm_can_take_still_runs() -> None:
    for options, train, batch in [({}, False, 1), ({}, True, 2), ({"batch_norm": False}, True, 1),
                                  ({"norm": "group", "width": 4}, True, 1), ({"norm": "group", "width": 2}, True, 2)]:
        model = create_model("unet", num_classes=2, **{"width": 4, "depth": 2, **options}).train(train)
        assert model(torch.rand(batch, 1, 4, 4)).shape == (batch, 2, 4, 4)
    segnet = create_model("segnet", num_classes=2, width=4, depth=2)  # its convolutions run at 2 x 2 at the least
    assert segnet(torch.rand(1, 1, 4, 4)).shape == (1, 2, 4, 4)


@pytest.mark.parametrize("name", ["unet", "segnet"])
@pytest.mark.parametrize("options, message", [({"width": 8.5}, "width must be a whole number >= 1, got 8.5"),
                                              ({"width": "8"}, "width must be a whole number >= 1, got '8'"),
                                              ({"depth": 2.0}, "depth must be a whole number >= 1, got 2.0"),
                                              ({"depth": True}, "depth must be a whole number >= 1, got True")])
def test_a_width_or_depth_not_a_whole_number_is_refused(name: str, options: dict, message: str) -> None:
    # before: width 8.5 failed on "out_channels must be divisible by groups", "8" on "'<' not supported ..."
    with pytest.raises(CovsegError, match=f"^bad options for model .{name}.: {message}$"):
        create_model(name, **options)


@pytest.mark.parametrize("shape", [(1, 32, 32), (2, 3, 32, 32), (1, 1, 1, 32, 32)])
def test_an_input_not_a_batch_of_in_channels_images_is_refused_in_one_line(variant: str, shape: tuple) -> None:
    # before: torch's own errors ("expected 4D input", "expected input[...] to have 1 channels")
    name = "UNet" if variant.startswith("unet") else "SegNet"
    message = rf"^{name} takes images of shape \(B, 1, H, W\), got \({', '.join(map(str, shape))}\); give it a batch"
    with pytest.raises(CovsegError, match=message):
        small(variant, num_classes=2).eval()(torch.rand(*shape))
    three = small(variant, num_classes=2, in_channels=3).eval()
    assert three(torch.rand(1, 3, 32, 32)).shape == (1, 2, 32, 32)
    with pytest.raises(CovsegError, match=rf"^{name} takes images of shape \(B, 3, H, W\), got \(1, 1, 32, 32\)"):
        three(torch.rand(1, 1, 32, 32))
