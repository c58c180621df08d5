"""Golden tests of rendering and masking with the real R1-Distill-Qwen tokenizer (rebuilt offline).

What must hold: the reasoning is trained, the prompt is not, the end-of-sentence token is, padding never is,
and what is trained after the prompt is token for token what the model must generate at inference.
"""
from __future__ import annotations

import importlib.resources

import pytest
import torch

from trainer.data.formats import Message
from trainer.model import set_distinct_pad
from trainer.r1 import GENERATION_PROMPT
from trainer.r1 import chat_template as r1_chat_template
from trainer.data.template import IGNORE, encode_conversation, prompt_text, render_turns

BOS, EOS_ID, THINK_ID, END_THINK_ID, NL, NLNL = 151646, 151643, 151648, 151649, 198, 271


@pytest.fixture(scope="module")
def tokenizer(tiny_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_path)
    tok.chat_template = r1_chat_template()
    set_distinct_pad(tok)
    return tok


def one_turn(reasoning="Two plus two is four.", answer="4", system=None):
    messages = [Message("user", "What is 2+2?"), Message("assistant", answer, reasoning)]
    return [Message("system", system), *messages] if system else messages


def trained(example) -> list[int]:
    return [label for label in example.labels if label != IGNORE]


def test_golden_single_turn(tokenizer):
    (turn,) = render_turns(one_turn(), tokenizer)
    assert turn.prompt == "<｜begin▁of▁sentence｜><｜User｜>What is 2+2?<｜Assistant｜><think>\n"
    assert turn.completion == "Two plus two is four.\n</think>\n\n4"
    (example,) = encode_conversation(one_turn(), tokenizer, max_length=4096)
    assert example.input_ids == [BOS, 151644, 3838, 374, 220, 17, 10, 17, 30, 151645, THINK_ID, NL,
                                 11613, 5519, 1378, 374, 3040, 624, END_THINK_ID, NLNL, 19, EOS_ID]
    assert example.labels == [IGNORE] * 12 + example.input_ids[12:]
    assert tokenizer.decode(trained(example)) == "Two plus two is four.\n</think>\n\n4<｜end▁of▁sentence｜>"


def test_reasoning_is_trained_prompt_masked_eos_trained(tokenizer):
    (example,) = encode_conversation(one_turn(system="Be brief."), tokenizer, max_length=4096)
    first = example.labels.index(next(x for x in example.labels if x != IGNORE))
    prompt = tokenizer.decode(example.input_ids[:first])
    assert prompt == "<｜begin▁of▁sentence｜>Be brief.<｜User｜>What is 2+2?<｜Assistant｜><think>\n"
    assert "Two plus two is four." in tokenizer.decode(trained(example))
    assert example.labels[-1] == EOS_ID == example.input_ids[-1]
    assert example.input_ids.count(BOS) == 1  # the template writes bos; encoding must not add a second


def test_prompt_is_exactly_the_inference_prompt(tokenizer):
    for messages in (one_turn(), one_turn(system="Be brief.")):
        (example,) = encode_conversation(messages, tokenizer, max_length=4096)
        at_inference = tokenizer.apply_chat_template(
            [{"role": m.role, "content": m.content} for m in messages[:-1]], add_generation_prompt=True,
            tokenize=True, return_dict=False)
        n = len(at_inference)
        assert example.input_ids[:n] == list(at_inference)
        assert all(label == IGNORE for label in example.labels[:n])
        assert example.labels[n] != IGNORE
        assert tokenizer.decode(at_inference).endswith(GENERATION_PROMPT)


def test_empty_reasoning_keeps_the_token_boundary_of_inference(tokenizer):
    # After the prompt's `<think>\n` the model must emit `\n` (198), then `</think>`. Tokenizing the joined
    # text would merge the two newlines into one token (271) that inference never produces at that point.
    (example,) = encode_conversation(one_turn(reasoning=""), tokenizer, max_length=4096)
    first = next(i for i, x in enumerate(example.labels) if x != IGNORE)
    assert example.input_ids[first - 2:first] == [THINK_ID, NL]
    assert trained(example) == [NL, END_THINK_ID, NLNL, 19, EOS_ID]
    joined = tokenizer(tokenizer.decode(example.input_ids), add_special_tokens=False)["input_ids"]
    assert NLNL in joined[first - 2:first + 1]  # the pitfall this rendering avoids


def test_trained_span_matches_trls_training_template(tokenizer):
    """TRL's deepseek_r1_distill_training.jinja trains `<｜Assistant｜><think>\\n` + our span."""
    training = (importlib.resources.files("trl") / "chat_templates" /
                "deepseek_r1_distill_training.jinja").read_text(encoding="utf-8")
    chat = [{"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "<think>\nTwo plus two is four.\n</think>\n\n4"}]
    out = tokenizer.apply_chat_template(chat, chat_template=training, return_assistant_tokens_mask=True,
                                        return_dict=True, tokenize=True)
    trl_text = tokenizer.decode([i for i, keep in zip(out["input_ids"], out["assistant_masks"]) if keep])
    (example,) = encode_conversation(one_turn(), tokenizer, max_length=4096)
    assert trl_text == "<｜Assistant｜><think>\n" + tokenizer.decode(trained(example))


def test_multi_turn_trains_each_turn_with_history_as_inference_shows_it(tokenizer):
    messages = [Message("user", "What is 2+2?"), Message("assistant", "4", "Two plus two is four."),
                Message("user", "And 3+3?"), Message("assistant", "6", "Three plus three is six.")]
    first, second = encode_conversation(messages, tokenizer, max_length=4096)
    assert tokenizer.decode(trained(first)) == "Two plus two is four.\n</think>\n\n4<｜end▁of▁sentence｜>"
    assert tokenizer.decode(trained(second)) == "Three plus three is six.\n</think>\n\n6<｜end▁of▁sentence｜>"
    history = tokenizer.decode([t for t, x in zip(second.input_ids, second.labels) if x == IGNORE])
    # The original template drops earlier reasoning from the history; so does the training prompt.
    assert history == ("<｜begin▁of▁sentence｜><｜User｜>What is 2+2?<｜Assistant｜>\n\n4<｜end▁of▁sentence｜>"
                       "<｜User｜>And 3+3?<｜Assistant｜><think>\n")
    (last,) = encode_conversation(messages, tokenizer, max_length=4096, train_turns="last")
    assert last == second


def test_truncation_and_drop(tokenizer):
    (full,) = encode_conversation(one_turn(), tokenizer, max_length=4096)
    (cut,) = encode_conversation(one_turn(), tokenizer, max_length=15)
    assert cut.truncated and cut.input_ids == full.input_ids[:15] and cut.labels == full.labels[:15]
    assert encode_conversation(one_turn(), tokenizer, max_length=15, overlong="drop") == [None]
    assert encode_conversation(one_turn(), tokenizer, max_length=12) == [None]  # prompt alone fills it


def test_padding_is_never_trained(tokenizer):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    assert tokenizer.pad_token_id not in (None, tokenizer.eos_token_id)
    short, = encode_conversation(one_turn(answer="4"), tokenizer, max_length=4096)
    long, = encode_conversation(one_turn(reasoning="A much longer line of reasoning. " * 5), tokenizer, 4096)
    collate = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)
    batch = collate([{"input_ids": e.input_ids, "labels": e.labels} for e in (short, long)])
    pad_positions = batch["attention_mask"] == 0
    assert pad_positions.any()
    assert torch.all(batch["input_ids"][pad_positions] == tokenizer.pad_token_id)
    assert torch.all(batch["labels"][pad_positions] == IGNORE)
    assert (batch["labels"] == EOS_ID).sum() == 2  # each example's own eos stays trained
    assert not (batch["labels"] == tokenizer.pad_token_id).any()


def test_prompt_text_for_generation(tokenizer):
    text = prompt_text([Message("user", "hi")], tokenizer)
    assert text == "<｜begin▁of▁sentence｜><｜User｜>hi<｜Assistant｜><think>\n"


def test_data_quoting_special_tokens_stays_text(tokenizer):
    messages = [Message("system", "Reply after <｜Assistant｜>."), Message("user", "Say </think> and <think>"),
                Message("assistant", "Done <｜end▁of▁sentence｜> really", "I write </think> as text.")]
    (example,) = encode_conversation(messages, tokenizer, max_length=4096)
    assert example.input_ids.count(END_THINK_ID) == 1 and example.input_ids.count(THINK_ID) == 1
    assert example.input_ids.count(EOS_ID) == 1 and example.input_ids.count(151645) == 1  # the template's own
    assert tokenizer.decode(trained(example)) == (
        "I write </think> as text.\n</think>\n\nDone <｜end▁of▁sentence｜> really<｜end▁of▁sentence｜>")
    closer = trained(example).index(END_THINK_ID)  # the one real closer comes after the whole reasoning
    assert tokenizer.decode(trained(example)[:closer]) == "I write </think> as text.\n"


def test_history_answer_quoting_a_closer_is_not_cut_by_the_template(tokenizer):
    # The R1 template keeps what follows the last `</think>` of a past answer; the data's own must not count.
    messages = [Message("user", "q1"), Message("assistant", "use </think> here", "r1"),
                Message("user", "q2"), Message("assistant", "a2", "r2")]
    _, second = render_turns(messages, tokenizer)
    assert second.prompt == ("<｜begin▁of▁sentence｜><｜User｜>q1<｜Assistant｜>\n\nuse </think> here"
                             "<｜end▁of▁sentence｜><｜User｜>q2<｜Assistant｜><think>\n")
    assert ("use </think> here", True) in second.prompt_parts


def test_ids_equal_ordinary_encoding_when_the_data_quotes_no_token(tokenizer):
    messages = [Message("system", "Be brief."), Message("user", "你好，世界。 Tabs\tand  spaces!"),
                Message("assistant", "答案：42。\n", "先想一想。\n\n然后……")]
    (turn,) = render_turns(messages, tokenizer)
    (example,) = encode_conversation(messages, tokenizer, max_length=4096)
    ordinary = (tokenizer(turn.prompt, add_special_tokens=False)["input_ids"]
                + tokenizer(turn.completion, add_special_tokens=False)["input_ids"] + [EOS_ID])
    assert example.input_ids == ordinary


def test_llama_distill_tokenizer_encodes_data_parts_like_ordinary_text():
    from trainer.fixtures import tiny_llama
    from export.llamacpp_source import llama_cpp_source

    llama = tiny_llama.build_r1_llama_tokenizer(llama_cpp_source() / "models" / "ggml-vocab-llama-bpe.gguf")
    messages = [Message("user", "What is 2+2?  Explain.\n"), Message("assistant", "4", "Two plus two is four.")]
    (turn,) = render_turns(messages, llama)
    (example,) = encode_conversation(messages, llama, max_length=4096)
    ordinary = (llama(turn.prompt, add_special_tokens=False)["input_ids"]
                + llama(turn.completion, add_special_tokens=False)["input_ids"] + [llama.eos_token_id])
    assert example.input_ids == ordinary
    quoted = [Message("user", "Quote </think>"), Message("assistant", "ok", "r")]
    (example,) = encode_conversation(quoted, llama, max_length=4096)
    assert example.input_ids.count(llama.convert_tokens_to_ids("</think>")) == 1
