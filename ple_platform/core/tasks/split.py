"""Time discipline for a model built at month t (SPEC §5), written once and used everywhere.

* train on label months from the first post-warm-up month (the feature fit anchor) through t-3,
* validate (early stopping, calibration) on t-2,
* test out of time on t-1,
* score month t's features for serving (its labels do not exist yet).

Label month m uses raw data of m+1, so the test labels (t-1) read raw month t: the newest data a model
built at t may see. Nothing trained or tuned ever reads the test month's labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from ple_platform.core.data.schema import add_months, month_range


class SplitError(ValueError):
    pass


@dataclass(frozen=True)
class TimeSplit:
    model_month: date
    train: tuple[date, ...]
    validation: date
    test: date

    @property
    def score(self) -> date:
        return self.model_month

    def as_dict(self) -> dict[str, object]:
        return {
            "model_month": self.model_month.isoformat(),
            "train": [m.isoformat() for m in self.train],
            "validation": self.validation.isoformat(),
            "test": self.test.isoformat(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> TimeSplit:
        """Inverse of ``as_dict`` (the split stored in a checkpoint)."""
        return cls(date.fromisoformat(d["model_month"]), tuple(date.fromisoformat(m) for m in d["train"]),
                   date.fromisoformat(d["validation"]), date.fromisoformat(d["test"]))


def time_split(model_month: date, first_train_month: date, min_train_months: int = 1) -> TimeSplit:
    last_train = add_months(model_month, -3)
    if last_train < first_train_month:
        raise SplitError(
            f"a model built at {model_month:%Y-%m} trains on label months {first_train_month:%Y-%m}..{last_train:%Y-%m}: "
            f"empty. The first trainable model month is {add_months(first_train_month, 3 + min_train_months - 1):%Y-%m} "
            f"(warm-up months before the fit anchor {first_train_month:%Y-%m} are never trained on)"
        )
    train = tuple(month_range(first_train_month, last_train))
    if len(train) < min_train_months:
        raise SplitError(f"model month {model_month:%Y-%m}: {len(train)} training months < required {min_train_months}")
    return TimeSplit(model_month, train, add_months(model_month, -2), add_months(model_month, -1))
