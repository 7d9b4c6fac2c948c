"""The one validator for OpenAI fine-tuning JSONL (DESIGN §4.2, REFERENCE §C): chat examples
(method "supervised") and preference pairs (method "dpo").

`validate_example(obj)` lists the problems of one decoded chat line, `validate_preference(obj)` of
one preference line; `validate_jsonl(path, method=...)` checks a whole file and names the line of
each problem. filter_traces, sft_kickoff and serve all use it, so "valid" means the same thing at
every stage. `preference_pair(obj)` is what a preference line means as two chat examples.

A preference line (OpenAI's DPO format): {"input": {"messages": [...], "tools": [...],
"parallel_tool_calls": false}, "preferred_output": [one assistant message],
"non_preferred_output": [one assistant message]}; the input ends where the answer is due.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

MIN_EXAMPLES = 10  # OpenAI rejects training files with fewer lines
ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_ERRORS_REPORTED = 20  # a broken file can have thousands; the first few say what to fix


def validate_example(obj) -> list[str]:
    """Problems with one training example (empty list = valid)."""
    if not isinstance(obj, dict):
        return ["example must be a JSON object with a 'messages' list"]
    messages = obj.get("messages")
    if not isinstance(messages, list) or not messages:
        hint = " (this is a preference line: use it with method.type='dpo')" if "input" in obj else ""
        return ["'messages' must be a non-empty list" + hint]
    problems, trainable = messages_problems(messages, "messages")
    problems = tools_problems(obj) + problems
    if trainable == 0 and not problems:
        problems.append("no trainable assistant message (need at least one assistant message with weight 1)")
    return problems


def messages_problems(messages: list, prefix: str) -> tuple[list[str], int]:
    """(problems, how many assistant messages have weight 1) of a message list."""
    problems = []
    open_call_ids: set[str] = set()
    trainable = 0
    for index, message in enumerate(messages):
        where = f"{prefix}[{index}]"
        if not isinstance(message, dict):
            problems.append(f"{where} must be an object")
            continue
        role = message.get("role")
        if role not in ROLES:
            problems.append(f"{where}: role {role!r} is not one of {', '.join(ROLES)}")
            continue
        if role == "assistant":
            problems += assistant_problems(message, where)
            for call in message.get("tool_calls") or []:
                if isinstance(call, dict) and isinstance(call.get("id"), str):
                    open_call_ids.add(call["id"])
            trainable += message.get("weight", 1) == 1
        elif role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or call_id not in open_call_ids:
                problems.append(f"{where}: tool message needs a tool_call_id of an earlier assistant tool call")
            if not isinstance(message.get("content"), (str, list)):
                problems.append(f"{where}: tool message needs string content")
        else:
            if not content_is_text(message.get("content")):
                problems.append(f"{where}: {role} message needs string content")
            if "weight" in message:
                problems.append(f"{where}: 'weight' is only allowed on assistant messages")
    return problems, trainable


PREFERENCE_OUTPUTS = ("preferred_output", "non_preferred_output")


def validate_preference(obj) -> list[str]:
    """Problems with one preference pair (empty list = valid)."""
    if not isinstance(obj, dict):
        return ["example must be a JSON object with 'input', 'preferred_output' and 'non_preferred_output'"]
    given = obj.get("input")
    if not isinstance(given, dict) or not isinstance(given.get("messages"), list) or not given["messages"]:
        hint = " (this is a chat example: use it with method.type='supervised')" if "messages" in obj else ""
        return ["'input' must be an object with a non-empty 'messages' list" + hint]
    problems, _ = messages_problems(given["messages"], "input.messages")
    problems = tools_problems(given, "input.") + problems
    problems += [f"input.messages[{index}]: 'weight' has no meaning in a preference input"
                 for index, message in enumerate(given["messages"]) if isinstance(message, dict) and "weight" in message]
    last = given["messages"][-1]
    if isinstance(last, dict) and last.get("role") == "assistant":
        problems.append("input.messages must end before the answer (its last message is an assistant message)")
    replies = []
    for name in PREFERENCE_OUTPUTS:
        output = obj.get(name)
        if not isinstance(output, list) or len(output) != 1 or not isinstance(output[0], dict) \
                or output[0].get("role") != "assistant":
            problems.append(f"'{name}' must be a list of exactly one assistant message")
            continue
        if "weight" in output[0]:
            problems.append(f"{name}[0]: 'weight' has no meaning in a preference output")
        problems += assistant_problems(output[0], f"{name}[0]")
        replies.append(output[0])
    if len(replies) == 2 and not problems and reply_key(replies[0]) == reply_key(replies[1]):
        problems.append("preferred_output and non_preferred_output say the same thing (nothing to prefer)")
    return problems


def reply_key(message: dict) -> tuple:
    """What a reply says, whatever its tool call ids are."""
    calls = tuple((call["function"]["name"], call["function"]["arguments"]) for call in message.get("tool_calls") or [])
    return message.get("content") or "", calls


def preference_pair(obj: dict) -> tuple[dict, dict]:
    """(chosen, rejected) chat examples of a valid preference line: the input's messages (their
    assistant turns weight 0: only the answer is compared) followed by each output."""
    given = obj["input"]
    prompt = [{**message, "weight": 0} if message.get("role") == "assistant" else message
              for message in given["messages"]]
    extra = {key: given[key] for key in ("tools", "parallel_tool_calls") if key in given}
    return tuple({"messages": prompt + [obj[name][0]], **extra} for name in PREFERENCE_OUTPUTS)


VALIDATORS = {"supervised": validate_example, "dpo": validate_preference}  # fine-tuning method -> line check


def assistant_problems(message: dict, where: str) -> list[str]:
    problems = []
    content, tool_calls = message.get("content"), message.get("tool_calls")
    has_content = content_is_text(content) and bool(content)
    if not has_content and not tool_calls:
        problems.append(f"{where}: assistant message needs content or tool_calls")
    if content is not None and not content_is_text(content):
        problems.append(f"{where}: assistant content must be a string")
    if tool_calls is not None:
        if not isinstance(tool_calls, list):
            problems.append(f"{where}: tool_calls must be a list")
        else:
            for call_index, call in enumerate(tool_calls):
                problems += tool_call_problems(call, f"{where}.tool_calls[{call_index}]")
    if message.get("weight", 1) not in (0, 1) or isinstance(message.get("weight"), bool):
        problems.append(f"{where}: weight must be 0 or 1")
    return problems


def tool_call_problems(call, where: str) -> list[str]:
    if not isinstance(call, dict):
        return [f"{where} must be an object"]
    problems = []
    if not isinstance(call.get("id"), str) or not call["id"]:
        problems.append(f"{where}: needs a string id")
    if call.get("type") != "function":
        problems.append(f"{where}: type must be 'function'")
    function = call.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
        return problems + [f"{where}: needs function.name"]
    arguments = function.get("arguments")
    if not isinstance(arguments, str):
        return problems + [f"{where}: function.arguments must be a JSON string"]
    try:
        json.loads(arguments)
    except ValueError:
        problems.append(f"{where}: function.arguments is not valid JSON")
    return problems


def tools_problems(obj: dict, prefix: str = "") -> list[str]:
    problems = []
    tools = obj.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            problems.append(f"'{prefix}tools' must be a list")
        else:
            for index, tool in enumerate(tools):
                function = tool.get("function") if isinstance(tool, dict) else None
                if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                    problems.append(f"{prefix}tools[{index}] must look like {{type: 'function', function: {{name, parameters}}}}")
    if "parallel_tool_calls" in obj and not isinstance(obj["parallel_tool_calls"], bool):
        problems.append(f"'{prefix}parallel_tool_calls' must be true or false")
    return problems


def content_is_text(content) -> bool:
    """A string, or a list of text parts (the SDK's content-part form)."""
    if isinstance(content, str):
        return True
    return isinstance(content, list) and all(
        isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        for part in content)


@dataclass
class JsonlReport:
    path: str
    examples: int = 0
    errors: list[str] = field(default_factory=list)  # "line N: problem", at most MAX_ERRORS_REPORTED
    error_count: int = 0

    @property
    def ok(self) -> bool:
        return self.error_count == 0

    def add(self, line_number: int, problem: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_ERRORS_REPORTED:
            self.errors.append(f"line {line_number}: {problem}")

    def summary(self) -> str:
        """One message naming the file and the first problem (what serve puts in a job error)."""
        if self.ok:
            return f"{self.path}: {self.examples} valid examples"
        more = f" (and {self.error_count - 1} more problems)" if self.error_count > 1 else ""
        return f"{self.path}: {self.errors[0]}{more}"


def validate_jsonl(path, min_examples: int = MIN_EXAMPLES, name: str | None = None,
                   method: str = "supervised") -> JsonlReport:
    """Check every line of a JSONL file as the fine-tuning `method` reads it (VALIDATORS);
    `name` replaces the path in messages (e.g. a file id)."""
    validate = VALIDATORS[method]
    report = JsonlReport(path=name or str(path))
    with open(Path(path), "rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except ValueError as error:
                report.add(line_number, f"not valid JSON ({error})")
                continue
            report.examples += 1
            for problem in validate(obj):
                report.add(line_number, problem)
    if report.ok and report.examples < min_examples:
        report.error_count += 1
        report.errors.append(f"has {report.examples} examples; at least {min_examples} are required")
        # not a line problem: summary names the file only
    return report
