"""The C++ autograd of the differentiable ops (Autograd dispatch key): gradients flow to exactly the inputs
that need them, a backward with create_graph=True is refused by name (the kernels are differentiable once),
and the backward ops themselves run under grad mode on inputs that require grad."""

from __future__ import annotations

import pytest
import torch

from rankseg_fast.ops import masked_attention, ms_deform_attn, rank_logits, rank_scatter
from rankseg_fast.testing import masked_attention as ma_inputs
from rankseg_fast.testing import ms_deform_attn as msda_inputs
from rankseg_fast.testing import needs_ops
from rankseg_fast.testing import rank_logits as rl_inputs

pytestmark = needs_ops


def _masked_attention():
    q, k, v, logits = ma_inputs.make_inputs(ma_inputs.Case(batch=1, queries=3, keys=9, heads=1, head_dim=4))
    leaves = [t.requires_grad_(True) for t in (q, k, v)]
    return "masked_attention", (lambda q, k, v: masked_attention(q, k, v, logits, 1)), leaves


def _ms_deform_attn():
    value, shapes, starts, locations, weights = msda_inputs.make_inputs(
        msda_inputs.Case(batch=1, queries=3, heads=1, channels=4, levels=((2, 3), (1, 2)), points=2), requires_grad=True)
    return "ms_deform_attn", (lambda v, l, w: ms_deform_attn(v, shapes, starts, l, w)), [value, locations, weights]


def _rank_logits():
    logits, scores, k, weight, bias = rl_inputs.make_inputs(rl_inputs.Case(layers=2, batch=2, queries=3, classes=5, k=4),
                                                            torch.float64, requires_grad=True)
    return "rank_logits", (lambda x, w, b: rank_logits(x, scores, k, w, b)[0]), [logits, weight, bias]


def _rank_scatter():
    logits, scores, k, weight, bias = rl_inputs.make_inputs(rl_inputs.Case(layers=2, batch=2, queries=3, classes=5, k=4),
                                                            torch.float64)
    ranked, index = rank_logits(logits, scores, k, weight, bias)
    return "rank_scatter", (lambda r: rank_scatter(r, index, 5)), [ranked.requires_grad_(True)]


CASES = {"masked_attention": _masked_attention, "ms_deform_attn": _ms_deform_attn, "rank_logits": _rank_logits,
         "rank_scatter": _rank_scatter}


@pytest.mark.parametrize("name", list(CASES))
def test_grads_only_where_needed(name):
    _, fn, leaves = CASES[name]()
    for frozen in range(-1, len(leaves)):  # -1: every input needs a gradient
        inputs = [t.detach().requires_grad_(i != frozen) for i, t in enumerate(leaves)]
        wanted = [t for t in inputs if t.requires_grad]
        if not wanted:
            continue
        grads = torch.autograd.grad(fn(*inputs).square().sum(), wanted)
        assert all(g is not None and g.shape == t.shape and torch.isfinite(g).all() for g, t in zip(grads, wanted))
        assert all(t.grad is None for t in inputs)


@pytest.mark.parametrize("name", list(CASES))
def test_create_graph_is_refused_by_name(name):
    op, fn, leaves = CASES[name]()
    out = fn(*leaves).square().sum()
    with pytest.raises(RuntimeError, match=rf"rankseg_fast\.ops\.{op}: .*differentiable once.*create_graph=True"):
        torch.autograd.grad(out, leaves, create_graph=True)


def test_backward_op_runs_under_grad_mode():
    """Called directly with inputs that require grad (as a user or opcheck may), the CPU backward's internal
    matrix products must not be recorded by autograd."""
    _, _, (q, k, v) = _masked_attention()
    logits = torch.randn(1, 3, 9, dtype=torch.float64)
    out, lse = torch.ops.rankseg_fast.masked_attention(q, k, v, logits, 1)
    grads = torch.ops.rankseg_fast._masked_attention_backward(torch.ones_like(out), q, k, v, logits, out, lse, 1)
    expected = torch.autograd.grad(out.sum(), (q, k, v), retain_graph=True)
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g.detach(), e)
