"""When TempBalance recomputes α (``tb_update_steps``): a pure policy, no torch and no Trainer.

* an integer N: a pass after every N-th optimizer step, exactly;
* ``"once"``: no pass after the one before the first step;
* ``"auto"``: Model Balancing's rule (about ten passes per epoch, `tb_hf.options.ScheduleOptions.interval_rule`), but
  never more often than the budget ``tb_max_overhead`` allows. The policy times the optimizer steps after the
  (re)start, and once `DECIDE_AFTER` of them have run it fixes ``interval = max(rule, ceil(pass / (budget ×
  step)))`` for the rest of the run (``tb_auto_interval`` fixes it untimed: a replay). No pass happens before that
  decision. The step right after a (re)start carries one-time costs, so it is not timed.

A pass is due after step s when s is a multiple of the interval and not the last step; with ``tb_async`` its
factors take effect ``lag = interval // 2`` steps later, so a snapshot is only taken when that is still within the
run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["DECIDE_AFTER", "RecomputeSchedule", "budget_interval"]

#: With tb_update_steps="auto", the interval is fixed after this many optimizer steps from the (re)start (the
#: steps after the first are timed: the first carries one-time costs).
DECIDE_AFTER = 3


def budget_interval(rule: int | None, pass_seconds: float, step_seconds: float, budget: float) -> int:
    """The smallest interval at least ``rule`` whose passes cost at most ``budget`` of the training time."""
    needed = math.ceil(pass_seconds / (budget * step_seconds)) if step_seconds > 0 else 1
    return max(rule or 1, needed)


@dataclass
class RecomputeSchedule:
    """The recompute schedule of one run (or of one resumed stretch of it).

    Args:
        update_steps: ``tb_update_steps``: ``"auto"``, ``"once"`` or an integer as a string.
        rule: The interval before any budget: the integer, None for ``"once"``, Model Balancing's rule for
            ``"auto"``.
        budget: ``tb_max_overhead``.
        start_step: The optimizer step the run (re)starts from (0, or the checkpoint's step).
        max_steps: The run's last step.
        async_: ``tb_async``: passes apply ``lag`` steps after their snapshot.
        replay: ``tb_auto_interval``: the interval of a recorded ``"auto"`` decision, untimed.
    """

    update_steps: str
    rule: int | None
    budget: float
    start_step: int = 0
    max_steps: int = 0
    async_: bool = False
    replay: int | None = None
    interval: int | None = None  # in force: None = no more passes, or "auto" not yet decided
    decided: bool = False
    lag: int = 0
    why: str = ""
    step_times: dict[int, float] = field(default_factory=dict)

    def __post_init__(self):
        if self.update_steps != "auto" and not self.decided:
            self.fix(self.rule, self.why or f"tb_update_steps={self.update_steps}")

    @classmethod
    def for_run(
        cls, options, *, steps_per_epoch: int | None, start_step: int, max_steps: int, resumed=None
    ) -> RecomputeSchedule:
        """The schedule of a run's resolved options (`tb_hf.options.TempBalanceOptions`) from ``start_step``; with
        ``resumed`` (a `tb_hf.state.RunState` whose interval was decided) the checkpoint's interval and lag. A profile
        in which no factor depends on α is never recomputed."""
        s = options.schedule
        if not options.balance.needs_alpha:
            return cls("once", None, s.max_overhead, start_step, max_steps, why="no factor depends on alpha")
        kwargs = dict(
            update_steps=s.update_steps, rule=s.interval_rule(steps_per_epoch), budget=s.max_overhead,
            start_step=start_step, max_steps=max_steps, async_=s.asynchronous, replay=s.auto_interval,
        )  # fmt: skip
        if resumed is not None and resumed.decided:
            return cls.resumed(interval=resumed.interval, lag=resumed.lag, **kwargs)
        return cls(**kwargs)

    @classmethod
    def resumed(cls, *, interval: int | None, lag: int, **kwargs) -> RecomputeSchedule:
        """The schedule a checkpoint recorded (the interval already decided)."""
        schedule = cls(decided=True, **kwargs)
        schedule.interval, schedule.lag, schedule.why = interval, lag, "as decided before the checkpoint"
        return schedule

    def fix(self, interval: int | None, why: str) -> None:
        self.interval, self.decided, self.why = interval, True, why
        self.lag = max(1, interval // 2) if (interval and self.async_) else 0
        if self.max_steps and interval and interval >= self.max_steps:
            self.why += f"; the run has {self.max_steps} steps, so the factors of step 0 hold throughout"

    # "auto"

    def observe(self, step: int, now: float) -> bool:
        """Record that optimizer step ``step`` (1-based count) ended at time ``now``; True when "auto" should now
        decide (`decide`)."""
        if self.decided:
            return False
        self.step_times[step] = now
        return step - self.start_step >= min(DECIDE_AFTER, max(1, self.max_steps - self.start_step - 1))

    def step_seconds(self) -> float:
        """Mean time of the timed steps (the first after the (re)start left out); inf if fewer than two."""
        timed = sorted(s for s in self.step_times if s > self.start_step)
        if len(timed) < 2:
            return math.inf
        return (self.step_times[timed[-1]] - self.step_times[timed[0]]) / (timed[-1] - timed[0])

    def decide(self, pass_seconds: float) -> int:
        """The "auto" interval from the cost of a pass and the timed steps (or the replayed one)."""
        if self.replay is not None:
            return self.replay
        return budget_interval(self.rule, pass_seconds, self.step_seconds(), self.budget)

    def explain(self, interval: int, pass_seconds: float) -> str:
        if self.replay is not None:
            return f"tb_auto_interval={self.replay} replays a recorded 'auto' decision, untimed"
        return (
            f"a pass costs {pass_seconds:.3g} s and a step {self.step_seconds():.3g} s: every {interval} steps keeps "
            f"passes within tb_max_overhead={self.budget:g} (Model Balancing's rule alone: every {self.rule})"
        )

    # Passes

    def due(self, step: int) -> bool:
        """Whether a pass is due after optimizer step ``step`` (a synchronous pass, or an asynchronous snapshot)."""
        if self.interval is None or step % self.interval != 0 or step >= self.max_steps:
            return False
        return not self.async_ or step + self.lag < self.max_steps

    def text(self) -> str:
        if not self.decided:
            return (
                f"recompute interval fixed after step {self.start_step + DECIDE_AFTER} from the measured costs "
                "(tb_max_overhead)"
            )
        if self.interval is None:
            return "alpha computed once, before the first step"
        lag = f", applied {self.lag} steps later (async)" if self.async_ else ""
        return f"alpha recomputed every {self.interval} optimizer steps{lag}"
