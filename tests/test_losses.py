"""Losses against hand-computed values and against naive per-sample reference loops."""

from __future__ import annotations

import math

import pytest
import torch

from ddm.losses import (
    correlation_loss,
    default_icd_k,
    diversity_loss,
    mmd_loss,
    moments_loss,
)

# --- hand-computed values --------------------------------------------------------------------


def test_mmd_hand_value():
    real = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # mean (2, 3)
    syn = torch.tensor([[0.0, 0.0], [0.0, 2.0]])  # mean (0, 1)
    assert mmd_loss(real, syn).item() == pytest.approx(4.0 + 4.0)


def test_moments_hand_value():
    # one layer, C=1, H=1, W=2. Real mean map [2, 4]: mu 3, unbiased var 2.
    real = torch.tensor([[[[1.0, 3.0]]], [[[3.0, 5.0]]]])
    syn = torch.tensor([[[[0.0, 0.0]]]])  # mu 0, var 0
    expected = 0.5 * (9.0 + (math.sqrt(2 + 1e-5) - math.sqrt(1e-5)) ** 2)
    assert moments_loss([real], [syn]).item() == pytest.approx(expected, rel=1e-6)


def test_moments_mean_over_layers():
    real = torch.tensor([[[[1.0, 3.0]]], [[[3.0, 5.0]]]])
    syn = torch.tensor([[[[0.0, 0.0]]]])
    one = moments_loss([real], [syn])
    # a second, identical (real == syn) layer contributes 0, so the mean halves
    same = torch.ones(1, 1, 1, 2)
    two = moments_loss([real, same], [syn, same])
    assert two.item() == pytest.approx(one.item() / 2, rel=1e-6)


def test_correlation_hand_value():
    # C=2, H=1, W=2: F = [[1, 2], [3, 4]], G = F F^T / 4 = [[5, 11], [11, 25]] / 4
    real = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])
    syn = torch.zeros(3, 2, 1, 2)
    assert correlation_loss([real], [syn]).item() == pytest.approx(892 / 16)


def test_correlation_averages_grams_not_maps():
    # Two real samples whose mean map is zero still have a non-zero mean Gram.
    a = torch.tensor([[[[1.0, -1.0]]]])
    real = torch.cat([a, -a])
    syn = torch.zeros(1, 1, 1, 2)
    # per-sample G = (1 + 1) / 2 = 1 for both; mean 1; loss 1
    assert correlation_loss([real], [syn]).item() == pytest.approx(1.0)


def test_diversity_hand_value():
    # three 2-d embeddings, k = 1: neighbours 0<->1, 2 -> 1
    f = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]])

    def softmax(a, b):
        z = math.exp(a) + math.exp(b)
        return math.exp(a) / z, math.exp(b) / z

    def kl(p_logits, q_logits):
        p, q = softmax(*p_logits), softmax(*q_logits)
        return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))

    expected = -(kl([0, 0], [1, 0]) + kl([1, 0], [0, 0]) + kl([3, 0], [1, 0])) / 3
    assert diversity_loss(f, k=1).item() == pytest.approx(expected, rel=1e-6)


def test_diversity_neighbour_mean_k2():
    f = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [10.0, 0.0]])
    # k = 2: neighbours of 0: {1, 2} mean (2, 0); of 1: {0, 2} (1.5, 0); of 2: {1, 0} (0.5, 0);
    # of 3: {2, 1} (2, 0)
    means = [[2.0, 0.0], [1.5, 0.0], [0.5, 0.0], [2.0, 0.0]]
    p = torch.softmax(f, 1)
    q = torch.softmax(torch.tensor(means), 1)
    expected = -(p * (p / q).log()).sum(1).mean().item()
    assert diversity_loss(f, k=2).item() == pytest.approx(expected, rel=1e-6)


def test_diversity_single_image_is_zero_with_graph():
    f = torch.randn(1, 8, requires_grad=True)
    loss = diversity_loss(f, k=default_icd_k(1))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(f.grad, torch.zeros_like(f))


def test_diversity_neighbour_grad_switch():
    torch.manual_seed(0)
    f = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    g_with = torch.autograd.grad(diversity_loss(f, 2, neighbour_grad=True), f)[0]
    g_without = torch.autograd.grad(diversity_loss(f, 2, neighbour_grad=False), f)[0]
    assert not torch.allclose(g_with, g_without)
    # with the switch off, the gradient is that of -KL wrt p's logits only (q fixed)
    fixed = f.detach()
    d = torch.cdist(fixed, fixed)
    d.fill_diagonal_(float("inf"))
    q_logits = fixed[d.topk(2, largest=False).indices].mean(1)
    f2 = f.detach().clone().requires_grad_(True)
    p = torch.log_softmax(f2, 1)
    q = torch.log_softmax(q_logits, 1)
    ref = -(p.exp() * (p - q)).sum(1).mean()
    assert torch.allclose(g_without, torch.autograd.grad(ref, f2)[0])


def test_diversity_pushes_apart():
    f = torch.tensor([[0.0, 0.1, 0.0], [0.0, 0.0, 0.1], [0.2, 0.0, 0.0]], requires_grad=True)
    loss = diversity_loss(f, k=1)
    loss.backward()
    with torch.no_grad():
        moved = f - 0.5 * f.grad
    assert diversity_loss(moved, k=1) < loss


@pytest.mark.parametrize(("ipc", "k"), [(1, 0), (2, 1), (5, 1), (10, 2), (20, 4), (50, 10)])
def test_default_icd_k(ipc, k):
    assert default_icd_k(ipc) == k


# --- agreement with naive per-sample loops ------------------------------------------------------


def _naive_moments(real_maps, syn_maps):
    out = []
    for r, s in zip(real_maps, syn_maps, strict=True):
        ft, fs = r.mean(0), s.mean(0)
        terms_mu, terms_sd = [], []
        for k in range(ft.shape[0]):
            mt, ms = ft[k].mean(), fs[k].mean()
            st = torch.sqrt(ft[k].var(unbiased=True) + 1e-5)
            ss = torch.sqrt(fs[k].var(unbiased=True) + 1e-5)
            terms_mu.append((ms - mt) ** 2)
            terms_sd.append((ss - st) ** 2)
        out.append(0.5 * (torch.stack(terms_mu).mean() + torch.stack(terms_sd).mean()))
    return torch.stack(out).mean()


def _naive_correlation(real_maps, syn_maps):
    out = []
    for r, s in zip(real_maps, syn_maps, strict=True):

        def gram(batch):
            gs = []
            for x in batch:
                f = x.reshape(x.shape[0], -1)
                gs.append(f @ f.T / x.numel())
            return torch.stack(gs).mean(0)

        out.append(((gram(r) - gram(s)) ** 2).sum())
    return torch.stack(out).mean()


def _naive_diversity(f, k):
    kls = []
    for i in range(len(f)):
        d = [(torch.dist(f[i], f[j]).item(), j) for j in range(len(f)) if j != i]
        nn_idx = [j for _, j in sorted(d)[:k]]
        m = f[nn_idx].mean(0)
        p, q = torch.softmax(f[i], 0), torch.softmax(m, 0)
        kls.append((p * (p / q).log()).sum())
    return -torch.stack(kls).mean()


def test_losses_match_naive_loops():
    g = torch.Generator().manual_seed(0)
    real = [
        torch.rand(6, 4, 5, 5, generator=g, dtype=torch.float64),
        torch.rand(6, 3, 2, 2, generator=g, dtype=torch.float64),
    ]
    syn = [
        torch.rand(3, 4, 5, 5, generator=g, dtype=torch.float64),
        torch.rand(3, 3, 2, 2, generator=g, dtype=torch.float64),
    ]
    assert torch.allclose(moments_loss(real, syn), _naive_moments(real, syn))
    assert torch.allclose(correlation_loss(real, syn), _naive_correlation(real, syn))
    emb = torch.randn(7, 5, generator=g, dtype=torch.float64)
    assert torch.allclose(diversity_loss(emb, 3), _naive_diversity(emb, 3))


def test_exact_in_float32_at_full_batch_size():
    """256 x 128 x 32 x 32 real maps (ReLU-like, non-negative): float32 within 1e-4 of float64."""
    g = torch.Generator().manual_seed(1)
    real = torch.relu(torch.randn(256, 128, 32, 32, generator=g))
    syn = torch.relu(torch.randn(10, 128, 32, 32, generator=g) * 1.1 + 0.05)
    for fn in (moments_loss, correlation_loss):
        lo = fn([real], [syn]).item()
        hi = fn([real.double()], [syn.double()]).item()
        assert lo == pytest.approx(hi, rel=1e-4), fn.__name__
    emb_r = torch.randn(256, 2048, generator=g)
    emb_s = torch.randn(10, 2048, generator=g)
    assert mmd_loss(emb_r, emb_s).item() == pytest.approx(
        mmd_loss(emb_r.double(), emb_s.double()).item(), rel=1e-5
    )
    assert diversity_loss(emb_s, 2).item() == pytest.approx(
        diversity_loss(emb_s.double(), 2).item(), rel=1e-4
    )


def test_gradients_flow_to_synthetic_only_through_syn_maps():
    real = [torch.rand(4, 2, 3, 3)]
    syn = [torch.rand(2, 2, 3, 3, requires_grad=True)]
    (moments_loss(real, syn) + correlation_loss(real, syn)).backward()
    assert syn[0].grad is not None and torch.isfinite(syn[0].grad).all()
    assert syn[0].grad.abs().sum() > 0


def test_layer_mismatch_raises():
    with pytest.raises(ValueError, match="same layers"):
        moments_loss([torch.rand(2, 1, 2, 2)], [])


# --- the released form (docs/method.md, 'DDM, released form') -----------------------------------

from ddm.losses import (  # noqa: E402
    default_spread_rank,
    persample_moments_loss,
    spread_loss,
    style_spread_loss,
)

EPS = 1e-5


def test_persample_moments_hand_value():
    # one layer, C = 1, 1 x 2 maps. Real: [1, 3] (mu 2, pop var 1), [2, 2] (mu 2, pop var 0).
    real = torch.tensor([[[[1.0, 3.0]]], [[[2.0, 2.0]]]])
    # synthetic: [0, 2] (mu 1, pop var 1)
    syn = torch.tensor([[[[0.0, 2.0]]]])
    mu_t, s_t = 2.0, (math.sqrt(1 + EPS) + math.sqrt(EPS)) / 2
    mu_s, s_s = 1.0, math.sqrt(1 + EPS)
    plain = 0.5 * ((mu_s - mu_t) ** 2 + (s_s - s_t) ** 2)
    assert persample_moments_loss([real], [syn], relative=False).item() == pytest.approx(plain)
    rel = 0.5 * ((mu_s - mu_t) ** 2 / (mu_t**2 + 1e-8) + (s_s - s_t) ** 2 / (s_t**2 + 1e-8))
    assert persample_moments_loss([real], [syn]).item() == pytest.approx(rel, rel=1e-6)
    # a single tensor is one layer
    assert persample_moments_loss(real, syn).item() == pytest.approx(rel, rel=1e-6)


def test_persample_moments_differs_from_batch_form_and_is_batch_size_free():
    torch.manual_seed(0)
    real = [torch.randn(8, 3, 4, 4) * 2 + 1]
    syn = [torch.randn(4, 3, 4, 4)]
    # the batch form averages maps first (their spatial variance shrinks with the batch)
    assert persample_moments_loss(real, syn, relative=False) != pytest.approx(
        moments_loss(real, syn).item()
    )
    # repeating the real batch changes nothing for the per-sample estimator
    doubled = [torch.cat([real[0], real[0]])]
    assert persample_moments_loss(doubled, syn).item() == pytest.approx(
        persample_moments_loss(real, syn).item(), rel=1e-6
    )


def test_persample_moments_relative_is_scale_free():
    torch.manual_seed(1)
    real, syn = [torch.randn(6, 2, 5, 5) + 0.5], [torch.randn(3, 2, 5, 5)]
    base = persample_moments_loss(real, syn).item()
    # scaling both sides leaves the relative loss (up to eps) unchanged, the plain one x100
    scaled = persample_moments_loss([10 * real[0]], [10 * syn[0]]).item()
    assert scaled == pytest.approx(base, rel=1e-3)
    plain = persample_moments_loss(real, syn, relative=False).item()
    plain_scaled = persample_moments_loss([10 * real[0]], [10 * syn[0]], relative=False).item()
    assert plain_scaled == pytest.approx(100 * plain, rel=1e-3)


def _naive_persample(real_maps, syn_maps, relative):
    """Per image, per channel Python loops in float64."""
    per_layer = []
    for r, s in zip(real_maps, syn_maps, strict=True):
        r, s = r.double(), s.double()

        def moments(x):
            mus = [[x[n, k].mean() for k in range(x.shape[1])] for n in range(x.shape[0])]
            sds = [
                [
                    torch.sqrt(((x[n, k] - x[n, k].mean()) ** 2).mean() + EPS)
                    for k in range(x.shape[1])
                ]
                for n in range(x.shape[0])
            ]
            return torch.tensor(mus).mean(0), torch.tensor(sds).mean(0)

        (mu_t, s_t), (mu_s, s_s) = moments(r), moments(s)

        def d(a, b):
            out = ((a - b) ** 2).mean()
            return out / ((b**2).mean() + 1e-8) if relative else out

        per_layer.append(0.5 * (d(mu_s, mu_t) + d(s_s, s_t)))
    return torch.stack(per_layer).mean()


@pytest.mark.parametrize("relative", [True, False])
def test_persample_moments_match_naive_loops(relative):
    torch.manual_seed(2)
    real = [torch.randn(5, 3, 4, 4) * 1.5 + 0.3, torch.randn(5, 3, 2, 2)]
    syn = [torch.randn(3, 3, 4, 4), torch.randn(3, 3, 2, 2) - 0.2]
    got = persample_moments_loss(real, syn, relative=relative).item()
    assert got == pytest.approx(_naive_persample(real, syn, relative).item(), rel=1e-5)


def test_persample_moments_exact_in_float32_at_full_batch_size():
    torch.manual_seed(3)
    real = [torch.randn(256, 128, 32, 32).relu() + 0.1, torch.randn(256, 128, 8, 8)]
    syn = [torch.randn(10, 128, 32, 32).relu(), torch.randn(10, 128, 8, 8) * 0.5]
    got = persample_moments_loss(real, syn).item()
    ref = persample_moments_loss([m.double() for m in real], [m.double() for m in syn]).item()
    assert got == pytest.approx(ref, rel=1e-4)


def test_spread_hand_value():
    # real spread: x-axis var 8/3, y-axis var 2/3 (unbiased); principal directions = the axes
    real = torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    syn = torch.tensor([[-1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])  # std 1 along x, 0 along y
    a1, a2 = math.sqrt(8 / 3), math.sqrt(2 / 3)
    # rank 0 -> min(3 - 1, 16) = 2 directions
    expected = ((1 - a1) ** 2 + (0 - a2) ** 2) / 2 / ((a1**2 + a2**2) / 2 + 1e-8)
    assert spread_loss(real, syn).item() == pytest.approx(expected, rel=1e-5)
    assert spread_loss(real, syn, rank=1).item() == pytest.approx((1 - a1) ** 2 / a1**2, rel=1e-5)


def test_spread_is_zero_where_synthetic_spreads_like_real_and_bounded_below():
    torch.manual_seed(4)
    real = torch.randn(40, 6) * torch.tensor([3.0, 2.0, 1.0, 0.5, 0.2, 0.1])
    assert spread_loss(real, real, rank=5).item() == pytest.approx(0.0, abs=1e-9)
    # shifting the synthetic class does not change its spread
    assert spread_loss(real, real + 7.0, rank=5).item() == pytest.approx(0.0, abs=1e-8)
    for _ in range(5):
        assert spread_loss(real, torch.randn(8, 6)).item() >= 0


def test_spread_zero_below_two_images_with_graph():
    real = torch.randn(10, 4)
    syn = torch.randn(1, 4, requires_grad=True)
    loss = spread_loss(real, syn)
    assert loss.item() == 0.0
    loss.backward()
    assert syn.grad is not None and torch.count_nonzero(syn.grad) == 0


def test_default_spread_rank():
    assert [default_spread_rank(n) for n in (1, 2, 10, 17, 40)] == [0, 1, 9, 16, 16]


def _naive_spread(real, syn, r):
    """numpy float64: SVD of the centred real batch, per-direction unbiased stds."""
    import numpy as np

    R, S = real.double().numpy(), syn.double().numpy()
    Rc = R - R.mean(0)
    _, _, vt = np.linalg.svd(Rc, full_matrices=False)
    V = vt[:r].T
    a = (Rc @ V).std(0, ddof=1)
    b = ((S - S.mean(0)) @ V).std(0, ddof=1)
    return float(((b - a) ** 2).mean() / ((a**2).mean() + 1e-8))


def test_spread_matches_numpy_svd_exact_in_float32_at_full_batch_size():
    torch.manual_seed(5)
    # real class embeddings at CIFAR scale: 256 x 2048, a decaying spectrum like a ConvNet's
    scales = torch.linspace(3.0, 0.05, 2048)
    real = torch.randn(256, 2048) * scales + 1.0
    for m in (10, 40):
        syn = torch.randn(m, 2048) * scales * 0.7
        got = spread_loss(real, syn).item()
        assert got == pytest.approx(_naive_spread(real, syn, min(m - 1, 16)), rel=1e-4)


def test_spread_gradient_only_to_synthetic():
    real = torch.randn(30, 5, requires_grad=True)
    syn = torch.randn(6, 5, requires_grad=True)
    spread_loss(real, syn).backward()
    assert real.grad is None and syn.grad is not None and syn.grad.abs().sum() > 0


def test_spread_pulls_a_collapsed_class_apart():
    torch.manual_seed(6)
    real = torch.randn(50, 8) * 2
    syn = (torch.randn(5, 8) * 0.01).requires_grad_(True)
    opt = torch.optim.SGD([syn], lr=0.5)
    start = spread_loss(real, syn).item()
    for _ in range(50):
        opt.zero_grad()
        spread_loss(real, syn).backward()
        opt.step()
    assert spread_loss(real, syn).item() < 0.5 * start


def test_style_spread_hand_value_and_zero_for_one_image():
    # C = 1, 1 x 2 maps. Real mus 1, 3 (std sqrt 2), pop vars 0, 0 (s_nk = sqrt(eps), std 0)
    real = torch.tensor([[[[1.0, 1.0]]], [[[3.0, 3.0]]]])
    syn = torch.tensor([[[[0.0, 0.0]]], [[[1.0, 1.0]]]])  # mus 0, 1 (std sqrt 0.5)
    expected = 0.5 * ((math.sqrt(0.5) - math.sqrt(2)) ** 2 / (2 + 1e-8) + 0.0)
    assert style_spread_loss([real], [syn]).item() == pytest.approx(expected, rel=1e-5)
    assert style_spread_loss([real], [syn[:1]]).item() == 0.0


# --- the real batch's mean Gram matrix ----------------------------------------------------------


def _old_mean_gram(maps):
    """The previous implementation: per-sample Grams, then their mean."""
    n, c, h, w = maps.shape
    flat = maps.reshape(n, c, h * w)
    return torch.bmm(flat, flat.transpose(1, 2)).mean(dim=0) / (c * h * w)


def test_mean_gram_equals_the_old_form_and_the_naive_loop():
    from ddm.losses import mean_gram

    g = torch.Generator().manual_seed(1)
    maps = torch.randn(7, 5, 4, 3, generator=g)
    naive = torch.stack(
        [(x.reshape(5, -1).double() @ x.reshape(5, -1).double().T) / x.numel() for x in maps]
    ).mean(0)
    fast = mean_gram(maps)
    assert fast.dtype == torch.float32
    torch.testing.assert_close(fast, _old_mean_gram(maps), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast.double(), naive, rtol=1e-5, atol=1e-6)
    assert mean_gram(maps.double()).dtype == torch.float64  # wider inputs keep their type


def test_mean_gram_in_bf16_accumulates_in_float32():
    from ddm.losses import mean_gram

    g = torch.Generator().manual_seed(2)
    maps = torch.randn(64, 16, 8, 8, generator=g)
    exact = _old_mean_gram(maps.double())
    for low in (mean_gram(maps, torch.bfloat16), mean_gram(maps.bfloat16())):
        assert low.dtype == torch.float32
        err = (low.double() - exact).abs().max() / exact.abs().max()
        assert err < 5e-3  # bf16 inputs: ~3e-4 measured at 256 x 128 x 32 x 32


def test_mean_gram_groups_small_maps_into_larger_products():
    """Small maps go through products over several samples' pixels (a copy); the mean Gram is
    the per-sample one's, for batch sizes with and without a convenient divisor."""
    from ddm.losses import _samples_per_product, mean_gram

    g = torch.Generator().manual_seed(3)
    for n, size, dtype, group in [
        (64, 8, torch.float32, 32),
        (30, 8, torch.float32, 30),
        (13, 4, torch.float32, 13),
        (97, 8, torch.float32, 1),  # a prime batch above 32: one sample per product
        (64, 16, torch.bfloat16, 8),
        (64, 16, torch.float32, 1),
        (64, 32, torch.bfloat16, 1),
    ]:
        maps = torch.randn(n, 6, size, size, generator=g)
        assert _samples_per_product(n, size * size, maps.to(dtype)) == group
        exact = _old_mean_gram(maps.double())
        got = mean_gram(maps, dtype)
        assert got.dtype == torch.float32
        tol = 1e-6 if dtype == torch.float32 else 5e-3
        assert (got.double() - exact).abs().max() <= tol * exact.abs().max(), (n, size, dtype)


def test_mean_gram_keeps_gradients():
    from ddm.losses import mean_gram

    maps = torch.randn(3, 4, 2, 2, requires_grad=True)
    mean_gram(maps).sum().backward()
    assert maps.grad is not None and torch.isfinite(maps.grad).all()


def test_persample_moments_without_autograd_equal_var_mean():
    from ddm.losses import persample_moments

    g = torch.Generator().manual_seed(3)
    maps = torch.randn(5, 6, 7, 7, generator=g) * 2 + 0.5
    var, mu = torch.var_mean(maps.double().flatten(2), dim=2, correction=0)
    sigma = torch.sqrt(var + 1e-5)
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        with torch.no_grad():
            got_mu, got_s = persample_moments(maps.to(dtype))
        assert got_mu.dtype == dtype
        torch.testing.assert_close(got_mu.double(), mu, rtol=tol, atol=tol)
        torch.testing.assert_close(got_s.double(), sigma, rtol=tol, atol=tol)
    low = maps.bfloat16()  # bf16 maps: float32 statistics of the bf16 values
    var, mu = torch.var_mean(low.double().flatten(2), dim=2, correction=0)
    with torch.no_grad():
        got_mu, got_s = persample_moments(low)
    assert got_mu.dtype == torch.float32 and got_s.dtype == torch.float32
    torch.testing.assert_close(got_mu.double(), mu, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_s.double(), torch.sqrt(var + 1e-5), rtol=1e-5, atol=1e-5)
    # with autograd: the differentiable path, same values
    x = maps.clone().requires_grad_(True)
    g_mu, g_s = persample_moments(x)
    (g_mu.sum() + g_s.sum()).backward()
    assert x.grad is not None
    torch.testing.assert_close(g_s.detach().double(), sigma, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bias", [True, False])
def test_conv_mean_gram_equals_the_gram_of_the_conv_output(bias):
    from ddm.losses import conv_mean_gram, mean_gram

    g = torch.Generator().manual_seed(4)
    x = torch.randn(6, 3, 9, 8, generator=g, dtype=torch.float64)
    cases = ((3, 1), (3, 0), ((3, 5), (1, 2)), (5, 2), (1, 0), ((1, 3), (0, 1)), (3, 2))
    for kernel, padding in cases:  # "same" padding (the shift path) and others (patches)
        conv = torch.nn.Conv2d(3, 16, kernel, padding=padding, bias=bias).double()
        with torch.no_grad():
            expected = mean_gram(conv(x))
            got = conv_mean_gram(x, conv.weight, conv.bias, conv.padding)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bias", [True, False])
def test_conv_mean_gram_in_bf16_is_close_to_the_float64_gram(bias):
    """The real batch under bf16 precision: bf16 patches, one image per product, float32
    sums: within 1e-3 of the largest entry here (16 images; 7e-5 at 256 CIFAR images), and
    closer than the bf16 Gram of bf16 maps (what the other layers use)."""
    from ddm.losses import conv_mean_gram, mean_gram

    g = torch.Generator().manual_seed(6)
    x = torch.randn(16, 3, 12, 12, generator=g) * 0.5 + 0.2
    for kernel, padding in ((3, 1), ((3, 5), (1, 2)), (3, 0)):
        conv = torch.nn.Conv2d(3, 32, kernel, padding=padding, bias=bias)
        with torch.no_grad():
            got = conv_mean_gram(x, conv.weight, conv.bias, conv.padding, torch.bfloat16)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                maps = conv(x)
            via_maps = mean_gram(maps, torch.bfloat16)
            expected = mean_gram(conv.double()(x.double()))
        assert got.dtype == torch.float32
        err = (got.double() - expected).abs().max() / expected.abs().max()
        assert 0 < err < 1e-3  # not the float32 route (which is exact to 1e-7)
        assert err < (via_maps.double() - expected).abs().max() / expected.abs().max()
    # with autograd the float32 route is taken (the synthetic side): exact, differentiable
    conv = torch.nn.Conv2d(3, 32, 3, padding=1, bias=bias)
    xg = x.clone().requires_grad_(True)
    got = conv_mean_gram(xg, conv.weight, conv.bias, conv.padding, torch.bfloat16)
    got.sum().backward()
    assert xg.grad is not None
    with torch.no_grad():
        expected = mean_gram(conv.double()(x.double()))
    torch.testing.assert_close(got.detach().double(), expected, rtol=1e-5, atol=1e-6)


def test_spread_directions_many_equals_one_by_one():
    """The classes solved side by side (threads) give the sequential results bitwise."""
    from ddm.losses import spread_directions, spread_directions_many

    g = torch.Generator().manual_seed(9)
    embs = [torch.randn(40, 64, generator=g) * torch.linspace(2, 0.1, 64) for _ in range(5)]
    one_by_one = [spread_directions(e, 9) for e in embs]
    threads = torch.get_num_threads()
    try:
        for n in (2, 1):
            torch.set_num_threads(n)
            many = spread_directions_many(embs, 9)
            assert torch.get_num_threads() == n  # restored
            for (d1, a1), (d2, a2) in zip(one_by_one, many, strict=True):
                assert torch.equal(d1, d2) and torch.equal(a1, a2)
    finally:
        torch.set_num_threads(threads)


def test_conv_mean_gram_gradient_is_the_maps_gradient():
    """With autograd (the synthetic side): the gradient on the images equals the one through
    the convolution's maps."""
    from ddm.losses import conv_mean_gram, mean_gram

    g = torch.Generator().manual_seed(5)
    conv = torch.nn.Conv2d(3, 16, 3, padding=1).double()
    x = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)
    target = torch.randn(16, 16, generator=g, dtype=torch.float64) * 0.1
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    (mean_gram(conv(a)) - target).pow(2).sum().backward()
    patches = conv_mean_gram(b, conv.weight, conv.bias, conv.padding).double()
    (patches - target).pow(2).sum().backward()
    torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6 * a.grad.abs().max())


def test_spread_directions_only_those_the_batch_spans():
    """A real batch of 3 distinct embeddings (each 4 times) spans 2 directions: asked for 5,
    2 come back, orthonormal, with the batch's std along each (a float64 SVD's)."""
    from ddm.losses import spread_directions

    g = torch.Generator().manual_seed(7)
    base = torch.randn(3, 50, generator=g)
    real = base.repeat(4, 1)  # 12 x 50, rank 2 once centred
    dirs, a = spread_directions(real, 5)
    assert dirs.shape == (50, 2) and a.shape == (2,)
    torch.testing.assert_close(dirs.T @ dirs, torch.eye(2), atol=1e-5, rtol=0)
    centred = (real - real.mean(0)).double()
    s = torch.linalg.svdvals(centred)[:2]
    torch.testing.assert_close(a.double(), s / (12 - 1) ** 0.5, rtol=1e-5, atol=0)


def test_persample_moments_gradient_is_the_naive_routes():
    """With autograd (the closed-form backward on CPU): the images' gradient equals the one
    through a plain mean and mean squared deviation, also when only one output is used."""
    from ddm.losses import persample_moments

    g = torch.Generator().manual_seed(8)
    maps = torch.randn(3, 4, 5, 6, generator=g) * 2 + 0.5
    w_mu, w_s = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)

    def naive(x):
        flat = x.flatten(2)
        mu = flat.mean(2)
        return mu, torch.sqrt((flat - mu.unsqueeze(2)).pow(2).mean(2) + 1e-5)

    for pick in ((1.0, 1.0), (1.0, 0.0), (0.0, 1.0)):
        a, b = maps.clone().requires_grad_(True), maps.clone().requires_grad_(True)
        mu, s = persample_moments(a)
        (pick[0] * (mu * w_mu).sum() + pick[1] * (s * w_s).sum()).backward()
        mu_n, s_n = naive(b)
        (pick[0] * (mu_n * w_mu).sum() + pick[1] * (s_n * w_s).sum()).backward()
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)
    x = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: persample_moments(t), (x,))
