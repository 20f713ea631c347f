"""Checks the CLI used to hold itself now live in the library: a notebook user gets the same FutureLensError."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import futurelens as fl
from futurelens import doctor
from futurelens.artifacts import shipped_prompts_dir
from futurelens.lens.config import LensConfig, check_config, run


def test_one_prompt_holding_several_layers_is_refused_by_the_library():
    folder = shipped_prompts_dir("smollm2-135m")  # one learned prompt per layer
    cfg = LensConfig(prompt=str(folder))
    with pytest.raises(fl.FutureLensError, match=r"holds prompts for layers \[.*\]: say which with --layer"):
        check_config(cfg)
    with pytest.raises(fl.FutureLensError, match="say which with --layer"):
        run(cfg, lm=SimpleNamespace())  # refused before the model is touched
    check_config(LensConfig(prompt=str(folder), layer=1))  # a layer says which: accepted


def test_doctor_refuses_a_local_model_in_the_library():
    with pytest.raises(fl.FutureLensError, match="checks the remote operations on NDIF"):
        doctor.check_config(doctor.DoctorConfig(), remote=False)
    doctor.check_config(doctor.DoctorConfig(), remote=True)
    with pytest.raises(fl.FutureLensError, match="remote=True"):
        doctor.run(SimpleNamespace(remote=False))
