"""An API key given to an ``LLM`` (``backend_params["api_key"]``) reaches the provider and
nothing else: not a pickle (process pools, cloudpickle), not ``repr``/``str``/JSON, not the
recorded constructor arguments, not the run directory; an unpickled LLM takes its key from
credentials or the environment. Over real HTTP against a simulator that requires the key."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import cloudpickle
import pytest

from curator_flows import LLM, Credentials, steps
from curator_flows.errors import AuthenticationError, MissingAPIKeyError

KEY = "sk-llm-key-test-9f2c71"


class Topic(LLM):
    def prompt(self, input):
        return f"topic {input['t']}"

    def parse(self, input, response):
        return {"t": input["t"], "response": response}


def _texts(llm: LLM) -> dict[str, bytes]:
    """Every form an LLM takes outside the HTTP layer."""
    from fastapi.encoders import jsonable_encoder

    try:
        encoded = json.dumps(jsonable_encoder(llm)).encode()
    except ValueError:  # the Secret refuses to be walked: the encoder gives up on the LLM
        encoded = b"<unencodable>"
    return {
        "pickle": pickle.dumps(llm),
        "cloudpickle": cloudpickle.dumps(llm),
        "repr": repr(llm).encode(),
        "backend_params": f"{llm.backend_params} {llm.backend_params['api_key']:>5}".encode(),
        "json": json.dumps(llm.backend_params, default=str).encode(),
        "jsonable_encoder": encoded,
        "config": repr(vars(llm.config)).encode() + str(llm.config.public_dict()).encode(),
        "spec": json.dumps(llm.spec()).encode(),
        "state": json.dumps(llm.parse_state()).encode(),
    }


def test_the_key_reaches_the_provider_and_no_pickle_repr_or_json(sim, wd):
    sim.configure(require_api_key=KEY)
    params = {"api_key": KEY, "base_url": sim.base_url, "progress": "off"}
    llm = Topic("gpt-4o-mini", backend_params=params)
    result = llm([{"t": i} for i in range(3)], working_dir=wd)
    assert result.request_stats.succeeded == 3  # the HTTP layer got the real key
    for name, text in _texts(llm).items():
        assert KEY.encode() not in text, name
    run_files = b"".join(p.read_bytes() for p in Path(wd).rglob("*") if p.is_file())
    assert KEY.encode() not in run_files
    assert copy.deepcopy(llm)([{"t": 9}], working_dir=wd).request_stats.succeeded == 1

    # An unpickled LLM does not carry the key: credentials (or the environment) give it.
    thawed = pickle.loads(pickle.dumps(llm))
    assert repr(thawed.backend_params["api_key"]) == "Secret(withheld)"
    assert thawed.family_fingerprint() == llm.family_fingerprint()
    assert thawed.parse_fingerprint() == llm.parse_fingerprint()
    with pytest.raises(AuthenticationError):
        thawed([{"t": 20}], working_dir=wd)
    done = thawed([{"t": 20}], working_dir=wd, credentials=Credentials(api_key=KEY))
    assert done.request_stats.succeeded == 1


def test_a_step_given_the_llm_sends_its_key_and_a_thawed_default_llm_says_why_it_has_none(
    sim, wd, monkeypatch
):
    sim.configure(require_api_key=KEY)
    llm = Topic("gpt-4o-mini", backend_params={"api_key": KEY, "base_url": sim.base_url})
    run = steps.prepare(llm, [{"t": 1}, {"t": 2}], wd)
    assert steps.run_online(run, llm=llm)["sent"] == 2

    provider_llm = Topic("gpt-4o-mini", backend_params={"api_key": KEY})  # OpenAI's endpoint
    thawed = pickle.loads(cloudpickle.dumps(provider_llm))
    with pytest.raises(MissingAPIKeyError, match="pickled or serialized"):
        thawed([{"t": 1}], working_dir=wd)
    assert sim.stats()["requests"] == 2
