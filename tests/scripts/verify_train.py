"""A small training script for the verification stage's tests.

    python verify_train.py [--steps N]

`build_mask` has a prefix-mask loop the recommender rewrites; the other small functions are rewritten by
tests/scripts/verify_generators.py (wrongly, raising, exiting, hanging, crashing, or correctly through a
closure, a method using super(), a staticmethod, under decorators, needing the run as proof, or a wrong first
candidate with a right alternative); `offset` is decorated by a class that keeps it as an attribute, so it
cannot be swapped.
VERIFY_TRAIN_EXIT=N in the environment makes the script itself sys.exit(N) at its third step.
"""
import argparse
import functools
import os
import sys

import torch
import torch.nn as nn


def build_mask(valid_len, max_len):
    mask = torch.zeros(len(valid_len), max_len, device=valid_len.device)
    for i, ll in enumerate(valid_len):
        mask[i][:ll] = 1
    return mask


def scale(x):
    return x * 2.0


def shift(x):
    return x + 1.0


def absolute(x):
    return x.abs()


def halve(x):
    return x / 2


def square(x):
    return x * x


def traced(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)
    return wrapper


@traced
def smooth(x):
    return x * 0.5 + 0.5


class Memo:
    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


@Memo
def offset(x):
    return x - 0.25


@torch.no_grad()
def running_scale(x):
    return x.abs().mean() + 1.0


def double(x):
    return x + x


def triple(x):
    return x * 3


def make_gate(limit):
    def gate(x):
        return torch.where(x > limit, torch.full_like(x, limit), x)
    return gate


class Block(nn.Linear):
    def forward(self, x):
        return torch.relu(super().forward(x))

    @staticmethod
    def center(x):
        return x - x.mean(-1, keepdim=True)


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    torch.manual_seed(0)
    block = Block(16, 16)
    head = nn.Linear(16, 1)
    block.to(DEVICE)
    head.to(DEVICE)
    gate = make_gate(0.5)
    opt = torch.optim.SGD(list(block.parameters()) + list(head.parameters()), lr=0.01)
    for step in range(args.steps):
        if step == 2 and os.environ.get("VERIFY_TRAIN_EXIT"):
            sys.exit(int(os.environ["VERIFY_TRAIN_EXIT"]))
        # placed the way real scripts place their batch, so the mask loop reads device values
        x = torch.randn(32, 16).to(DEVICE)
        valid_len = torch.randint(1, 17, (32,)).to(DEVICE)
        h = block(Block.center(x)) * build_mask(valid_len, 16)
        h = gate(smooth(scale(shift(h))))
        h = square(halve(absolute(h)))
        h = offset(triple(double(h))) / running_scale(h)
        loss = head(h).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        print(f"step {step} loss {loss.item():.5f}", flush=True)


if __name__ == "__main__":
    main()
