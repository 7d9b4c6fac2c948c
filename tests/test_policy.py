"""policy: who acts. Builtin agents, reading the actions out of a reply (tools and text mode), and
the endpoint policy through the real openai client against the scripted endpoint on 127.0.0.1."""
import asyncio
import json

import pytest

from synth_qwen import tracing
from synth_qwen.action_schema import interact_tool, system_prompt
from synth_qwen.crafter_env import ACTIONS, CrafterEnv
from synth_qwen.observation import observe
from synth_qwen.policy import BUILTIN_DECIDERS, BuiltinAgent, EndpointPolicy, Reply, actions_from_reply
from synth_qwen.scripted_endpoint import ScriptedEndpoint
from synth_qwen.settings import RolloutSettings


def first_observation(seed: int = 3):
    env = CrafterEnv(seed=seed, difficulty="easy")
    env.start()
    return observe(env)


# ---------------------------------------------------------------------------------------
# Builtin agents

@pytest.mark.parametrize("tool_mode", ["tools", "text"])
@pytest.mark.parametrize("name", ["builtin:random", "builtin:expert"])
def test_a_builtin_agent_answers_like_an_llm_and_its_actions_read_back(name, tool_mode):
    observation = first_observation()
    agent = BuiltinAgent(BUILTIN_DECIDERS[name](7, 4), tool_mode, "sess_0123456789abcdef")
    reply = asyncio.run(agent.act([], observation, 2))
    decided, reasoning = BUILTIN_DECIDERS[name](7, 4)(observation)  # the same seed decides the same
    assert actions_from_reply(reply, tool_mode, 4) == (decided, None)
    assert (reply.prompt_tokens, reply.completion_tokens, reply.cost_usd, reply.error) == (0, 0, 0.0, None)
    if tool_mode == "tools":
        [call] = reply.tool_calls
        assert call["id"] == "call_89abcdef_2" and call["type"] == "function"  # names session and turn
        assert json.loads(call["function"]["arguments"]) == {"reasoning": reasoning, "actions": decided}
        assert reply.assistant_message() == {"role": "assistant", "content": None, "tool_calls": [call]}
    else:
        assert reply.tool_calls == [] and reply.content == f"{reasoning}\nActions: {', '.join(decided)}"


def test_random_play_is_seeded_valid_and_varied():
    observation = first_observation()

    def sixty_turns(seed: int) -> list[list[str]]:
        decide = BUILTIN_DECIDERS["builtin:random"](seed, 5)
        return [decide(observation)[0] for _ in range(60)]
    turns = sixty_turns(1)
    assert turns == sixty_turns(1) and turns != sixty_turns(2)
    assert all(set(actions) <= set(ACTIONS) for actions in turns)
    assert {len(actions) for actions in turns} == {1, 2, 3, 4, 5}


# ---------------------------------------------------------------------------------------
# Reading actions out of a reply

def call(name: str = "interact", arguments: str = '{"actions": ["move_left", "do"]}') -> dict:
    return {"id": "call_1", "type": "function", "function": {"name": name, "arguments": arguments}}


@pytest.mark.parametrize("calls, expected", [
    ([call()], (["move_left", "do"], None)),
    ([call("look", '{"actions": ["noop"]}'), call()], (["move_left", "do"], None)),  # interact counts
    ([], (None, "no interact tool call in the reply")),  # the content ("Actions: do") does not count
    ([call("look")], (None, "unknown tool 'look'; call interact")),
])
def test_tools_mode_reads_the_interact_call(calls, expected):
    assert actions_from_reply(Reply(content="Actions: do", tool_calls=calls), "tools", 3) == expected


@pytest.mark.parametrize("arguments, problem", [
    ('{"actions": ["move_left", "do"', "interact arguments are not valid JSON"),
    ('{"moves": ["do"]}', "interact arguments need an 'actions' list"),
    ('{"actions": ["eat_cow"]}', "unknown action 'eat_cow'"),
    ('{"actions": ["do", "do", "do", "do"]}', "at most 3 actions per turn, got 4"),
    ('{"actions": []}', "actions must be a non-empty list"),
])
def test_tools_mode_says_why_a_call_is_invalid(arguments, problem):
    actions, why = actions_from_reply(Reply(content=None, tool_calls=[call(arguments=arguments)]), "tools", 3)
    assert actions is None and why.startswith(problem)


@pytest.mark.parametrize("text, expected", [
    ("A tree is east.\nActions: move_right, do", ["move_right", "do"]),
    ("Actions: noop\nOn second thought:\nactions: `move_up`, 'do'.", ["move_up", "do"]),  # the last line wins
    ("**Action:** [place_table]", ["place_table"]),
    ("I walk move_right, then do, then move_down and noop.", ["move_right", "do", "move_down"]),  # prose: in order
])
def test_text_mode_reads_action_names(text, expected):
    assert actions_from_reply(Reply(content=text), "text", 3) == (expected, None)


@pytest.mark.parametrize("text, problem", [
    ("I will explore to the left.", "no action names found; answer 'Actions: name, name'"),
    (None, "no action names found"),
    ("Actions: eat_cow", "unknown action 'eat_cow'"),  # a named line is taken as meant: no guessing
    ("Actions: do, do, do, do", "at most 3 actions per turn, got 4"),
])
def test_text_mode_says_why_a_reply_is_invalid(text, problem):
    actions, why = actions_from_reply(Reply(content=text), "text", 3)
    assert actions is None and why.startswith(problem)


# ---------------------------------------------------------------------------------------
# The endpoint policy: the real openai client, a real HTTP server

MESSAGES = [{"role": "system", "content": system_prompt(5)}, {"role": "user", "content": first_observation().text}]


def ask(base_url: str, tool_mode: str = "tools", **values) -> Reply:
    """One turn of EndpointPolicy, as the runner plays it; the client is closed afterwards."""
    settings = RolloutSettings(crafter_model="test-model", crafter_tool_mode=tool_mode,
                               crafter_request_timeout_s=2.0, **values)
    tools = [interact_tool(settings.crafter_actions_per_turn)] if tool_mode == "tools" else None
    endpoint_policy = EndpointPolicy(settings, base_url, "sk-test-key", tools)

    async def one_turn():
        try:
            return await endpoint_policy.act(MESSAGES, None, 2, episode_seed=7)
        finally:
            await endpoint_policy.close()
    return asyncio.run(one_turn())


def test_a_reply_carries_the_call_the_usage_and_the_endpoints_cost():
    with ScriptedEndpoint(cost_per_call=0.002) as endpoint:
        reply = ask(endpoint.base_url, crafter_temperature=0.3, crafter_max_tokens=64, crafter_tool_choice="required",
                    crafter_think=False)
    [body] = endpoint.requests
    assert body == {"model": "test-model", "temperature": 0.3, "max_tokens": 64, "tool_choice": "required",
                    "chat_template_kwargs": {"enable_thinking": False}, "messages": MESSAGES,
                    "tools": [interact_tool(5)], "seed": tracing.sampling_seed(0, 7, 2)}
    assert endpoint.headers[0]["Authorization"] == "Bearer sk-test-key"
    actions, problem = actions_from_reply(reply, "tools", 5)
    assert problem is None and actions and reply.tool_calls[0]["id"].startswith("call_")
    assert (reply.finish_reason, reply.attempts, reply.error) == ("tool_calls", 1, None)
    assert reply.prompt_tokens == len(json.dumps(MESSAGES)) // 4 and reply.completion_tokens > 0  # as reported
    assert reply.cost_usd == 0.002


def test_without_a_reported_cost_our_prices_count_and_without_prices_it_is_unknown():
    with ScriptedEndpoint() as endpoint:
        priced = ask(endpoint.base_url, crafter_price_input_per_m=2.0, crafter_price_output_per_m=10.0)
        unpriced = ask(endpoint.base_url)
    assert priced.cost_usd == pytest.approx((priced.prompt_tokens * 2.0 + priced.completion_tokens * 10.0) / 1e6)
    assert unpriced.cost_usd is None and unpriced.prompt_tokens > 0


def test_text_mode_sends_no_tools_and_reads_the_actions_line():
    with ScriptedEndpoint() as endpoint:
        reply = ask(endpoint.base_url, tool_mode="text")
    assert "tools" not in endpoint.requests[0] and "tool_choice" not in endpoint.requests[0]
    actions, problem = actions_from_reply(reply, "text", 3)
    assert problem is None and reply.tool_calls == [] and reply.content.endswith(f"Actions: {', '.join(actions)}")


def test_injected_faults_are_retried_until_an_answer():
    with ScriptedEndpoint(faults=["500", "429"]) as endpoint:
        reply = ask(endpoint.base_url, crafter_max_retries=2)
    assert (reply.attempts, len(endpoint.requests), reply.error) == (3, 3, None)
    assert actions_from_reply(reply, "tools", 5)[1] is None


def test_a_call_that_keeps_failing_returns_its_error_after_the_retries():
    with ScriptedEndpoint(always="malformed") as endpoint:
        reply = ask(endpoint.base_url, crafter_max_retries=1)
    assert (reply.attempts, len(endpoint.requests)) == (2, 2)
    assert reply.error.startswith("malformed response") and reply.tool_calls == []
    assert (reply.prompt_tokens, reply.completion_tokens, reply.cost_usd) == (None, None, None)  # unknown, not 0


def test_a_client_error_is_not_retried():
    with ScriptedEndpoint() as endpoint:
        reply = ask(endpoint.base_url + "/no-such-route", crafter_max_retries=3)  # the server answers 404
    assert reply.attempts == 1 and reply.error.startswith("HTTP 404") and endpoint.requests == []
