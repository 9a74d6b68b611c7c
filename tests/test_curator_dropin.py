"""Code written for Bespoke Curator runs unchanged on curator_flows: each test is user code in
Curator's style where only the import changed (``from bespokelabs import curator`` became
``import curator_flows as curator``), run over real HTTP against the simulator."""

from __future__ import annotations

import glob
import json
import os

import orjson
import pytest
from pydantic import BaseModel, Field

import curator_flows as curator  # was: from bespokelabs import curator
from curator_flows import Credentials, steps
from curator_flows.errors import ConfigError, IncompleteRunError, MissingAPIKeyError, PromptError


def sim_params(sim, **extra):
    """What a Curator user points at another OpenAI-compatible endpoint."""
    return {"base_url": sim.base_url, "api_key": "sk-test", "progress": "off", **extra}


def request_lines(run_uri: str) -> list[dict]:
    lines = []
    for path in sorted(glob.glob(f"{run_uri}/requests/*.jsonl")):
        with open(path, "rb") as handle:
            lines.extend(orjson.loads(line) for line in handle if line.strip())
    return lines


# --------------------------------------------------------------------------- chaining


class Topics(BaseModel):
    topics_list: list[str] = Field(description="A list of topics.")


class TopicGenerator(curator.LLM):
    response_format = Topics

    def prompt(self):
        return "Generate 3 diverse topics for poems."

    def parse(self, input, response: Topics):
        return [{"topic": t} for t in response.topics_list]


class Poems(BaseModel):
    poems_list: list[str]


class Poet(curator.LLM):
    response_format = Poems

    def prompt(self, input: dict) -> str:
        return f"Write two poems about {input['topic']}."

    def parse(self, input: dict, response: Poems) -> dict:
        return [{"topic": input["topic"], "poem": p} for p in response.poems_list]


class Critic(curator.LLM):
    def prompt(self, input: dict) -> str:
        return f"Critique this poem about {input['topic']}: {input['poem']}"

    def parse(self, input: dict, response: str) -> dict:
        return {**input, "critique": response}


def test_chaining_three_stages(sim, wd):
    params = sim_params(sim)
    topic_generator = TopicGenerator(model_name="gpt-4o-mini", backend_params=params)
    poet = Poet(model_name="gpt-4o-mini", backend_params=params)
    critic = Critic(model_name="gpt-4o-mini", backend_params=params)

    topics = topic_generator(working_dir=wd)
    poems = poet(topics, working_dir=wd)
    critiques = critic(poems, working_dir=wd)

    topic_rows = topics.dataset.to_list()
    assert topic_rows and all(set(row) == {"topic"} for row in topic_rows)
    assert {row["topic"] for row in poems.dataset} == {row["topic"] for row in topic_rows}
    assert len(critiques.dataset) == len(poems.dataset)
    assert [(r["topic"], r["poem"]) for r in critiques.dataset] == [
        (r["topic"], r["poem"]) for r in poems.dataset
    ]
    seen = sim.stats()["by_prompt"]
    assert seen["Generate 3 diverse topics for poems."] == 1
    for row in topic_rows:
        assert seen[f"Write two poems about {row['topic']}."] >= 1
    assert sim.stats()["chat_completions"] == 1 + len(topic_rows) + len(poems.dataset)


# --------------------------------------------------------------------------- a single string


class Subtopics(BaseModel):
    subtopics: list[str]


class SubjectExpander(curator.LLM):
    response_format = Subtopics

    def prompt(self, subject):
        return f"List three subtopics of {subject}."

    def parse(self, subject, response: Subtopics):
        return [{"subject": subject, "subtopic": s} for s in response.subtopics]


def test_a_single_string_reaches_prompt_and_parse_as_itself(sim, wd):
    expander = SubjectExpander(model_name="gpt-4o-mini", backend_params=sim_params(sim))
    result = expander("Mathematics", working_dir=wd)
    assert sim.stats()["by_prompt"] == {"List three subtopics of Mathematics.": 1}
    rows = result.dataset.to_list()
    assert rows and {row["subject"] for row in rows} == {"Mathematics"}


# --------------------------------------------------------------------------- system_prompt


class Haiku(curator.LLM):
    def prompt(self, input: dict) -> str:
        return f"A haiku about {input['topic']}"

    def parse(self, input: dict, response: str) -> dict:
        return {"topic": input["topic"], "haiku": response}


ROWS = [{"topic": "rain"}, {"topic": "snow"}]


@pytest.mark.parametrize("backend", ["openai", "anthropic"])
@pytest.mark.parametrize("batch", [False, True], ids=["online", "batch"])
def test_system_prompt_is_sent_with_every_request(sim, wd, backend, batch):
    sim.configure(batch_timings={"validating": 0.05, "in_progress": 0.1, "finalizing": 0.05})
    model = "gpt-4o-mini" if backend == "openai" else "claude-3-5-haiku-20241022"
    params = {"api_key": "sk-test", "progress": "off"}
    params["base_url"] = sim.base_url if backend == "openai" else sim.url
    if batch:
        params["batch_check_interval"] = 0.05
    poet = Haiku(
        model_name=model,
        batch=batch,
        backend_params=params,
        system_prompt="You are a terse poet.",
    )
    assert poet.backend == backend  # Claude picks anthropic, as in Curator
    result = poet(ROWS, working_dir=wd)
    assert [r["topic"] for r in result.dataset] == ["rain", "snow"]
    # the simulator refuses a "system" role in Anthropic messages: it was lifted into `system`
    assert sim.stats()["by_system"] == {"You are a terse poet.": 2}
    (first, second) = request_lines(result.cache_dir)
    assert first["messages"][0] == {"role": "system", "content": "You are a terse poet."}


def test_system_prompt_is_part_of_the_run(sim, wd):
    params = sim_params(sim)
    plain = Haiku(model_name="gpt-4o-mini", backend_params=params)(ROWS, working_dir=wd)
    terse = Haiku(model_name="gpt-4o-mini", backend_params=params, system_prompt="Be terse.")
    first = terse(ROWS, working_dir=wd)
    again = terse(ROWS, working_dir=wd)
    other = Haiku(model_name="gpt-4o-mini", backend_params=params, system_prompt="Be loud.")
    loud = other(ROWS, working_dir=wd)
    run_ids = {r.metadata["run_id"] for r in (plain, first, loud)}
    assert len(run_ids) == 3
    assert again.metadata["run_id"] == first.metadata["run_id"]
    assert sim.stats()["chat_completions"] == 6  # the repeated call sent nothing
    assert sim.stats()["by_system"] == {"Be terse.": 2, "Be loud.": 2}


def test_system_prompt_with_a_system_message_of_its_own_is_refused(sim, wd):
    class Mixed(curator.LLM):
        def prompt(self, input):
            return [
                {"role": "system", "content": "Another system prompt."},
                {"role": "user", "content": input["topic"]},
            ]

    llm = Mixed(model_name="gpt-4o-mini", backend_params=sim_params(sim), system_prompt="One.")
    with pytest.raises(PromptError, match="system"):
        llm(ROWS, working_dir=wd)
    assert sim.stats()["requests"] == 0


# --------------------------------------------------------------------------- completions objects

FUNCTION_DOCS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Retrieves current weather for the given location.",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {"type": "string"},
                    "units": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["location", "units"],
                "additionalProperties": False,
            },
            "strict": True,
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_local_time",
            "description": "Get the local time of a given location",
            "strict": True,
            "parameters": {
                "type": "object",
                "required": ["location", "timezone"],
                "properties": {
                    "location": {"type": "string"},
                    "timezone": {"type": "string"},
                },
                "additionalProperties": False,
            },
        },
    },
]


class FunctionCallGenerator(curator.LLM):
    return_completions_object = True

    def prompt(self, input: dict) -> str:
        return f"Generate a function call for: {input['user_request']}"

    def parse(self, input: dict, response) -> dict:
        message = response["choices"][0]["message"]
        if "tool_calls" in message and message["tool_calls"]:
            input["function_call"] = str([call["function"] for call in message["tool_calls"]])
            input["function_name"] = message["tool_calls"][0]["function"]["name"]
            input["arguments"] = message["tool_calls"][0]["function"]["arguments"]
        else:
            input["function_call"] = message["content"]
            input["function_name"] = input["arguments"] = None
        input["finish_reason"] = response["choices"][0]["finish_reason"]
        return input


def test_completions_object_with_tool_calls_and_per_row_generation_params(sim, wd):
    datasets = pytest.importorskip("datasets")
    llm = FunctionCallGenerator(
        model_name="gpt-4o-mini",
        generation_params={"tools": FUNCTION_DOCS},
        backend_params=sim_params(sim, max_retries=1, require_all_responses=False),
    )
    dataset = datasets.Dataset.from_dict(
        {
            "user_request": ["What's the temperature in New York?", "What time is it in Tokyo?"],
            "generation_params": [
                json.dumps({"tools": [FUNCTION_DOCS[0]]}),
                json.dumps({"tools": [FUNCTION_DOCS[1]]}),
            ],
        }
    )
    result = llm(dataset, working_dir=wd)
    rows = result.dataset.to_list()
    assert [row["function_name"] for row in rows] == ["get_weather", "get_local_time"]
    assert all(row["finish_reason"] == "tool_calls" for row in rows)
    assert set(json.loads(rows[0]["arguments"])) == {"location", "units"}
    assert set(json.loads(rows[1]["arguments"])) == {"location", "timezone"}
    # the row's params are what was sent, so they are part of the run: a swap is a new run
    swapped = datasets.Dataset.from_dict(
        {
            "user_request": dataset["user_request"],
            "generation_params": list(reversed(dataset["generation_params"])),
        }
    )
    again = llm(swapped, working_dir=wd)
    assert again.metadata["run_id"] != result.metadata["run_id"]
    assert [row["function_name"] for row in again.dataset] == ["get_local_time", "get_weather"]
    assert sim.stats()["chat_completions"] == 4


def test_per_row_generation_params_as_a_dict_override_the_llms(sim, wd):
    llm = Haiku(
        model_name="gpt-4o-mini",
        generation_params={"max_tokens": 200},
        backend_params=sim_params(sim),
    )
    rows = [
        {"topic": "rain", "generation_params": {"max_tokens": 2}},
        {"topic": "snow"},
    ]
    result = llm(rows, working_dir=wd)
    assert result.request_stats.succeeded == 1  # max_tokens=2 ends with finish_reason=length
    failed = list(result.get_failed_requests())
    assert len(failed) == 1 and "length" in failed[0]["error"]
    lines = request_lines(result.cache_dir)
    assert lines[0]["params"] == {"max_tokens": 2} and "params" not in lines[1]


class Reasoner(curator.LLM):
    return_completions_object = True

    def prompt(self, input):
        return input["question"]

    def parse(self, input, response):
        thinking = text = ""
        for block in response["content"]:
            if block["type"] == "thinking":
                thinking = block["thinking"]
            elif block["type"] == "text":
                text = block["text"]
        input["claude_thinking_trajectory"] = thinking
        input["claude_attempt"] = text
        return input


@pytest.mark.parametrize("batch", [False, True], ids=["online", "batch"])
def test_completions_object_with_reasoning_blocks(sim, wd, batch):
    sim.configure(batch_timings={"validating": 0.05, "in_progress": 0.1, "finalizing": 0.05})
    params = {"base_url": sim.url, "api_key": "sk-test", "progress": "off"}
    if batch:
        params["batch_check_interval"] = 0.05
    llm = Reasoner(
        model_name="claude-3-7-sonnet-20250219",
        batch=batch,
        generation_params={
            "max_tokens": 2000,
            "thinking": {"type": "enabled", "budget_tokens": 1024},
        },
        backend="anthropic",
        backend_params=params,
    )
    result = llm([{"question": "Why is the sky blue?"}], working_dir=wd)
    (row,) = result.dataset.to_list()
    assert row["claude_thinking_trajectory"] and row["claude_attempt"]


# --------------------------------------------------------------------------- a conversation


class Chat(curator.LLM):
    def parse(self, input, response: str) -> dict:
        return {"turns": len(input), "reply": response}


def test_a_list_of_messages_is_one_conversation(sim, wd):
    conversation = [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "Name a color."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another one?"},
    ]
    result = Chat(model_name="gpt-4o-mini", backend_params=sim_params(sim))(
        conversation, working_dir=wd
    )
    (row,) = result.dataset.to_list()
    assert row["turns"] == 4
    stats = sim.stats()
    assert stats["chat_completions"] == 1
    assert stats["by_prompt"] == {"Another one?": 1}
    assert stats["by_system"] == {"You answer in one word.": 1}


# --------------------------------------------------------------------------- call arguments


def test_cache_dir_is_an_alias_of_working_dir(sim, wd, tmp_path):
    llm = Haiku(model_name="gpt-4o-mini", backend_params=sim_params(sim))
    result = llm(ROWS, cache_dir=wd)
    assert result.cache_dir.startswith(wd)
    again = llm(ROWS, working_dir=wd)
    assert again.cache_dir == result.cache_dir and sim.stats()["chat_completions"] == 2
    with pytest.raises(ConfigError, match="alias"):
        llm(ROWS, working_dir=wd, cache_dir=str(tmp_path / "elsewhere"))


def test_batch_cancel_cancels_the_runs_live_batches_without_asking(sim, wd):
    sim.configure(batch_timings={"validating": 0.05, "in_progress": 60.0, "finalizing": 0.05})
    llm = Haiku(
        model_name="gpt-4o-mini",
        batch=True,
        backend_params=sim_params(sim, batch_check_interval=0.05),
    )
    run = steps.prepare(llm, ROWS, wd, rebuild_check=False)
    submitted = steps.submit(run, run["shards"][0], llm=llm)
    assert submitted["batch_id"]

    response = llm(ROWS, working_dir=wd, batch_cancel=True, batch_cancel_auto_confirm=True)
    assert response.cache_dir == run["run_uri"]
    (cancelled,) = response.metadata["cancel"]["batches"]
    assert cancelled["batch_id"] == submitted["batch_id"]
    assert sim.stats()["batches_cancelled"] == 1
    assert sim.stats()["batches_created"] == 1  # nothing new was submitted


def test_batch_cancel_outside_batch_mode_is_ignored_as_in_curator(sim, wd):
    llm = Haiku(model_name="gpt-4o-mini", backend_params=sim_params(sim))
    result = llm(ROWS, working_dir=wd, batch_cancel=True)
    assert len(result.dataset) == 2


# --------------------------------------------------------------------------- environment


def test_curator_cache_dir_is_the_default_working_dir(sim, tmp_path, monkeypatch):
    monkeypatch.delenv("CURATOR_FLOWS_WORKING_DIR")
    monkeypatch.setenv("CURATOR_CACHE_DIR", str(tmp_path / "curator-cache"))
    llm = Haiku(model_name="gpt-4o-mini", backend_params=sim_params(sim))
    result = llm(ROWS)
    assert result.cache_dir.startswith(str(tmp_path / "curator-cache"))
    monkeypatch.setenv("CURATOR_FLOWS_WORKING_DIR", str(tmp_path / "ours"))
    assert llm(ROWS).cache_dir.startswith(str(tmp_path / "ours"))  # ours comes first


def test_curator_disable_cache_makes_every_call_a_fresh_run(sim, wd, monkeypatch):
    llm = Haiku(model_name="gpt-4o-mini", backend_params=sim_params(sim))
    monkeypatch.setenv("CURATOR_DISABLE_CACHE", "true")
    first = llm(ROWS, working_dir=wd)
    second = llm(ROWS, working_dir=wd)
    assert first.metadata["run_id"] != second.metadata["run_id"]
    assert sim.stats()["chat_completions"] == 4  # nothing reused
    assert second.request_stats.cached == 0
    monkeypatch.delenv("CURATOR_DISABLE_CACHE")
    normal = llm(ROWS, working_dir=wd)
    assert normal.request_stats.cached == 0  # fresh runs lend their responses to nobody
    llm(ROWS, working_dir=wd)
    assert sim.stats()["chat_completions"] == 6  # the normal run resumes as usual


# --------------------------------------------------------------------------- parse() raising


class FussyParser(curator.LLM):
    broken = "topic-3"

    def prompt(self, input):
        return f"Say something about {input['topic']}"

    def parse(self, input, response):
        if input["topic"] == self.broken:
            raise ValueError(f"cannot parse {input['topic']}")
        return {"topic": input["topic"], "text": response}


TEN = [{"topic": f"topic-{i}"} for i in range(10)]


def test_parse_raising_on_one_row_skips_it_and_recovers_after_the_fix(sim, wd):
    llm = FussyParser(model_name="gpt-4o-mini", backend_params=sim_params(sim))
    result = llm(TEN, working_dir=wd)
    assert [row["topic"] for row in result.dataset] == [f"topic-{i}" for i in range(10) if i != 3]
    (failed,) = list(result.get_failed_requests())
    assert failed["row"] == 3
    assert "ValueError" in failed["error"] and "cannot parse topic-3" in failed["error"]
    assert result.request_stats.failed == 1 and result.request_stats.succeeded == 9
    assert sim.stats()["chat_completions"] == 10

    with pytest.raises(IncompleteRunError):
        FussyParser(
            model_name="gpt-4o-mini",
            backend_params=sim_params(sim, require_all_responses=True),
        )(TEN, working_dir=wd)

    FussyParser.broken = None  # parse() fixed
    try:
        fixed = FussyParser(model_name="gpt-4o-mini", backend_params=sim_params(sim))(
            TEN, working_dir=wd
        )
    finally:
        FussyParser.broken = "topic-3"
    assert len(fixed.dataset) == 10 and not list(fixed.get_failed_requests())
    assert sim.stats()["chat_completions"] == 10  # the paid response was stored: nothing re-sent


# --------------------------------------------------------------------------- schemas


class Review(BaseModel):
    summary: str
    aspect_scores: dict[str, float]
    tags: list[dict]


class Reviewer(curator.LLM):
    response_format = Review

    def prompt(self, input):
        return f"Review {input['product']}"

    def parse(self, input, response: Review):
        return {"product": input["product"], "aspects": len(response.aspect_scores)}


def test_free_form_dict_field_against_the_strict_simulator(sim, wd):
    result = Reviewer(model_name="gpt-4o-mini", backend_params=sim_params(sim))(
        [{"product": "kettle"}, {"product": "toaster"}], working_dir=wd
    )
    assert [row["product"] for row in result.dataset] == ["kettle", "toaster"]
    assert sim.stats()["status_counts"] == {"200": 2}


# --------------------------------------------------------------------------- backends


def test_klusterai_is_the_openai_backend_with_its_endpoint_and_key(sim, wd, monkeypatch):
    monkeypatch.delenv("KLUSTERAI_API_KEY", raising=False)
    with pytest.raises(MissingAPIKeyError, match="KLUSTERAI_API_KEY"):
        Haiku(model_name="klusterai/Meta-Llama-3.1-8B", backend="klusterai")(ROWS, working_dir=wd)
    sim.configure(require_api_key="kluster-key")
    monkeypatch.setenv("KLUSTERAI_API_KEY", "kluster-key")
    monkeypatch.setenv("OPENAI_API_KEY", "not-this-one")
    llm = Haiku(
        model_name="klusterai/Meta-Llama-3.1-8B",
        backend="klusterai",
        backend_params={"base_url": sim.base_url, "progress": "off"},
    )
    assert llm.backend == "openai" and llm.provider == "klusterai"
    result = llm(ROWS, working_dir=wd)
    assert len(result.dataset) == 2 and sim.stats()["chat_completions"] == 2


def test_an_alias_in_batch_mode_uses_its_key_in_every_batch_step(sim, wd, monkeypatch):
    sim.configure(
        require_api_key="inference-key",
        batch_timings={"validating": 0.05, "in_progress": 0.1, "finalizing": 0.05},
    )
    monkeypatch.setenv("INFERENCE_API_KEY", "inference-key")
    llm = Haiku(
        model_name="meta-llama/llama-3.1-8b-instruct",
        backend="inference.net",
        batch=True,
        backend_params={"base_url": sim.base_url, "progress": "off", "batch_check_interval": 0.05},
    )
    result = llm(ROWS, working_dir=wd)
    assert len(result.dataset) == 2
    assert sim.stats()["batches_created"] == 1 and sim.stats()["batch_items"] == 2
    assert sim.stats()["status_counts"].get("401", 0) == 0


def test_provider_aliases_resolve_to_their_endpoints(monkeypatch):
    from curator_flows.credentials import resolve_endpoint

    monkeypatch.setenv("KLUSTERAI_API_KEY", "k")
    monkeypatch.setenv("INFERENCE_API_KEY", "i")
    kluster = resolve_endpoint("klusterai")
    assert (kluster.base_url, kluster.api_key) == ("https://api.kluster.ai/v1", "k")
    inference = resolve_endpoint("inference.net")
    assert (inference.base_url, inference.api_key) == ("https://api.inference.net/v1", "i")
    batch = resolve_endpoint("inference.net", batch=True)
    assert batch.base_url == "https://batch.inference.net/v1"
    own = resolve_endpoint("inference.net", Credentials(base_url="http://localhost:1/v1"))
    assert own.base_url == "http://localhost:1/v1"


def test_backend_choice_follows_curator():
    assert curator.LLM(model_name="claude-3-5-haiku-20241022").backend == "anthropic"
    assert curator.LLM(model_name="gpt-4o-mini").backend == "openai"
    assert curator.LLM(model_name="together_ai/meta-llama").backend == "litellm"
    with pytest.raises(ConfigError, match="inference.net"):
        curator.LLM(model_name="gpt-4o-mini", backend="nonsense")


# --------------------------------------------------------------------------- CuratorResponse


def test_curator_response_api(sim, wd):
    from curator_flows.types import CostInfo, PerformanceStats, RequestStats, TokenUsage

    usage = TokenUsage(input=3, output=4, total=7)
    assert (usage.input, usage.output, usage.total) == (3, 4, 7)
    assert TokenUsage(input=3, output=4).total == 7
    CostInfo(total_cost=1.0, projected_remaining_cost=0.5)
    RequestStats(total=2, succeeded=1, failed=1, in_progress=0, cached=0)
    PerformanceStats(total_time=1.0, max_concurrent_requests=2)

    result = FussyParser(model_name="gpt-4o-mini", backend_params=sim_params(sim))(
        TEN[:5], working_dir=wd
    )
    assert result.request_stats.in_progress == 0
    assert result.cost_info.projected_remaining_cost == 0.0
    assert len(list(result.get_failed_requests())) == 1
    summary = result.to_dict()
    assert summary["dataset"]["size"] == 4
    assert summary["request_stats"]["failed"] == 1
    assert summary["token_usage"]["total"] == result.token_usage.total > 0
    json.dumps(summary)  # plain JSON
    assert os.path.exists(str(result.failed_requests_path))


# --------------------------------------------------------------------------- errors as Curator's


class Unparseable(curator.LLM):
    def prompt(self, input):
        return f"Say something about {input['topic']}"

    def parse(self, input, response):
        raise KeyError("no such field")


class NumberPrompt(curator.LLM):
    def prompt(self, input):
        return 42


def test_except_value_error_catches_what_curator_raises_as_value_error(sim, wd):
    with pytest.raises(ValueError, match="every request of the run failed"):
        Unparseable(model_name="gpt-4o-mini", backend_params=sim_params(sim))(ROWS, working_dir=wd)
    strict = FussyParser(
        model_name="gpt-4o-mini", backend_params=sim_params(sim, require_all_responses=True)
    )
    with pytest.raises(ValueError, match="require_all_responses"):
        strict(TEN, working_dir=wd)
    with pytest.raises(ValueError, match="row 0"):
        NumberPrompt(model_name="gpt-4o-mini", backend_params=sim_params(sim))(ROWS, working_dir=wd)


# --------------------------------------------------------------------------- batch_size="auto"


def test_batch_size_auto_fills_each_batch_up_to_the_providers_limits(sim, wd):
    from curator_flows.batch.sizing import BATCH_LIMITS
    from curator_flows.prepare import shard_limits

    sim.configure(batch_timings={"validating": 0.05, "in_progress": 0.1, "finalizing": 0.05})
    params = sim_params(sim, batch_size="auto", batch_check_interval=0.05)
    llm = Haiku(model_name="gpt-4o-mini", batch=True, backend_params=params)
    assert shard_limits(llm) == BATCH_LIMITS["openai"]  # Curator's "auto": the provider's max
    rows = [{"topic": f"topic {i}"} for i in range(5)]
    result = llm(rows, working_dir=wd)
    assert len(result.dataset) == 5
    assert sim.stats()["batches_created"] == 1 and sim.stats()["batch_items"] == 5
    with pytest.raises(ConfigError, match="positive integer or 'auto'"):
        Haiku(model_name="gpt-4o-mini", batch=True, backend_params={"batch_size": "max"})


# --------------------------------------------------------------------------- gemini and mistral


def test_mistral_and_gemini_backends_go_through_litellm(sim, wd):
    pytest.importorskip("litellm")
    mistral = Haiku(
        model_name="mistral-small-latest", backend="mistral", backend_params=sim_params(sim)
    )
    assert (mistral.backend, mistral.provider) == ("litellm", "mistral")
    assert mistral.model_name == "mistral/mistral-small-latest"  # litellm's provider prefix
    # litellm's mistral provider speaks the OpenAI wire format: it reaches the simulator
    result = mistral(ROWS, working_dir=wd)
    assert [row["topic"] for row in result.dataset] == ["rain", "snow"]
    assert sim.stats()["chat_completions"] == 2
    assert result.cost_info.total_cost > 0  # priced as litellm prices mistral/...

    gemini = Haiku(model_name="gemini-2.0-flash", backend="gemini")
    assert (gemini.backend, gemini.provider) == ("litellm", "gemini")
    assert gemini.model_name == "gemini/gemini-2.0-flash"
    vertex = Haiku(model_name="vertex_ai/gemini-2.0-flash", backend="gemini")
    assert vertex.model_name == "vertex_ai/gemini-2.0-flash"  # a prefix of its own is kept
    plain = Haiku(model_name="gemini/gemini-2.0-flash", backend="litellm")
    assert gemini.family_fingerprint() != plain.family_fingerprint()  # the provider is identity


@pytest.mark.parametrize("backend", ["gemini", "mistral"])
def test_gemini_and_mistral_batch_say_what_works_instead(backend):
    with pytest.raises(ConfigError) as refused:
        Haiku(model_name=f"{backend}-model", backend=backend, batch=True)
    message = str(refused.value)
    assert "batch=False" in message and "backend='openai' or 'anthropic'" in message
    assert isinstance(refused.value, curator.NotSupportedError)


# --------------------------------------------------------------------------- litellm model ids


def test_a_model_litellm_cannot_route_fails_at_construction(sim):
    pytest.importorskip("litellm")
    with pytest.raises(ConfigError, match="cannot tell which provider serves model 'my-model'"):
        Haiku(model_name="my-model", backend_params=sim_params(sim))
    with pytest.raises(ConfigError, match="hosted_vllm/<model>"):
        Haiku(model_name="Qwen/Qwen2.5-7B-Instruct", backend="litellm")
    # routable although litellm's price map does not name them
    Haiku(model_name="hosted_vllm/my-model", backend_params=sim_params(sim))
    Haiku(model_name="openai/my-model", backend_params=sim_params(sim))
    Haiku(model_name="my-model", backend_params={"base_url": "https://api.groq.com/openai/v1"})
    Haiku(model_name="my-model", generation_params={"custom_llm_provider": "openai"})
    assert sim.stats()["requests"] == 0  # nothing is sent to find out


def test_a_model_the_price_map_names_is_checked_without_importing_litellm():
    import subprocess
    import sys

    pytest.importorskip("litellm")
    code = (
        "import sys\n"
        "import curator_flows as curator\n"
        "curator.LLM(model_name='gemini-2.0-flash', backend='gemini')\n"
        "curator.LLM(model_name='together_ai/meta-llama/Llama-3-8b-chat-hf')\n"
        "assert 'litellm' not in sys.modules, 'litellm was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


# --------------------------------------------------------------------------- what is left out


class Captioner(curator.LLM):
    def prompt(self, input):
        return "Describe this image.", curator.types.Image(url=input["url"])


def test_left_out_features_are_named_where_they_are_used(sim, wd):
    not_supported = curator.NotSupportedError
    llm = Captioner(model_name="gpt-4o-mini", backend_params=sim_params(sim))
    with pytest.raises(not_supported, match=r"row 0.*types\.Image.*image_url"):
        llm([{"url": "https://example.com/cat.png"}], working_dir=wd)
    with pytest.raises(not_supported, match="types.File"):
        curator.types.File(url="paper.pdf")
    assert sim.stats()["requests"] == 0
    with pytest.raises(not_supported, match="code-execution"):
        curator.CodeExecutor(backend="local")
    with pytest.raises(not_supported, match="code-execution"):
        curator.LLM(model_name="gpt-4o-mini", backend="code_executor")
    for trainer in ("TinkerTrainer", "TinkerTrainerConfig", "FireworksTrainer"):
        with pytest.raises(not_supported, match=f"{trainer}.*output_uri"):
            getattr(curator, trainer)(model="some-model")
    with pytest.raises(not_supported, match="curator-flows view"):
        curator.push_to_viewer("my-dataset")
    with pytest.raises(not_supported, match="load_dataset"):
        curator.load_dataset("session-id")
    result = Haiku(model_name="gpt-4o-mini", backend_params=sim_params(sim))(ROWS, working_dir=wd)
    with pytest.raises(not_supported, match="report.html"):
        result.push_to_viewer()


def test_curator_viewer_variable_says_what_to_use_instead(sim, wd, monkeypatch, caplog):
    import curator_flows.llm as llm_module

    monkeypatch.setattr(llm_module, "_viewer_warned", False)
    monkeypatch.setenv("CURATOR_VIEWER", "1")
    with caplog.at_level("WARNING", logger="curator_flows.llm"):
        Haiku(model_name="gpt-4o-mini", backend_params=sim_params(sim))(ROWS, working_dir=wd)
    (warning,) = [r for r in caplog.records if "CURATOR_VIEWER" in r.getMessage()]
    assert "curator-flows view" in warning.getMessage()


def test_image_content_parts_are_sent_as_given(sim, wd):
    """What the NotSupportedError of types.Image points at: the provider's own content parts."""

    class PartsCaptioner(curator.LLM):
        def prompt(self, input):
            parts = [
                {"type": "text", "text": f"Describe image {input['n']}."},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            ]
            return [{"role": "user", "content": parts}]

        def parse(self, input, response):
            return {"n": input["n"], "caption": response}

    result = PartsCaptioner(model_name="gpt-4o-mini", backend_params=sim_params(sim))(
        [{"n": 1}, {"n": 2}], working_dir=wd
    )
    assert [row["n"] for row in result.dataset] == [1, 2]
    assert sim.stats()["by_prompt"] == {"Describe image 1.": 1, "Describe image 2.": 1}
    (first, _) = request_lines(result.cache_dir)
    assert first["messages"][0]["content"][1]["type"] == "image_url"


# --------------------------------------------------------------------------- completion_window


def test_a_completion_window_the_provider_never_accepts_fails_at_construction(sim, wd):
    with pytest.raises(ConfigError, match="only '24h'"):
        Haiku(model_name="gpt-4o-mini", batch=True, backend_params={"completion_window": "48h"})
    with pytest.raises(ConfigError, match="no completion window"):
        Haiku(
            model_name="claude-3-5-haiku-20241022",
            batch=True,
            backend_params={"completion_window": "48h"},
        )
    # another endpoint judges its own windows: the simulator answers OpenAI's 400
    sim.configure(batch_timings={"validating": 0.05, "in_progress": 0.1, "finalizing": 0.05})
    params = sim_params(sim, completion_window="48h", batch_check_interval=0.05, max_retries=0)
    llm = Haiku(model_name="gpt-4o-mini", batch=True, backend_params=params)
    with pytest.raises(IncompleteRunError) as incomplete:
        llm(ROWS, working_dir=wd)
    assert sim.stats()["batches_created"] == 0
    with open(incomplete.value.failed_requests_uri, "rb") as handle:
        failed = [orjson.loads(line) for line in handle if line.strip()]
    assert len(failed) == 2
    assert all("Supported values are: '24h'" in line["error"] for line in failed)
