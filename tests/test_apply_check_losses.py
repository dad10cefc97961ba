"""tests/corpus/apply_check.py reads the loss sequence a corpus script prints: only the values its `loss` /
`losses` labels introduce, never an elapsed time or another metric printed after them on the same line."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

CORPUS = Path(__file__).resolve().parent / "corpus"


@pytest.fixture(scope="module")
def apply_check():
    sys.path.insert(0, str(CORPUS))
    try:
        spec = importlib.util.spec_from_file_location("corpus_apply_check", CORPUS / "apply_check.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(CORPUS))


@pytest.mark.parametrize("line, values", [
    ("epoch 0 iter 3 loss 0.123456 (0.52s)", [0.123456]),        # bev_focal: the elapsed time is not a loss
    ("epoch 1 it 2 loss 1.500000 span 0.300s", [1.5]),
    ("[0:1] loss=0.5", [0.5]),
    ("loss: -1.5e-3, acc 0.9", [-0.0015]),
    ("losses 0.1 0.2 0.3", [0.1, 0.2, 0.3]),
    ("per-clip losses [0.1, 0.25, 3e-2]", [0.1, 0.25, 0.03]),
    ("epoch 0 losses 1.0 2.0 epoch time 3.0s", [1.0, 2.0]),
    ("loss_cls 0.3 loss 0.2", [0.2]),
    ("the loss is high 5", []),
])
def test_loss_values_are_the_numbers_the_label_introduces(apply_check, line, values):
    assert apply_check.loss_sequence(line) == values


def test_nan_losses_and_tool_lines(apply_check):
    out = "iter 0 loss nan\nnpu-advise: loss 9.0\niter 1 loss 0.25 (1.2s)\n"
    got = apply_check.loss_sequence(out)
    assert len(got) == 2 and got[0] != got[0] and got[1] == 0.25
