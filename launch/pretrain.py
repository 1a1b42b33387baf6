#!/usr/bin/env python
"""Pretrain a 3-D MAE on a live, scaling-law-driven data mixture.

    deepspeed launch/pretrain.py --config configs/demo.yaml train.max_steps=200
    deepspeed --hostfile hosts launch/pretrain.py --config configs/run.yaml      # multi-node
    torchrun --nproc_per_node 2 launch/pretrain.py --config configs/demo.yaml
    python launch/pretrain.py --config configs/demo.yaml                         # one process

Re-running the same command resumes from the latest complete checkpoint in output_dir.
The config is read and validated before any process group starts: a bad key fails at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from mixpretrain.config import ConfigError, load_config  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="run config (YAML), e.g. configs/demo.yaml")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed injects it
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides, e.g. train.max_steps=50")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank{rank}] %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"pretrain: config error: {exc}", file=sys.stderr)
        return 2
    from mixpretrain.train.run import run

    try:
        run(cfg, local_rank=args.local_rank)
    except ConfigError as exc:  # raised by pre-flight checks, before any process group starts
        print(f"pretrain: config error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
