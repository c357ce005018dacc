"""Choosing where graphs run, and opening ONNX Runtime sessions there.

`resolve_device("auto" | "cpu" | "cuda")` picks an execution provider from what the installed
onnxruntime offers, and says why; `open_session` opens one graph with the chosen provider and
this project's session settings. TensorRT engines are not handled here (see a later issue).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from mmedge.errors import DeviceError

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Device:
    name: str               # "cpu" or "cuda"
    providers: tuple        # ONNX Runtime provider list, in priority order
    note: str               # one line for the user: what runs and why


def resolve_device(requested: str = "auto", strict: bool = False) -> Device:
    """Pick the execution provider. 'auto' takes CUDA when onnxruntime-gpu and a GPU are present,
    else the CPU; 'cuda' falls back to the CPU with a message when CUDA is unavailable, or raises
    DeviceError with `strict`."""
    if requested not in DEVICES:
        raise DeviceError(f"Unknown device '{requested}'. Choose one of: {', '.join(DEVICES)}.")
    available = ort.get_available_providers()
    cpu = Device("cpu", ("CPUExecutionProvider",), "running on the CPU (ONNX Runtime CPU EP)")
    if requested == "cpu":
        return cpu
    if "CUDAExecutionProvider" in available:
        return Device("cuda", ("CUDAExecutionProvider", "CPUExecutionProvider"),
                      "running on CUDA (ONNX Runtime CUDA EP)")
    if requested == "cuda":
        if strict:
            raise DeviceError("CUDA was requested but this onnxruntime has no CUDA provider. "
                              "Install onnxruntime-gpu (in place of onnxruntime), or run with "
                              "--device cpu / auto.")
        return Device("cpu", cpu.providers,
                      "CUDA was requested but this onnxruntime has no CUDA provider "
                      "(install onnxruntime-gpu); falling back to the CPU")
    return cpu


def default_threads() -> int:
    """Intra-op threads: MMEDGE_THREADS if set, else every core this process may use."""
    env = os.environ.get("MMEDGE_THREADS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def open_session(path: Path, device: Device, threads: int | None = None,
                 spinning: bool = True) -> ort.InferenceSession:
    """Open one graph. `spinning` keeps the worker threads busy-waiting between runs: right for
    the decoder (back-to-back runs in a decode loop, worth several percent of decode speed), wrong
    for the small or occasional graphs beside it, whose idle spinning threads would steal the
    cores the decoder needs (measured: ~12% of decode speed on 2 cores)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: ORT's warnings are noise for users
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(str(path), options, providers=list(device.providers))
