"""Gestational age from head circumference: what the OB-GYN report writes and the Orthanc plugin shows
(importable without torch or highdicom)."""

from __future__ import annotations


def hadlock_ga_weeks(hc_mm: float) -> float:
    """Gestational age (weeks) from head circumference by Hadlock et al., Radiology 1984;152:497-501.

    GA = 8.96 + 0.540 * HC + 0.0003 * HC^3, HC in cm. An estimate; valid for about 14-40 weeks.
    """
    hc = hc_mm / 10.0
    return 8.96 + 0.540 * hc + 0.0003 * hc**3
