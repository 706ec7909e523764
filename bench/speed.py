"""Speed benchmark (not a test): the study's recipe against lorabench's defaults, same model, same rows, one process.

(a) recipe: transformers.Trainer as the study wrote it - batches of 8 random rows padded to their longest
    (dynamic padding), fp32 weights (+ fp16 autocast on CUDA), gradient checkpointing, constant schedule after
    warm-up, class-weighted cross-entropy (`compute_loss_func`), the model's default (SDPA) attention.
(b) lorabench: `lorabench.training.lora_recipe.fit` with every default (token-budget batches of sorted rows, no checkpointing
    unless memory needs it, attention per architecture, bf16 on CUDA).
Both start from the same initial weights and use the same LoRA settings, learning rate and epochs (the preset's).

CPU mode (`--device cpu`): real models (minilm, smollm2) on the real disaster tweets. The two sides run in two
threads that take turns of `--slice-s` seconds of training (only one computes at a time), so load from other
processes on a shared machine falls on both alike; each side's clock runs only during its own training steps.
Both are scored on the full validation split after every epoch by the same code
(`lorabench.models.lora.score_encoded`, not timed).

GPU mode (`--device cuda`): RoBERTa-large, Mistral-7B and Llama-2-7B built from their configurations
(src/lorabench/presets/architectures, no hub) with random weights, fed random token ids with the real tweets' token lengths
(bench/tweet_lengths.json), so throughput is real and F1 is meaningless. The recipe runs `--recipe-rows` rows
(it is slow: seconds per epoch are extrapolated from its steady samples/s), lorabench a full epoch of 6090.
Stages run in priority order while `--budget-s` lasts; results are rewritten to `--out` after every stage.

MFU = model FLOPs / time / peak. Model FLOPs per training token: 4 x (weights of the linear layers) for a frozen
base (forward 2N + input gradients 2N; LoRA's own are negligible) + 12 x hidden x layers x length for attention
scores (forward 4, backward 8); recomputation by checkpointing and padding tokens are not counted (they are the
waste). Prediction: 2N + 4 x hidden x layers x length. Peak = a large dense matrix product measured in this
process (fp32 on CPU, bf16 on CUDA; under load from other processes it reads low), and nominal: on CPU the
clock x 32 fp32 FLOP per cycle per thread (AVX2), on the GPU the H200's 989 bf16 TFLOP/s.

The parts live in bench/speedbench/, one concern a module; this file is the command line and the results file.

  python bench/speed.py --device cpu --models minilm --rows 1500 --epochs 3 --out bench/results-cpu.json
  python bench/speed.py --device cuda --budget-s 480 --out $OUT/gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from lorabench.core import storage as record
from lorabench.core.console import quiet_libraries, set_progress
from speedbench.cpu_mode import cpu_model
from speedbench.gpu_stages import synthetic_model
from speedbench.measure import matmul_peak
from speedbench.synthetic import LENGTH_TABLES

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "disaster_tweets"
LENGTHS = Path(__file__).with_name("tweet_lengths.json")

RESULTS: dict = {}


def _write(path: str | None, model_report: dict | None = None, partial: bool = False) -> None:
    """Rewrites the whole results file after every stage, so a run cut short still reports what it measured."""
    if model_report is not None:
        RESULTS.setdefault("models", {})[model_report["model"]] = {**model_report, "complete": not partial}
    if path:
        record.write_json(Path(path), RESULTS)


def environment(device: torch.device, threads: int) -> dict:
    import peft
    import transformers

    info = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "torch_threads": threads,
        "nproc": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
    }
    try:
        info["cpu"] = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description="the study's recipe vs lorabench's defaults (see the module doc)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--models",
        default=None,
        help="comma-separated; cpu: minilm,smollm2 (default minilm); cuda: "
        + ",".join(LENGTH_TABLES)
        + " (default all, in that order)",
    )
    parser.add_argument("--rows", type=int, default=None, help="cpu: cap the training rows (both sides alike)")
    parser.add_argument("--epochs", type=int, default=3, help="cpu: epochs for both sides")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--slice-s",
        type=float,
        default=2.0,
        help="cpu: the two sides take turns of this many seconds of training (fair under load)",
    )
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument(
        "--recipe-lr",
        type=float,
        default=None,
        help="cpu: the recipe side's learning rate (default: the preset's, as lorabench's side)",
    )
    parser.add_argument("--recipe-rows", type=int, default=400, help="cuda: rows the slow recipe runs")
    parser.add_argument("--predict-batch", type=int, default=256, help="cuda: rows per prediction batch")
    parser.add_argument("--packed", action="store_true", help="cuda: also train the decoders with packed batches")
    parser.add_argument(
        "--more-budgets",
        default="4096",
        type=lambda text: [int(n) for n in text.split(",") if n],
        help="cuda: also train lorabench with these batch_tokens (comma-separated; '' for none; "
        "an epoch of 6090 tweets caps them at about 4300, its 50-step floor)",
    )
    parser.add_argument(
        "--qlora",
        action="store_true",
        help="cuda: also train the decoders through --quantize 4bit (needs bitsandbytes)",
    )
    parser.add_argument("--qlora-rows", type=int, default=2000, help="cuda: rows the 4-bit variant trains")
    parser.add_argument("--budget-s", type=float, default=480, help="cuda: stop starting models after this")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="run the GPU mode's code with 2-layer versions of its models (a smoke check, any device)",
    )
    parser.add_argument("--out", default=None, help="JSON file for the results")
    args = parser.parse_args()

    started = time.perf_counter()
    quiet_libraries()
    set_progress(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but no CUDA device is visible")
    RESULTS["environment"] = environment(device, torch.get_num_threads())
    peak = matmul_peak(device)
    RESULTS["environment"]["measured_matmul_tflops"] = round(peak / 1e12, 4)
    RESULTS["arguments"] = vars(args)
    _write(args.out)
    if device.type == "cpu" and not args.tiny:
        for name in (args.models or "minilm").split(","):
            report = cpu_model(name, args, peak)
            _write(args.out, report)
            print(json.dumps(report, indent=1), flush=True)
    else:
        lengths = json.loads(LENGTHS.read_text(encoding="utf-8"))
        deadline = started + args.budget_s
        for name in (args.models or ",".join(LENGTH_TABLES)).split(","):
            if time.perf_counter() > deadline - 90:
                RESULTS.setdefault("skipped", []).append(name)
                continue
            report = synthetic_model(
                name, args, peak, lengths, deadline, lambda partial: _write(args.out, partial, True)
            )
            _write(args.out, report)
            print(json.dumps(report, indent=1), flush=True)
    RESULTS["wall_seconds"] = round(time.perf_counter() - started, 1)
    _write(args.out)


if __name__ == "__main__":
    main()
