"""Calibrated probabilities and the malformation-type reporting rule of a classifier bundle.

The classifier has one softmax over ``normal`` and the malformation types. The node reads two
probabilities from it, each calibrated by its own temperature (Guo et al., "On calibration of modern
neural networks", ICML 2017), both fitted on the bundle's validation split at training time:

- P(abnormal) = sigmoid(z / T_abnormal), where z = logsumexp(malformation logits) - normal logit is
  the log-odds of abnormal under the softmax (T = 1 gives 1 - P(normal) exactly);
- P(type | abnormal) = softmax(malformation logits / T_type).

A temperature changes no decision: the sign of z (abnormal at 0.5) and the most probable type are the
same for every T > 0; it changes the confidences shown.

A type is named only when the bundle's ``type_reporting`` allows it (:class:`TypeRule`): the type is
among ``reportable_types`` (chosen at training time from grouped cross-validation) and its calibrated
P(type | abnormal) reaches ``type_probability_threshold`` (chosen on validation). A bundle without that
block names no type.

Pure numpy (this module uses no torch).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Calibration:
    """The two temperatures of a classifier bundle (1.0: uncalibrated, the raw softmax)."""

    abnormal_temperature: float = 1.0
    type_temperature: float = 1.0

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any]) -> Calibration:
        cal = meta.get("calibration") or {}
        out = cls(float(cal.get("abnormal_temperature", 1.0)), float(cal.get("type_temperature", 1.0)))
        if not (out.abnormal_temperature > 0 and out.type_temperature > 0):
            raise ValueError(f"temperatures must be > 0, got {out}")
        return out


def abnormal_logit(logits: np.ndarray, normal: int) -> np.ndarray:
    """log(P(abnormal) / P(normal)) of the softmax of ``logits`` (N, K): one value per row."""
    logits = np.asarray(logits, dtype=np.float64)
    others = np.delete(logits, normal, axis=-1)
    peak = others.max(axis=-1, keepdims=True)
    lse = peak[..., 0] + np.log(np.exp(others - peak).sum(axis=-1))
    return np.asarray(lse - logits[..., normal])


def sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64))))


def softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return np.asarray(e / e.sum(axis=-1, keepdims=True))


def calibrated(logits: np.ndarray, normal: int, cal: Calibration) -> tuple[np.ndarray, np.ndarray]:
    """P(abnormal) (N,) and P(type | abnormal) (N, K - 1, the labels without ``normal``) for logits (N, K)."""
    p_abnormal = sigmoid(abnormal_logit(logits, normal) / cal.abnormal_temperature)
    types = softmax(np.delete(np.asarray(logits, dtype=np.float64), normal, axis=-1) / cal.type_temperature)
    return p_abnormal, types


@dataclass(frozen=True)
class TypeRule:
    """Which malformation types the node may name, and from which calibrated P(type | abnormal).

    ``threshold`` None: no type is named whatever its probability.
    """

    reportable: frozenset[str] = frozenset()
    threshold: float | None = None

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any]) -> TypeRule:
        rule = meta.get("type_reporting") or {}
        threshold = rule.get("type_probability_threshold")
        return cls(frozenset(rule.get("reportable_types") or ()), None if threshold is None else float(threshold))

    def allows(self, label: str, probability: float) -> bool:
        return self.threshold is not None and label in self.reportable and probability >= self.threshold
