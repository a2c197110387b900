"""TaLK operator: fast path vs the direct loop, gradients, incremental decoding, dtypes,
errors (Lioutas & Guo 2020, Sec. 3)."""

import pytest
import torch

from tdx.talk import ops
from tdx.talk.module import TaLKConv
from tdx.talk.ops import talk_window_sum, window_edges
from tdx.talk.reference import talk_reference


def random_edges(T, B, H, l_max, r_max, dtype, causal=False, gen=None):
    a_l = torch.rand(T, B, H, dtype=dtype, generator=gen)
    a_r = None if causal else torch.rand(T, B, H, dtype=dtype, generator=gen)
    return window_edges(a_l, a_r, l_max, r_max)


@pytest.mark.parametrize("l_max", [1, 3, 15, 63])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_fast_equals_reference(l_max, dtype, tol):
    g = torch.Generator().manual_seed(l_max)
    for T, B, C, H in [(7, 2, 8, 2), (20, 1, 6, 3), (33, 3, 4, 4)]:
        r_max = max(l_max // 2, 1)
        x = torch.randn(T, B, C, dtype=dtype, generator=g)
        left, right = random_edges(T, B, H, l_max, r_max, dtype, gen=g)
        K = l_max + r_max + 1
        torch.testing.assert_close(talk_window_sum(x, left, right, K),
                                   talk_reference(x, left, right, K), atol=tol, rtol=tol)


def test_windows_clamped_at_both_ends_and_integer_edges():
    T, B, C, H = 6, 1, 2, 1
    x = torch.arange(1.0, T + 1, dtype=torch.float64).view(T, 1, 1).expand(T, B, C).clone()
    a = torch.ones(T, B, H, dtype=torch.float64)  # full offsets: windows hit both ends
    left, right = window_edges(a, a, 15, 15)
    assert left.min() == 0 and right.max() == T - 1
    out = talk_window_sum(x, left, right, 31)
    torch.testing.assert_close(out[:, 0, 0], torch.full((T,), 21.0 / 31, dtype=torch.float64))
    torch.testing.assert_close(out, talk_reference(x, left, right, 31))
    zero = torch.zeros(T, B, H, dtype=torch.float64)  # window = the token itself
    l0, r0 = window_edges(zero, zero, 3, 3)
    torch.testing.assert_close(talk_window_sum(x, l0, r0, 7), x / 7)


def test_gradcheck_input_and_offsets():
    g = torch.Generator().manual_seed(0)
    T, B, C, H = 9, 2, 4, 2
    x = torch.randn(T, B, C, dtype=torch.float64, generator=g, requires_grad=True)
    logits = torch.randn(T, B, 2 * H, dtype=torch.float64, generator=g, requires_grad=True)

    def f(x, logits):
        a = torch.sigmoid(logits)
        left, right = window_edges(a[..., :H], a[..., H:], 3, 2)
        return talk_window_sum(x, left, right, 6)

    assert torch.autograd.gradcheck(f, (x, logits), eps=1e-6, atol=1e-7)


def test_padding_never_contributes():
    torch.manual_seed(0)
    conv = TaLKConv(8, 2, left_max=3, right_max=3, fast=False).eval()
    x = torch.randn(5, 2, 8)
    pad = torch.zeros(2, 5, dtype=torch.bool)
    pad[1, :2] = True  # left padding, as fairseq pads sources
    out = conv(x, padding_mask=pad)
    x2 = x.clone()
    x2[:2, 1] = 1e6  # garbage in padded slots
    torch.testing.assert_close(conv(x2, padding_mask=pad), out)


def test_incremental_decoding_equals_full_causal_op():
    torch.manual_seed(0)
    conv = TaLKConv(12, 3, left_max=4, causal=True).eval()
    x = torch.randn(10, 2, 12)
    full = conv(x)
    state: dict = {}
    steps = torch.cat([conv(x[t : t + 1], incremental_state=state) for t in range(10)])
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-5)
    # beam reordering follows the batch
    state2: dict = {}
    for t in range(4):
        conv(x[t : t + 1], incremental_state=state2)
    conv.reorder_incremental_state(state2, torch.tensor([1, 1]))
    y = conv(x[4:5, [1, 1]], incremental_state=state2)
    torch.testing.assert_close(y[0, 0], full[4, 1], atol=1e-5, rtol=1e-5)


def test_causal_output_ignores_the_future():
    torch.manual_seed(0)
    conv = TaLKConv(4, 1, left_max=3, causal=True).eval()
    x = torch.randn(6, 1, 4)
    y = x.clone()
    y[4:] = 100.0
    torch.testing.assert_close(conv(x)[:4], conv(y)[:4])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(dtype):
    torch.manual_seed(0)
    conv = TaLKConv(16, 4, 3, 3, fast=False)
    x = torch.randn(12, 2, 16)
    ref = conv(x)
    out = conv.to(dtype)(x.to(dtype))
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)
    out.float().sum().backward()


def test_compiled_path_equals_eager():
    torch.manual_seed(0)
    x = torch.randn(64, 2, 16, requires_grad=True)
    left, right = random_edges(64, 2, 4, 7, 7, torch.float32)
    eager = talk_window_sum(x, left, right, 15)
    fast = ops.talk_window_sum_fast(x, left, right, 15)
    torch.testing.assert_close(fast, eager)
    g1, = torch.autograd.grad(eager.square().sum(), x)
    g2, = torch.autograd.grad(fast.square().sum(), x)
    torch.testing.assert_close(g1, g2)


def test_fallback_when_compile_is_off(monkeypatch):
    monkeypatch.setenv("TDX_TALK_COMPILE", "0")
    assert not ops.compiled_enabled()
    x = torch.randn(5, 1, 4)
    left, right = random_edges(5, 1, 2, 2, 2, torch.float32)
    torch.testing.assert_close(ops.talk_window_sum_fast(x, left, right, 5),
                               talk_window_sum(x, left, right, 5))


def test_offset_dropout_only_shrinks_windows():
    torch.manual_seed(0)
    conv = TaLKConv(8, 2, 5, 5, offset_dropout=0.5).train()
    a_l, a_r = conv.relative_offsets(torch.randn(50, 2, 8))
    assert (a_l == 0).float().mean() > 0.3 and a_l.max() < 1 and a_r.max() < 1


def test_clear_errors():
    with pytest.raises(ValueError, match="divisible"):
        TaLKConv(10, 3, 1, 1)
    conv = TaLKConv(8, 2, 1, 1)
    with pytest.raises(ValueError, match=r"\(T, B, 8\)"):
        conv(torch.randn(4, 8))
    with pytest.raises(ValueError, match=r"\(T, B, 8\)"):
        conv(torch.randn(4, 2, 6))
    with pytest.raises(ValueError, match="causal"):
        TaLKConv(8, 2, 1, 1)(torch.randn(1, 1, 8), incremental_state={})


def test_automatic_fallback_when_compiling_fails(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(ops, "_COMPILED", None)
    monkeypatch.setattr(ops, "_COMPILE_FAILED", False)
    monkeypatch.setattr(ops.torch, "compile", broken)
    x = torch.randn(6, 2, 4)
    left, right = random_edges(6, 2, 2, 3, 3, torch.float32)
    out = ops.talk_window_sum_fast(x, left, right, 7)
    torch.testing.assert_close(out, talk_window_sum(x, left, right, 7))
    assert ops._COMPILE_FAILED and not ops.compiled_enabled()
