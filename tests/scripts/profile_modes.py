"""A tiny training script whose behaviour the collector tests choose with the first argument.

    python profile_modes.py MODE [--dump PATH] [--steps N] [extra args...]

MODE: ok, raise-before, exit3-before, osexit-before, raise-after2, no-optimizer, swallow-stop.
`--dump PATH` writes what the script saw (argv, cwd, sys.path[0], __name__) as JSON.
"""
import json
import os
import sys
import time

import torch

WAIT, WARMUP = 1, 1      # the collector's defaults: the first recorded step is optimizer step 3


def parse(argv):
    mode, dump, steps = argv[1], None, 8
    rest = argv[2:]
    if "--dump" in rest:
        dump = rest[rest.index("--dump") + 1]
    if "--steps" in rest:
        steps = int(rest[rest.index("--steps") + 1])
    return mode, dump, steps


def main():
    mode, dump, steps = parse(sys.argv)
    if dump:
        with open(dump, "w") as f:
            json.dump({"argv": sys.argv, "cwd": os.getcwd(), "path0": sys.path[0], "name": __name__}, f)
    if mode == "raise-before":
        raise ValueError("bad config: lr must be positive")
    if mode == "exit3-before":
        sys.exit(3)
    if mode == "osexit-before":
        os._exit(5)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    if mode == "no-optimizer":
        deadline = time.time() + 3.0
        while time.time() < deadline:
            model(torch.randn(16, 32)).sum().item()
        return
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for step in range(steps):
        try:
            loss = model(torch.randn(16, 32)).pow(2).mean()
            if mode == "raise-after2" and step == WAIT + WARMUP + 2:
                raise RuntimeError("CUDA out of memory (simulated)")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        except SystemExit:
            if mode != "swallow-stop":
                raise
            print("swallowed SystemExit, going on", flush=True)
    if mode == "swallow-stop":
        print("swallow-stop: reached the end", flush=True)


if __name__ == "__main__":
    main()
