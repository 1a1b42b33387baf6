"""``mixpretrain train``: the pretraining job from the package CLI (same as launch/pretrain.py).

    mixpretrain train --config configs/demo.yaml train.max_steps=50      # one process
    torchrun --nproc_per_node 2 -m mixpretrain.cli train --config ...     # several ranks

Multi-node and ``deepspeed`` launches use ``launch/pretrain.py`` (DeepSpeed's launcher runs a
script). Heavy imports (torch, deepspeed) happen inside the handler.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="pretrain an MAE on a live data mixture (see docs/training.md)")
    p.add_argument("--config", required=True, help="run config (YAML), e.g. configs/demo.yaml")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from mixpretrain.config import load_config
    from mixpretrain.train.run import run

    cfg = load_config(args.config, args.overrides)  # ConfigError is a ValueError: one clear line
    run(cfg, local_rank=args.local_rank)
    return 0
