"""DSA augmentation: each op against a hand-computed expectation, Siamese sharing,
reproducibility, gradients and the group choice."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from ddm.augment import (
    DEFAULT_STRATEGY,
    DIGIT_STRATEGY,
    GROUPS,
    DSAParams,
    apply,
    augment,
    sample_params,
    siamese,
)

ALL_GROUPS = sorted(GROUPS)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=gen(seed), dtype=dtype)


def color(brightness=(0.0,), saturation=(1.0,), contrast=(1.0,)) -> DSAParams:
    return DSAParams(
        "color",
        {
            "brightness": torch.tensor(brightness),
            "saturation": torch.tensor(saturation),
            "contrast": torch.tensor(contrast),
        },
    )


def crop(dy: list[int], dx: list[int]) -> DSAParams:
    return DSAParams("crop", {"dy": torch.tensor(dy), "dx": torch.tensor(dx)})


def shifted(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """out[..., i, j] = x[..., i + dy, j + dx], zero outside: written pixel by pixel."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    for i in range(h):
        for j in range(w):
            if 0 <= i + dy < h and 0 <= j + dx < w:
                out[..., i, j] = x[..., i + dy, j + dx]
    return out


# --------------------------------------------------------------------------- color


def test_brightness_adds_the_exact_offset() -> None:
    x = images(2, 3, 4, 4)
    out = apply(x, color(brightness=(0.3, -0.2), saturation=(1.0, 1.0), contrast=(1.0, 1.0)))
    torch.testing.assert_close(out[0], x[0] + 0.3)
    torch.testing.assert_close(out[1], x[1] - 0.2)


def test_saturation_scales_the_distance_to_the_channel_mean() -> None:
    x = images(2, 3, 4, 4)
    out = apply(x, color(brightness=(0.0, 0.0), saturation=(0.5, 1.7), contrast=(1.0, 1.0)))
    mean = x.mean(dim=1, keepdim=True)
    factor = torch.tensor([0.5, 1.7]).view(2, 1, 1, 1)
    torch.testing.assert_close(out, (x - mean) * factor + mean)
    gray = apply(x, color(saturation=(0.0,)))  # factor 0: every channel is the mean
    torch.testing.assert_close(gray, mean.expand_as(x))


def test_contrast_scales_the_distance_to_the_image_mean() -> None:
    x = images(2, 3, 4, 4)
    out = apply(x, color(brightness=(0.0, 0.0), saturation=(1.0, 1.0), contrast=(0.5, 1.4)))
    for k, factor in enumerate((0.5, 1.4)):
        mean = x[k].mean()
        torch.testing.assert_close(out[k], (x[k] - mean) * factor + mean)


def test_color_applies_brightness_then_saturation_then_contrast() -> None:
    x = images(2, 3, 4, 4)
    out = apply(x, color(brightness=(0.25,), saturation=(1.5,), contrast=(0.7,)))
    y = x + 0.25
    y = (y - y.mean(1, keepdim=True)) * 1.5 + y.mean(1, keepdim=True)
    y = (y - y.mean((1, 2, 3), keepdim=True)) * 0.7 + y.mean((1, 2, 3), keepdim=True)
    torch.testing.assert_close(out, y)


# --------------------------------------------------------------------------- crop


def test_crop_by_one_column_shifts_with_a_zero_column() -> None:
    x = torch.arange(1.0, 17.0).view(1, 1, 4, 4)
    out = apply(x, crop([0], [1]))
    torch.testing.assert_close(out[..., :, :3], x[..., :, 1:])
    assert (out[..., :, 3] == 0).all()


def test_crop_per_image_and_shared_paths_match_a_pixel_loop() -> None:
    x = images(3, 2, 6, 5)
    shifts = [(1, 0), (0, -2), (-1, 1)]
    per_image = apply(x, crop([s[0] for s in shifts], [s[1] for s in shifts]))
    for k, (dy, dx) in enumerate(shifts):
        expected = shifted(x[k], dy, dx)
        torch.testing.assert_close(per_image[k], expected)
        torch.testing.assert_close(apply(x[k : k + 1], crop([dy], [dx]))[0], expected)


# --------------------------------------------------------------------------- cutout


@pytest.mark.parametrize(
    ("cy", "cx", "rows", "cols"),
    [
        (3, 5, range(1, 5), range(3, 7)),  # side round(0.5 * 8) = 4, start = centre - 2
        (0, 8, range(0, 2), range(6, 8)),  # clipped at the top and the right
    ],
)
def test_cutout_zeros_exactly_the_square(cy: int, cx: int, rows: range, cols: range) -> None:
    x = images(2, 3, 8, 8)
    out = apply(x, DSAParams("cutout", {"cy": torch.tensor([cy]), "cx": torch.tensor([cx])}))
    mask = torch.ones(8, 8)
    for i in rows:
        for j in cols:
            mask[i, j] = 0
    torch.testing.assert_close(out, x * mask)
    assert (out == 0).sum() == 2 * 3 * len(rows) * len(cols)


# --------------------------------------------------------------------------- flip


def test_flip_only_the_selected_images() -> None:
    x = images(3, 2, 4, 5)
    out = apply(x, DSAParams("flip", {"flip": torch.tensor([True, False, True])}))
    torch.testing.assert_close(out[0], x[0].flip(-1))
    torch.testing.assert_close(out[1], x[1])
    torch.testing.assert_close(out[2], x[2].flip(-1))
    torch.testing.assert_close(
        apply(x, DSAParams("flip", {"flip": torch.tensor([True])})), x.flip(-1)
    )
    torch.testing.assert_close(apply(x, DSAParams("flip", {"flip": torch.tensor([False])})), x)


# --------------------------------------------------------------------------- scale, rotate


def scale(sx: float, sy: float) -> DSAParams:
    return DSAParams("scale", {"sx": torch.tensor([sx]), "sy": torch.tensor([sy])})


def rotate(degrees: float) -> DSAParams:
    return DSAParams("rotate", {"angle": torch.tensor([math.radians(degrees)])})


def test_scale_one_and_rotate_zero_are_identity() -> None:
    x = images(2, 3, 7, 6)
    torch.testing.assert_close(apply(x, scale(1.0, 1.0)), x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(apply(x, rotate(0.0)), x, atol=1e-5, rtol=1e-5)


def test_scale_samples_a_ramp_where_the_affine_map_says() -> None:
    # align_corners=True: output column j of width 5 samples input column 2 + sx * (j - 2).
    ramp = torch.arange(5.0).expand(1, 1, 4, 5)
    out = apply(ramp, scale(0.5, 1.0))
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([1.0, 1.5, 2.0, 2.5, 3.0]))
    rows = torch.arange(5.0).view(5, 1).expand(1, 1, 5, 4)  # sy acts on the rows only
    torch.testing.assert_close(apply(rows, scale(0.5, 1.0)), rows)
    torch.testing.assert_close(apply(rows, scale(1.0, 0.5))[0, 0, :, 0], out[0, 0, 0])


def test_rotate_by_90_degrees_moves_pixels_exactly() -> None:
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 0, 1] = 1.0  # row 0, column 1
    out = apply(x, rotate(90.0))
    # theta [[cos, sin], [-sin, cos]]: out[i, j] = x[W - 1 - j, i], i.e. rot90 clockwise
    assert out[0, 0, 1, 4].item() == pytest.approx(1.0, abs=1e-5)
    assert out.abs().sum().item() == pytest.approx(1.0, abs=1e-4)
    y = images(2, 3, 6, 6)
    torch.testing.assert_close(apply(y, rotate(90.0)), torch.rot90(y, -1, dims=(-2, -1)))


# --------------------------------------------------------------------------- sampling


def test_sampled_parameters_stay_in_the_paper_ranges() -> None:
    n, size = 4000, (32, 28)
    g = gen(1)
    v = {group: sample_params(group, n, size, g).values for group in ALL_GROUPS}
    assert v["color"]["brightness"].abs().max() <= 0.5
    assert v["color"]["saturation"].min() >= 0 and v["color"]["saturation"].max() < 2.0
    assert v["color"]["contrast"].min() >= 0.5 and v["color"]["contrast"].max() < 1.5
    assert set(v["crop"]["dy"].tolist()) == set(range(-4, 5))  # round(0.125 * 32) = 4
    assert set(v["crop"]["dx"].tolist()) == set(range(-4, 5))  # int(0.125 * 28 + 0.5) = 4
    assert set(v["cutout"]["cy"].tolist()) == set(range(0, 33))  # side 16 is even: +1
    assert set(v["cutout"]["cx"].tolist()) == set(range(0, 29))  # side 14 is even: +1
    assert 0.4 < v["flip"]["flip"].float().mean() < 0.6
    for key in ("sx", "sy"):
        assert v["scale"][key].min() >= 1 / 1.2 and v["scale"][key].max() <= 1.2
    assert v["rotate"]["angle"].abs().max() <= math.radians(15.0)
    assert v["rotate"]["angle"].abs().max() > math.radians(14.0)


def test_group_choice_is_uniform_and_strategies_hold_their_groups() -> None:
    g = gen(2)
    counts = Counter(sample_params(DEFAULT_STRATEGY, 1, (8, 8), g).group for _ in range(1200))
    assert set(counts) == set(ALL_GROUPS)
    assert all(150 <= c <= 250 for c in counts.values()), counts  # expected 200, sd ~13
    digits = {sample_params(DIGIT_STRATEGY, 1, (8, 8), g).group for _ in range(300)}
    assert digits == set(ALL_GROUPS) - {"flip"}


@pytest.mark.parametrize("strategy", ["none", "None", ""])
def test_none_strategy_is_identity(strategy: str) -> None:
    x = images(2, 3, 5, 5)
    assert sample_params(strategy, 2, (5, 5), gen()).group == "none"
    torch.testing.assert_close(augment(x, strategy, gen()), x)
    torch.testing.assert_close(siamese([x, x], strategy, gen())[1], x)


def test_unknown_group_raises_and_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="known.*rotate"):
        sample_params("color_blur", 2, (8, 8), gen())


def test_per_image_params_on_another_batch_size_raise() -> None:
    params = sample_params("scale", 4, (8, 8), gen())
    with pytest.raises(ValueError, match="batch of 3"):
        apply(images(3, 1, 8, 8), params)
    apply(images(4, 1, 8, 8), params)  # the right size is fine


# --------------------------------------------------------------------------- Siamese


@pytest.mark.parametrize("group", ALL_GROUPS)
def test_siamese_shares_group_and_values_across_batches(group: str) -> None:
    a = images(3, 3, 8, 8, seed=1)
    b = torch.cat([a[:1], images(4, 3, 8, 8, seed=2)])  # batch of 5, same first image
    out_a, out_b, out_copy = siamese([a, b, a.clone()], group, gen(3))
    torch.testing.assert_close(out_copy, out_a)
    torch.testing.assert_close(out_b[0], out_a[0])
    # The draw does not depend on the batch size: the same seed gives the same transform.
    first_3 = augment(a, group, gen(4), siamese=True)[0]
    first_5 = augment(b, group, gen(4), siamese=True)[0]
    torch.testing.assert_close(first_3, first_5)
    params = sample_params(group, 5, (8, 8), gen(4), siamese=True)
    assert params.shared and params.group == group
    assert all(v.shape[0] == 1 for v in params.values.values())


@pytest.mark.parametrize("group", ALL_GROUPS)
def test_shared_draw_is_one_transform_per_image_draws_differ(group: str) -> None:
    x = images(1, 3, 8, 8).expand(16, -1, -1, -1)  # 16 copies of one image
    shared = augment(x, group, gen(5), siamese=True)
    assert all(torch.equal(shared[0], shared[k]) for k in range(16))
    params = sample_params(group, 16, (8, 8), gen(5))
    assert not params.shared and all(v.shape[0] == 16 for v in params.values.values())
    per_image = apply(x, params)
    assert not all(torch.equal(per_image[0], per_image[k]) for k in range(16))


def test_per_image_brightness_offsets_differ() -> None:
    offsets = sample_params("color", 8, (4, 4), gen(6)).values["brightness"]
    assert len(set(offsets.tolist())) == 8


def test_siamese_rejects_mixed_image_sizes() -> None:
    with pytest.raises(ValueError, match="image size"):
        siamese([images(2, 3, 8, 8), images(2, 3, 6, 6)], DEFAULT_STRATEGY, gen())


# --------------------------------------------------------------------------- reproducibility


def test_same_seed_same_output_and_global_rng_untouched() -> None:
    x = images(6, 3, 8, 8)
    state = torch.random.get_rng_state()
    for siamese_mode in (False, True):
        outs = [augment(x, DEFAULT_STRATEGY, gen(9), siamese=siamese_mode) for _ in range(2)]
        torch.testing.assert_close(outs[0], outs[1])
    g = gen(10)
    for group in ALL_GROUPS:
        augment(x, group, g)
        siamese([x, x[:2]], group, g)
    assert torch.equal(torch.random.get_rng_state(), state)
    draws = {tuple(augment(x, DEFAULT_STRATEGY, gen(s)).flatten()[:4].tolist()) for s in range(6)}
    assert len(draws) > 1  # different seeds, different augmentations


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("group", ALL_GROUPS)
@pytest.mark.parametrize("shared", [False, True])
def test_gradcheck(group: str, shared: bool) -> None:
    x = images(2, 3, 6, 6, dtype=torch.float64).requires_grad_()
    params = sample_params(group, 2, (6, 6), gen(11), siamese=shared)
    assert torch.autograd.gradcheck(lambda t: apply(t, params), (x,))


def weighted_grad(x: torch.Tensor, params: DSAParams, w: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_()
    (apply(x, params) * w).sum().backward()
    return x.grad


def test_crop_gradient_is_the_weights_shifted_back() -> None:
    x, w = images(2, 3, 6, 6), images(2, 3, 6, 6, seed=1)
    grad = weighted_grad(x, crop([1, 0], [0, -2]), w)
    torch.testing.assert_close(grad[0], shifted(w[0], -1, 0))
    torch.testing.assert_close(grad[1], shifted(w[1], 0, 2))


def test_cutout_gradient_is_the_mask() -> None:
    x, w = images(2, 3, 6, 6), images(2, 3, 6, 6, seed=1)
    params = DSAParams("cutout", {"cy": torch.tensor([2, 5]), "cx": torch.tensor([3, 0])})
    mask = torch.ones(2, 1, 6, 6)
    mask[0, :, 1:4, 2:5] = 0  # side int(6 * 0.5 + 0.5) = 3: starts at centre - 1
    mask[1, :, 4:6, 0:2] = 0  # clipped at the bottom and the left
    torch.testing.assert_close(weighted_grad(x, params, w), w * mask)


def test_flip_gradient_is_the_flipped_weights() -> None:
    x, w = images(2, 3, 6, 6), images(2, 3, 6, 6, seed=1)
    grad = weighted_grad(x, DSAParams("flip", {"flip": torch.tensor([True, False])}), w)
    torch.testing.assert_close(grad[0], w[0].flip(-1))
    torch.testing.assert_close(grad[1], w[1])


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("group", ALL_GROUPS)
@pytest.mark.parametrize("shape", [(4, 1, 28, 28), (4, 3, 64, 64)])
def test_works_on_digit_and_tiny_imagenet_shapes(group: str, shape: tuple[int, ...]) -> None:
    x = images(*shape).requires_grad_()
    for out in (augment(x, group, gen(12)), *siamese([x, x[:2]], group, gen(12))):
        assert out.shape[1:] == shape[1:] and out.dtype == x.dtype
        assert torch.isfinite(out).all()
    augment(x, group, gen(13), siamese=True).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cpu_draw_applies_on_the_gpu() -> None:
    x = images(4, 3, 16, 16, dtype=torch.float64)
    for group in ALL_GROUPS:
        for shared in (False, True):
            params = sample_params(group, 4, (16, 16), gen(14), siamese=shared)
            out = apply(x.cuda(), params)
            assert out.device.type == "cuda"
            torch.testing.assert_close(out.cpu(), apply(x, params))
