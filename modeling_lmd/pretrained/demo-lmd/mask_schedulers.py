"""Mask-ratio schedules for progressive masking.

LMD raises the mask ratio while training, from an easy `start` (0.15) to MAE's hard
`end` (0.75). The ratio is a pure function of the global optimizer step `t` out of
`T` total steps, so a run resumed from a checkpoint continues on exactly the same
curve. Every progressive schedule reaches `end` at `2T/3` and stays there.

This module imports only the standard library: it is shipped with every checkpoint
as remote code.
"""

import math


MASK_SCHEDULES = ("uniform", "piecewise", "cosine", "constant")

# Offset of the cosine schedule, as in improved-DDPM's noise schedule: it keeps
# f(0) just below 1 so the first steps already move off `start`.
COSINE_OFFSET = 0.008


def check_mask_schedule(schedule: str) -> None:
    """Raise `ValueError` if `schedule` is not one of `MASK_SCHEDULES`."""
    if schedule not in MASK_SCHEDULES:
        raise ValueError(f"Unknown mask schedule {schedule!r}; expected one of {', '.join(MASK_SCHEDULES)}.")


def check_mask_ratio(value: float, name: str = "mask_ratio") -> None:
    """Raise `ValueError` unless `value` is a share of patches to hide in [0, 1): hiding every patch leaves nothing
    to reconstruct from. The one place this range is checked (config, model, pipeline and app call it)."""
    try:
        valid = 0.0 <= float(value) < 1.0
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ValueError(f"{name} must be in [0, 1), got {value}.")


def mask_ratio_at(
    schedule: str, step: int, total_steps: int, start: float = 0.15, end: float = 0.75
) -> float:
    """Mask ratio to use at optimizer step `step` of `total_steps`.

    With `t = step`, `T = total_steps` and `P = 2T/3` (the end of the progressive phase):

    - `"uniform"`:   `start + (end - start) * t / P` for `t < P`, then `end`.
    - `"piecewise"`: three linear pieces through `mid = start + 5/12 * (end - start)`
      (0.40 for the defaults): `start -> mid` over `[0, T/6)`, `mid` on `[T/6, T/3)`,
      `mid -> end` over `[T/3, P)` (measured from `T/3`), then `end`.
    - `"cosine"`:    with `Tc = int(P)`, `s = 0.008` and
      `f(t) = cos^2(((t / Tc) + s) / (1 + s) * pi / 2)`,
      `start + (end - start) * (1 - f(t) / f(0))` for `t < Tc`, then `end`.
    - `"constant"`:  always `end` (the MAE baseline).

    Raises:
        ValueError: for an unknown schedule, a negative step, non-positive `total_steps`,
            or ratios outside `[0, 1)` / `start > end`.
    """
    check_mask_schedule(schedule)
    if step < 0:
        raise ValueError(f"`step` must be >= 0, got {step}.")
    if total_steps <= 0:
        raise ValueError(f"`total_steps` must be > 0, got {total_steps}.")
    check_mask_ratio(start, "start")
    check_mask_ratio(end, "end")
    if start > end:
        raise ValueError(f"Expected start <= end, got start={start}, end={end}.")

    span = end - start
    t, T = float(step), float(total_steps)
    progressive_end = 2.0 * T / 3.0

    if schedule == "constant":
        return float(end)

    if schedule == "uniform":
        if t >= progressive_end:
            return float(end)
        return start + span * t / progressive_end

    if schedule == "piecewise":
        mid = start + span * 5.0 / 12.0
        first_knot, second_knot = T / 6.0, T / 3.0
        if t < first_knot:
            return start + (mid - start) * t / first_knot
        if t < second_knot:
            return mid
        if t < progressive_end:
            return mid + (end - mid) * (t - second_knot) / (progressive_end - second_knot)
        return float(end)

    # cosine
    cosine_end = int(progressive_end)
    if t >= cosine_end:
        return float(end)

    def f(x: float) -> float:
        return math.cos((x / cosine_end + COSINE_OFFSET) / (1 + COSINE_OFFSET) * math.pi / 2) ** 2

    return start + span * (1.0 - f(t) / f(0.0))
