"""Helpers shared by the subcommands: argument types, opening runs and their data."""

from __future__ import annotations

import argparse
from pathlib import Path


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_run(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path, metavar="RUN", help="a run directory written by 'vaekit train'")


PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16")


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument("--precision", choices=PRECISION_CHOICES, default="auto",
                        help="inference precision: auto (default: bf16 on a GPU with bf16, a CPU with AMX, or "
                             "an AVX512-BF16 CPU where a start-up probe finds it faster; else fp32), fp32, bf16, "
                             "or fp16 (CUDA)")


def open_run(run: Path, device: str = "cpu", precision: str = "auto"):
    """(RunConfig, model in eval mode, running inference in ``precision``)."""
    from vaekit.run import load, read_run_config

    cfg = read_run_config(run)
    return cfg, load(run, device=check_device(device), precision=precision)


def run_data(cfg):
    """The run's data splits, rebuilt from its saved data config."""
    from vaekit.data import load_data

    return load_data(cfg.data, saved=cfg.data_info)


def check_device(device: str) -> str:
    import torch

    from vaekit.errors import VaekitError

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise VaekitError(f"unknown device '{device}'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise VaekitError(f"device '{device}' requested but CUDA is not available")
    return device

