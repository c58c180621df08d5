"""Batched generation after the R1 generation prompt, shared by evaluation, chat and the tests."""
from __future__ import annotations

from collections.abc import Iterator

from trainer.data.formats import Message
from trainer.data.template import encode_parts, prompt_parts


def history_of(messages: list[Message]) -> list[Message]:
    """Everything before the last assistant turn: what the model is asked to continue."""
    last = max(i for i, m in enumerate(messages) if m.role == "assistant")
    return messages[:last]


def generate(model, tokenizer, histories: list[list[Message]], max_new_tokens: int, batch_size: int = 8,
             temperature: float = 0.0, progress: bool = False) -> list[str]:
    """Completions (reasoning, `</think>`, answer) for each history; greedy unless a temperature is given."""
    import torch

    # Encoded as training encodes them (data text never becomes a special token), so eval prompts match.
    prompts = encode_parts([tuple(prompt_parts(h, tokenizer)) for h in histories], tokenizer)
    outputs: list[str] = []
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation appends on the right, so pad on the left
    try:
        for batch in _batches(prompts, batch_size, progress):
            encoded = tokenizer.pad({"input_ids": batch}, return_tensors="pt", padding=True)
            encoded = {k: v.to(model.device) for k, v in encoded.items()}
            sampling = dict(do_sample=True, temperature=temperature, top_p=0.95) if temperature > 0 else \
                dict(do_sample=False, temperature=None, top_p=None, top_k=None)
            with torch.inference_mode():
                out = model.generate(**encoded, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                     eos_token_id=tokenizer.eos_token_id, **sampling)
            new_tokens = out[:, encoded["input_ids"].shape[1]:]
            outputs += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
    return outputs


def _batches(items: list, size: int, progress: bool) -> Iterator[list]:
    starts = range(0, len(items), size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="generate", unit="batch")
    for start in starts:
        yield items[start:start + size]
