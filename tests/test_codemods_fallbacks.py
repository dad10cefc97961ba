"""CPU-fallback rewrite: torch.logdet of covariance matrices -> svdvals on MultiPath++'s NLL."""
from __future__ import annotations

import pytest
import torch

from _codemod_helpers import git_apply_check, line_of, load_function
from npu_advise.recommendations.codemods import fallbacks
from npu_advise.recommendations.codemods.diffs import to_fix

# MultiPath++ nll_with_covariances (seed chapter 2.3.2).
MULTIPATH = '''import torch
from torch import logdet


def nll_with_covariances(gt, predictions, confidences, avails, covariance_matrices):
    precision_matrices = torch.inverse(covariance_matrices)
    gt = torch.unsqueeze(gt, 1)
    avails = avails[:, None, :, None]
    coordinates_delta = (gt - predictions).unsqueeze(-1)
    errors = coordinates_delta.permute(0, 1, 2, 4, 3) @ precision_matrices @ coordinates_delta
    errors = avails * (-0.5 * errors.squeeze(-1) - 0.5 * torch.logdet(covariance_matrices).unsqueeze(-1))
    errors = confidences + errors.squeeze(-1).sum(-1)
    return -torch.logsumexp(errors, dim=-1).mean()


def other(m):
    return logdet(m) + torch.linalg.slogdet(m)[1] + torch.linalg.slogdet(m).logabsdet
'''


def _spd(g, *batch, n=2):
    a = torch.randn(*batch, n, n, generator=g, dtype=torch.float64)
    return a @ a.transpose(-1, -2) + 0.1 * torch.eye(n, dtype=torch.float64)


def test_logdet_diff_is_auto_for_covariances(tmp_path):
    line = line_of(MULTIPATH, "torch.logdet(")
    r = fallbacks.rewrite_logdet(MULTIPATH, line)
    assert r is not None and r.auto_applicable
    assert "torch.linalg.svdvals(covariance_matrices).log().sum(-1).unsqueeze(-1)" in r.new_source
    fix = to_fix("model/multipathpp.py", MULTIPATH, r, "NPA401-x", "cpu_fallbacks._linalg_slogdet")
    assert any("positive-definite" in c for c in fix.constraints)
    git_apply_check(tmp_path, "model/multipathpp.py", MULTIPATH, fix.diff)
    assert fallbacks.rewrite_logdet(r.new_source, line) is None          # idempotent


@pytest.mark.parametrize("seed", range(4))
def test_nll_numerically_equal_with_gradients(seed):
    new = fallbacks.rewrite_logdet(MULTIPATH, line_of(MULTIPATH, "torch.logdet(")).new_source
    old_f = load_function(MULTIPATH, "nll_with_covariances")
    new_f = load_function(new, "nll_with_covariances")
    g = torch.Generator().manual_seed(seed)
    bs, modes, steps = 2 + seed, 3, 8
    gt = torch.randn(bs, steps, 2, generator=g, dtype=torch.float64)
    pred = torch.randn(bs, modes, steps, 2, generator=g, dtype=torch.float64)
    conf = torch.randn(bs, modes, generator=g, dtype=torch.float64).log_softmax(-1)
    avails = (torch.rand(bs, steps, generator=g) > 0.2).double()
    cov = _spd(torch.Generator().manual_seed(100 + seed), bs, modes, steps).requires_grad_(True)
    results = []
    for f in (old_f, new_f):
        cov.grad = None
        loss = f(gt, pred, conf, avails, cov)
        loss.backward()
        results.append((loss.detach(), cov.grad.clone()))
    assert torch.allclose(results[0][0], results[1][0], atol=1e-9)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-7)


def test_batched_not_whole_batch_product():
    """The seed's printed version multiplied the singular values of the whole batch; ours is per matrix."""
    cov = _spd(torch.Generator().manual_seed(0), 5, 3, n=3)
    assert torch.allclose(torch.linalg.svdvals(cov).log().sum(-1), torch.logdet(cov), atol=1e-10)


def test_non_covariance_argument_is_advice_only_but_slogdet_is_exact():
    src = MULTIPATH
    r = fallbacks.rewrite_logdet(src, line_of(src, "return logdet(m)"))
    assert r is not None and not r.auto_applicable                     # `m` says nothing about definiteness
    assert "torch.linalg.svdvals(m).log().sum(-1) + torch.linalg.slogdet(m)[1]" in r.new_source
    # slogdet(...)[1] and .logabsdet are log|det| for every matrix: exact, auto-applicable
    once = r.new_source
    r2 = fallbacks.rewrite_logdet(once, line_of(once, "slogdet(m)[1]"))
    assert r2.auto_applicable
    r3 = fallbacks.rewrite_logdet(r2.new_source, line_of(once, "slogdet(m)"))
    assert r3 is not None and "slogdet" not in r3.new_source
    old_f, new_f = load_function(src, "other"), load_function(r3.new_source, "other")
    m = torch.randn(4, 3, 3, dtype=torch.float64)
    m = m @ m.transpose(-1, -2) + torch.eye(3, dtype=torch.float64)
    assert torch.allclose(old_f(m), new_f(m), atol=1e-9)
