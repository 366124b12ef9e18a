"""Time-budgeted training (``train.time_budget``): fit the step count to a wall-clock budget.

The Trainer asks :class:`TimeBudget` after every optimizer step whether to stop now and, at a
few planned points, how many steps the run should have in all:

1. a probe: the first epoch or the first ``PROBE_SHARE`` of the budget, whichever ends first
   (but not before ``PROBE_MIN_STEPS`` steps after the first are timed, unless the probe has
   taken ``PROBE_CAP_SHARE`` and timed one), measures seconds per optimizer step (the first
   step, which pays for warm-up, is left out) and, once one has run, the cost of an
   evaluation with its saves;
2. the plan: the largest step count whose steps, evaluations (as ``train.eval_interval`` or
   the epochs place them) and final evaluation and save fit in what is left of the budget less
   a safety margin; the LR schedule is then re-timed to end at that step;
3. re-estimates at ``REPLAN_AT`` of the budget (the step time drifts, e.g. multi-scale
   batches), each measured over the steps since the last plan, and at the planned end when
   the steps ran faster than planned and a useful share of the budget is left (the LR
   schedule is then re-timed to the new end);
4. a hard stop: when the next step plus the final evaluation and save would overrun the
   budget, this step is the last one (it is evaluated and saved as every last step is).

Time is read from an injectable clock, so tests can drive the plan without sleeping.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from typing import Any

__all__ = ["TimeBudget", "format_duration", "parse_duration"]

PROBE_SHARE = 0.05  # the probe ends at this share of the budget (or at the first epoch's end)
PROBE_MIN_STEPS = 3  # ... once this many steps after the first (warm-up's) one are timed ...
PROBE_CAP_SHARE = 0.15  # ... or, with slow steps, at this share of the budget in any case
REPLAN_AT = (0.5, 0.8)  # re-estimate the end at these shares of the budget ...
REPLAN_GAP = 0.1  # ... if that far past the previous plan (a window long enough to time)
MARGIN_SHARE = 0.05  # the plan leaves this share of the budget unused ...
MARGIN_CAP_S = 120.0  # ... but never more than this many seconds
HARD_MARGIN_SHARE = 0.01  # the hard stop keeps this share of the budget in hand
EVAL_PER_BATCH = 1 / 3  # an unmeasured eval batch: a forward pass, a third of a training step
EXTEND_MIN_SHARE = 0.1  # at the planned end, re-plan if this share more steps still fits

ACCEPTED = "a number of seconds or a duration such as 90s, 10m, 1.5h, 1h30m, 2h15m30s"
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([hms])")


def parse_duration(value: Any) -> float | None:
    """Seconds in ``value`` (None stays None); ValueError, naming the accepted forms, if bad."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration; give {ACCEPTED}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_text(value.strip().lower())
    else:
        raise ValueError(f"{value!r} is not a duration; give {ACCEPTED}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{value!r}: the budget must be a positive duration; give {ACCEPTED}")
    return seconds


def _parse_text(text: str) -> float:
    try:
        return float(text)  # "90", "1.5e3": seconds
    except ValueError:
        pass
    parts = _PART.findall(text)
    units = [unit for _, unit in parts]
    rebuilt = "".join(f"{n}{u}" for n, u in parts)
    if not parts or rebuilt != text.replace(" ", "") or units != sorted(units, key="hms".index):
        raise ValueError(f"{text!r} is not a duration; give {ACCEPTED}")
    if len(set(units)) != len(units):
        raise ValueError(f"{text!r} repeats a unit; give {ACCEPTED}")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def format_duration(seconds: float) -> str:
    """``7m12s``, ``1h05m``, ``42s``: a short remaining time for progress bars and logs."""
    s = max(0, round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class TimeBudget:
    """The budget's clock and the step-count plan; the Trainer owns steps, evals and saves.

    ``upper_bound``: the step count ``train.epochs``/``max_steps`` give (None when neither is
    set); a plan never goes past it. ``steps_per_eval``: optimizer steps between evaluations
    (``eval_interval``, or an epoch's steps); ``steps_per_save``: between interval saves (0:
    none). ``micro_per_step``/``eval_batches`` estimate an evaluation before one has run.
    """

    def __init__(
        self,
        seconds: float,
        *,
        upper_bound: int | None,
        steps_per_epoch: float,
        steps_per_eval: float,
        steps_per_save: int = 0,
        micro_per_step: int = 1,
        eval_batches: int = 0,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.seconds = float(seconds)
        self.upper_bound = upper_bound
        self.steps_per_epoch = max(steps_per_epoch, 1e-9)
        self.steps_per_eval = max(steps_per_eval, 1e-9)
        self.steps_per_save = steps_per_save
        self.micro_per_step = micro_per_step
        self.eval_batches = eval_batches
        self.clock = clock
        self.margin = min(MARGIN_SHARE * self.seconds, MARGIN_CAP_S)
        self.used_before = 0.0  # spent before a resume
        self.t0 = clock()
        self.plans = 0  # plans made (the probe's and the re-estimates)
        self.planned: int | None = None
        self.eval_cost: float | None = None  # an evaluation with its saves, seconds
        self.save_cost = 0.0  # last save alone, seconds
        self._eval_costs: list[float] = []
        self.stopped_early = False  # the hard stop fired
        self.horizon_given = False  # the provisional LR horizon was set
        self._window_start: float | None = None  # clock at the window's first timed step
        self._window_steps = 0
        self._window_overhead = 0.0  # evals/saves inside the window (not step time)
        self._first_step_time: float | None = None
        self._last_tick: float | None = None
        self.step_time: float | None = None  # mean over the window: what plans use
        self.last_step_time = 0.0  # the latest step alone: the hard stop also heeds it
        self._warm = False  # a step after the first has been timed
        self._tick_overhead = 0.0
        self._started_at = 0.0  # elapsed() when training began (after a resume: its share)
        self._replans: list[float] = []  # shares of the budget still to re-estimate at

    # -- clock ---------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self.used_before + self.clock() - self.t0

    def remaining(self) -> float:
        return self.seconds - self.elapsed()

    def start(self) -> None:
        """Training begins: steps are timed from here (model and data building count as used)."""
        self._last_tick = self.clock()
        self._started_at = self.elapsed()

    # -- measurements ----------------------------------------------------------------------
    def step_done(self) -> None:
        """One optimizer step ended (before its evaluation or save)."""
        now = self.clock()
        if self._last_tick is not None:
            self.last_step_time = max(now - self._last_tick - self._tick_overhead, 0.0)
        self._tick_overhead = 0.0
        if self._first_step_time is None:
            self._first_step_time = now - (self._last_tick if self._last_tick is not None else now)
            self._window_start, self._window_steps, self._window_overhead = now, 0, 0.0
        else:
            self._window_steps += 1
            self._warm = True
        self._last_tick = now
        measured = self._window_time()
        if measured is not None:
            self.step_time = measured
        elif self.step_time is None:
            self.step_time = self._first_step_time

    def _window_time(self) -> float | None:
        if not self._window_steps or self._window_start is None:
            return None
        spent = self.clock() - self._window_start - self._window_overhead
        return max(spent, 0.0) / self._window_steps

    def overhead(self, seconds: float, *, evaluated: bool, saved_only: bool) -> None:
        """An evaluation and/or save took ``seconds`` (kept out of the step time)."""
        self._window_overhead += seconds
        self._tick_overhead += seconds
        if evaluated:  # the mean so far, or the latest if higher (evaluations slow down)
            self._eval_costs.append(seconds)
            self.eval_cost = max(sum(self._eval_costs) / len(self._eval_costs), seconds)
        elif saved_only:
            self.save_cost = seconds

    # -- decisions -----------------------------------------------------------------------------
    def must_stop(self, steps_ahead: int = 1) -> bool:
        """Whether this step must be the last: ``steps_ahead`` more steps (until the next
        check) and the final evaluation and save would overrun the budget."""
        if self.step_time is None:
            return False
        if not self._warm:  # the first step alone pays for warm-up: too slow to go by
            if self.remaining() <= 0:
                self.stopped_early = True
            return self.stopped_early
        need = steps_ahead * max(self.step_time, self.last_step_time) + self.eval_estimate()
        need += HARD_MARGIN_SHARE * self.seconds
        if self.remaining() < need:
            self.stopped_early = True
            return True
        return False

    def plan_due(self, epoch_done: bool, step: int | None = None) -> bool:
        """A plan is due at the probe's end, then at each share in ``REPLAN_AT``, and at the
        planned last ``step`` when the steps turned out faster than planned and enough of
        the budget is left for ``EXTEND_MIN_SHARE`` more of them (a probe timed on slow
        first steps would otherwise end the run with the budget half used)."""
        if self.step_time is None:
            return False
        if self.plans and step is not None and self.planned is not None and step >= self.planned:
            spare = self.remaining() - self.margin - self.eval_estimate()
            return spare > max(EXTEND_MIN_SHARE * self.planned, 2) * max(self.step_time, 1e-9)
        if self.plans == 0:
            spent = (self.elapsed() - self._started_at) / self.seconds
            timed = self._window_steps >= PROBE_MIN_STEPS  # the first step is not enough
            if timed and (epoch_done or spent >= PROBE_SHARE):
                return True
            return self._warm and spent >= PROBE_CAP_SHARE
        return bool(self._replans) and self.elapsed() / self.seconds >= self._replans[0]

    def plan(self, step: int, provisional: bool = False) -> int:
        """The total step count that fits the budget (at least ``step``); restarts the window.

        ``provisional``: a rough horizon from the first step alone, which counts as no plan."""
        step_time = max(self.step_time or 0.0, 1e-9)
        eval_cost = self.eval_estimate()
        left = self.remaining() - self.margin - eval_cost  # the final eval and save, reserved
        lo, hi = step, step + max(0, int(left / step_time)) + 1
        if self.upper_bound is not None:
            hi = min(hi, max(self.upper_bound, step))
        while lo < hi:  # the largest total whose steps and evals fit in ``left``
            mid = (lo + hi + 1) // 2
            if self._cost(step, mid, step_time, eval_cost) <= left:
                lo = mid
            else:
                hi = mid - 1
        if provisional:
            self.horizon_given = True
            return lo
        self.plans += 1
        self.planned = lo
        share = self.elapsed() / self.seconds
        later = [s for s in REPLAN_AT if s >= share + REPLAN_GAP]
        self._replans = later[: len(REPLAN_AT) - self.plans + 1]
        now = self.clock()
        self._window_start, self._window_steps, self._window_overhead = now, 0, 0.0
        return lo

    def _cost(self, step: int, total: int, step_time: float, eval_cost: float) -> float:
        """Seconds from ``step`` to ``total``: the steps and the evals/saves between (the
        final one is reserved apart)."""
        evals = math.floor((total - 1) / self.steps_per_eval) - math.floor(
            step / self.steps_per_eval
        )
        cost = (total - step) * step_time + max(evals, 0) * eval_cost
        if self.steps_per_save:
            saves = (total - 1) // self.steps_per_save - step // self.steps_per_save
            cost += max(saves - max(evals, 0), 0) * self.save_cost
        return cost

    def eval_estimate(self) -> float:
        """An evaluation with its saves: measured, else from the val set's size."""
        if self.eval_cost is not None:
            return self.eval_cost
        micro = (self.step_time or 0.0) / max(self.micro_per_step, 1)
        return self.eval_batches * micro * EVAL_PER_BATCH + 2 * self.save_cost

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain values a checkpoint keeps so a resumed run continues the same budget."""
        return {
            "seconds": self.seconds,
            "used_s": self.elapsed(),
            "plans": self.plans,
            "planned": self.planned,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue a saved budget: its time used counts; the step time is measured anew (a
        resumed run probes and plans again, as its machine and load may differ)."""
        self.used_before = float(state.get("used_s", 0.0))
        self.planned = state.get("planned")

    def summary(self, step: int, epoch: float) -> dict[str, Any]:
        return {
            "time_budget_s": round(self.seconds, 3),
            "time_used_s": round(self.elapsed(), 3),
            "budget_steps": step,
            "budget_epochs": round(epoch, 4),
        }
