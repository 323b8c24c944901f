"""TSM2: shapes, causality of the time mixer, covariates, save/load, errors, learning on ETTh1."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from forecast_helpers import etth1_validation_losses

from mambamixer import create_model
from mambamixer.models.tsm2 import TSM2


def small(**kw) -> TSM2:
    torch.manual_seed(0)
    cfg = dict(seq_len=48, horizon=24, n_vars=5, d_model=16, n_blocks=2, d_state=8, patch_len=8, stride=4,
               covariates=True)
    cfg.update(kw)
    return create_model("tsm2", **cfg)


@pytest.mark.parametrize("kw", [{}, {"n_marks": 4}, {"channel_mixer": False}, {"weighted_average": False},
                                {"patch_len": 1, "stride": 1}, {"n_static": 3}, {"head": "time"},
                                {"norm": "batch"}])  # fmt: skip
def test_shapes(kw):
    model = small(**kw)
    x = torch.randn(3, 48, 5)
    marks = dict(x_mark=torch.randn(3, 48, 4), y_mark=torch.randn(3, 24, 4)) if kw.get("n_marks") else {}
    static = dict(static=torch.randn(3, 5, 3)) if kw.get("n_static") else {}
    assert model(x, **marks, **static).shape == (3, 24, 5)


def test_time_head_is_a_linear_map_from_lookback_to_horizon():
    flat, timed = small(head="flatten"), small(head="time")
    n_tokens, d_model, stride = flat.config.n_patches, 16, 4
    head_params = lambda m: sum(p.numel() for p in m.head.parameters())  # noqa: E731
    assert head_params(flat) == n_tokens * d_model * 24 + 24
    assert head_params(timed) == d_model * stride + stride + n_tokens * stride * 24 + 24
    with pytest.raises(ValueError, match="head"):
        small(head="conv")


def test_batch_norm_option_normalises_over_every_token_of_the_batch():
    model = small(norm="batch")
    norm = model.mixer.norms[0]
    x = torch.randn(3, 5, model.config.n_patches, 16) * 4 + 2  # (batch, variates, patches, d_model)
    y = norm.train()(x)
    torch.testing.assert_close(y.mean(dim=(0, 1, 2)), torch.zeros(16), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(dim=(0, 1, 2), unbiased=False), torch.ones(16), atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="norm must be"):
        small(norm="group")


def test_registered_sizes():
    """The registered defaults, pinned: the size choices and their measurements are in docs/tsm2.md."""
    short, long = create_model("tsm2", horizon=96, n_vars=7), create_model("tsm2_512", horizon=96, n_vars=7)
    assert (short.config.d_model, short.config.stride, short.config.n_patches) == (32, 8, 12)
    assert (long.config.d_model, long.config.stride, long.config.n_patches) == (64, 16, 33)
    assert sum(p.numel() for p in short.parameters()) == 56_861
    assert sum(p.numel() for p in long.parameters()) == 268_733


def test_lookback_512_configuration():
    model = create_model("tsm2_512", horizon=96, n_vars=7, d_model=16)
    assert model.config.seq_len == 512 and model.config.n_patches == 33  # patches of 16 at stride 16, padded
    assert create_model("tsm2_512", horizon=96, n_vars=7, stride=8).config.n_patches == 64
    assert model(torch.randn(2, 512, 7)).shape == (2, 96, 7)


def test_token_mixer_is_causal_in_time():
    model = small()
    token_mixer = model.mixer.mixers[0]
    tokens = torch.randn(2, 5, model.config.n_patches, 16, requires_grad=True)
    t = 4
    token_mixer(tokens)[:, :, t].sum().backward()
    per_patch = tokens.grad.abs().sum(dim=(0, 1, 3))
    assert torch.all(per_patch[t + 1 :] == 0) and torch.all(per_patch[: t + 1] > 0)


def test_bidirectional_tokens_option_reads_the_lookback_both_ways():
    model = small(bidirectional_tokens=True)
    token_mixer = model.mixer.mixers[0]
    tokens = torch.randn(2, 5, model.config.n_patches, 16, requires_grad=True)
    token_mixer(tokens)[:, :, 0].sum().backward()  # the first patch now sees every later one
    assert torch.all(tokens.grad.abs().sum(dim=(0, 1, 3)) > 0)
    assert model.config.bidirectional_tokens and not small().config.bidirectional_tokens  # off by default


def test_covariates_change_the_output():
    model = small(n_marks=4).eval()
    x, xm, ym = torch.randn(2, 48, 5), torch.randn(2, 48, 4), torch.randn(2, 24, 4)
    base = model(x, xm, ym)
    assert not torch.allclose(base, model(x, xm, ym + 1.0)), "future covariates have no effect"
    assert not torch.allclose(base, model(x, xm + 1.0, ym)), "historical covariates have no effect"
    static_model = small(n_static=2).eval()
    s = torch.randn(2, 5, 2)
    assert not torch.allclose(static_model(x, static=s), static_model(x, static=s + 1.0))


def test_save_and_load_round_trip(tmp_path):
    model = small(n_marks=4).eval()
    model.save_pretrained(tmp_path)
    loaded = TSM2.from_pretrained(tmp_path).eval()
    x, xm, ym = torch.randn(2, 48, 5), torch.randn(2, 48, 4), torch.randn(2, 24, 4)
    assert torch.equal(model(x, xm, ym), loaded(x, xm, ym))


def test_bad_inputs_raise_clear_errors():
    model = small(n_marks=4)
    with pytest.raises(ValueError, match=r"x must have shape \(batch, seq_len, n_vars\) = \(batch, 48, 5\)"):
        model(torch.randn(2, 40, 5))
    with pytest.raises(ValueError, match=r"y_mark must have shape \(batch, 24, n_marks=4\)"):
        model(torch.randn(2, 48, 5), torch.randn(2, 48, 4), torch.randn(2, 24, 3))
    with pytest.raises(ValueError, match="shorter than patch_len"):
        create_model("tsm2", seq_len=8, patch_len=16)
    with pytest.raises(ValueError, match="d_model must be >= 1"):
        create_model("tsm2", d_model=0)


def test_short_training_lowers_validation_loss_on_etth1(shared_data):
    before, after = etth1_validation_losses("tsm2", shared_data, d_model=32)
    assert after < 0.85 * before, (before, after)


def test_training_defaults_per_lookback():
    from mambamixer.tasks.forecast import FALLBACK_DEFAULTS, training_defaults

    assert training_defaults("tsm2")["lr"] == 2e-4
    assert training_defaults("tsm2_512")["lr"] == 1e-4  # its own entry (docs/tsm2.md, lookback-512 grid search)
    assert training_defaults("tsm2_512")["epochs"] == training_defaults("tsm2")["epochs"]
    assert training_defaults("tsm2")["loss"] == "mae" and training_defaults("tsm2_512")["loss"] == "mse"
    assert training_defaults("dlinear")["loss"] == "mse"  # the baselines keep their papers' loss
    assert training_defaults("not_registered")["lr"] == FALLBACK_DEFAULTS["lr"]


def test_default_lookback_is_the_registered_one():
    from mambamixer.tasks.forecast import default_seq_len

    assert default_seq_len("tsm2_512") == 512  # `forecast --model tsm2_512` without --seq-len
    assert default_seq_len("tsm2") == default_seq_len("patchtst") == 96


@pytest.mark.parametrize(("freq", "step"), [("s", "17s"), ("t", "15min"), ("h", "h"), ("d", "D"), ("w", "W"),
                                           ("m", "MS")])  # fmt: skip
def test_mark_levels_invert_the_calendar_features(freq, step):
    import pandas as pd

    from mambamixer.data.calendar import mark_levels, mark_names_for
    from mambamixer.data.forecast import time_features

    dates = pd.date_range("2019-12-20", "2021-01-05 23:59", freq=step)  # 2020: a leap day and ISO week 53
    dates = dates[:: max(1, len(dates) // 20000)] if freq in ("s", "t") else dates
    feats, names = time_features(dates, freq)
    assert tuple(names) == mark_names_for(len(names))
    expected = {"SecondOfMinute": dates.second, "MinuteOfHour": dates.minute, "HourOfDay": dates.hour,
                "DayOfWeek": dates.day_of_week, "DayOfMonth": dates.day - 1, "DayOfYear": dates.day_of_year - 1,
                "MonthOfYear": dates.month - 1, "WeekOfYear": dates.isocalendar().week - 1}  # fmt: skip
    for column, name in enumerate(names):
        levels = mark_levels(torch.from_numpy(feats[:, column].copy()), name)
        assert torch.equal(levels, torch.as_tensor(np.asarray(expected[name], dtype=np.int64))), name
    if freq == "h":
        assert feats[:, names.index("DayOfYear")].max() == 0.5  # day 366 of 2020 reached the top level


def test_mark_names_for_an_unknown_count():
    from mambamixer.data.calendar import mark_names_for

    with pytest.raises(ValueError, match="no frequency has 9 calendar features"):
        mark_names_for(9)


def test_calendar_profile_is_taken_out_of_the_lookback_and_added_to_the_forecast():
    """Lookback = hours 0-15 of a day, horizon = hours 16-23. An offset for hour 20 (horizon only)
    moves the forecast of hour 20 alone, by the offset in the input's units; an offset for hour 3
    (lookback only) is subtracted from step 3 of what the backbone sees, and nothing else."""
    import pandas as pd

    from mambamixer.data.forecast import time_features

    model = small(seq_len=16, horizon=8, patch_len=8, stride=4, n_marks=4, covariates=False,
                  calendar_profile="HourOfDay", revin_affine=False).eval()  # fmt: skip
    assert model.config.calendar_profile == ("HourOfDay",)
    assert sum(p.numel() for p in model.profile.parameters()) == 24 * 5
    feats = torch.from_numpy(time_features(pd.date_range("2017-01-01", periods=24, freq="h"), "h")[0])
    x, xm, ym = torch.randn(1, 16, 5), feats[None, :16], feats[None, 16:]
    seen = []
    model.patch_embed.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].clone()))
    base = model(x, xm, ym)
    offset = torch.arange(1.0, 6.0)  # one per variate
    with torch.no_grad():
        model.profile.tables[0][20] = offset
    moved = model(x, xm, ym) - base
    std = (x.var(dim=1, unbiased=False)[0] + model.revin.eps).sqrt()  # RevIN maps the offset back to x's units
    assert torch.allclose(moved[0, 4], offset * std, atol=1e-5)  # step 4 of the horizon is hour 20
    assert torch.allclose(moved[0, [0, 1, 2, 3, 5, 6, 7]], torch.zeros(7, 5), atol=1e-6)
    assert torch.equal(seen[0], seen[1])  # the backbone's input did not change
    with torch.no_grad():
        model.profile.tables[0].zero_()
        model.profile.tables[0][3] = offset
    model(x, xm, ym)
    change = seen[2] - seen[0]  # patches (batch, n_vars, n_patches, patch_len); step 3 = patch 0, position 3
    assert torch.allclose(change[0, :, 0, 3], -offset, atol=1e-6)
    change[0, :, 0, 3] = 0
    assert torch.allclose(change, torch.zeros_like(change), atol=1e-6)


def test_calendar_profile_needs_marks():
    with pytest.raises(ValueError, match="calendar_profile needs the calendar features"):
        small(calendar_profile="HourOfDay")
    with pytest.raises(ValueError, match="among this data's calendar features"):
        small(n_marks=4, calendar_profile="MinuteOfHour")
    unset = small(calendar_profile=None)
    assert unset.profile is None and unset.config.calendar_profile == ()
    model = small(n_marks=4, calendar_profile=["HourOfDay", "DayOfWeek"])
    with pytest.raises(ValueError, match="needs x_mark and y_mark"):
        model(torch.randn(2, 48, 5))
