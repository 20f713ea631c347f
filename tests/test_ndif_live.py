"""Opt-in: the quickstart against the live NDIF service. Runs only when an NDIF key is configured."""

from __future__ import annotations

import pytest

import futurelens as fl
from futurelens.methods import PAPER_PROMPT
from futurelens.remote import api_key

pytestmark = pytest.mark.ndif


@pytest.fixture(scope="module")
def gptj():
    if not api_key():
        pytest.skip("no NDIF API key (set NDIF_API_KEY or nnsight.CONFIG.set_default_api_key) — live NDIF test not run")
    return fl.load_model("EleutherAI/gpt-j-6b", remote=True)


def test_quickstart_on_live_ndif(gptj):
    states = fl.cache(gptj, ["Marty McFly from"], layers=[14])  # one request
    assert states.shape == (1, 1, gptj.d_model)
    out = fl.patch(gptj, states[0], 14, target=PAPER_PROMPT, rollout=4, top_k=5)  # one request
    assert out.rollout_ids.shape == (1, 4) and out.top_ids.shape == (1, 1, 5)
    assert 0 < float(out.top_probs[0, 0, 0]) <= 1
