"""SGD with momentum and weight decay, and learning-rate schedules.

The optimizer walks a model's dotted parameter names (``named_parameters``) and
is the only code that changes weights.  Update, per parameter p with gradient g
(PyTorch's form, dampening 0):

    g ← g + λ p            (weight decay, on the parameters whose layer did not exempt
                            them with ``add_parameter(..., weight_decay=False)``: biases,
                            as the reference, PReLU slopes, a learned scale)
    v ← μ v + g
    p ← p − lr · v
"""
from __future__ import annotations

import bisect

from .backend import get_array_module
from .validation import matching_state


class SGD:
    def __init__(self, model, momentum=0.9, weight_decay=5e-4):
        if not 0 <= momentum < 1:
            raise ValueError(f"SGD: momentum must be in [0, 1), got {momentum}")
        if not weight_decay >= 0:
            raise ValueError(f"SGD: weight_decay must be >= 0, got {weight_decay}")
        self.model, self.momentum, self.weight_decay = model, float(momentum), float(weight_decay)
        self.velocity = {}

    def step(self, lr: float) -> None:
        """Apply one update with the gradients the last backward left in ``grads``."""
        for name, owner, key in self.model.named_parameters():
            p, g = owner.params[key], owner.grads[key]
            if self.weight_decay and key not in owner.no_weight_decay:
                g = g + self.weight_decay * p
            if self.momentum:
                v = self.velocity.get(name)
                if v is None:
                    v = self.velocity[name] = get_array_module(p).zeros_like(p)
                v *= self.momentum
                v += g
                g = v
            p -= lr * g

    def state_dict(self) -> dict:
        """Copies of the momentum buffers, by dotted parameter name."""
        return {name: v.copy() for name, v in self.velocity.items()}

    def load_state_dict(self, velocity: dict) -> None:
        """Replace the momentum buffers; every one is checked (a parameter of this model,
        same shape, same dtype) before any is taken, so a mismatch changes nothing."""
        own = {name: owner.params[key] for name, owner, key in self.model.named_parameters()}
        matching_state(velocity, own, "SGD: the optimizer state does not fit", complete=False)
        self.velocity = {name: v.copy() for name, v in velocity.items()}


class MultiStepLR:
    """lr = base_lr · gamma^(number of milestones <= step)."""

    def __init__(self, base_lr, milestones, gamma=0.1):
        if not base_lr > 0:
            raise ValueError(f"learning rate must be > 0, got {base_lr}")
        self.base_lr, self.milestones, self.gamma = float(base_lr), sorted(milestones), float(gamma)

    def __call__(self, step: int) -> float:
        return self.base_lr * self.gamma ** bisect.bisect_right(self.milestones, step)


class WarmupLR:
    """Linear warm-up from ``start_factor`` · lr to the wrapped schedule over ``warmup_steps``."""

    def __init__(self, schedule, warmup_steps, start_factor=0.1):
        self.schedule, self.warmup_steps, self.start_factor = schedule, int(warmup_steps), float(start_factor)

    def __call__(self, step: int) -> float:
        lr = self.schedule(step)
        if step >= self.warmup_steps:
            return lr
        fraction = step / self.warmup_steps
        return lr * (self.start_factor + (1 - self.start_factor) * fraction)


PAPER_ITERATIONS = 30_000
PAPER_MILESTONES = (16_000, 24_000, 28_000)


def scaled_paper_schedule(total_steps, base_lr=0.1, warmup_steps=0) -> object:
    """The AM-Softmax paper's schedule (lr 0.1, ÷10 at 16k, 24k and 28k of 30k iterations)
    stretched to ``total_steps``: milestones at the same fractions (16/30, 24/30, 28/30),
    optionally after a linear warm-up.  ``total_steps=PAPER_ITERATIONS`` is the paper's own."""
    milestones = [round(total_steps * m / PAPER_ITERATIONS) for m in PAPER_MILESTONES]
    schedule = MultiStepLR(base_lr, milestones)
    return WarmupLR(schedule, warmup_steps) if warmup_steps else schedule
