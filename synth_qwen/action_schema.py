"""What the agent may say: the system prompt that states the rules, the `interact` tool, the text-mode
answer, and the validators that decide whether a reply is a valid turn. Crafter's 17 action names are
the only vocabulary; an unknown name is an invalid turn, never a silent noop."""
from __future__ import annotations

import json
import re

from crafter import constants

from synth_qwen.crafter_env import ACHIEVEMENTS, ACTIONS
from synth_qwen.grid import VIEW_HEIGHT, VIEW_WIDTH, WORLD_SIZE

INTERACT_TOOL_NAME = "interact"


def tool_call(call_id: str, arguments: str, name: str = INTERACT_TOOL_NAME) -> dict:
    """One OpenAI `tool_calls` entry; `arguments` is the JSON string, as the API carries it."""
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def interact_call(call_id: str, actions: list[str], reasoning: str) -> dict:
    return tool_call(call_id, json.dumps({"reasoning": reasoning, "actions": actions}))


def interact_tool(max_actions: int) -> dict:
    """The OpenAI tools entry for interact(actions: 1..N names, reasoning)."""
    return {
        "type": "function",
        "function": {
            "name": INTERACT_TOOL_NAME,
            "description": f"Perform 1 to {max_actions} Crafter actions in order.",
            "parameters": {
                "type": "object",
                "properties": {
                    "reasoning": {"type": "string", "description": "Your current subgoal, briefly."},
                    "actions": {
                        "type": "array", "minItems": 1, "maxItems": max_actions,
                        "items": {"type": "string", "enum": list(ACTIONS)},
                        "description": "Action names, executed in order.",
                    },
                },
                "required": ["actions"],
            },
        },
    }


def rules_summary() -> str:
    """A system-prompt paragraph with the real rules and the real action names only."""
    table = constants.place["table"]["uses"]
    furnace = constants.place["furnace"]["uses"]
    cost = lambda uses: " and ".join(f"{n} {k}" for k, n in uses.items())  # noqa: E731
    return (
        f"You play Crafter, a 2D survival game on a {WORLD_SIZE}x{WORLD_SIZE} grid; you see {VIEW_WIDTH} cells wide "
        f"and {VIEW_HEIGHT} tall around you. "
        "move_left/right/up/down go west/east/north/south (a move always turns you to face that way; "
        "you only walk onto grass, sand and path; lava kills). 'do' acts on the cell you face: "
        "collect wood from trees, drink from water, attack cows/zombies/skeletons (hitting a cow "
        "until it dies eats it), eat ripe plants, and mine stone and coal (need a wood_pickaxe), iron "
        "(stone_pickaxe) or diamond (iron_pickaxe). 'do' on grass sometimes gives a sapling; "
        f"place_plant plants it. place_table needs {cost(table)}; place_furnace needs {cost(furnace)} and "
        "a table nearby; place_stone puts a stone in front of you. make_wood_pickaxe/make_wood_sword "
        "need a table next to you; make_stone_* also need stone; make_iron_* need a table and a furnace "
        "nearby plus wood, coal and iron. Food, drink and energy fall over time: eat, drink, and sleep "
        "when energy is low (sleep at night, safely walled in). Health regenerates while they are above 0. "
        "Zombies come out on grass at night; skeletons shoot arrows in dark tunnels. Goal: unlock as many "
        f"of the {len(ACHIEVEMENTS)} achievements as possible (collect_*, place_*, make_*, eat_*, defeat_*, wake_up)."
    )


def answer_instruction(max_actions: int, tool_mode: str) -> str:
    if tool_mode == "tools":
        return f"Each turn, call the {INTERACT_TOOL_NAME} tool with 1 to {max_actions} actions."
    return (f"Each turn, answer with 1 to {max_actions} action names on one line, comma-separated, "
            "e.g. 'Actions: move_left, do'.")


def system_prompt(max_actions: int, tool_mode: str = "tools", style: str = "full") -> str:
    """`full`: the rules paragraph + action names (for real LLMs). `compact`: one line, for tiny
    models that cannot use the rules and pay for every prompt token in training and inference."""
    how = answer_instruction(max_actions, tool_mode)
    if style == "compact":
        return f"You play Crafter. Unlock as many achievements as you can. {how}"
    return f"{rules_summary()}\nActions: {', '.join(ACTIONS)}.\n{how}"


def validate_actions(actions, max_actions: int) -> tuple[list[str] | None, str | None]:
    """(actions, None) when valid, else (None, reason) — unknown names are never noop."""
    if not isinstance(actions, list) or not actions:
        return None, "actions must be a non-empty list of action names"
    if len(actions) > max_actions:
        return None, f"at most {max_actions} actions per turn, got {len(actions)}"
    unknown = [a for a in actions if not isinstance(a, str) or a not in ACTIONS]
    if unknown:
        return None, f"unknown action {unknown[0]!r}; valid actions: {', '.join(ACTIONS)}"
    return list(actions), None


def parse_interact_arguments(arguments: str, max_actions: int) -> tuple[list[str] | None, str | None]:
    """Validate the JSON arguments string of an interact tool call."""
    try:
        parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
    except json.JSONDecodeError:
        return None, "interact arguments are not valid JSON"
    if not isinstance(parsed, dict) or "actions" not in parsed:
        return None, "interact arguments need an 'actions' list"
    return validate_actions(parsed["actions"], max_actions)


ACTION_LINE = re.compile(r"actions?\s*:\s*(.+)", re.IGNORECASE)
WORD_TRIM = " .`'\"[]()*"  # quotes, brackets and markdown a model wraps names in


def text_answer(actions: list[str], reasoning: str) -> str:
    """Text mode's reply: the reasoning, then 'Actions: a, b'."""
    return f"{reasoning}\nActions: {', '.join(actions)}"


def parse_text_actions(text: str, max_actions: int) -> tuple[list[str] | None, str | None]:
    """Text mode: 'Actions: move_left, do' (the last such line), else action names in order."""
    lines = ACTION_LINE.findall(text)
    if lines:
        words = [w.strip(WORD_TRIM) for w in re.split(r"[,\s]+", lines[-1]) if w.strip(WORD_TRIM)]
        return validate_actions(words, max_actions)
    found = re.findall(r"\b(" + "|".join(sorted(ACTIONS, key=len, reverse=True)) + r")\b", text)
    if not found:
        return None, "no action names found; answer 'Actions: name, name'"
    return validate_actions(found[:max_actions], max_actions)
