"""Two-process DDP training on CPU (gloo) where rank 1 is artificially slow.

    torchrun --nproc-per-node 2 ddp_train.py [--steps N] [--slow-ms MS]

Rank 1 sleeps MS milliseconds in every step before backward, so rank 0 waits for it in the gradient
all-reduce: the cross-rank analysis must name rank 1 as the slow rank.
"""
import argparse
import os
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--slow-ms", type=float, default=40.0)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(rank)
    model = DDP(torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 64)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for step in range(args.steps):
        x = torch.randn(32, 64)
        loss = model(x).pow(2).mean()
        if rank == 1:
            time.sleep(args.slow_ms / 1000.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    if rank == 0:
        print(f"finished {args.steps} steps on {dist.get_world_size()} ranks", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
