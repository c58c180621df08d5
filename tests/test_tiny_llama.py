"""The embedded tiny R1-Distill-Llama-8B: tokenizer parity with llama.cpp, the R1 special tokens at their ids, the
chat template, and a model folder that reloads offline and is rebuilt identically."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers
from safetensors import safe_open

from trainer import tiny_llama
from trainer.errors import UserError
from trainer.vendor import llama_cpp_source

SEP = "\n__ggml_vocab_test__\n"
BOS, EOS, PAD = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"

# Written out here, not taken from trainer.tiny_llama, so a typo there cannot pass: (id, text, special) in
# DeepSeek-R1-Distill-Llama-8B. The R1 ones, then Llama-3.1's named slots and a few of its reserved ones.
R1_LLAMA_SPECIALS = [
    (128000, BOS, True), (128001, EOS, True),
    (128011, "<｜User｜>", False), (128012, "<｜Assistant｜>", False),
    (128013, "<think>", False), (128014, "</think>", False), (128015, PAD, True),
    (128002, "<|reserved_special_token_0|>", True), (128003, "<|reserved_special_token_1|>", True),
    (128004, "<|finetune_right_pad_id|>", True), (128005, "<|reserved_special_token_2|>", True),
    (128006, "<|start_header_id|>", True), (128007, "<|end_header_id|>", True), (128008, "<|eom_id|>", True),
    (128009, "<|eot_id|>", True), (128010, "<|python_tag|>", True),
    (128016, "<|reserved_special_token_8|>", True), (128255, "<|reserved_special_token_247|>", True),
]


def _vocab_file(name: str) -> Path:
    return llama_cpp_source() / "models" / name


def _llama_cpp_cases() -> list[tuple[str, list[int]]]:
    """llama.cpp's tokenizer test vectors: each input ends with a separator line; outputs are one line per case.

    Read as bytes so that no newline translation can alter the inputs.
    """
    inputs = _vocab_file("ggml-vocab-llama-bpe.gguf.inp").read_bytes().decode().split(SEP)
    assert inputs[-1] == ""  # the file ends with a separator
    outputs = _vocab_file("ggml-vocab-llama-bpe.gguf.out").read_bytes().decode().split("\n")[:-1]
    return list(zip(inputs[:-1], [[int(i) for i in line.split()] for line in outputs], strict=True))


@pytest.fixture(scope="module")
def tiny_llama_path() -> Path:
    return tiny_llama.tiny_llama_path()


@pytest.fixture(scope="module")
def built() -> transformers.PreTrainedTokenizerFast:
    return tiny_llama.build_r1_llama_tokenizer(_vocab_file("ggml-vocab-llama-bpe.gguf"))


@pytest.fixture(scope="module")
def reloaded(tiny_llama_path: Path) -> transformers.PreTrainedTokenizerBase:
    return transformers.AutoTokenizer.from_pretrained(tiny_llama_path, local_files_only=True)


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


def test_special_slots_have_real_ids_and_flags(tok):
    for token_id, text, special in R1_LLAMA_SPECIALS:
        assert tok.convert_tokens_to_ids(text) == token_id, text
        assert tok.encode(text, add_special_tokens=False) == [token_id], text
        assert tok.added_tokens_decoder[token_id].special is special, text
    assert sorted(tok.added_tokens_decoder) == list(range(128000, 128256))
    assert len(tok) == 128_256  # exactly the model's embedding rows


def test_named_special_tokens(tok):
    assert (tok.bos_token, tok.bos_token_id) == (BOS, 128000)
    assert (tok.eos_token, tok.eos_token_id) == (EOS, 128001)
    assert (tok.pad_token, tok.pad_token_id) == (EOS, 128001)
    assert tok.unk_token is None
    assert tok.model_max_length == 16384


def test_skipping_special_tokens_keeps_think_and_chat_markers(tok):
    ids = tok.encode(f"{BOS}<｜User｜>2+2?<｜Assistant｜><think>\nfour</think>4{EOS}{PAD}", add_special_tokens=False)
    assert ids[:2] == [128000, 128011] and ids[-2:] == [128001, 128015]
    assert tok.decode(ids, skip_special_tokens=True) == "<｜User｜>2+2?<｜Assistant｜><think>\nfour</think>4"


def test_special_tokens_prepend_exactly_one_bos(tok):
    plain = tok.encode("Hello world", add_special_tokens=False)
    assert plain == [9906, 1917]
    assert tok.encode("Hello world") == [128000, *plain]
    assert tok("Hello world", add_special_tokens=True)["input_ids"] == [128000, *plain]
    # Text that already starts with bos gets a second one: the doubling our training code must avoid.
    assert tok.encode(BOS + "Hello world")[:3] == [128000, 128000, plain[0]]


def test_chat_template_renders_the_r1_prompt(tok):
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert prompt == "<｜begin▁of▁sentence｜><｜User｜>hi<｜Assistant｜><think>\n"
    ids = tok.encode(prompt, add_special_tokens=False)
    assert ids[:2] == [128000, 128011]
    assert ids[-3:-1] == [128012, 128013]


def test_reloaded_tokenizer_encodes_like_the_built_one(built, reloaded):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Grüße, 世界! 12345"},
                {"role": "assistant", "content": "<think>\nok\n</think>\n\nHallo 👋"}]
    text = built.apply_chat_template(messages, tokenize=False)
    assert reloaded.apply_chat_template(messages, tokenize=False) == text
    assert reloaded.encode(text, add_special_tokens=False) == built.encode(text, add_special_tokens=False)
    assert reloaded.encode(text) == built.encode(text)


def test_rejects_other_vocabularies():
    with pytest.raises(UserError, match="expected the llama-bpe vocabulary"):
        tiny_llama.build_r1_llama_tokenizer(_vocab_file("ggml-vocab-qwen2.gguf"))


def test_folder_reloads_as_an_untied_llama(tiny_llama_path):
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_llama_path, local_files_only=True)
    config = model.config
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (config.vocab_size, config.tie_word_embeddings) == (128_256, False)
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.num_key_value_heads,
            config.intermediate_size) == (2, 64, 4, 2, 256)
    assert config.rope_parameters["rope_type"] == "llama3"
    assert (config.rope_parameters["factor"], config.rope_parameters["original_max_position_embeddings"]) == (8.0, 8192)
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    assert (config.bos_token_id, config.eos_token_id) == (128000, 128001)
    generation = transformers.GenerationConfig.from_pretrained(tiny_llama_path, local_files_only=True)
    assert (generation.bos_token_id, generation.eos_token_id) == (128000, 128001)
    # The wide initialization is what lets LoRA learn on this model; the default 0.02 would not.
    assert 0.15 < model.model.embed_tokens.weight.std().item() < 0.25
    ids = torch.tensor([[128000, 9906, 1917], [128000, 128011, 6151]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (2, 3, 128_256)
    assert torch.isfinite(logits).all()


def test_weights_are_float32_safetensors(tiny_llama_path):
    with safe_open(tiny_llama_path / "model.safetensors", framework="pt") as weights:
        names = list(weights.keys())
        dtypes = {weights.get_slice(name).get_dtype() for name in names}
    assert "lm_head.weight" in names
    assert dtypes == {"F32"}


def test_two_builds_are_identical_and_leave_the_callers_seed_alone(tiny_llama_path, tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny_llama.build_tiny_llama(tmp_path)
    assert torch.equal(torch.rand(3), expected)
    cached = {p.name: p.read_bytes() for p in tiny_llama_path.iterdir()}
    rebuilt = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert sorted(rebuilt) == sorted(cached)
    assert [name for name in cached if cached[name] != rebuilt[name]] == []


def test_path_builds_once_and_says_so(tmp_path, monkeypatch, capsys):
    builds = []

    def fake_build(out: Path) -> None:
        builds.append(out)
        (out / "config.json").write_text("{}")

    monkeypatch.setenv("R1TUNE_CACHE", str(tmp_path))
    monkeypatch.setattr(tiny_llama, "build_tiny_llama", fake_build)
    first = tiny_llama.tiny_llama_path()
    assert capsys.readouterr().err.count("\n") == 1
    assert tiny_llama.tiny_llama_path() == first
    assert capsys.readouterr().err == ""
    assert len(builds) == 1
    assert first == tmp_path.resolve() / f"tiny-r1-distill-llama-{tiny_llama.TINY_LLAMA_VERSION}"
    assert (first / "config.json").is_file()
