"""Generator of the signal-extraction data (numpy only).

A split holds ``M`` noisy mixtures of ``F`` sines and the ``F`` clean sines that
the model must extract from them. With ``t_n = n / fs`` (``n = 0 .. T-1``, no
endpoint, ``T = round(fs * duration)``):

- noisy component ``k``: ``A_k(n) * sin(2*pi*f_k*t_n + phase_scale * u_k(n))``
  with ``A_k(n) ~ U(lo, hi)`` and ``u_k(n) ~ U(0, 2*pi)`` drawn independently
  at every sample;
- mixture: ``S(n) = mean_k(noisy component k) + noise_sigma * z(n)``,
  ``z(n) ~ N(0, 1)``;
- target ``k``: ``sin(2*pi*f_k*t_n)``.

Draw order (fixed; files and tests rely on it)::

    rng = np.random.default_rng(seed)
    for m in range(n_mixtures):
        A = rng.uniform(lo, hi, size=(F, T))        # amplitudes
        u = rng.uniform(0, 2*pi, size=(F, T))       # phases before scaling
        z = rng.standard_normal(T)                  # additive noise

``z`` is drawn even when ``noise_sigma == 0`` so that changing ``noise_sigma``
(or ``phase_scale``) keeps every other draw. Values are computed in float64
and stored as float32 (``t`` stays float64).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

import numpy as np

__all__ = ["PARAM_NAMES", "SplitData", "canonical_params", "generate_split", "noisy_components"]

#: Names of the generation parameters, i.e. the keyword arguments of `generate_split`.
PARAM_NAMES = (
    "frequencies",
    "fs",
    "duration",
    "amplitude_range",
    "phase_scale",
    "noise_sigma",
    "n_mixtures",
    "seed",
)


@dataclass(frozen=True, eq=False)
class SplitData:
    """One split of the data set.

    Attributes:
        t: sample times in seconds, float64, shape ``(T,)``.
        mixture: noisy mixtures ``S_m(n)``, float32, shape ``(M, T)``.
        target: clean sines, float32, shape ``(F, T)``.
        params: the generation parameters in canonical form (see `canonical_params`).
    """

    t: np.ndarray
    mixture: np.ndarray
    target: np.ndarray
    params: dict


def _is_real(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _real(name: str, value: Any) -> float:
    if not _is_real(value):
        raise TypeError(f"Argument {name} should be a real number, got {type(value).__name__}.")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"Argument {name} should be finite, got {value}.")
    return value


def _positive(name: str, value: Any) -> float:
    value = _real(name, value)
    if value <= 0:
        raise ValueError(f"Argument {name} should be positive, got {value}.")
    return value


def _non_negative(name: str, value: Any) -> float:
    value = _real(name, value)
    if value < 0:
        raise ValueError(f"Argument {name} should be non-negative, got {value}.")
    return value


def _integer(name: str, value: Any) -> int:
    if not isinstance(value, Integral) or isinstance(value, bool):
        raise TypeError(f"Argument {name} should be an integer, got {type(value).__name__}.")
    return int(value)


def _real_sequence(name: str, value: Any) -> list[float]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        raise TypeError(f"Argument {name} should be a sequence of real numbers, got {type(value).__name__}.")
    items = list(value)
    if not all(_is_real(v) for v in items):
        raise TypeError(f"Argument {name} should be a sequence of real numbers, got {items!r}.")
    return [float(v) for v in items]


def _check_params(params: Mapping[str, Any]) -> dict:
    """The checks of ``canonical_params`` and ``generate_split``: ``params`` holds every key of ``PARAM_NAMES``."""
    freqs = _real_sequence("frequencies", params["frequencies"])
    if not freqs:
        raise ValueError("Argument frequencies should be a non-empty sequence, got [].")
    if not all(math.isfinite(f) and f > 0 for f in freqs):
        raise ValueError(f"Argument frequencies should hold positive finite numbers, got {freqs}.")
    fs = _positive("fs", params["fs"])
    duration = _positive("duration", params["duration"])
    if round(fs * duration) < 1:
        raise ValueError(
            f"Arguments fs and duration should give at least one sample, got round({fs} * {duration}) = 0."
        )
    amp = _real_sequence("amplitude_range", params["amplitude_range"])
    if len(amp) != 2:
        raise ValueError(f"Argument amplitude_range should have 2 values (lo, hi), got {amp}.")
    if not all(math.isfinite(a) for a in amp) or amp[0] > amp[1]:
        raise ValueError(f"Argument amplitude_range should be (lo, hi) with finite lo <= hi, got {amp}.")
    phase_scale = _non_negative("phase_scale", params["phase_scale"])
    noise_sigma = _non_negative("noise_sigma", params["noise_sigma"])
    n_mixtures = _integer("n_mixtures", params["n_mixtures"])
    if n_mixtures < 1:
        raise ValueError(f"Argument n_mixtures should be at least 1, got {n_mixtures}.")
    seed = _integer("seed", params["seed"])
    if seed < 0:
        raise ValueError(f"Argument seed should be non-negative, got {seed}.")
    return {
        "frequencies": freqs,
        "fs": fs,
        "duration": duration,
        "amplitude_range": amp,
        "phase_scale": phase_scale,
        "noise_sigma": noise_sigma,
        "n_mixtures": n_mixtures,
        "seed": seed,
    }


def canonical_params(params: Mapping[str, Any]) -> dict:
    """Validate generation parameters and return them as plain Python types.

    Args:
        params: mapping with exactly the keys `PARAM_NAMES`.

    Returns:
        A new dict: ``frequencies`` list of floats, ``amplitude_range`` list of
        2 floats, ``fs``/``duration``/``phase_scale``/``noise_sigma`` floats,
        ``n_mixtures``/``seed`` ints.

    Raises:
        ValueError: unknown or missing keys, or a bad value.
        TypeError: a value of the wrong type.
    """
    unknown = sorted(set(params) - set(PARAM_NAMES))
    missing = [name for name in PARAM_NAMES if name not in params]
    if unknown or missing:
        raise ValueError(
            f"Generation parameters should have exactly the keys {list(PARAM_NAMES)}, "
            f"got unknown {unknown} and missing {missing}."
        )
    return _check_params(params)


def noisy_components(
    rng: np.random.Generator,
    frequencies: Sequence[float],
    t: np.ndarray,
    amplitude_range: Sequence[float],
    phase_scale: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw amplitudes then phases from ``rng`` and build the noisy components.

    Args:
        rng: the generator to draw from (advanced by ``2 * F * T`` uniforms).
        frequencies: the ``F`` frequencies in Hz.
        t: sample times in seconds, shape ``(T,)``.
        amplitude_range: ``(lo, hi)`` of the uniform amplitude draw.
        phase_scale: multiplies the ``U(0, 2*pi)`` phase draw.

    Returns:
        ``(components, amplitudes, phases)``, all float64 of shape ``(F, T)``;
        ``phases`` is already multiplied by ``phase_scale``.
    """
    freqs = np.asarray(frequencies, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    shape = (freqs.size, t.size)
    lo, hi = amplitude_range
    amplitudes = rng.uniform(lo, hi, size=shape)
    phases = phase_scale * rng.uniform(0.0, 2.0 * np.pi, size=shape)
    components = amplitudes * np.sin(_clean_argument(freqs, t) + phases)
    return components, amplitudes, phases


def _clean_argument(freqs: np.ndarray, t: np.ndarray) -> np.ndarray:
    # (F, 1) * (1, T) -> (F, T); shared by the targets and the components.
    return (2.0 * np.pi * freqs)[:, None] * t[None, :]


def generate_split(
    *,
    frequencies: Sequence[float],
    fs: float,
    duration: float,
    amplitude_range: Sequence[float],
    phase_scale: float,
    noise_sigma: float,
    n_mixtures: int,
    seed: int,
) -> SplitData:
    """Generate one split: ``n_mixtures`` noisy mixtures and the clean targets.

    Args:
        frequencies: the ``F`` frequencies in Hz (positive).
        fs: sampling rate in Hz (positive).
        duration: length in seconds (positive); ``T = round(fs * duration)``.
        amplitude_range: ``(lo, hi)`` with ``lo <= hi``; amplitudes ~ ``U(lo, hi)``.
        phase_scale: non-negative scale ``s`` of the phase noise ``s * U(0, 2*pi)``.
        noise_sigma: non-negative std of the Gaussian noise added to the mixture.
        n_mixtures: number ``M >= 1`` of mixtures (successive draws of one stream).
        seed: non-negative seed of ``np.random.default_rng``.

    Returns:
        `SplitData` with ``t`` (T,) float64, ``mixture`` (M, T) float32,
        ``target`` (F, T) float32 and the canonical ``params``.

    Example:
        >>> split = generate_split(frequencies=[1.0, 3.0], fs=1000.0, duration=0.5,
        ...                        amplitude_range=(0.8, 1.2), phase_scale=0.01,
        ...                        noise_sigma=0.0, n_mixtures=2, seed=1)
        >>> split.mixture.shape, split.target.shape, split.t.shape
        ((2, 500), (2, 500), (500,))
    """
    params = _check_params(
        dict(
            frequencies=frequencies,
            fs=fs,
            duration=duration,
            amplitude_range=amplitude_range,
            phase_scale=phase_scale,
            noise_sigma=noise_sigma,
            n_mixtures=n_mixtures,
            seed=seed,
        )
    )
    n_steps = round(params["fs"] * params["duration"])
    t = np.arange(n_steps, dtype=np.float64) / params["fs"]  # (T,)
    freqs = np.asarray(params["frequencies"], dtype=np.float64)
    target = np.sin(_clean_argument(freqs, t))  # (F, T)

    rng = np.random.default_rng(params["seed"])
    mixture = np.empty((params["n_mixtures"], n_steps), dtype=np.float32)  # (M, T)
    for m in range(params["n_mixtures"]):
        components, _, _ = noisy_components(rng, freqs, t, params["amplitude_range"], params["phase_scale"])
        noise = rng.standard_normal(n_steps)  # drawn even for sigma = 0: keeps later draws aligned
        mixture[m] = components.mean(axis=0) + params["noise_sigma"] * noise

    return SplitData(t=t, mixture=mixture, target=target.astype(np.float32), params=params)
