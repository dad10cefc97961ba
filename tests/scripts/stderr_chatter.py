"""A training script that writes to stdout and stderr the ways real ones do, then exits with status 3.

Each step prints `step N` to stdout; stderr gets a plain line, a line finished 0.2 s after it started
(a partial line must reach the terminal before its end), a line of the script's own that starts like a
log line (`INFO: ...`), bytes written straight to fd 2, and whether stderr is a terminal. stdout also
gets a line in the format torch_npu's profiler prints (`... profiler.py: ...`) and one of the script's own
in nearly the same format.
"""
import os
import sys
import time

import torch

print(f"stderr is a terminal: {sys.stderr.isatty()}", file=sys.stderr, flush=True)
model = torch.nn.Linear(8, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
for step in range(6):
    loss = model(torch.randn(4, 8)).pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    print(f"step {step}", flush=True)
    if step == 2:
        print("2026-12-02 00:00:06 [INFO] [4481] profiler.py: Start parsing profiling data", flush=True)
        print("2026-12-02 00:00:06 [INFO] [4481] train.py: checkpoint saved", flush=True)
    if step == 3:
        print("user warning: learning rate is high", file=sys.stderr, flush=True)
        sys.stderr.write("loading weights ...")
        sys.stderr.flush()
        time.sleep(0.2)
        sys.stderr.write(" done\n")
        print("INFO: my own log line", file=sys.stderr, flush=True)
        os.write(2, b"written to fd 2\n")
sys.exit(3)
