"""The mixture-sampler interface and the helpers every sampler shares.

A sampler turns per-domain losses into sampling probabilities. The trainer (rank 0) calls
``observe(step, consumed, losses, split)`` every ``sampler.update_every`` steps with smoothed
training losses (``split="train"``) and after every evaluation with fixed-mask validation losses
(``split="val"``), then reads ``weights()`` and broadcasts them.

Guarantees every sampler inherits from :meth:`MixtureSampler.weights`: the vector is finite,
sums to 1 and no entry is below ``floor``. Samplers are deterministic given their seed and the
observations: randomness is drawn from ``np.random.default_rng([seed, n_observations, tag])``
so the state holds no opaque RNG object and a restored sampler continues identically. Their
arithmetic runs on one BLAS thread (``one_blas_thread``), so it does not depend on the thread count
either: with OpenBLAS's threading a matrix product's last bits depend on how many threads split it,
and the transfer sampler's decisions (a slope against its bar, a refit against the previous law)
turned that into different mixtures at OMP_NUM_THREADS=1 and 2 (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import copy
import difflib
import json
import logging
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import scipy.linalg  # noqa: F401  (loads scipy's own BLAS now, so the controller below sees it)
from threadpoolctl import ThreadpoolController

log = logging.getLogger(__name__)
_BLAS = ThreadpoolController()  # numpy's and scipy's BLAS libraries; limit() costs ~0.01 ms

SPLITS = ("train", "val")
STATE_VERSION = 1

# Options every sampler accepts (besides its own OPTIONS); documented in docs/samplers.md.
COMMON_OPTIONS: dict[str, Any] = {
    "seed": 0,  # randomness (exploration, dither, bandit) is a pure function of seed + observations
    "total_budget": None,  # samples planned for the whole run (all domains together)
    "available": None,  # unique samples per domain: {domain: n} or a sequence in domain order
    "floor": None,  # minimum weight per domain; None: min(0.01, 0.5 / K)
}


def one_blas_thread() -> Any:
    """Context manager: BLAS on one thread inside (restored on exit). A sampler's numbers are then
    the same whatever OMP_NUM_THREADS is, and its small matrices gain nothing from threads anyway."""
    return _BLAS.limit(limits=1, user_api="blas")


class SamplerError(ValueError):
    """Bad sampler name, option or observation; the message names it and the valid choices."""


def default_floor(k: int) -> float:
    return min(0.01, 0.5 / k)


def project_to_floor(w: np.ndarray, floor: float) -> np.ndarray:
    """Closest-in-ratio vector on {w >= floor, sum w = 1}.

    Non-finite or negative entries count as 0; an all-zero vector becomes uniform. Entries
    below the floor are raised to it and the others are scaled down together, which keeps the
    ratios among the well-represented domains (a plain ``floor + (1-K*floor) * w`` mix would
    distort weights that already respect the floor, e.g. user-given fixed weights).
    """
    w = np.asarray(w, dtype=np.float64).copy()
    k = w.size
    w[~np.isfinite(w) | (w < 0)] = 0.0
    total = w.sum()
    w = np.full(k, 1.0 / k) if total <= 0 else w / total
    if floor <= 0:
        return w
    pinned = np.zeros(k, dtype=bool)
    for _ in range(k):
        low = (w < floor) & ~pinned
        if not low.any():
            break
        pinned |= low
        free_mass = 1.0 - floor * pinned.sum()
        rest = w[~pinned].sum()
        w[pinned] = floor
        if rest > 0:
            w[~pinned] *= free_mass / rest
        else:
            w[~pinned] = free_mass / max((~pinned).sum(), 1)
    w = np.maximum(w, floor)
    # Put the rounding residual on the largest entry so the sum is 1 to the last ulp.
    w[np.argmax(w)] += 1.0 - w.sum()
    return w


def cap_fill(w: np.ndarray, caps: np.ndarray | None) -> np.ndarray:
    """Scale ``w`` (sum 1) so no entry exceeds its cap, giving the excess to uncapped domains
    in proportion to their weights (UniMax-style water filling). If the caps cannot hold the
    whole mass (sum caps < 1), every domain is capped and the remainder is spread in
    proportion to the caps: data must repeat more than the cap allows, as evenly as possible.
    """
    w = np.asarray(w, dtype=np.float64)
    if caps is None:
        return w
    caps = np.asarray(caps, dtype=np.float64)
    if caps.sum() <= 1.0:
        return caps / caps.sum() if caps.sum() > 0 else np.full(w.size, 1.0 / w.size)
    out = w.copy()
    capped = np.zeros(w.size, dtype=bool)
    for _ in range(w.size):
        over = (out > caps) & ~capped
        if not over.any():
            break
        capped |= over
        out[capped] = caps[capped]
        rest = 1.0 - out[capped].sum()
        free = out[~capped].sum()
        if free > 0:
            out[~capped] *= rest / free
        else:
            out[~capped] = rest / max((~capped).sum(), 1)
    return out


def per_domain(value: Any, domains: Sequence[str], what: str, *, allow_none: bool = False) -> np.ndarray | None:
    """A dict by domain name or a sequence in domain order -> float array (validated)."""
    if value is None:
        if allow_none:
            return None
        raise SamplerError(f"{what}: required, give a dict by domain ({', '.join(domains)}) or a list")
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(domains))
        missing = [d for d in domains if d not in value]
        if unknown or missing:
            raise SamplerError(
                f"{what}: unknown domains {unknown} / missing domains {missing}; domains are {list(domains)}"
            )
        arr = [value[d] for d in domains]
    elif isinstance(value, Sequence) and not isinstance(value, str) or isinstance(value, np.ndarray):
        arr = list(value)
        if len(arr) != len(domains):
            raise SamplerError(f"{what}: {len(arr)} values for {len(domains)} domains {list(domains)}")
    else:
        raise SamplerError(f"{what}: expected a dict by domain or a list, got {value!r}")
    try:
        out = np.asarray(arr, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise SamplerError(f"{what}: values must be numbers, got {arr!r}") from exc
    bad = [d for d, v in zip(domains, out, strict=True) if not math.isfinite(v) or v < 0]
    if bad:
        raise SamplerError(f"{what}: values must be finite and >= 0; bad for {bad}: {out.tolist()}")
    return out


def to_jsonable(arr: Any) -> Any:
    """numpy -> plain lists/floats; NaN/Inf -> None (strict JSON has no NaN)."""
    if isinstance(arr, np.ndarray):
        arr = arr.tolist()
    if isinstance(arr, float | np.floating):
        return float(arr) if math.isfinite(arr) else None
    if isinstance(arr, np.integer):
        return int(arr)
    if isinstance(arr, list | tuple):
        return [to_jsonable(v) for v in arr]
    if isinstance(arr, dict):
        return {str(k): to_jsonable(v) for k, v in arr.items()}
    return arr


def from_jsonable(value: Any) -> np.ndarray:
    """Inverse of :func:`to_jsonable` for float arrays (None -> NaN)."""
    def conv(v: Any) -> Any:
        if isinstance(v, list):
            return [conv(x) for x in v]
        return np.nan if v is None else v
    return np.asarray(conv(value), dtype=np.float64)


class MixtureSampler:
    """Base class. Subclasses set ``name`` and ``OPTIONS`` and implement ``_update``.

    Subclasses keep their mutable state in attributes listed in ``STATE_FIELDS`` (numpy arrays,
    floats, ints, lists, dicts); the base class serialises them. ``self._w`` holds the current
    (raw) weights; :meth:`weights` projects them onto the floor-respecting simplex.
    """

    name: ClassVar[str] = "base"
    OPTIONS: ClassVar[dict[str, Any]] = {}
    STATE_FIELDS: ClassVar[tuple[str, ...]] = ()
    # The STATE_FIELDS held as float arrays (None allowed: an unset field stays None on load). A field
    # not listed is converted by the kind of its attribute before the load (see _state_value).
    STATE_ARRAYS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, domains: Sequence[str], **options: Any) -> None:
        domains = tuple(str(d) for d in domains)
        if not domains:
            raise SamplerError(f"sampler '{self.name}': needs at least one domain")
        if len(set(domains)) != len(domains):
            raise SamplerError(f"sampler '{self.name}': duplicate domain names in {list(domains)}")
        valid = {**COMMON_OPTIONS, **self.OPTIONS}
        unknown = sorted(set(options) - set(valid))
        if unknown:
            close = {u: difflib.get_close_matches(u, valid, n=2, cutoff=0.6) for u in unknown}
            hint = "; ".join(f"did you mean {' or '.join(c)} for {u!r}?" for u, c in close.items() if c)
            raise SamplerError(
                f"sampler '{self.name}': unknown options {unknown}{'; ' + hint if hint else ''} "
                f"(valid options: {', '.join(sorted(valid))}; docs/samplers.md)"
            )
        self.domains = domains
        self.k = len(domains)
        self.options = {**valid, **options}
        self.seed = self._opt_seed()
        self.total_budget = self._positive_or_none("total_budget")
        self.available = per_domain(self.options["available"], domains, f"sampler '{self.name}' option 'available'",
                                    allow_none=True)
        floor = self.options["floor"]
        ok = floor is None or (isinstance(floor, numbers.Real) and not isinstance(floor, bool)
                               and 0.0 <= float(floor) <= 1.0 / self.k)  # NaN fails the comparison
        if not ok:
            raise SamplerError(
                f"sampler '{self.name}' option 'floor': expected a number in [0, 1/K={1.0 / self.k:.4g}] or None "
                f"(default min(0.01, 0.5/K)), got {floor!r}"
            )
        self.floor = default_floor(self.k) if floor is None else float(floor)
        if self.available is not None and (self.available == 0).any():
            empty = [d for d, a in zip(domains, self.available, strict=True) if a == 0]
            log.warning("sampler %s: domains %s have no data (available=0); they still get the floor %.4g",
                        self.name, empty, self.floor)
        self.n_obs = 0
        self.last_step = -1
        self.skipped_losses = 0  # NaN/Inf/missing values seen in observations (counted, logged)
        self._w = np.full(self.k, 1.0 / self.k)

    # ----------------------------------------------------------------- options helpers
    def _positive_or_none(self, key: str) -> float | None:
        value = self.options[key]
        if value is None:
            return None
        if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0 or not math.isfinite(value):
            raise SamplerError(f"sampler '{self.name}' option '{key}': expected a positive number, got {value!r}")
        return float(value)

    def _opt_seed(self) -> int:
        """The common option ``seed``: an integer (a float only if it is a whole number, e.g. 3.0 from
        JSON). A fractional seed is refused rather than truncated (1.5 would silently run as 1)."""
        value = self.options["seed"]
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise SamplerError(f"sampler '{self.name}' option 'seed': expected an integer, got {value!r}")

    def _opt_float(self, key: str, lo: float | None = None, hi: float | None = None) -> float:
        """A finite number in [lo, hi]. Infinity is refused too: no option read here gives it a
        meaning (doremi's eta = inf turned the state to NaN; harm_guard = inf silently disabled the
        guard). An option where inf means something parses it itself (``parse_temperature``)."""
        value = self.options[key]
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if ok and lo is not None and value < lo:
            ok = False
        if ok and hi is not None and value > hi:
            ok = False
        if not ok:
            if lo is not None and hi is not None:
                rng = f" in [{lo}, {hi}]"
            elif lo is not None:
                rng = f" >= {lo}"
            elif hi is not None:
                rng = f" <= {hi}"
            else:
                rng = ""
            raise SamplerError(f"sampler '{self.name}' option '{key}': expected a finite number{rng}, got {value!r}")
        return float(value)

    def _opt_int(self, key: str, lo: int = 0) -> int:
        value = self.options[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < lo:
            raise SamplerError(f"sampler '{self.name}' option '{key}': expected an integer >= {lo}, got {value!r}")
        return value

    def _opt_bool(self, key: str) -> bool:
        value = self.options[key]
        if not isinstance(value, bool):
            raise SamplerError(f"sampler '{self.name}' option '{key}': expected true/false, got {value!r}")
        return value

    def _rng(self, tag: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.seed & 0xFFFFFFFF, self.n_obs, tag])

    def _require_budget(self) -> float:
        if self.total_budget is None:
            raise SamplerError(f"sampler '{self.name}': option 'total_budget' (samples planned for the run) is required")
        return self.total_budget

    def _warn_changed_options(self, saved: Mapping[str, Any] | None) -> None:
        """A resumed run whose sampler options differ from the saved run's (a config edit, or a
        default that changed between versions) continues under the current ones, with a warning
        naming each difference. A state saved before options were recorded cannot be checked: says so."""
        if saved is None:
            log.warning("sampler '%s': the saved state does not record its options (an earlier mixpretrain "
                        "version): cannot check that the run resumes under the same ones; defaults that changed "
                        "since are listed in docs/samplers.md", self.name)
            return
        def as_json(options: Mapping[str, Any]) -> dict[str, Any]:  # compare what a state file holds
            return json.loads(json.dumps(to_jsonable(dict(options)), default=str))

        saved, now, defaults = as_json(saved), as_json(self.options), as_json({**COMMON_OPTIONS, **self.OPTIONS})
        # An option added after the state was saved, and left at its default, is not a change: a new
        # option's default keeps the behaviour the saved run had (e.g. `misfit_ratio` in stop 23).
        added = sorted(k for k in set(now) - set(saved) if now[k] == defaults.get(k))
        if added:
            log.info("sampler '%s': options added since the state was saved, at their defaults: %s",
                     self.name, ", ".join(added))
        changed = sorted(k for k in (set(saved) | set(now)) - set(added) if saved.get(k) != now.get(k))
        if "total_budget" in changed:
            # The trainer derives it from train.max_steps, which a resume may change: an extended or
            # shortened run, not a surprise, so it is reported at info level.
            changed.remove("total_budget")
            log.info("sampler '%s': the run's planned budget changed on resume: total_budget %r -> %r samples",
                     self.name, saved.get("total_budget"), now.get("total_budget"))
        if changed:
            log.warning("sampler '%s': resumed with options that differ from the saved run's (it continues under "
                        "the current ones): %s", self.name,
                        "; ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed))

    # ----------------------------------------------------------------- the contract
    def weights(self) -> np.ndarray:
        """Sampling probabilities in domain order: finite, sum 1, each >= floor."""
        return project_to_floor(self._w, self.floor)

    def observe(self, step: int, consumed: Any, losses: Mapping[str, float], split: str) -> None:
        """Record one observation and update the weights.

        ``consumed``: cumulative samples per domain (domain order). ``losses``: {domain: loss}
        for this interval; missing domains and NaN/Inf values are counted and ignored.
        """
        if split not in SPLITS:
            raise SamplerError(f"sampler '{self.name}': split must be one of {SPLITS}, got {split!r}")
        consumed_arr = np.asarray(consumed, dtype=np.float64).reshape(-1)
        if consumed_arr.size != self.k:
            raise SamplerError(
                f"sampler '{self.name}': consumed has {consumed_arr.size} entries for {self.k} domains {list(self.domains)}"
            )
        if not np.isfinite(consumed_arr).all() or (consumed_arr < 0).any():
            raise SamplerError(f"sampler '{self.name}': consumed must be finite and >= 0, got {consumed_arr.tolist()}")
        loss_vec = self._loss_vector(losses)
        with one_blas_thread():
            self._update(int(step), consumed_arr, loss_vec, split)
        self.n_obs += 1
        self.last_step = int(step)

    def _loss_vector(self, losses: Mapping[str, float]) -> np.ndarray:
        unknown = sorted(set(losses) - set(self.domains))
        if unknown:
            raise SamplerError(f"sampler '{self.name}': losses for unknown domains {unknown}; domains are {list(self.domains)}")
        vec = np.full(self.k, np.nan)
        for i, d in enumerate(self.domains):
            v = losses.get(d)
            try:
                vec[i] = float(v) if v is not None else np.nan
            except (TypeError, ValueError):
                vec[i] = np.nan
        vec[~np.isfinite(vec)] = np.nan
        bad = int(np.isnan(vec).sum())
        if bad:
            self.skipped_losses += bad
            log.debug("sampler %s: %d missing/non-finite losses at observation %d", self.name, bad, self.n_obs)
        return vec

    def _update(self, step: int, consumed: np.ndarray, losses: np.ndarray, split: str) -> None:
        """Subclasses: fold one observation into the state and set ``self._w``."""

    def diagnostics(self) -> dict[str, Any]:
        return {}

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "version": STATE_VERSION,
            "sampler": self.name,
            "domains": list(self.domains),
            "n_obs": self.n_obs,
            "last_step": self.last_step,
            "skipped_losses": self.skipped_losses,
            "w": to_jsonable(self._w),
            "options": to_jsonable(self.options),  # checked on load: a resumed run should not change them silently
        }
        for key in self.STATE_FIELDS:
            state[key] = to_jsonable(getattr(self, key))
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("sampler") != self.name:
            raise SamplerError(f"sampler '{self.name}': state was saved by sampler {state.get('sampler')!r}")
        if list(state.get("domains", [])) != list(self.domains):
            raise SamplerError(
                f"sampler '{self.name}': state domains {state.get('domains')} differ from {list(self.domains)}"
            )
        missing = [k for k in ("n_obs", "w", *self.STATE_FIELDS) if k not in state]
        if missing:
            raise SamplerError(f"sampler '{self.name}': state lacks keys {missing}")
        self._warn_changed_options(state.get("options"))
        self.n_obs = int(state["n_obs"])
        self.last_step = int(state.get("last_step", -1))
        self.skipped_losses = int(state.get("skipped_losses", 0))
        self._w = from_jsonable(state["w"])
        for key in self.STATE_FIELDS:
            setattr(self, key, self._state_value(key, state[key]))
        with one_blas_thread():  # ado refits its laws here: the same numbers as in observe
            self._after_load()

    def _state_value(self, key: str, value: Any) -> Any:
        """One saved state field as the attribute to hold. Always a copy: the sampler must never share
        (and then mutate, in observe) lists or dicts of the caller's state, nor two samplers loaded
        from one state object share them. The kind comes from ``STATE_ARRAYS`` (float arrays) or,
        for a field not listed there, from the attribute's kind *before* the load; a saved None stays
        None for arrays (an array field that may be unset, e.g. transfer's ``recent`` before the
        first sample: converting it by the attribute of a sampler that had already observed gave
        array(nan) and NaN weights). A float field's None is NaN (``to_jsonable`` writes NaN as None)."""
        current = getattr(self, key, None)
        if value is None:
            return float("nan") if isinstance(current, float) and key not in self.STATE_ARRAYS else None
        if key in self.STATE_ARRAYS or isinstance(current, np.ndarray):
            return from_jsonable(value)  # a new array
        if isinstance(current, float):
            return float(value)
        return copy.deepcopy(value)

    def _after_load(self) -> None:
        """Subclasses: rebuild derived objects (e.g. a fitted law) from the restored fields."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(domains={list(self.domains)}, n_obs={self.n_obs})"
