"""The benchmark harness on the CPU with the tiny shape: workload, counting, MFU, variants a and b, packing check.

GPU-only paths (4-bit, Unsloth variants c and d, real shapes) are marked `gpu` and run on the H100 machine.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import measure
from bench.packing import check_job, verdict
from bench.shapes import SHAPES, build_shape, make_config, matmul_params
from bench.variants import (DEFAULT_VARIANTS, MEDICAL_RECIPE, RUNNERS, VARIANTS, expand, project_overrides,
                            run_job)
from bench.workload import MEDICAL, TINY, make_rows, save_rows, statistics
from trainer.errors import UserError
from trainer.data.template import IGNORE

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tokenizer(tiny_path):
    from trainer.config import ModelConfig
    from trainer.model import load_tokenizer

    return load_tokenizer(ModelConfig(base=str(tiny_path)))


@pytest.fixture(scope="module")
def medical_rows(tokenizer):
    return make_rows(MEDICAL, 60, tokenizer)


def test_rows_are_deterministic_and_independent_of_count(tokenizer):
    first, again, more = make_rows(TINY, 6, tokenizer), make_rows(TINY, 6, tokenizer), make_rows(TINY, 9, tokenizer)
    assert first == again
    assert more[:6] == first


def test_sampled_lengths_are_the_token_lengths(tokenizer, medical_rows):
    """Each part has the token count drawn from its distribution (words are single tokens), give or take one."""
    for i, row in enumerate(medical_rows):
        rng = random.Random(MEDICAL.seed * 1_000_003 + i)
        wanted = [MEDICAL.question.sample(rng), MEDICAL.reasoning.sample(rng), MEDICAL.answer.sample(rng)]
        got = [len(tokenizer(row[k], add_special_tokens=False)["input_ids"]) for k in ("question", "reasoning",
                                                                                           "answer")]
        assert all(abs(g - w) <= 2 for g, w in zip(got, wanted)), (i, got, wanted)


def test_medical_statistics_are_as_stated(tokenizer, medical_rows):
    stats = statistics(medical_rows, MEDICAL, tokenizer)
    assert 30 - 2 <= stats["question_tokens"]["p0"] and stats["question_tokens"]["p100"] <= 150 + 2
    assert 120 - 2 <= stats["reasoning_tokens"]["p0"] and stats["reasoning_tokens"]["p100"] <= 1500 + 2
    assert 50 - 2 <= stats["answer_tokens"]["p0"] and stats["answer_tokens"]["p100"] <= 400 + 2
    assert 550 < stats["mean_total_tokens"] < 1100  # median-based means: about 70 + 510 + 170 + template
    assert stats["mean_trained_tokens"] < stats["mean_total_tokens"]
    assert stats["total_tokens"]["p100"] <= MEDICAL.max_length
    assert stats["seed_method"]["rows_cut"] > len(medical_rows) // 2  # 512 cuts most reasoning rows
    assert stats == statistics(medical_rows, MEDICAL, tokenizer)


def test_rows_are_masked_by_the_project_template(tokenizer, medical_rows):
    row = medical_rows[0]
    trained = [t for t, lab in zip(row["input_ids"], row["labels"]) if lab != IGNORE]
    prompt = [t for t, lab in zip(row["input_ids"], row["labels"]) if lab == IGNORE]
    assert row["labels"][0] == IGNORE and row["labels"][-1] == tokenizer.eos_token_id
    assert tokenizer.decode(prompt).endswith(row["question"] + "<｜Assistant｜><think>\n")
    assert tokenizer.decode(trained) == f"{row['reasoning']}\n</think>\n\n{row['answer']}{tokenizer.eos_token}"
    assert row["text"].startswith(tokenizer.bos_token) and row["text"].endswith(tokenizer.eos_token)


def test_mfu_formula():
    facts = {"matmul_params": 1_000_000, "n_layers": 2, "hidden": 64}
    result = {"tokens": 1000, "trained": 800, "positions": 1250, "sum_sq": 10 * 100 ** 2, "steps_timed": 4,
              "seconds": 2.0}
    d = measure.derive(result, facts, peak=1e12)
    attention = 12 * 2 * 64 * 10 * 100 ** 2
    assert d["mfu_6n"] == round((6e6 * 1000 + attention) / 2e12, 4)
    assert d["mfu_4n"] == round((4e6 * 1000 + attention) / 2e12, 4)
    assert (d["tokens_per_s"], d["trained_tokens_per_s"], d["pad_share"], d["step_s"]) == (500, 400, 0.2, 0.5)
    assert measure.peak_flops("NVIDIA H100 80GB HBM3") == 989.4e12
    assert measure.peak_flops("NVIDIA H100 PCIe") == 756e12 and measure.peak_flops("cpu") is None


def test_real_shapes_match_the_published_configs():
    c = make_config(SHAPES["qwen-1.5b"])
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads,
            c.intermediate_size, c.vocab_size, c.tie_word_embeddings) == (1536, 28, 12, 2, 8960, 151_936, False)
    c = make_config(SHAPES["qwen-7b"])
    assert (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.intermediate_size,
            c.vocab_size) == (3584, 28, 4, 18_944, 152_064)
    c = make_config(SHAPES["llama-8b"])
    assert (c.hidden_size, c.num_hidden_layers, c.num_key_value_heads, c.intermediate_size,
            c.vocab_size) == (4096, 32, 8, 14_336, 128_256)
    assert c.rope_parameters["rope_type"] == "llama3" and c.rope_parameters["rope_theta"] == 500_000.0
    # about 7.07B weights multiply each token in the 7B shape (its 0.54B embedding table does not)
    assert 6.9e9 < matmul_params(make_config(SHAPES["qwen-7b"])) < 7.1e9


@pytest.mark.parametrize("name", ["qwen-7b", "llama-8b"])
def test_shape_build_writes_a_loadable_folder(name, tmp_path, tiny_path):
    """The GPU build path, shrunk to width 64 and run on the CPU: weights, tokenizer and marker reload."""
    from transformers import AutoModelForCausalLM

    small = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1000)
    if name == "llama-8b":
        small["head_dim"] = 16
    build_shape(SHAPES[name], tmp_path / name, tiny_path, device="cpu", **small)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / name)
    assert model.dtype == torch.bfloat16 and model.config.num_hidden_layers == 2
    assert json.loads((tmp_path / name / "bench_shape.json").read_text())["copies"] == SHAPES[name].hub_id


def test_variant_selection_keeps_the_order_given_and_names_unknown_ones():
    assert [v.name for v in expand("all")] == list(DEFAULT_VARIANTS)
    assert [v.name for v in expand(" d-pack, a ,b")] == ["d-pack", "a", "b"]
    with pytest.raises(UserError) as err:
        expand("a,zz,b")
    assert err.value.message == "unknown variant(s) zz" and "d-pack" in err.value.fix


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_variant_has_a_runner_and_valid_recipe_overrides(name, tmp_path):
    """A variant's runner name and its recipe overrides are only used on the GPU; a typo must fail here."""
    from trainer.hardware import Hardware
    from trainer.recipe import load_recipe

    variant = VARIANTS[name]
    assert variant.runner in RUNNERS
    if variant.runner != "project":
        return
    job = {"shape_dir": "tiny", "quantize": variant.backend == "unsloth", "warmup": 1, "steps": 2}
    overrides = project_overrides(job, variant, 512, tmp_path)
    cuda = Hardware(cuda=True, name="NVIDIA GeForce RTX 4090", memory_gib=24.0)
    recipe = load_recipe(MEDICAL_RECIPE, overrides, cuda)  # raises UserError naming any bad key or value
    assert recipe.model.backend == variant.backend and recipe.train.max_steps == 3
    if variant.profile != "none":
        assert recipe.profile == variant.profile


def _job(tmp_path, tiny_path, tokenizer, variant: str, n_rows: int = 4) -> dict:
    rows_path = tmp_path / "rows.json"
    save_rows(make_rows(TINY, n_rows, tokenizer), TINY, rows_path)
    return {"kind": "variant", "shape": "tiny", "shape_dir": str(tiny_path), "variant": variant,
            "rows": str(rows_path), "steps": 2, "warmup": 0, "quantize": False, "work": str(tmp_path),
            "batch_size": 2, "grad_accum": 1}


def test_variant_b_counts_every_trained_label_it_was_fed(tmp_path, tiny_path, tokenizer):
    """Two steps of 2 rows consume the 4 rows once: the count equals the rows' own trained labels."""
    job = _job(tmp_path, tiny_path, tokenizer, "b")
    out = run_job(job)
    rows = json.loads(Path(job["rows"]).read_text())["rows"]
    res = out["result"]
    assert res["trained"] == sum(sum(1 for x in r["labels"][1:] if x != IGNORE) for r in rows)
    assert res["tokens"] == sum(len(r["input_ids"]) for r in rows) and res["rows"] == 4
    assert out["info"]["backend"] == "transformers" and res["steps_done"] == 2
    d = measure.derive(res, out["facts"], None)
    assert d["tokens_per_s"] > 0 and d["trained_tokens_per_s"] > 0


def test_variant_a_pads_cuts_and_masks_like_the_seeds(tmp_path, tiny_path, tokenizer):
    job = _job(tmp_path, tiny_path, tokenizer, "a")
    out = run_job(job)
    rows = json.loads(Path(job["rows"]).read_text())["rows"]
    raw = __import__("transformers").AutoTokenizer.from_pretrained(str(tiny_path))
    ids = raw([r["text"] for r in rows], truncation=True, max_length=TINY.seed_length)["input_ids"]
    pad = raw.pad_token_id if raw.pad_token_id is not None else raw.eos_token_id
    res = out["result"]
    assert res["positions"] == 4 * TINY.seed_length  # every row padded to the seed length
    assert res["tokens"] == sum(len(x) for x in ids)
    assert res["trained"] == sum(sum(1 for t in x[1:] if t != pad) for x in ids)  # pad (= eos) masked
    assert measure.derive(res, out["facts"], None)["tokens_per_s"] > 0


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packing_check_on_the_tiny_model(attn, tmp_path, tiny_path, tokenizer):
    job = _job(tmp_path, tiny_path, tokenizer, "b")
    job.update(kind="packing-check", backend="transformers", attn=attn, n_rows=3)
    out = check_job(job)
    assert out["attn_implementation"] == attn and "attention_mask" not in out["batch_keys"]
    check = out["check"]
    # Finding on CPU: transformers builds a block-diagonal mask from restarting position ids (no attention mask,
    # no cache), so packed rows do not see each other; with continuous positions they do.
    assert check["verdict"] == "isolated", check
    assert check["max_leaky_diff"] > 10 * check["tolerance"]


def test_verdicts():
    assert verdict([2.0, 3.0], [2.0, 3.0], [2.0, 3.5], "float32")["verdict"] == "isolated"
    assert verdict([2.0, 3.0], [2.0, 3.5], [2.0, 3.5], "float32")["verdict"] == "leaks"
    assert verdict([2.0, 3.0], [2.0, 3.0], [2.0, 3.0], "float32")["verdict"] == "inconclusive"


@pytest.mark.integration
def test_cli_runs_variants_in_subprocesses_and_prints_the_table_last(tmp_path):
    out = tmp_path / "bench.json"
    command = [sys.executable, "-m", "bench", "--shapes", "tiny", "--variants", "a,c", "--steps", "1", "--warmup",
               "1", "--rows", "4", "--batch-size", "2", "--grad-accum", "1", "--no-4bit", "--work",
               str(tmp_path / "work"), "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(command, cwd=ROOT, env=env, check=False, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stdout + done.stderr  # c cannot run without CUDA: recorded, not fatal
    report = json.loads(out.read_text())
    a, c = report["results"]
    assert a["derived"]["tokens_per_s"] > 0 and a["result"]["steps_timed"] == 1
    assert c["error"] == "skipped: needs CUDA"
    assert report["shapes"]["tiny"]["workload"]["rows"] == 4 and "mfu_formula" in report
    assert done.stdout.strip().splitlines()[-2].startswith("| tiny | a |")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_packing_check_under_unsloth(tmp_path):
    """On the GPU: the project's Unsloth path keeps packed rows apart on a real 1.5B shape."""
    command = [sys.executable, "-m", "bench", "packing-check", "--shapes", "qwen-1.5b", "--backends",
               "unsloth,transformers", "--work", os.environ.get("BENCH_WORK", "/tmp/bench"), "--out",
               str(tmp_path / "check.json")]
    done = subprocess.run(command, cwd=ROOT, check=False, capture_output=True, text=True, timeout=900)
    report = json.loads((tmp_path / "check.json").read_text())
    assert all(c["check"]["verdict"] == "isolated" for c in report["packing_checks"]), done.stdout[-3000:]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_variants_c_and_d_run(tmp_path):
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, "-m", "bench", "--shapes", "qwen-1.5b", "--variants", "c,d", "--steps", "2",
                    "--work", os.environ.get("BENCH_WORK", "/tmp/bench"), "--out", str(out)], cwd=ROOT,
                   check=False, capture_output=True, text=True, timeout=900)
    results = json.loads(out.read_text())["results"]
    assert all(r.get("derived", {}).get("trained_tokens_per_s", 0) > 0 for r in results), results


def test_merge_combines_reports_into_one_table(tmp_path, capsys):
    from bench.runner import merge

    def report(shape, variant):
        result = {"tokens": 100, "trained": 80, "positions": 100, "sum_sq": 100, "steps_timed": 1, "seconds": 1.0}
        return {"command": f"run {shape}", "date": "d", "shapes": {shape: {}}, "packing_checks": [],
                "results": [{"shape": shape, "variant": variant, "summary": "s", "result": result,
                             "derived": measure.derive(result, {"matmul_params": 1, "n_layers": 1, "hidden": 1},
                                                       None)}]}

    for i, (shape, variant) in enumerate([("qwen-1.5b", "d"), ("qwen-7b", "a")]):
        (tmp_path / f"{i}.json").write_text(json.dumps(report(shape, variant)))
    assert merge([str(tmp_path / "0.json"), str(tmp_path / "1.json")], str(tmp_path / "all.json")) == 0
    merged = json.loads((tmp_path / "all.json").read_text())
    assert [r["variant"] for r in merged["results"]] == ["d", "a"] and set(merged["shapes"]) == {"qwen-1.5b",
                                                                                                 "qwen-7b"}
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("| qwen-7b | a | 100 | 80 |")
