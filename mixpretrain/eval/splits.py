"""Checks on the train / held-out split of a downstream task (classification CSV or Decathlon
``dataset.json``), shared by ``classify`` and ``segment``.

- No image may be in both splits: a held-out case the model was trained on inflates the metric.
  Paths are compared resolved (``./a.nii.gz``, ``x/../a.nii.gz`` and symlinks name the same file).
- Every class the held-out split holds must be in the training split: a class the model never saw
  cannot be learned, and its score would measure nothing (checked per split, not on their union).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


def _key(path: str | Path) -> str:
    return os.path.realpath(path)


def check_disjoint(train: list[dict], val: list[dict], source: str | Path, held_out: str = "val") -> None:
    """Error naming the file(s) when an image is in both the training and the held-out split."""
    train_keys = {_key(it["image"]) for it in train}
    both = sorted({it["image"] for it in val if _key(it["image"]) in train_keys})
    if both:
        shown = ", ".join(both[:3]) + (f" ... ({len(both)} in all)" if len(both) > 3 else "")
        raise ValueError(f"{source}: {len(both)} image(s) in both the training and the {held_out} split: {shown}; "
                         f"a held-out case must not be trained on")


def check_train_has_classes(train_classes: Iterable[int], val_classes: Iterable[int], source: str | Path,
                            names: dict[int, str] | None = None, held_out: str = "val") -> None:
    """Error when the held-out split holds a class that no training case has."""
    missing = sorted(set(val_classes) - set(train_classes))
    if missing:
        shown = ", ".join(f"{c} ({names[c]})" if names and c in names else str(c) for c in missing)
        raise ValueError(f"{source}: class(es) {shown} in the {held_out} split but in no training case; "
                         f"the model cannot learn a class it never sees (move some of its cases to training)")
