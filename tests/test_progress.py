"""Token counting: what tokens/s in train.log (and the benchmarks) is made of, for every batch layout."""
from __future__ import annotations

import torch

from trainer.training.progress import TokenCounter, batch_counts
from trainer.data.template import IGNORE


def test_batch_counts_padded_flat_and_packed():
    labels = torch.tensor([[IGNORE, 5, 6, IGNORE], [IGNORE, IGNORE, 7, IGNORE]])
    padded = {"input_ids": torch.ones(2, 4, dtype=torch.long), "labels": labels,
              "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])}
    assert batch_counts(padded) == {"tokens": 7, "trained": 3, "positions": 8, "sum_sq": 9 + 16, "rows": 2,
                                    "micro_batches": 1}
    flat = {"input_ids": torch.ones(1, 7, dtype=torch.long), "labels": torch.tensor([[IGNORE, 1, 2, IGNORE, 3, 4, 5]]),
            "position_ids": torch.tensor([[0, 1, 2, 0, 1, 2, 3]])}
    assert batch_counts(flat)["sum_sq"] == 9 + 16 and batch_counts(flat)["trained"] == 5
    packed = dict(flat, packed_seq_lengths=torch.tensor([3, 4], dtype=torch.int32))
    assert batch_counts(packed) == batch_counts(flat)


def test_token_counter_counts_what_trl_collators_build():
    """Two rows (3 and 5 tokens, 2 and 3 trained) through TRL's padded and padding-free collators: the same
    counts either way, and padding is never counted."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    rows = [{"input_ids": [1, 2, 3], "labels": [IGNORE, 2, 3]},
            {"input_ids": [4, 5, 6, 7, 8], "labels": [IGNORE, IGNORE, 6, 7, 8]}]
    for padding_free in (False, True):
        counter = TokenCounter(DataCollatorForLanguageModeling(pad_token_id=0, padding_free=padding_free))
        batch = counter(rows)
        counter(rows[:1])
        assert (counter.tokens, counter.trained) == (8 + 3, 5 + 2), padding_free
        assert batch["input_ids"].numel() == (8 if padding_free else 10)
