"""Pieces of serve that need no server: tool-call parsing and the training labels."""
import json

from serve_helpers import crafter_examples
from synth_qwen.qwen_format import parse_tool_calls
from synth_qwen.train_worker import COMPILE_MIN_TOKENS, auto_epochs, fast_path


def test_tool_calls_parse_into_openai_shape():
    content, calls = parse_tool_calls('ok\n<tool_call>\n{"name": "interact", "arguments": {"actions": ["do"]}}\n'
                                      '</tool_call>')
    assert content == "ok\n" and len(calls) == 1  # the text before the block, as vLLM's hermes parser
    assert calls[0]["id"].startswith("call_") and calls[0]["type"] == "function"
    assert json.loads(calls[0]["function"]["arguments"]) == {"actions": ["do"]}


def test_malformed_tool_calls_stay_plain_content():
    for text in ('<tool_call>\n{"name": "interact", "arguments": {"act\n</tool_call>',
                 '<tool_call>\n["interact"]\n</tool_call>', "just words", '<tool_call>{"arguments": {}}</tool_call>'):
        content, calls = parse_tool_calls(text)
        assert calls == [] and content == text


def test_openai_auto_epochs():
    assert [auto_epochs(n) for n in (10, 40, 1000, 20000)] == [10, 3, 3, 1]


def test_labels_cover_only_trained_assistant_turns(tmp_path):
    from transformers import AutoTokenizer

    from synth_qwen import tiny_model
    from synth_qwen.qwen_format import encode_example

    tokenizer = AutoTokenizer.from_pretrained(tiny_model.ensure(tmp_path, "micro"))
    example = crafter_examples(2, seed=0, with_history=True)[-1]
    assert example["messages"][2]["weight"] == 0
    row = encode_example(tokenizer, tiny_model.chat_template("training"), example, max_length=4096)
    trained = tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"]) if label != -100])
    final_call = example["messages"][-1]["tool_calls"][0]["function"]
    assert trained == ('<tool_call>\n{"name": "interact", "arguments": ' + final_call["arguments"] +
                       "}\n</tool_call><|im_end|>\n")
    assert len(row["input_ids"]) == len(row["labels"]) > 300


def test_batched_decoding_matches_hf_generate_and_solo_runs(tmp_path):
    """Rows prefilled alone (with the shared-prefix cache), joined mid-decode, left-padded and
    dropped when done answer exactly as `model.generate` (greedy) and as a solo run (sampled, seeded)."""
    import torch

    from synth_qwen.inference_worker import Batch, ChatRequest, Models, generate_batch, prompt_ids
    from synth_qwen.serve_store import ModelSpec

    spec = ModelSpec(key="t", kind="tiny", size="micro", data_dir=str(tmp_path))
    loaded = Models(1, "cpu").get(spec)
    model, tokenizer, stop_ids = loaded.model, loaded.tokenizer, loaded.stop_ids
    examples = crafter_examples(12, seed=5)
    requests = [ChatRequest(id=i, model=spec, messages=examples[i * 5]["messages"][:-1], tools=examples[i * 5]["tools"],
                            max_tokens=6 + 5 * i, temperature=0) for i in range(3)]
    for request, answer in zip(requests, generate_batch(model, tokenizer, stop_ids, requests, "cpu")):
        ids = torch.tensor([prompt_ids(tokenizer, request)])
        expected = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                  max_new_tokens=request.max_tokens, eos_token_id=stop_ids)[0, ids.shape[1]:]
        assert answer.usage.completion_tokens == len(expected)
        assert answer.message["content"] == tokenizer.decode(expected, skip_special_tokens=True)  # no call in it

    sampled = [request.model_copy(update={"temperature": 1.0, "seed": 40 + i}) for i, request in enumerate(requests)]
    solo = [generate_batch(model, tokenizer, stop_ids, [request], "cpu")[0] for request in sampled]
    batch, answers = Batch(model, tokenizer, stop_ids), []
    batch.add(sampled[2])
    answers += batch.step() + batch.step()
    batch.add(sampled[0])  # joins a running row, shorter prompt or longer: both get left-padded
    batch.add(sampled[1])
    while batch.rows:
        answers += batch.step()
    assert sorted(answers, key=lambda answer: answer.id) == solo


def test_rows_with_another_first_message_decode_beside_those_that_share_one(tmp_path):
    """Rows that begin with the same system prompt read its key/values from one shared block once two
    are live; a row with another system prompt keeps all of its own. Batched together, each step's logits
    are those of a plain forward pass over the row's whole text. (Greedy text alone would not tell:
    the random-weight model's next token barely depends on attention.)"""
    import torch

    from synth_qwen.inference_worker import Batch, ChatRequest, Models, prompt_ids
    from synth_qwen.serve_store import ModelSpec

    spec = ModelSpec(key="t", kind="tiny", size="micro", data_dir=str(tmp_path))
    loaded = Models(1, "cpu").get(spec)
    model, tokenizer, stop_ids = loaded.model, loaded.tokenizer, loaded.stop_ids
    examples = crafter_examples(8, seed=7)
    other = [{**examples[6]["messages"][0], "content": "You play Crafter. Be brief."}, *examples[6]["messages"][1:-1]]
    requests = [ChatRequest(id=i, model=spec, messages=messages, tools=examples[i * 3]["tools"], max_tokens=8,
                            temperature=1.0, seed=i)
                for i, messages in enumerate([examples[0]["messages"][:-1], other, examples[3]["messages"][:-1]])]
    batch = Batch(model, tokenizer, [])
    sharing = []
    for request in requests:
        batch.add(request)
        sharing.append(set(batch.slots.sharing))
    assert batch.cascade and sharing == [set(), set(), {0, 2}]  # alone, a row keeps all; the middle one always
    for _ in range(4):
        batch.step()
        for row in batch.rows.values():
            ids = torch.tensor([prompt_ids(tokenizer, row["request"]) + row["tokens"]])
            with torch.inference_mode():
                plain = model(input_ids=ids).logits[0, -1]
            assert torch.allclose(row["logits"], plain, atol=1e-4), (row["request"].id, (row["logits"] - plain).abs().max())


def test_concurrent_conversations_each_reuse_their_own_last_prompt(tmp_path):
    """Two conversations take turns. With room for both, a turn reuses the whole of its own last
    prompt; with room for one (0 MB: the last prompt only) it shares just the system prompt and tools
    with the other conversation's. Greedy answers are the same either way, and as a fresh batch's."""
    from synth_qwen.inference_worker import Batch, ChatRequest, Models, PrefixCache, generate_batch, prompt_ids
    from synth_qwen.serve_store import ModelSpec

    spec = ModelSpec(key="t", kind="tiny", size="micro", data_dir=str(tmp_path))
    loaded = Models(1, "cpu").get(spec)
    model, tokenizer, stop_ids = loaded.model, loaded.tokenizer, loaded.stop_ids
    examples = crafter_examples(8, seed=5)

    def turn(conversation: int, number: int) -> ChatRequest:  # each turn extends the one before
        messages = list(examples[conversation]["messages"][:-1])
        for k in range(number):
            messages += [{"role": "assistant", "content": f"move {k}"}, {"role": "user", "content": f"then {k}?"}]
        return ChatRequest(id=10 * conversation + number, model=spec, messages=messages,
                           tools=examples[conversation]["tools"], max_tokens=5, temperature=0)

    order = [turn(0, 0), turn(5, 0), turn(0, 1), turn(5, 1)]
    fresh = [generate_batch(model, tokenizer, stop_ids, [request], "cpu")[0] for request in order]
    for budget, kept in ((1 << 30, 2), (0, 1)):
        cache = PrefixCache(budget)
        batch, answers, reused = Batch(model, tokenizer, stop_ids, cache), [], []
        for request in order:
            reused.append(cache.longest(prompt_ids(tokenizer, request))[0])
            batch.add(request)
            while batch.rows:
                answers += batch.step()
        own_last = [len(prompt_ids(tokenizer, request)) for request in order[:2]]
        if kept == 2:
            assert reused[2:] == own_last, (budget, reused, own_last)
        else:
            assert all(shared < own for shared, own in zip(reused[2:], own_last)), (budget, reused, own_last)
        assert 0 < reused[1] < own_last[0] and len(cache.prompts) == kept  # a turn covers its conversation's last
        assert answers == fresh


def test_auto_compiles_only_a_long_bf16_job_on_cuda_never_on_cpu_where_compiled_training_is_not_reproducible():
    long_job, short_job = COMPILE_MIN_TOKENS, COMPILE_MIN_TOKENS - 1
    assert fast_path("cuda", "bf16", "auto", long_job) == (True, True)
    assert fast_path("cuda", "bf16", "auto", short_job) == (True, False)
    assert fast_path("cpu", "bf16", "auto", long_job) == (True, False)
    assert fast_path("cpu", "bf16", "on", short_job) == (True, True)
    assert fast_path("cpu", "fp32", "auto", long_job) == (False, False)
    assert fast_path("cpu", "fp32", "on", short_job) == (False, True)
    assert fast_path("cpu", "bf16", "off", long_job) == (True, False)
