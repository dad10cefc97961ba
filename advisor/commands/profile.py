"""`npu-advise profile [OPTIONS] SCRIPT [ARGS]...`: run a training script under the profiler, then analyze it."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from ..progress import info, is_quiet, quiet_option
from . import echo_top_findings
from .verify import run_verification, verify_options

# torchrun options we pass through as `--name value` (the script's own options follow SCRIPT).
TORCHRUN_OPTIONS = ("nproc_per_node", "nnodes", "node_rank", "master_addr", "master_port", "rdzv_backend",
                    "rdzv_endpoint", "rdzv_id", "max_restarts")


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Output folder (default: npu_advise_out/<script>-<timestamp>/).")
@click.option("--wait", type=int, default=1, show_default=True, help="Optimizer steps to skip first.")
@click.option("--warmup", type=int, default=1, show_default=True, help="Optimizer steps to warm the profiler up.")
@click.option("--active", type=int, default=3, show_default=True, help="Optimizer steps to record.")
@click.option("--no-stop", is_flag=True, help="Let the script run on after the recorded steps.")
@click.option("--python", "python", default=None, metavar="PATH",
              help="Interpreter of the training environment (default: the one running npu-advise).")
@click.option("--window-seconds", type=float, default=None, metavar="S",
              help="Profile the first S seconds of wall time instead of optimizer steps "
                   "(for scripts without an optimizer).")
@click.option("--no-placement", is_flag=True,
              help="Do not track where tensors would live (placement-based predictions then fall back to op names).")
@click.option("--rank", type=int, default=None, help="Multi-rank: analyze this rank in detail (default: the slowest).")
@click.option("--nproc-per-node", type=str, default=None,
              help="Launch through torchrun with this many processes per node.")
@click.option("--standalone", is_flag=True, default=None,
              help="torchrun: single-node job with a local rendezvous on a free port.")
@click.option("--nnodes", type=str, default=None, help="torchrun: number of nodes (or MIN:MAX).")
@click.option("--node-rank", type=int, default=None, help="torchrun: rank of this node.")
@click.option("--master-addr", type=str, default=None, help="torchrun: address of the rank-0 node.")
@click.option("--master-port", type=int, default=None, help="torchrun: port on the rank-0 node.")
@click.option("--rdzv-backend", type=str, default=None, help="torchrun: rendezvous backend.")
@click.option("--rdzv-endpoint", type=str, default=None, help="torchrun: rendezvous endpoint.")
@click.option("--rdzv-id", type=str, default=None, help="torchrun: rendezvous id.")
@click.option("--max-restarts", type=int, default=None, help="torchrun: worker group restarts.")
@click.option("--torchrun-arg", "torchrun_extra", multiple=True, metavar="ARG",
              help="Any other torchrun argument, passed as is (repeatable).")
@click.option("--no-verify", is_flag=True,
              help="Skip the verification stage (a re-run of the script that checks every rewrite on your run).")
@verify_options
@quiet_option
@click.argument("script", type=click.Path(path_type=Path))
@click.argument("script_args", nargs=-1, type=click.UNPROCESSED)
def profile(out_dir, wait, warmup, active, no_stop, python, window_seconds, no_placement, rank, script, script_args,
            torchrun_extra, no_verify, verify_calls, verify_timeout, **torchrun):
    """Run SCRIPT [ARGS]... as `python SCRIPT ARGS` would, profile a few training steps, write a report.

    Step boundaries come from optimizer.step(); nothing in the script is changed. With --nproc-per-node
    (or other torchrun options) the script is launched through torchrun and every rank is profiled.
    """
    from ..collect.runner import ProfileRequest, ScriptFailed, default_out_dir, run_collection

    torchrun_args = None
    if any(v is not None and v is not False for v in torchrun.values()) or torchrun_extra:
        torchrun_args = []
        standalone = torchrun.pop("standalone", None)
        rendezvous = ("nnodes", "node_rank", "master_addr", "master_port", "rdzv_backend", "rdzv_endpoint", "rdzv_id")
        # One node and no rendezvous given: --standalone picks a free port, so two runs cannot collide on
        # torchrun's fixed default port 29500.
        if standalone or not (any(torchrun.get(k) is not None for k in rendezvous) or torchrun_extra):
            torchrun_args.append("--standalone")
        for name in TORCHRUN_OPTIONS:
            value = torchrun.get(name)
            if value is not None:
                torchrun_args += [f"--{name.replace('_', '-')}", str(value)]
        torchrun_args += list(torchrun_extra)

    out_dir = out_dir or default_out_dir(script)
    req = ProfileRequest(script=script, args=list(script_args), out_dir=out_dir, wait=wait, warmup=warmup,
                         active=active, stop=not no_stop, python=python or sys.executable,
                         window_seconds=window_seconds, torchrun_args=torchrun_args, placement=not no_placement,
                         quiet=is_quiet())
    how = f"the first {window_seconds:g} s" if window_seconds else f"{active} optimizer steps"
    launcher = " via torchrun " + " ".join(torchrun_args) if torchrun_args else ""
    info(f"npu-advise: profiling {how} of {script}{launcher}; output -> {out_dir}")
    result = run_collection(req)

    from ..pipeline import analyze_profile, write_outputs

    started = time.perf_counter()
    info(f"npu-advise: analyzing {', '.join(p.name for p in result.traces)}")
    report = analyze_profile(result.trace_dir, project_root=Path(script).resolve().parent, rank=rank,
                             collection=result.collection)
    analyzed_s = time.perf_counter() - started
    if result.problem:
        report.limitations.insert(0, result.problem)
    if not no_verify and report.candidates:
        run_verification(report, result.collection, verify_calls, verify_timeout, out_dir)
    paths = write_outputs(report, out_dir)
    n = len(report.findings)
    info(f"npu-advise: {n} finding{'s' if n != 1 else ''} in {analyzed_s:.2f} s "
         f"({result.collection.get('steps_recorded', 0)} steps recorded on {report.trace.device_type})", err=False)
    echo_top_findings(report, paths)
    if result.failed:
        raise ScriptFailed(f"{result.problem} Report: {paths['html']}")
    if result.problem:
        click.echo(f"npu-advise: note: {result.problem}", err=True)
