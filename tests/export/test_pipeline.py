"""`make gguf` on a real (tiny, CPU) training run: merge, convert, quantize, verify, Modelfile, chat, re-run, errors.

Needs llama.cpp's tools (built once into R1TUNE_CACHE) and llama-cpp-python, like the other `llamacpp` tests.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.llamacpp

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def run(*args: str, timeout: int = 900, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished news run on the tiny model (LoRA on every linear layer, the embeddings and the head)."""
    out = tmp_path_factory.mktemp("runs")
    done = run("-m", "trainer", "train", "news", "profile=cpu", "train.max_steps=12", "train.eval_steps=null",
               "data.val_size=8", f"train.output_dir={out}")
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = out.glob("news-*")
    return run_dir


@pytest.fixture(scope="module")
def exported(trained: Path) -> tuple[Path, subprocess.CompletedProcess]:
    return trained, run("-m", "export", "gguf", str(trained), "--quant", "q8_0,q4_k_m")


def test_make_gguf_writes_verified_files_and_a_modelfile(exported):
    run_dir, done = exported
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    types = ("f16", "q4_k_m", "q8_0")
    names = sorted(p.name for p in (run_dir / "gguf").glob("*.gguf"))
    assert names == [f"{run_dir.name}-{t}.gguf" for t in types]
    report = json.loads((run_dir / "gguf" / "export.json").read_text())
    checks = {c["name"]: c for c in report["checks"]}
    assert report["passed"] and set(checks) >= {"merge", "tokenization", "chat_template", "greedy", "top1_agreement",
                                                "perplexity"}
    assert report["passed"] == all(c["passed"] for c in report["checks"])
    assert checks["merge"]["numbers"]["max_relative_error"] <= 1e-4  # float32 tiny base: exact up to rounding
    # Every file has a perplexity check on the run's held-out rows, against the merged model or the f16 file.
    perplexity = {c["numbers"]["file"]: c for c in report["checks"] if c["name"] == "perplexity"}
    assert sorted(perplexity) == names
    for check in perplexity.values():
        numbers = check["numbers"]
        assert check["passed"] and numbers["ratio"] <= 1 + numbers["tolerance"]
        assert "held-out rows of eval_data.jsonl" in check["summary"]
    assert abs(perplexity[f"{run_dir.name}-f16.gguf"]["numbers"]["ratio"] - 1) < 0.01  # f16 vs float32 HF
    for name in names:
        assert f"{name}: good" in done.stdout
    modelfile = (run_dir / "gguf" / "Modelfile").read_text().splitlines()
    # the first instruction (after the comment naming the run's other files) loads the main quantization
    first = next(line for line in modelfile if line and not line.startswith("#"))
    assert first == f"FROM ./{run_dir.name}-q4_k_m.gguf"
    assert "llama-cli -m" in done.stdout and "ollama create" in done.stdout
    assert not [p for p in run_dir.rglob("*") if ".tmp" in p.name]  # nothing left half-written


def test_the_perplexity_check_fails_a_file_of_another_model(exported, tiny_path, tmp_path):
    """The untrained base's f16 GGUF scored on the trained run's held-out rows: far over any limit."""
    from export import gguf, verify

    run_dir, _ = exported
    merged = run_dir / "merged"
    held_out = verify.held_out_texts(run_dir, merged)
    assert "held-out rows of eval_data.jsonl" in held_out.source
    trained_f16 = run_dir / "gguf" / f"{run_dir.name}-f16.gguf"
    other = gguf.convert(tiny_path, tmp_path / "base-f16.gguf", "f16").path
    reference = verify.gguf_perplexity(trained_f16, held_out)
    ours = verify.check_perplexity(trained_f16, "f16", reference, verify.hf_perplexity(merged, held_out),
                                   "the merged model", held_out.source)
    theirs = verify.check_perplexity(other, "q8_0", verify.gguf_perplexity(other, held_out), reference, "f16",
                                     held_out.source)
    assert ours.passed and not theirs.passed and theirs.numbers["ratio"] > 2


def test_merged_folder_loads_in_transformers_and_differs_from_the_base(exported, tiny_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir, _ = exported
    merged = AutoModelForCausalLM.from_pretrained(str(run_dir / "merged"), dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_path), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(run_dir / "merged"))
    assert tokenizer.chat_template.startswith("{% if not add_generation_prompt is defined %}")  # the original R1
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged.state_dict()[name], base.state_dict()[name])  # the adapter went in


def test_a_second_run_skips_finished_steps(exported):
    run_dir, _ = exported
    before = {p: p.stat().st_mtime_ns for p in (run_dir / "gguf").glob("*.gguf")}
    again = run("-m", "export", "gguf", str(run_dir), "--quant", "q8_0,q4_k_m", "--no-verify")
    assert again.returncode == 0, again.stderr[-2000:]
    assert {p: p.stat().st_mtime_ns for p in before} == before
    files = json.loads((run_dir / "gguf" / "export.json").read_text())["files"]
    assert all(f["skipped"] for f in files)


PROMPT = "新闻分类:央行宣布下调存款准备金率"


@pytest.fixture(scope="module")
def gguf_reply(exported) -> str:
    run_dir, _ = exported
    done = run("-m", "export", "chat", str(run_dir), "--quant", "f16", "--prompt", PROMPT, "--max-new-tokens",
               "24", "--temperature", "0", timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_chat_with_the_gguf_prints_the_merged_models_greedy_reply(exported, gguf_reply):
    """The oracle is transformers on merged/: the original template's prompt, 24 greedy tokens. The f16 GGUF
    continues like it (the export's greedy check), so the chat must print the same text inside its frame."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir, _ = exported
    tokenizer = AutoTokenizer.from_pretrained(str(run_dir / "merged"))
    model = AutoModelForCausalLM.from_pretrained(str(run_dir / "merged"), dtype=torch.float32).eval()
    ids = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=24, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    reply = tokenizer.decode(out[0, ids.shape[1]:]).replace(tokenizer.eos_token, "")
    printed = squeeze(gguf_reply)
    reasoning, _, answer = reply.partition("</think>")  # the chat prints the two apart, each in its own frame
    assert len(squeeze(reply)) >= 4
    at = printed.find(squeeze(reasoning))
    assert at >= 0 and squeeze(answer) in printed[at + len(squeeze(reasoning)):], (reply, gguf_reply)


def squeeze(text: str) -> str:
    """Without whitespace, and without the replacement character that decoding an invalid byte run gives."""
    return "".join(text.split()).replace("\ufffd", "")


def test_chat_gguf_uses_the_file_make_gguf_verified_last_in_the_recipe_context(exported):
    from trainer.recipe import load_resolved

    run_dir, _ = exported
    done = run("-m", "export", "chat", str(run_dir), "--prompt", "新闻分类:球队夺冠", "--temperature", "0",
               timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    recipe = load_resolved(run_dir)
    report = json.loads((run_dir / "gguf" / "export.json").read_text())
    last = Path(report["files"][-1]["path"]).name  # `--quant q8_0,q4_k_m` writes q4_k_m last
    assert last == f"{run_dir.name}-q4_k_m.gguf"
    verdict = {True: ", verified", None: ""}[report["passed"]]  # None after an export with --no-verify
    assert f"{last} (the file `make gguf` wrote last{verdict})" in done.stderr
    assert f"up to {recipe.eval.max_new_tokens} new tokens in a {recipe.model.max_seq_length}-token context" \
        in done.stderr
    f16 = run("-m", "export", "chat", str(run_dir), "--quant", "f16", "--prompt", "x", "--max-new-tokens", "2",
              timeout=300)
    assert f16.returncode == 0 and f"{run_dir.name}-f16.gguf (QUANT=f16)" in f16.stderr


def test_chat_gguf_defaults_to_the_latest_run(exported, gguf_reply, tmp_path):
    run_dir, _ = exported
    (tmp_path / "runs").symlink_to(run_dir.parent)  # `make chat-gguf` runs `python -m export chat latest` here
    done = run("-m", "export", "chat", "--quant", "f16", "--prompt", PROMPT, "--max-new-tokens", "24",
               "--temperature", "0", timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == gguf_reply  # the same model answered: the run's own GGUF


@pytest.mark.parametrize(("make_target", "message"), [
    (lambda tmp, trained: tmp / "missing", "run folder not found"),
    (lambda tmp, trained: unfinished(tmp, trained), "did not finish"),
    (lambda tmp, trained: without_adapter(tmp, trained), "adapter"),
    (lambda tmp, trained: with_unavailable_base(tmp, trained), "deepseek-ai/DeepSeek-R1-Distill-Qwen-404B"),
])
def test_refusals_exit_2_with_one_line(make_target, message, tmp_path, trained):
    target = make_target(tmp_path, trained)
    done = run("-m", "export", "gguf", str(target), "--quant", "q8_0", timeout=300)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 or done.stderr.count("error:") == 1
    assert not (Path(target) / "gguf").exists() or Path(target) == trained


def test_an_unknown_quant_type_exits_2(trained):
    done = run("-m", "export", "gguf", str(trained), "--quant", "q3_fancy", timeout=120)
    assert done.returncode == 2 and "q3_fancy" in done.stderr and "q4_k_m" in done.stderr
    assert "QUANT=q3_fancy" in done.stderr and "export.quantization " not in done.stderr  # the key has an s


def test_a_second_quant_type_keeps_the_first_in_export_json_and_the_modelfile(exported):
    run_dir, first = exported
    assert first.returncode == 0, first.stderr[-3000:]
    done = run("-m", "export", "gguf", str(run_dir), "--quant", "q4_k_m")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((run_dir / "gguf" / "export.json").read_text())
    names = {Path(f["path"]).name for f in summary["files"]}
    assert {f"{run_dir.name}-q8_0.gguf", f"{run_dir.name}-q4_k_m.gguf"} <= names
    # this export checked its own file (by perplexity); q8_0 keeps the checks it had (none after the module's
    # earlier --no-verify run), so the folder's verdict covers both files
    checked = {c["numbers"].get("file") for c in summary["checks"] if c["name"] == "perplexity"}
    assert f"{run_dir.name}-q4_k_m.gguf" in checked
    assert summary["passed"] == all(c["passed"] for c in summary["checks"])
    modelfile = (run_dir / "gguf" / "Modelfile").read_text()
    assert f"FROM ./{run_dir.name}-q4_k_m.gguf" in modelfile and f"{run_dir.name}-q8_0.gguf" in modelfile


def copy_run(tmp: Path, trained: Path) -> Path:
    target = tmp / trained.name
    shutil.copytree(trained, target, ignore=shutil.ignore_patterns("gguf", "merged"))
    return target


def unfinished(tmp: Path, trained: Path) -> Path:
    target = copy_run(tmp, trained)
    (target / "COMPLETE").unlink()
    return target


def without_adapter(tmp: Path, trained: Path) -> Path:
    target = copy_run(tmp, trained)
    shutil.rmtree(target / "adapter")
    return target


def with_unavailable_base(tmp: Path, trained: Path) -> Path:
    target = copy_run(tmp, trained)
    config = target / "config.yaml"
    config.write_text(config.read_text().replace("base: tiny", "base: deepseek-ai/DeepSeek-R1-Distill-Qwen-404B"))
    return target
