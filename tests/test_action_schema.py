"""What the agent may say: the interact tool, the text answer, their validators, the system prompt."""
import re

from synth_qwen.action_schema import (interact_tool, parse_interact_arguments, parse_text_actions, system_prompt,
                                      validate_actions)
from synth_qwen.crafter_env import ACTIONS


def test_action_validation():
    assert validate_actions(["move_left", "do"], 5) == (["move_left", "do"], None)
    actions, reason = validate_actions(["eat_cow"], 5)
    assert actions is None and "unknown action 'eat_cow'" in reason
    assert validate_actions([], 5)[0] is None
    assert validate_actions(["noop"] * 6, max_actions=5)[0] is None
    assert parse_interact_arguments('{"actions": ["do"], "reasoning": "wood"}', 5) == (["do"], None)
    assert parse_interact_arguments("{not json", 5)[0] is None
    schema = interact_tool(3)["function"]["parameters"]["properties"]["actions"]
    assert schema["maxItems"] == 3 and schema["items"]["enum"] == list(ACTIONS) and len(ACTIONS) == 17


def test_system_prompt_uses_real_action_names_only():
    prompt = system_prompt(5)
    assert f"Actions: {', '.join(ACTIONS)}." in prompt
    named = set(re.findall(r"\b(?:move|place|make)_[a-z_]+[a-z]\b", prompt))
    assert named and named <= set(ACTIONS), named - set(ACTIONS)
    assert "eat_cow" not in prompt.split("Actions:")[1]


def test_text_answers_take_the_last_actions_line():
    assert parse_text_actions("collect wood\nActions: move_left, `do`", 5) == (["move_left", "do"], None)
    assert parse_text_actions("Actions: noop\nActions: do, do", 5) == (["do", "do"], None)
    assert parse_text_actions("I will move_up then do", 5) == (["move_up", "do"], None)
    assert parse_text_actions("Actions: fly", 5)[0] is None
    assert parse_text_actions("nothing useful", 5) == (None, "no action names found; answer 'Actions: name, name'")


def test_the_prompt_states_the_view_and_world_size():
    assert "on a 64x64 grid; you see 9 cells wide and 7 tall around you" in system_prompt(5)
    assert system_prompt(3, "text", "compact").endswith("1 to 3 action names on one line, comma-separated, "
                                                         "e.g. 'Actions: move_left, do'.")
