"""The profiler inside the profiled process: which profiler, where step boundaries come from, when to stop.

Step boundaries come from a global optimizer-step post hook (`prof.step()` after every
`optimizer.step()`), so plain loops, mmengine runners and Lightning all work unmodified. The schedule is
wait / warmup / active; once the active steps are recorded the profiler's `on_trace_ready` writes the
trace (with a schedule, torch keeps events only for an export made from that callback) and the script
is stopped with `CollectorStop` unless `--no-stop`.

`--window-seconds S` profiles a wall-time window instead, for scripts without an optimizer: recording
starts with the script and stops on the main thread at the first torch call after S seconds.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
import os
import sys
import threading
import time
from pathlib import Path

import torch

from . import env_record
from .placement import Placement
from .source_marks import MarkState
from .trim import copy_trimmed


# The bootstrap wraps os._exit to record a script's own hard exit; ours must bypass that wrapper.
_REAL_OS_EXIT = os._exit


class CollectorStop(SystemExit):
    """Raised from the optimizer hook to end the script once the trace is written."""

    def __init__(self):
        super().__init__(0)


def detect_device() -> str:
    """'npu' when torch_npu imports and sees an NPU, else 'cuda' when available, else 'cpu'."""
    if importlib.util.find_spec("torch_npu") is not None:
        try:
            import torch_npu  # noqa: F401  (registers torch.npu)
            if torch.npu.is_available():
                return "npu"
        except Exception:  # a broken torch_npu install: profile what is there
            pass
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def _say(msg: str):
    print(f"npu-advise: {msg}", file=sys.stderr, flush=True)


class Collector:
    """Owns the profiler for one rank; every decision the bootstrap reports comes from here."""

    def __init__(self, config: dict, mark_state: MarkState):
        self.config = config
        self.out_dir = Path(config["out_dir"])
        self.trace_dir = self.out_dir / "trace"
        self.marks = mark_state
        self.rank, self.world_size = env_record.rank_and_world_size()
        self.verbose = self.rank == 0 and not config.get("quiet")    # one progress stream for the whole job
        self.window = config.get("window_seconds")
        self.wait = int(config.get("wait", 1))
        self.warmup = int(config.get("warmup", 1))
        self.active = int(config.get("active", 3))
        self.stop_after = bool(config.get("stop", True))
        self.device = detect_device()
        self.profiler_name = {"npu": "torch_npu.profiler", "cuda": "torch.profiler",
                              "cpu": "torch.profiler"}[self.device]
        self.record = env_record.environment_record(self.device, self.profiler_name)
        # Where tensors would live: inferred on CPU runs, the real tensor.device on CUDA/NPU runs.
        self.placement = Placement(inferred=self.device == "cpu", device_type=self.device) \
            if config.get("placement", True) else None
        self._roots_announced = False
        if self.placement is not None:
            self.record["placement"] = self.placement.summary()
        self.steps_seen = 0          # optimizer steps taken so far
        self.steps_recorded = 0      # optimizer steps completed while recording
        self._profiler_steps = 0     # prof.step() calls made
        self.trace_path = None       # written trace (file, or the torch_npu output folder)
        self.exported = False
        self.finished = False        # profiler stopped (trace written or abandoned)
        self.stop_requested = False  # CollectorStop raised; if the script swallows it we hard-exit
        self.prof = None
        self._metadata_added = False
        self._timer = None
        self.swallowed_stop = False
        self.before_hard_exit = None   # set by the bootstrap: writes the collection record
        self.on_finished = None        # set by the bootstrap: called once the profiler has stopped
        self.started_at = time.time()

    # -- set-up ---------------------------------------------------------------------------------
    def start(self):
        self.trace_dir.mkdir(parents=True, exist_ok=True)
        self.prof = self._build_profiler()
        if hasattr(self.prof, "preset_metadata_json"):
            self.prof.preset_metadata_json("npu_advise", json.dumps(self.record))
            self._metadata_added = True
        from torch.optim.optimizer import register_optimizer_step_post_hook
        self._hook = register_optimizer_step_post_hook(self._on_optimizer_step)
        self.prof.start()
        self._sync_recording()
        if self.window:
            self.marks.on_deadline = self._on_deadline
            self._timer = threading.Timer(float(self.window), self._deadline_passed)
            self._timer.daemon = True
            self._timer.start()
            self._say(f"profiling {self.window:g} s of wall time with {self.profiler_name} ({self.device})")
        else:
            self._say(f"profiling with {self.profiler_name} ({self.device}): skip {self.wait} + warm up "
                      f"{self.warmup} optimizer steps, then record {self.active}")

    def _build_profiler(self):
        if self.window:
            # Record from the start; a schedule that always records keeps ProfilerStep ranges per step.
            from torch.profiler import ProfilerAction
            schedule = _always_record(ProfilerAction.RECORD)
        if self.device == "npu":
            import torch_npu
            npu_prof = torch_npu.profiler
            if self.window:
                schedule = _always_record(getattr(npu_prof, "ProfilerAction", ProfilerAction).RECORD)
            else:
                schedule = npu_prof.schedule(wait=self.wait, warmup=self.warmup, active=self.active,
                                             repeat=1, skip_first=0)
            experimental = npu_prof._ExperimentalConfig(
                profiler_level=npu_prof.ProfilerLevel.Level1,
                aic_metrics=npu_prof.AiCMetrics.PipeUtilization,
                l2_cache=False, data_simplification=False)
            npu_handler = npu_prof.tensorboard_trace_handler(str(self.trace_dir))

            def on_ready(prof):
                self._add_metadata(prof)
                npu_handler(prof)
                self.trace_path = str(self.trace_dir)
                self._exported()

            return npu_prof.profile(
                activities=[npu_prof.ProfilerActivity.CPU, npu_prof.ProfilerActivity.NPU],
                schedule=schedule, on_trace_ready=on_ready, record_shapes=True, with_stack=True,
                experimental_config=experimental)

        from torch.profiler import ProfilerActivity, profile
        from torch.profiler import schedule as make_schedule
        if not self.window:
            schedule = make_schedule(wait=self.wait, warmup=self.warmup, active=self.active, repeat=1)
        activities = [ProfilerActivity.CPU]
        if self.device == "cuda":
            activities.append(ProfilerActivity.CUDA)
        return profile(activities=activities, schedule=schedule, on_trace_ready=self._on_trace_ready,
                       record_shapes=True, with_stack=True)

    # -- events ---------------------------------------------------------------------------------
    def _on_trace_ready(self, prof):
        self._add_metadata(prof)
        path = self.trace_dir / f"rank{self.rank}.pt.trace.json.gz"
        # torch gzips at level 9 (4 s for a 50 MB trace); level 1 is 7x faster for a 1.5x larger file.
        # The dot-name keeps the half-written file out of the loader's sight. The collector's own per-call
        # frames are left out (trim.py): on the bundled example they were 3/4 of the trace's events.
        raw = self.trace_dir / f".rank{self.rank}.pt.trace.json"
        prof.export_chrome_trace(str(raw))
        with open(raw, encoding="utf-8", errors="surrogateescape") as src, \
                gzip.open(path, "wb", compresslevel=1) as dst:
            copy_trimmed(src, dst)
        raw.unlink()
        self.trace_path = str(path)
        self._exported()

    def _add_metadata(self, prof):
        if not self._metadata_added and hasattr(prof, "add_metadata_json"):
            try:
                prof.add_metadata_json("npu_advise", json.dumps(self.record))
            except Exception:  # metadata is a nicety; never lose the trace over it
                pass
            self._metadata_added = True

    def _exported(self):
        self.exported = True
        self._say(f"trace written: {self.trace_path}")

    def _recording(self) -> bool:
        """Whether the profiler records now, from our own step count and the schedule we gave it
        (torch and torch_npu profilers differ in how, or whether, they expose their current action)."""
        if self.finished:
            return False
        if self.window:
            return True
        first = self.wait + self.warmup
        return first <= self._profiler_steps < first + self.active

    def _sync_recording(self):
        self.marks.recording = (not self.finished) and self._recording()
        if self.placement is not None:
            # Placement is tracked from the profiler's warmup step on: it is not recorded, so tracking
            # there costs the trace nothing, and the first recorded step finds last step's tensors known.
            first = self.wait + self.warmup
            warming = not self.finished and not self.window and self.wait <= self._profiler_steps < first
            if self.marks.recording and not self._roots_announced:
                self._roots_announced = True
                self.placement.announce_all()
            self.marks.tracking = self.marks.recording or warming
            if self.marks.tracking:
                self.placement.start()
            else:
                self.placement.stop()

    def _on_optimizer_step(self, optimizer, args, kwargs):
        self.steps_seen += 1
        if self.finished:
            if self.stop_requested:   # the script caught our SystemExit and went on: end it for real
                self.hard_exit(0)
            return
        if self._recording():
            self.steps_recorded += 1
            if not self.window:
                self._say(f"step {self.steps_recorded}/{self.active} recorded")
        self.prof.step()
        self._profiler_steps += 1
        self._sync_recording()
        if self.exported:
            self.stop_profiler()    # the schedule is done; this closes the open ProfilerStep range
            if self.stop_after:
                self._request_stop()

    def _deadline_passed(self):     # timer thread: only flag it, the main thread acts
        self.marks.deadline_passed = True

    def _on_deadline(self):         # main thread, from the TorchFunctionMode
        if self.finished:
            return
        self._say(f"{self.window:g} s window over")
        self.stop_profiler()
        if self.stop_after:
            self._request_stop()

    def _request_stop(self):
        self.stop_requested = True
        self._say("stopping the script after the profiled steps (--no-stop lets it run on)")
        raise CollectorStop()

    def _finish_profiling(self):
        if self.finished:
            return
        self.finished = True
        self.marks.recording = False
        self.marks.tracking = False
        if self.placement is not None:
            self.placement.stop()
        if self._timer is not None:
            self._timer.cancel()
        if self.on_finished is not None:
            self.on_finished()

    # -- shutdown -------------------------------------------------------------------------------
    def stop_profiler(self):
        """Stop the profiler; writes what was recorded so far (a partial active window included)."""
        if self.finished or self.prof is None:
            return
        self.marks.recording = False
        try:
            self.prof.stop()
        finally:
            self._finish_profiling()

    def hard_exit(self, code: int):
        """End the process now: the script swallowed our stop and went on."""
        self.swallowed_stop = True
        if self.before_hard_exit is not None:
            self.before_hard_exit()
        sys.stdout.flush()
        sys.stderr.flush()
        _REAL_OS_EXIT(code)

    def _say(self, msg: str):
        if self.verbose:
            _say(msg)

    def summary(self) -> dict:
        return {
            "mode": "window" if self.window else "steps",
            "schedule": {"wait": self.wait, "warmup": self.warmup, "active": self.active},
            "window_seconds": self.window,
            "steps_seen": self.steps_seen,
            "steps_recorded": self.steps_recorded,
            "trace": self.trace_path,
            "exported": self.exported,
            "swallowed_stop": self.swallowed_stop,
        }


class _always_record:
    """A schedule that records every step (picklable, unlike a lambda)."""

    def __init__(self, action):
        self.action = action

    def __call__(self, step):
        return self.action
