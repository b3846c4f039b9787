#!/usr/bin/env python3
"""Reference fixtures for the engine's conformance test, made by Hugging Face
transformers itself (not by this project).

usage: make_fixtures.py OUTDIR [NAME ...]   (the named fixtures only)
       make_fixtures.py --model MODEL_DIR OUTDIR   (reference files only, for a
           model that exists, e.g. models/demo, on a sentence of its tokenizer)

For each configuration below: a randomly initialised MambaForCausalLM is saved
with save_pretrained in the fixture's weight dtype; the reference is a float64
forward pass on the CPU over the weights exactly as stored (bf16/f16 weights
rounded first, then widened), so a correct engine differs from it only by its
own float32 arithmetic. Writes OUTDIR/fixtures.tar holding one folder per
fixture with the same files as the shared tiny-mamba fixture:
config.json, model.safetensors (or shards + model.safetensors.index.json),
reference.json, ref_logits.f32 [T][vocab], ref_ssm_state.f32
[layer][d_inner][d_state], ref_conv_state.f32 [layer][d_inner][d_conv] (newest
input last), all float32 little-endian.
"""
import io
import json
import math
import os
import sys
import tarfile
import tempfile

import torch
import transformers
from transformers import MambaConfig, MambaForCausalLM

def d_state_fixture(d_state, seed, conv_kernel=4):
    """A float32 fixture "state<d_state>": two layers 32 wide, biases off."""
    return dict(name="state%d" % d_state, seed=seed, n_tokens=40,
                dtype=torch.float32,
                cfg=dict(vocab_size=256, hidden_size=32, num_hidden_layers=2,
                         state_size=d_state, conv_kernel=conv_kernel, expand=2,
                         time_step_rank=2, use_bias=False, use_conv_bias=True,
                         tie_word_embeddings=True, layer_norm_epsilon=1e-5))


FIXTURES = [
    # linear biases in in_proj/out_proj, separate lm_head, dt_rank "auto" (3)
    dict(name="bias-untied", seed=11, n_tokens=40, dtype=torch.float32,
         cfg=dict(vocab_size=320, hidden_size=48, num_hidden_layers=2,
                  state_size=16, conv_kernel=4, expand=2,
                  time_step_rank="auto", use_bias=True, use_conv_bias=True,
                  tie_word_embeddings=False, layer_norm_epsilon=1e-5)),
    # a 3-wide conv without bias, expand 3, d_state 8, dt_rank 7, eps 1e-6
    dict(name="conv3-rank7", seed=12, n_tokens=44, dtype=torch.float32,
         cfg=dict(vocab_size=256, hidden_size=40, num_hidden_layers=3,
                  state_size=8, conv_kernel=3, expand=3, time_step_rank=7,
                  use_bias=False, use_conv_bias=False,
                  tie_word_embeddings=True, layer_norm_epsilon=1e-6)),
    # bfloat16 weights, six layers
    dict(name="bf16-deep", seed=13, n_tokens=48, dtype=torch.bfloat16,
         cfg=dict(vocab_size=256, hidden_size=64, num_hidden_layers=6,
                  state_size=16, conv_kernel=4, expand=2, time_step_rank=4,
                  use_bias=False, use_conv_bias=True,
                  tie_word_embeddings=True, layer_norm_epsilon=1e-5)),
    # float16 weights in several shards (model.safetensors.index.json),
    # residual_in_fp32 false, time_step_rank written as "auto" in config.json
    dict(name="f16-sharded", seed=14, n_tokens=36, dtype=torch.float16,
         shard="120KB", auto_rank=True,
         cfg=dict(vocab_size=512, hidden_size=64, num_hidden_layers=2,
                  state_size=16, conv_kernel=4, expand=2, time_step_rank=4,
                  use_bias=False, use_conv_bias=True, residual_in_fp32=False,
                  tie_word_embeddings=True, layer_norm_epsilon=1e-5)),
    # d_state 64, 4 and 32: 16, 1 and 8 states a lane in the CUDA SSM kernels
    # (every other fixture has 16 or 8); state4's conv is 3 wide, so its conv
    # and SSM states differ in shape, which find_states needs
    d_state_fixture(64, seed=15),
    d_state_fixture(4, seed=16, conv_kernel=3),
    d_state_fixture(32, seed=17),
]


def find_states(cache, n_layer, d_inner, d_state, d_conv):
    """Collects each layer's ssm and conv tensors from the cache object,
    whatever its class layout in this transformers version: tensors shaped
    (1, d_inner, d_state) are SSM states and (1, d_inner, d_conv) conv states,
    in layer order."""
    ssm, conv, seen = [], [], set()

    def walk(o, depth):
        if depth > 6 or id(o) in seen:
            return
        seen.add(id(o))
        if torch.is_tensor(o):
            shp = tuple(o.shape)
            if shp == (n_layer, 1, d_inner, d_state):
                ssm.extend(o[i] for i in range(n_layer))
            elif shp == (n_layer, 1, d_inner, d_conv):
                conv.extend(o[i] for i in range(n_layer))
            elif shp == (1, d_inner, d_state):
                ssm.append(o)
            elif shp == (1, d_inner, d_conv):
                conv.append(o)
            return
        if isinstance(o, dict):
            for k in sorted(o, key=lambda k: (str(type(k)), k)):
                walk(o[k], depth + 1)
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v, depth + 1)
        elif hasattr(o, "__dict__"):
            for k in sorted(vars(o)):
                walk(vars(o)[k], depth + 1)

    walk(cache, 0)
    if len(ssm) != n_layer or len(conv) != n_layer:
        raise RuntimeError(f"cache layout not understood: {len(ssm)} ssm, "
                           f"{len(conv)} conv tensors in {type(cache)}")
    return torch.stack([s[0] for s in ssm]), torch.stack([c[0] for c in conv])


def perturb(model):
    """Hugging Face initialises biases to 0 and norm weights and D to 1, which
    would let an engine that ignores them pass: draw them at random instead."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("norm_f.weight") \
                    or name.endswith(".D"):
                p.uniform_(0.5, 1.5)
            elif name.endswith(".bias") and "dt_proj" not in name:
                p.normal_(0.0, 0.1)
            elif name.endswith("A_log"):
                p.add_(torch.randn_like(p) * 0.1)


def f32_bytes(t):
    return t.detach().to(torch.float32).contiguous().cpu().numpy().astype("<f4").tobytes()


def make(fx, root):
    torch.manual_seed(fx["seed"])
    cfg = MambaConfig(**fx["cfg"])
    model = MambaForCausalLM(cfg).eval()
    perturb(model)
    model = model.to(fx["dtype"])
    d = os.path.join(root, fx["name"])
    os.makedirs(d)
    kw = {"max_shard_size": fx["shard"]} if "shard" in fx else {}
    model.save_pretrained(d, **kw)
    if fx.get("auto_rank"):
        path = os.path.join(d, "config.json")
        with open(path) as f:
            c = json.load(f)
        assert c["time_step_rank"] == math.ceil(c["hidden_size"] / 16)
        c["time_step_rank"] = "auto"
        with open(path, "w") as f:
            json.dump(c, f, indent=2, sort_keys=True)

    g = torch.Generator().manual_seed(fx["seed"] + 1000)
    tokens = torch.randint(0, cfg.vocab_size, (1, fx["n_tokens"]), generator=g)
    generator = ("transformers %s MambaForCausalLM, random init (seed %d), "
                 "weights saved as %s, float64 forward on CPU of the stored "
                 "weights, stored as float32 little-endian"
                 % (transformers.__version__, fx["seed"],
                    str(fx["dtype"]).replace("torch.", "")))
    reference(model, tokens, d, generator)
    size = sum(os.path.getsize(os.path.join(d, n)) for n in os.listdir(d))
    print(f"{fx['name']}: {sorted(os.listdir(d))} {size} bytes")


def reference(model, tokens, d, generator):
    """Writes reference.json and ref_*.f32 into d: a float64 forward of the
    model's weights as stored over tokens (shape [1, T])."""
    cfg = model.config
    ref = model.to(torch.float64)
    with torch.no_grad():
        out = ref(input_ids=tokens, use_cache=True)
    ssm, conv = find_states(out.cache_params, cfg.num_hidden_layers,
                            cfg.intermediate_size, cfg.state_size,
                            cfg.conv_kernel)
    with open(os.path.join(d, "ref_logits.f32"), "wb") as f:
        f.write(f32_bytes(out.logits[0]))
    with open(os.path.join(d, "ref_ssm_state.f32"), "wb") as f:
        f.write(f32_bytes(ssm))
    with open(os.path.join(d, "ref_conv_state.f32"), "wb") as f:
        f.write(f32_bytes(conv))
    L, T, V = cfg.num_hidden_layers, tokens.shape[1], cfg.vocab_size
    meta = {
        "generator": generator,
        "tokens": tokens[0].tolist(),
        "logits": {"file": "ref_logits.f32", "shape": [T, V]},
        "ssm_state": {"file": "ref_ssm_state.f32",
                      "shape": [L, cfg.intermediate_size, cfg.state_size],
                      "layout": "[layer][d_inner][d_state]"},
        "conv_state": {"file": "ref_conv_state.f32",
                       "shape": [L, cfg.intermediate_size, cfg.conv_kernel],
                       "layout": "[layer][d_inner][d_conv]; last column is the newest input"},
    }
    with open(os.path.join(d, "reference.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(f"{d}: max|logit| {out.logits.abs().max().item():.3g}")


DEMO_TEXT = ("The apt-get command installs packages and their dependencies; "
             "see the manual page for its options.")


def make_for_model(model_dir, out):
    """Reference files for an existing model, over DEMO_TEXT as its own
    tokenizer.json encodes it (Hugging Face tokenizers)."""
    from tokenizers import Tokenizer
    model = MambaForCausalLM.from_pretrained(model_dir).eval()
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    tokens = torch.tensor([tok.encode(DEMO_TEXT, add_special_tokens=False).ids])
    os.makedirs(out, exist_ok=True)
    reference(model, tokens, out,
              "transformers %s MambaForCausalLM.from_pretrained of %s (weights as "
              "stored), float64 forward on CPU over %r tokenised by its "
              "tokenizer.json, stored as float32 little-endian"
              % (transformers.__version__, os.path.basename(os.path.normpath(model_dir)),
                 DEMO_TEXT))


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--model":
        make_for_model(sys.argv[2], sys.argv[3])
        return
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        sys.exit(__doc__)
    names = sys.argv[2:]
    unknown = set(names) - {fx["name"] for fx in FIXTURES}
    if unknown:
        sys.exit("unknown fixture: %s" % ", ".join(sorted(unknown)))
    chosen = [fx for fx in FIXTURES if not names or fx["name"] in names]
    torch.set_num_threads(4)
    with tempfile.TemporaryDirectory() as root:
        for fx in chosen:
            make(fx, root)
        with tarfile.open(os.path.join(sys.argv[1], "fixtures.tar"), "w") as tar:
            for fx in chosen:
                tar.add(os.path.join(root, fx["name"]), arcname=fx["name"])


if __name__ == "__main__":
    main()
