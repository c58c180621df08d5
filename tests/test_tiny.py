"""The embedded tiny R1-Distill-Qwen: tokenizer parity with llama.cpp, the R1 special tokens, the chat template,
and a model folder that reloads offline and is rebuilt identically."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers
import trl
from safetensors import safe_open

from trainer import tiny
from trainer.errors import UserError
from trainer.vendor import llama_cpp_source

SEP = "\n__ggml_vocab_test__\n"
BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"

# Written out here, not taken from trainer.tiny, so a typo there cannot pass: (id, text, special) in the real
# DeepSeek-R1-Distill-Qwen tokenizer.
R1_ADDED = [
    (151643, EOS, True), (151644, "<｜User｜>", False), (151645, "<｜Assistant｜>", False), (151646, BOS, True),
    (151647, "<|EOT|>", False), (151648, "<think>", False), (151649, "</think>", False),
    (151650, "<|quad_start|>", True), (151651, "<|quad_end|>", True), (151652, "<|vision_start|>", True),
    (151653, "<|vision_end|>", True), (151654, "<|vision_pad|>", True), (151655, "<|image_pad|>", True),
    (151656, "<|video_pad|>", True), (151657, "<tool_call>", False), (151658, "</tool_call>", False),
    (151659, "<|fim_prefix|>", False), (151660, "<|fim_middle|>", False), (151661, "<|fim_suffix|>", False),
    (151662, "<|fim_pad|>", False), (151663, "<|repo_name|>", False), (151664, "<|file_sep|>", False),
]


def _vocab_file(name: str) -> Path:
    return llama_cpp_source() / "models" / name


def _llama_cpp_cases() -> list[tuple[str, list[int]]]:
    """llama.cpp's tokenizer test vectors: each input ends with a separator line; outputs are one line per case.

    Read as bytes so that no newline translation can alter the inputs.
    """
    inputs = _vocab_file("ggml-vocab-qwen2.gguf.inp").read_bytes().decode().split(SEP)
    assert inputs[-1] == ""  # the file ends with a separator
    outputs = _vocab_file("ggml-vocab-qwen2.gguf.out").read_bytes().decode().split("\n")[:-1]
    return list(zip(inputs[:-1], [[int(i) for i in line.split()] for line in outputs], strict=True))


@pytest.fixture(scope="module")
def built() -> transformers.PreTrainedTokenizerFast:
    return tiny.build_r1_qwen_tokenizer(_vocab_file("ggml-vocab-qwen2.gguf"))


@pytest.fixture(scope="module")
def reloaded(tiny_path: Path) -> transformers.PreTrainedTokenizerBase:
    return transformers.AutoTokenizer.from_pretrained(tiny_path, local_files_only=True)


@pytest.fixture(params=["built", "reloaded"])
def tok(request: pytest.FixtureRequest) -> transformers.PreTrainedTokenizerBase:
    """Every tokenizer check runs on the freshly built tokenizer and on the one AutoTokenizer loads back."""
    return request.getfixturevalue(request.param)


def test_all_llama_cpp_vectors_match(tok):
    cases = _llama_cpp_cases()
    assert len(cases) == 46
    wrong = [(text, ids) for text, ids in cases if tok.encode(text, add_special_tokens=False) != ids]
    assert wrong == []
    assert [tok.decode(ids) for _, ids in cases] == [text for text, _ in cases]


def test_r1_added_tokens_have_real_ids_and_flags(tok):
    for token_id, text, special in R1_ADDED:
        assert tok.convert_tokens_to_ids(text) == token_id, text
        assert tok.encode(text, add_special_tokens=False) == [token_id], text
        assert tok.added_tokens_decoder[token_id].special is special, text
    assert len(tok) == 151_665  # nothing beyond <|file_sep|>; the model's extra rows are padding


def test_named_special_tokens(tok):
    assert (tok.bos_token, tok.bos_token_id) == (BOS, 151646)
    assert (tok.eos_token, tok.eos_token_id) == (EOS, 151643)
    assert (tok.pad_token, tok.pad_token_id) == (EOS, 151643)
    assert tok.unk_token is None
    assert tok.model_max_length == 16384


def test_skipping_special_tokens_keeps_think_and_roles(tok):
    # As in the real tokenizer.json, only bos/eos (and Qwen2.5's vision tokens) are special.
    ids = tok.encode("<｜begin▁of▁sentence｜><｜User｜>2+2?<｜Assistant｜><think>\nfour</think>4<｜end▁of▁sentence｜>",
                     add_special_tokens=False)
    assert tok.decode(ids, skip_special_tokens=True) == "<｜User｜>2+2?<｜Assistant｜><think>\nfour</think>4"


def test_special_tokens_prepend_exactly_one_bos(tok):
    plain = tok.encode("Hello world", add_special_tokens=False)
    assert tok.encode("Hello world") == [151646, *plain]
    assert tok("Hello world", add_special_tokens=True)["input_ids"] == [151646, *plain]
    # Text that already starts with bos gets a second one: the doubling our training code must avoid.
    assert tok.encode(BOS + "Hello world")[:3] == [151646, 151646, plain[0]]


def test_chat_template_is_trls_original(tok):
    trl_template = Path(trl.__file__).parent / "chat_templates" / "deepseek_r1_distill.jinja"
    assert tok.chat_template == trl_template.read_text(encoding="utf-8")
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert prompt == "<｜begin▁of▁sentence｜><｜User｜>hi<｜Assistant｜><think>\n"
    assert tok.encode(prompt, add_special_tokens=False)[:2] == [151646, 151644]
    assert tok.encode(prompt, add_special_tokens=False)[-3:-1] == [151645, 151648]


def test_reloaded_tokenizer_encodes_like_the_built_one(built, reloaded):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Grüße, 世界! 123"},
                {"role": "assistant", "content": "<think>\nok\n</think>\n\nHallo 👋"}]
    text = built.apply_chat_template(messages, tokenize=False)
    assert reloaded.apply_chat_template(messages, tokenize=False) == text
    assert reloaded.encode(text, add_special_tokens=False) == built.encode(text, add_special_tokens=False)
    assert reloaded.encode(text) == built.encode(text)


def test_gguf_reader_rejects_other_files(tmp_path):
    not_gguf = tmp_path / "vocab.gguf"
    not_gguf.write_bytes(b"GGML" + bytes(40))
    with pytest.raises(UserError, match="not a GGUF file"):
        tiny.read_gguf_metadata(not_gguf)
    big_endian = tmp_path / "be.gguf"
    big_endian.write_bytes(b"GGUF" + (3).to_bytes(4, "big") + bytes(16))
    with pytest.raises(UserError, match="unsupported GGUF version"):
        tiny.read_gguf_metadata(big_endian)
    with pytest.raises(UserError, match="expected the qwen2 vocabulary"):
        tiny.build_r1_qwen_tokenizer(_vocab_file("ggml-vocab-gpt-2.gguf"))


def test_folder_reloads_as_an_untied_qwen2(tiny_path):
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_path, local_files_only=True)
    config = model.config
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert (config.vocab_size, config.tie_word_embeddings) == (151_936, False)
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
            config.num_key_value_heads) == (2, 64, 4, 2)
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    assert (config.bos_token_id, config.eos_token_id) == (151643, 151643)  # as in the real config.json
    generation = transformers.GenerationConfig.from_pretrained(tiny_path, local_files_only=True)
    assert (generation.bos_token_id, generation.eos_token_id) == (151646, 151643)
    # The wide initialization is what lets LoRA learn on this model; the default 0.02 would not.
    assert 0.15 < model.model.embed_tokens.weight.std().item() < 0.25
    ids = torch.tensor([[151646, 9707, 1879], [151646, 151644, 6023]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (2, 3, 151_936)
    assert torch.isfinite(logits).all()


def test_weights_are_float32_safetensors(tiny_path):
    with safe_open(tiny_path / "model.safetensors", framework="pt") as weights:
        dtypes = {weights.get_slice(name).get_dtype() for name in weights.keys()}
        assert "lm_head.weight" in weights.keys()
    assert dtypes == {"F32"}


def test_two_builds_are_identical_and_leave_the_callers_seed_alone(tiny_path, tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny.build_tiny_model(tmp_path)
    assert torch.equal(torch.rand(3), expected)
    cached = {p.name: p.read_bytes() for p in tiny_path.iterdir()}
    rebuilt = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert sorted(rebuilt) == sorted(cached)
    assert [name for name in cached if cached[name] != rebuilt[name]] == []


def test_path_builds_once_and_says_so(tmp_path, monkeypatch, capsys):
    builds = []

    def fake_build(out: Path) -> None:
        builds.append(out)
        (out / "config.json").write_text("{}")

    monkeypatch.setenv("R1TUNE_CACHE", str(tmp_path))
    monkeypatch.setattr(tiny, "build_tiny_model", fake_build)
    first = tiny.tiny_model_path()
    assert capsys.readouterr().err.count("\n") == 1
    assert tiny.tiny_model_path() == first
    assert capsys.readouterr().err == ""
    assert len(builds) == 1
    assert first == tmp_path.resolve() / f"tiny-r1-distill-qwen-{tiny.TINY_VERSION}"
    assert (first / "config.json").is_file()
