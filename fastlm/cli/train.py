"""`fastlm train`: train a language model (also under torchrun for DDP).

Flags are checked by TrainConfig before any file is touched (a bad value: exit 2).

    fastlm train --model transformer --data train.txt --out runs/transformer --tokens 16000000
    torchrun --nproc_per_node 2 -m fastlm.cli train ...
"""

from __future__ import annotations

from fastlm.cli.common import UsageError, add_device_flags


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model (also under torchrun for DDP)")
    p.add_argument(
        "--model", required=True, help="architecture: lstm, transformer (any registered one)"
    )
    p.add_argument("--data", nargs="+", required=True, help="text files or directories")
    p.add_argument("--out", required=True, help="run directory (checkpoints, log.jsonl)")
    p.add_argument("--valid", help="validation text file (default: valid.txt beside the data)")
    p.add_argument("--tokenizer", help="tokenizer.json to use (default: train one)")
    p.add_argument("--vocab-size", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--min-lr-ratio", type=float, default=0.1)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--dropout", type=float, default=None)
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--tokens", type=int, help="token budget (all ranks together)")
    budget.add_argument("--steps", type=int, help="optimizer-step budget")
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--eval-tokens", type=int, default=65_536)
    p.add_argument("--ckpt-every", type=int, default=200)
    p.add_argument("--keep-checkpoints", type=int, default=2)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir")
    add_device_flags(p)
    p.add_argument("--resume", action="store_true", help="continue from --out's latest checkpoint")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=run)


def run(args) -> int:
    from fastlm.training import TrainConfig, train  # torch: only when training

    skip = ("func", "command", "verbose")
    fields = {k: v for k, v in vars(args).items() if k not in skip}
    try:
        config = TrainConfig(**fields)  # checks every flag before any file is touched
    except (ValueError, TypeError) as err:
        raise UsageError(str(err)) from None  # a bad flag value: exit 2, like argparse's
    path = train(config)
    print(f"final checkpoint: {path}")
    return 0
