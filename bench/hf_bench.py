#!/usr/bin/env python3
"""Hugging Face transformers MambaForCausalLM on the same shapes as bench_cuda.

Random weights (the library's own init), bf16 on the GPU, vocab 50280,
d_state 16, expand 2, d_conv 4, no linear bias, conv bias, tied embeddings.
Whatever kernels transformers picks on this machine are used (without the
mamba_ssm / causal_conv1d packages that is its pure-PyTorch path).

  decode ms/step at batch 1: generate() of 80 and of 16 greedy tokens after a
      32-token prompt; (t80 - t16) / 64, so the prompt's prefill cancels out.
      Median of 3 pairs after one warm-up; CUDA-synchronised wall clock.
  prefill tok/s at 2048 tokens: one forward without cache, timed with CUDA
      events, median of 2 after one warm-up (one run only when the warm-up
      alone takes over 20 s).

Prints rows in bench_cuda's table format; progress on stderr.
"""
import statistics
import sys
import time

import torch
from transformers import MambaConfig, MambaForCausalLM

SHAPES = [("130m", 768, 24), ("1.4b", 2048, 48), ("2.8b", 2560, 64)]


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def row(model, figure, value, unit, note=""):
    print(f"| {model:<5} | bf16  | {figure:<34} | {value:10.3f} | {unit:<8} |      - {note}",
          flush=True)


def gen_seconds(model, prompt, n):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    model.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                   pad_token_id=0)
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def forward_ms(model, ids):
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    model(ids, use_cache=False)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end)


def main():
    torch.manual_seed(0)
    log(f"torch {torch.__version__}, device {torch.cuda.get_device_name()}")
    for label, d, n_layer in SHAPES:
        cfg = MambaConfig(vocab_size=50280, hidden_size=d, num_hidden_layers=n_layer,
                          state_size=16, expand=2, conv_kernel=4, use_bias=False,
                          use_conv_bias=True, tie_word_embeddings=True,
                          residual_in_fp32=True)
        t0 = time.perf_counter()
        with torch.device("cuda"):
            model = MambaForCausalLM(cfg).to(torch.bfloat16).eval()
        log(f"{label}: built in {time.perf_counter() - t0:.1f} s")
        with torch.inference_mode():
            prompt = torch.randint(0, 50280, (1, 32), device="cuda")
            gen_seconds(model, prompt, 16)
            steps = []
            for _ in range(3):
                t_long = gen_seconds(model, prompt, 80)
                t_short = gen_seconds(model, prompt, 16)
                steps.append((t_long - t_short) / 64 * 1e3)
            row(label, "HF decode batch 1", statistics.median(steps), "ms/step",
                "(transformers generate)")

            ids = torch.randint(0, 50280, (1, 2048), device="cuda")
            warm = forward_ms(model, ids)
            runs = [warm] if warm > 20e3 else [forward_ms(model, ids) for _ in range(2)]
            ms = statistics.median(runs)
            row(label, "HF prefill 2048 tokens", 2048 / (ms * 1e-3), "tok/s",
                f"({ms:.1f} ms)")
        del model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
