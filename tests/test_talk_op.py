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


needs_kernel = pytest.mark.skipif(ops._C is None, reason="C++ kernel not built")


def test_kernel_is_built():
    """`make install` builds talk/csrc; a broken build must fail CI, not silently fall back."""
    assert ops._C is not None and ops.kernel_available()


@pytest.mark.parametrize("l_max", [1, 3, 15, 63])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("impl", ["kernel", "tensor_ops"])
def test_fast_equals_reference(l_max, dtype, tol, impl):
    if impl == "kernel" and ops._C is None:
        pytest.skip("C++ kernel not built")
    g = torch.Generator().manual_seed(l_max)
    for T, B, C, H, causal in [(7, 2, 8, 2, False), (20, 1, 6, 3, True), (33, 3, 4, 4, False),
                               (1, 2, 4, 2, False), (90, 1, 4, 1, True)]:
        r_max = 0 if causal else max(l_max // 2, 1)
        x = torch.randn(T, B, C, dtype=dtype, generator=g)
        a = torch.rand(T, B, H if causal else 2 * H, dtype=dtype, generator=g)
        a_l, a_r = (a, None) if causal else a.split(H, dim=-1)
        left, right = window_edges(a_l, a_r, l_max, r_max)
        K = l_max + r_max + 1
        ref = talk_reference(x, left, right, K)
        out = (ops.talk(x, a, H, l_max, r_max) if impl == "kernel"
               else talk_window_sum(x, left, right, K))
        torch.testing.assert_close(out, ref, atol=tol, rtol=tol)


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


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("fast", [True, False])
def test_gradcheck_input_and_offsets(fast, causal):
    g = torch.Generator().manual_seed(0)
    T, B, C, H = 9, 2, 4, 2
    x = torch.randn(T, B, C, dtype=torch.float64, generator=g, requires_grad=True)
    A = H if causal else 2 * H
    logits = torch.randn(T, B, A, dtype=torch.float64, generator=g, requires_grad=True)

    def f(x, logits):
        return ops.talk(x, torch.sigmoid(logits), H, 3, 2, fast=fast)

    assert torch.autograd.gradcheck(f, (x, logits), eps=1e-6, atol=1e-7)


@needs_kernel
@pytest.mark.parametrize("causal", [False, True])
def test_kernel_equals_tensor_ops_with_gradients(causal):
    """The kernel and its fallback agree in output and in every gradient, including windows
    clamped at both ends (large maxima against a short sequence)."""
    torch.manual_seed(0)
    for T, l_max, r_max in [(64, 7, 7), (5, 15, 15), (200, 63, 3)]:
        H = 4
        x = torch.randn(T, 3, 16, requires_grad=True)
        a = torch.rand(T, 3, H if causal else 2 * H, requires_grad=True)
        outs, grads = [], []
        for fast in (True, False):
            out = ops.talk(x, a, H, l_max, r_max, fast=fast)
            outs.append(out)
            grads.append(torch.autograd.grad(out.square().sum(), (x, a)))
        torch.testing.assert_close(outs[0], outs[1])
        for g_kernel, g_ops in zip(*grads, strict=True):
            torch.testing.assert_close(g_kernel, g_ops, atol=1e-5, rtol=1e-4)


@needs_kernel
@pytest.mark.parametrize("causal", [False, True])
def test_fused_layer_gradcheck(causal):
    """The fused offsets + window Function (talk_layer): gradients for x, W, b in float64,
    with an offset-dropout mask."""
    g = torch.Generator().manual_seed(1)
    T, B, C, H = 8, 2, 4, 2
    A = H if causal else 2 * H
    x = torch.randn(T, B, C, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(A, C, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(A, dtype=torch.float64, generator=g, requires_grad=True)
    keep = torch.rand(T, B, A, generator=g) >= 0.3

    def f(x, w, b):
        return ops.talk_layer(x, w, b, keep, H, 3, 2)

    assert torch.autograd.gradcheck(f, (x, w, b), eps=1e-6, atol=1e-7)


@needs_kernel
@pytest.mark.parametrize("causal", [False, True])
def test_kernel_cut_in_time_or_batch_between_threads(causal):
    """The kernel cuts long sequences in time between threads (each block starts its own
    table at its first window) and short ones by batch entry. Every cut gives the tensor
    ops' output and gradients (x, W, b; offset dropout on), in float64 to 1e-10."""
    g = torch.Generator().manual_seed(3)
    H, C, l_max, r_max = 2, 8, 7, 0 if causal else 5
    A = H if causal else 2 * H
    threads = torch.get_num_threads()
    try:
        for T, B in [(333, 2), (333, 1), (20, 3)]:  # time blocks at 2-3 threads; batch blocks
            x = torch.randn(T, B, C, dtype=torch.float64, generator=g)
            w = torch.randn(A, C, dtype=torch.float64, generator=g)
            b = torch.randn(A, dtype=torch.float64, generator=g)
            b[::2] += 8.0  # offsets near 1: windows reaching their full l_max at block starts
            keep = torch.rand(T, B, A, generator=g) >= 0.2
            grad = torch.randn(T, B, C, dtype=torch.float64, generator=g)
            results = []
            for n, fast in [(1, False), (1, True), (2, True), (3, True)]:
                torch.set_num_threads(n)
                xi, wi, bi = (t.clone().requires_grad_() for t in (x, w, b))
                out = ops.talk_layer(xi, wi, bi, keep, H, l_max, r_max, fast=fast)
                results.append((out, *torch.autograd.grad(out, (xi, wi, bi), grad)))
            for got in results[1:]:
                for p, q in zip(got, results[0], strict=True):
                    torch.testing.assert_close(p, q, atol=1e-10, rtol=1e-10)
    finally:
        torch.set_num_threads(threads)


@needs_kernel
@pytest.mark.parametrize("causal", [False, True])
def test_fused_layer_equals_unfused(causal):
    """TaLKConv on the kernel path (one Function) equals it on plain autograd ops, output
    and every parameter gradient, in training mode with offset dropout."""
    layers = []
    for fast in (True, False):
        torch.manual_seed(0)
        layers.append(TaLKConv(16, 4, 7, 0 if causal else 5, causal=causal,
                               offset_dropout=0.2, fast=fast).train())
    x = torch.randn(40, 3, 16)
    results = []
    for conv in layers:
        xi = x.clone().requires_grad_()
        torch.manual_seed(1)  # the same dropout mask
        out = conv(xi)
        gx, gw, gb = torch.autograd.grad(out.square().sum(),
                                         (xi, conv.offsets.weight, conv.offsets.bias))
        results.append((out, gx, gw, gb))
    for fused, plain in zip(*results, strict=True):
        torch.testing.assert_close(fused, plain, atol=1e-5, rtol=1e-4)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("C,H", [(64, 2), (12, 3)])  # D = 32: streamed; D = 4: plain stores
def test_streamed_backward_equals_plain(dtype, C, H):
    """dL/dx written with non-temporal stores (any size when stream_min_bytes = 0) is
    bit-identical to the plain stores; a negative threshold never streams."""
    g = torch.Generator().manual_seed(2)
    T, B = 50, 3
    x = torch.randn(T, B, C, dtype=dtype, generator=g)
    a = torch.rand(T, B, 2 * H, dtype=dtype, generator=g)
    grad = torch.randn(T, B, C, dtype=dtype, generator=g)
    plain = ops._C.backward(grad, x, a, H, 7, 4, -1)
    streamed = ops._C.backward(grad, x, a, H, 7, 4, 0)
    for p, s in zip(plain, streamed, strict=True):
        assert torch.equal(p, s)
    assert torch.equal(plain[0], ops._C.backward(grad, x, a, H, 7, 4)[0])  # default: plain


def test_fallback_when_kernel_is_off_or_missing(monkeypatch):
    x = torch.randn(6, 2, 4)
    a = torch.rand(6, 2, 4)
    left, right = window_edges(a[..., :2], a[..., 2:], 3, 3)
    ref = talk_window_sum(x, left, right, 7)

    class Broken:
        def __getattr__(self, name):
            raise AssertionError("the kernel must not be called")

    monkeypatch.setattr(ops, "_C", Broken())
    monkeypatch.setenv("TDX_TALK_KERNEL", "0")
    assert not ops.kernel_available()
    torch.testing.assert_close(ops.talk(x, a, 2, 3, 3), ref)
    monkeypatch.delenv("TDX_TALK_KERNEL")
    monkeypatch.setattr(ops, "_C", None)  # not built
    assert not ops.kernel_available()
    torch.testing.assert_close(ops.talk(x, a, 2, 3, 3), ref)


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


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(dtype, fast):
    torch.manual_seed(0)
    conv = TaLKConv(16, 4, 3, 3, fast=fast)
    x = torch.randn(12, 2, 16)
    ref = conv(x)
    out = conv.to(dtype)(x.to(dtype))
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)
    out.float().sum().backward()
    assert conv.offsets.weight.grad is not None


def test_offset_dropout_only_shrinks_windows():
    torch.manual_seed(0)
    conv = TaLKConv(8, 2, 5, 5, offset_dropout=0.5).train()
    a = conv.relative_offsets(torch.randn(50, 2, 8))  # (T, B, 2H)
    assert a.shape == (50, 2, 4)
    assert (a == 0).float().mean() > 0.3 and a.max() < 1


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
    if ops._C is not None:  # the kernel checks its own inputs too: an error, not a crash
        with pytest.raises(RuntimeError, match="divisible"):
            ops._C.forward(torch.randn(4, 1, 6), torch.rand(4, 1, 8), 4, 1, 1)
        with pytest.raises(RuntimeError, match="dtype"):
            ops._C.forward(torch.randn(4, 1, 8), torch.rand(4, 1, 8).double(), 4, 1, 1)
