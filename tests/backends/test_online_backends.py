"""The anthropic and litellm online backends, over real HTTP against the simulator."""

from __future__ import annotations

from pydantic import BaseModel

from curator_flows import LLM


class Pet(BaseModel):
    name: str
    age: int


class PetNamer(LLM):
    response_format = Pet

    def prompt(self, input):
        return [
            {"role": "system", "content": "You name pets."},
            {"role": "user", "content": f"Name a {input['kind']}"},
        ]

    def parse(self, input, response: Pet):
        return {"kind": input["kind"], "name": response.name, "age": response.age}


def test_anthropic_messages_backend(sim, params, wd):
    backend_params = params(base_url=sim.url)
    result = PetNamer("claude-haiku-4-5", backend="anthropic", backend_params=backend_params)(
        [{"kind": "cat"}, {"kind": "dog"}], working_dir=wd
    )
    assert [r["kind"] for r in result.dataset] == ["cat", "dog"]
    stats = sim.stats()
    assert stats["messages"] == 2 and stats.get("chat_completions", 0) == 0
    assert set(stats["by_prompt"]) == {"Name a cat", "Name a dog"}
    assert result.token_usage.input > 0


def test_anthropic_separate_token_limits(sim, params, wd):
    sim.configure(input_tpm=60_000, output_tpm=6_000)
    backend_params = params(
        base_url=sim.url,
        max_tokens=64,
        max_input_tokens_per_minute=60_000,
        max_output_tokens_per_minute=6_000,
    )
    result = PetNamer("claude-haiku-4-5", backend="anthropic", backend_params=backend_params)(
        [{"kind": f"k{i}"} for i in range(5)], working_dir=wd
    )
    assert len(result.dataset) == 5
    assert sim.stats()["status_counts"].get("429", 0) == 0


def test_litellm_backend_is_used_for_other_names(sim, params, wd):
    llm = PetNamer("openai/sim-model", backend_params=params())
    assert llm.backend == "litellm"
    result = llm([{"kind": "fish"}], working_dir=wd)
    assert result.dataset.to_list()[0]["kind"] == "fish"
    assert sim.stats()["by_prompt"] == {"Name a fish": 1}
