"""Time `make gguf` on a real shape: random 16-bit weights, a random LoRA adapter on every linear layer, a run
folder like `make train` writes, then the product's own export (merge, convert, quantize) with its timings and
peak host RAM. `python -m bench export --shape qwen-7b --quant q4_k_m --out $OUT/export.json`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.shapes import build_shape, get_shape, is_built, shape_dir, tokenizer_path

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
RANK = 16


def export_bench(shape_name: str, work: Path, tokenizers: str | None, quant: str, device: str, out: Path) -> dict:
    shape = get_shape(shape_name)
    base = shape_dir(shape_name, work)
    build_s = 0.0
    if not is_built(shape_name, work):
        build_s = build_shape(shape, base, tokenizer_path(shape.family, tokenizers, work), device=device)
    run = fake_run(base, work / "runs" / f"{shape_name}-export")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent.parent),
                                                                      os.environ.get("PYTHONPATH")]))}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "export", "gguf", str(run), "--quant", quant, "--no-verify"],
                          env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"export failed ({done.returncode}):\n{done.stderr[-3000:]}")
    summary = json.loads((run / "gguf" / "export.json").read_text())
    model_gib = sum(p.stat().st_size for p in base.glob("*.safetensors")) / 2**30
    result = {"shape": shape_name, "quant": quant, "weights_gib_16bit": round(model_gib, 2),
              "shape_build_s": round(build_s, 1), "export_wall_s": round(wall, 1),
              "merge_s": summary["merge_seconds"], "files": summary["files"],
              "merge_peak_rss_gib": summary["peak_rss_gib"], "tools_peak_rss_gib": summary["tools_peak_rss_gib"],
              "merge_peak_over_model": round(summary["peak_rss_gib"] / model_gib, 3),
              "cpus": os.cpu_count(), "stdout_tail": done.stdout[-1500:]}
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def fake_run(base: Path, run: Path) -> Path:
    """A finished QLoRA run of `base` as `make train` leaves it: resolved recipe, adapter, tokenizer, COMPLETE."""
    import shutil

    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig

    from trainer.config import DataConfig, ModelConfig, Recipe
    from trainer.recipe import save_resolved
    from trainer.runs import mark_complete

    if (run / "COMPLETE").is_file():
        return run
    adapter = run / "adapter"
    adapter.mkdir(parents=True, exist_ok=True)
    config = AutoConfig.from_pretrained(str(base))
    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for layer in range(config.num_hidden_layers):
        for name, (fan_in, fan_out) in module_shapes(config).items():
            prefix = f"base_model.model.model.layers.{layer}.{name}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(RANK, fan_in, generator=generator) * 0.01
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(fan_out, RANK, generator=generator) * 0.01
    save_file(tensors, str(adapter / "adapter_model.safetensors"))
    (adapter / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": RANK, "lora_alpha": RANK, "lora_dropout": 0.0,
        "use_rslora": False, "target_modules": list(TARGETS), "bias": "none", "fan_in_fan_out": False,
        "base_model_name_or_path": str(base)}, indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
        if (base / name).is_file():
            shutil.copy2(base / name, adapter / name)
    (run / "metrics.json").write_text(json.dumps({"lora_scale": 1.0}))  # lora_alpha / r, as training records it
    save_resolved(Recipe(name=run.name, model=ModelConfig(base=str(base), quantization="4bit"),
                         data=DataConfig(path="unused.jsonl")), run / "config.yaml")
    mark_complete(run)
    return run


def module_shapes(config) -> dict[str, tuple[int, int]]:
    """(in, out) features of each adapted linear layer of one decoder layer."""
    d = config.hidden_size
    head = getattr(config, "head_dim", None) or d // config.num_attention_heads
    q, kv, ff = config.num_attention_heads * head, config.num_key_value_heads * head, config.intermediate_size
    return {"self_attn.q_proj": (d, q), "self_attn.k_proj": (d, kv), "self_attn.v_proj": (d, kv),
            "self_attn.o_proj": (q, d), "mlp.gate_proj": (d, ff), "mlp.up_proj": (d, ff), "mlp.down_proj": (ff, d)}
