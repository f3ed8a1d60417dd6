import numpy as np
import pytest

from ignite_lstm.app.task.generator import PARAM_NAMES, canonical_params, generate_split, noisy_components

FREQS = [1.0, 3.0, 5.0, 7.0]


def _params(**overrides):
    params = dict(
        frequencies=FREQS,
        fs=100.0,
        duration=0.5,
        amplitude_range=(0.8, 1.2),
        phase_scale=0.01,
        noise_sigma=0.0,
        n_mixtures=3,
        seed=1,
    )
    params.update(overrides)
    return params


def test_time_grid_has_no_endpoint():
    data = generate_split(**_params(fs=1000, duration=0.25))
    assert data.t.dtype == np.float64
    assert data.t.shape == (250,)
    np.testing.assert_array_equal(data.t, np.arange(250) / 1000.0)
    assert data.t[-1] < 0.25
    assert data.mixture.shape == (3, 250) and data.mixture.dtype == np.float32
    assert data.target.shape == (4, 250) and data.target.dtype == np.float32


def test_sample_count_is_rounded():
    assert generate_split(**_params(fs=10.0, duration=0.36)).t.shape == (4,)
    assert generate_split(**_params(fs=10.0, duration=0.34)).t.shape == (3,)


def test_target_is_clean_sine():
    data = generate_split(**_params())
    for k, f in enumerate(FREQS):
        expected = np.sin(2 * np.pi * f * data.t).astype(np.float32)
        np.testing.assert_allclose(data.target[k], expected, rtol=0, atol=1e-6)


def test_params_are_plain_python():
    data = generate_split(**_params(fs=100, amplitude_range=(1, 2)))
    assert data.params == {
        "frequencies": [1.0, 3.0, 5.0, 7.0],
        "fs": 100.0,
        "duration": 0.5,
        "amplitude_range": [1.0, 2.0],
        "phase_scale": 0.01,
        "noise_sigma": 0.0,
        "n_mixtures": 3,
        "seed": 1,
    }
    assert type(data.params["fs"]) is float
    assert type(data.params["amplitude_range"][0]) is float
    assert tuple(data.params) == PARAM_NAMES


def _reproduce(params):
    """Rebuild the mixtures from the documented draw order; return float64 parts."""
    data = generate_split(**params)
    rng = np.random.default_rng(params["seed"])
    parts = []
    for _ in range(params["n_mixtures"]):
        comps, amps, phases = noisy_components(
            rng, params["frequencies"], data.t, params["amplitude_range"], params["phase_scale"]
        )
        noise = rng.standard_normal(data.t.size)
        parts.append((comps, amps, phases, noise))
    return data, parts


def test_mixture_is_mean_of_noisy_components():
    params = _params(phase_scale=1.0)
    data, parts = _reproduce(params)
    for m, (comps, _, _, _) in enumerate(parts):
        assert comps.shape == (4, data.t.size)
        np.testing.assert_array_equal(data.mixture[m], comps.mean(axis=0).astype(np.float32))
    assert not np.array_equal(data.mixture[0], data.mixture[1])


def test_component_formula_and_draw_ranges():
    params = _params(phase_scale=0.5, amplitude_range=(0.8, 1.2))
    data, parts = _reproduce(params)
    for comps, amps, phases, _ in parts:
        assert amps.min() >= 0.8 and amps.max() < 1.2
        assert phases.min() >= 0.0 and phases.max() < 0.5 * 2 * np.pi
        clean_arg = 2 * np.pi * np.asarray(FREQS)[:, None] * data.t[None, :]
        np.testing.assert_allclose(comps, amps * np.sin(clean_arg + phases), rtol=0, atol=1e-12)


def test_no_disturbance_gives_mean_of_clean_sines():
    data = generate_split(**_params(phase_scale=0.0, amplitude_range=(1.0, 1.0)))
    clean = np.sin(2 * np.pi * np.asarray(FREQS)[:, None] * data.t[None, :])
    expected = clean.mean(axis=0).astype(np.float32)
    for m in range(3):
        np.testing.assert_array_equal(data.mixture[m], expected)


def test_noise_sigma_adds_scaled_standard_normal():
    params = _params(noise_sigma=0.3)
    data, parts = _reproduce(params)
    for m, (comps, _, _, noise) in enumerate(parts):
        expected = (comps.mean(axis=0) + 0.3 * noise).astype(np.float32)
        np.testing.assert_array_equal(data.mixture[m], expected)
    quiet = generate_split(**_params(noise_sigma=0.0))
    assert not np.array_equal(data.mixture, quiet.mixture)


def test_noise_sigma_keeps_amplitude_and_phase_draws():
    quiet = generate_split(**_params(noise_sigma=0.0))
    noisy, parts = _reproduce(_params(noise_sigma=0.5))
    for m, (comps, _, _, noise) in enumerate(parts):
        np.testing.assert_array_equal(quiet.mixture[m], comps.mean(axis=0).astype(np.float32))
        np.testing.assert_allclose(noisy.mixture[m] - quiet.mixture[m], 0.5 * noise, rtol=0, atol=1e-6)


def test_same_seed_reproduces_and_other_seed_differs():
    a = generate_split(**_params(seed=7))
    b = generate_split(**_params(seed=7))
    c = generate_split(**_params(seed=8))
    assert a.mixture.tobytes() == b.mixture.tobytes()
    assert a.target.tobytes() == c.target.tobytes()
    assert not np.array_equal(a.mixture, c.mixture)


def test_more_mixtures_extend_the_same_stream():
    one = generate_split(**_params(n_mixtures=1))
    three = generate_split(**_params(n_mixtures=3))
    np.testing.assert_array_equal(one.mixture[0], three.mixture[0])


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        (dict(frequencies=[]), ValueError, r"Argument frequencies should be a non-empty sequence, got \[\]\."),
        (dict(frequencies="137"), TypeError, r"Argument frequencies should be a sequence of real numbers, got str\."),
        (dict(frequencies=[1.0, "3"]), TypeError, r"Argument frequencies should be a sequence of real numbers"),
        (dict(frequencies=[1.0, -3.0]), ValueError, r"Argument frequencies should hold positive finite numbers"),
        (dict(fs=-1.0), ValueError, r"Argument fs should be positive, got -1\.0\."),
        (dict(fs="1000"), TypeError, r"Argument fs should be a real number, got str\."),
        (dict(fs=True), TypeError, r"Argument fs should be a real number, got bool\."),
        (dict(fs=float("inf")), ValueError, r"Argument fs should be finite, got inf\."),
        (dict(duration=0), ValueError, r"Argument duration should be positive, got 0\.0\."),
        (dict(fs=1.0, duration=0.2), ValueError, r"Arguments fs and duration should give at least one sample"),
        (
            dict(amplitude_range=(1.2, 0.8)),
            ValueError,
            r"Argument amplitude_range should be \(lo, hi\) with finite lo <= hi, got \[1\.2, 0\.8\]\.",
        ),
        (
            dict(amplitude_range=(1.0,)),
            ValueError,
            r"Argument amplitude_range should have 2 values \(lo, hi\), got \[1\.0\]\.",
        ),
        (
            dict(amplitude_range=0.8),
            TypeError,
            r"Argument amplitude_range should be a sequence of real numbers, got float\.",
        ),
        (dict(phase_scale=-0.1), ValueError, r"Argument phase_scale should be non-negative, got -0\.1\."),
        (dict(noise_sigma=-1), ValueError, r"Argument noise_sigma should be non-negative, got -1\.0\."),
        (dict(n_mixtures=0), ValueError, r"Argument n_mixtures should be at least 1, got 0\."),
        (dict(n_mixtures=2.0), TypeError, r"Argument n_mixtures should be an integer, got float\."),
        (dict(seed=-1), ValueError, r"Argument seed should be non-negative, got -1\."),
        (dict(seed="1"), TypeError, r"Argument seed should be an integer, got str\."),
    ],
)
def test_argument_errors(overrides, error, message):
    with pytest.raises(error, match=message):
        generate_split(**_params(**overrides))


def test_canonical_params_refuses_unknown_and_missing_keys():
    params = _params()
    del params["seed"]
    params["sigma"] = 0.1
    with pytest.raises(ValueError, match=r"got unknown \['sigma'\] and missing \['seed'\]\."):
        canonical_params(params)
