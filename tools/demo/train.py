#!/usr/bin/env python3
"""Trains ssmd's demo model: a small Mamba in Hugging Face's MambaForCausalLM
layout, on the corpus that tools/demo/prepare.sh builds.

    python3 tools/demo/train.py --data .demo-data --run RUN [--time-limit S]
        [--total-steps N] [--export DIR] [--check]

The model is transformers' own MambaForCausalLM (its initialisation, names
and save_pretrained), with the mixer's forward replaced during training by
one that runs the selective scan as a time loop of fused in-place updates
and a hand-written backward (transformers' pure-PyTorch path builds an
autograd graph of several nodes per time step and layer, far slower). The
replacement is checked against transformers' own forward at the start of
every run (--check makes that the only thing the run does).

Resumable: RUN/ckpt.pt holds the weights, the optimiser, the step and the
elapsed time; it is rewritten every --save-every seconds and when
--time-limit is reached, and a run started on a RUN that has one continues
from it. The batch of step k is drawn by a generator seeded with (seed, k),
so a resumed run sees exactly the batches an uninterrupted one would.
Learning rate: linear warm-up, constant, then linear decay to zero over the
last --decay-steps of --total-steps (a warmup-stable-decay schedule, so the
length of the training can be fixed by the run that ends it).

--export DIR writes config.json and model.safetensors (bfloat16 weights,
tied embeddings) and copies tokenizer.json, then reloads the export with
MambaForCausalLM.from_pretrained and reports its held-out loss.
"""
import argparse
import json
import lzma
import math
import os
import shutil
import time

import numpy as np
import torch
import torch.nn.functional as F
from transformers import MambaConfig, MambaForCausalLM
from transformers.models.mamba import modeling_mamba

SHAPE = dict(hidden_size=384, num_hidden_layers=8, state_size=16, expand=2,
             conv_kernel=4, vocab_size=8192)


# --- the selective scan with a hand-written backward --------------------------

class SelectiveScan(torch.autograd.Function):
    """y[b,l,d] = sum_n C[b,l,n] h[l,b,d,n], where
    h[l] = exp(dt[l] A) * h[l-1] + dt[l] x[l] B[l]   (h[-1] = 0).
    x, dt: (B,L,D); A: (D,N); Bm, Cm: (B,L,N); all float32.
    The states are kept time-major, (L,B,D,N), so each step's update is one
    contiguous in-place kernel. Under autocast it still runs in float32."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(ctx, x, dt, A, Bm, Cm):
        xt, dtt = x.transpose(0, 1), dt.transpose(0, 1)
        Bt, Ct = Bm.transpose(0, 1), Cm.transpose(0, 1)
        dA = torch.exp(dtt.unsqueeze(-1) * A)                       # (L,B,D,N)
        H = (dtt * xt).unsqueeze(-1) * Bt.unsqueeze(2)              # u, scanned in place
        for t in range(1, H.shape[0]):
            H[t].addcmul_(dA[t], H[t - 1])
        y = torch.einsum("lbdn,lbn->lbd", H, Ct)
        ctx.save_for_backward(x, dt, A, Bm, Cm, dA, H)
        return y.transpose(0, 1)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, gy):
        x, dt, A, Bm, Cm, dA, H = ctx.saved_tensors
        xt, dtt = x.transpose(0, 1), dt.transpose(0, 1)
        Bt, Ct = Bm.transpose(0, 1), Cm.transpose(0, 1)
        gyt = gy.transpose(0, 1)
        gC = torch.einsum("lbdn,lbd->lbn", H, gyt)
        G = gyt.unsqueeze(-1) * Ct.unsqueeze(2)                     # dL/dh, direct part
        for t in range(G.shape[0] - 1, 0, -1):                      # + through h[t] = dA h[t-1]
            G[t - 1].addcmul_(dA[t], G[t])
        gs = torch.zeros_like(dA)                                   # dL/d(dt A)
        torch.mul(G[1:], H[:-1], out=gs[1:])
        gs[1:].mul_(dA[1:])
        gdt = torch.einsum("lbdn,dn->lbd", gs, A)
        gA = torch.einsum("lbdn,lbd->dn", gs, dtt)
        GB = torch.einsum("lbdn,lbn->lbd", G, Bt)                   # dL/d(dt x)
        gdt += GB * xt
        gx = GB * dtt
        gB = torch.einsum("lbdn,lbd->lbn", G, dtt * xt)
        return (gx.transpose(0, 1), gdt.transpose(0, 1), gA,
                gB.transpose(0, 1), gC.transpose(0, 1))


def mixer_forward(self, hidden_states, cache_params=None, cache_position=None,
                  attention_mask=None, **kwargs):
    """MambaMixer.forward for training: the slow path's arithmetic, the scan
    through SelectiveScan. Anything with a cache goes to the original."""
    if cache_params is not None or attention_mask is not None:
        return self._ssmd_original_forward(hidden_states, cache_params=cache_params,
                                           cache_position=cache_position,
                                           attention_mask=attention_mask, **kwargs)
    L = hidden_states.shape[1]
    x, z = self.in_proj(hidden_states).chunk(2, dim=-1)
    x = self.act(self.conv1d(x.transpose(1, 2))[..., :L]).transpose(1, 2)
    dt, Bm, Cm = torch.split(self.x_proj(x), [self.time_step_rank, self.ssm_state_size,
                                              self.ssm_state_size], dim=-1)
    dt = F.softplus(self.dt_proj(dt).float())
    A = -torch.exp(self.A_log.float())
    xf = x.float()
    y = SelectiveScan.apply(xf, dt, A, Bm.float(), Cm.float())
    y = (y + xf * self.D.float()) * self.act(z.float())
    return self.out_proj(y.to(hidden_states.dtype))


def use_fast_mixer(on):
    cls = modeling_mamba.MambaMixer
    if not hasattr(cls, "_ssmd_original_forward"):
        cls._ssmd_original_forward = cls.forward
    cls.forward = mixer_forward if on else cls._ssmd_original_forward


# --- data ---------------------------------------------------------------------

def load_tokens(path):
    with lzma.open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype="<u2").astype(np.int64)


def batch_for(tokens, step, seed, batch, seq, device):
    g = np.random.default_rng([seed, step])
    starts = g.integers(0, tokens.size - seq - 1, size=batch)
    idx = starts[:, None] + np.arange(seq + 1)[None, :]
    t = torch.from_numpy(tokens[idx]).to(device, non_blocking=True)
    return t[:, :-1], t[:, 1:]


@torch.no_grad()
def heldout_loss(model, tokens, seq, device, batch=16):
    """Mean next-token loss (nats) over the held-out tokens, in windows of
    seq tokens each predicting its own next tokens (no overlap)."""
    n = (tokens.size - 1) // seq
    total, count = 0.0, 0
    for i in range(0, n, batch):
        rows = range(i, min(n, i + batch))
        idx = np.stack([np.arange(r * seq, r * seq + seq + 1) for r in rows])
        t = torch.from_numpy(tokens[idx]).to(device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
            logits = model(t[:, :-1]).logits.float()
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), t[:, 1:].reshape(-1),
                                 reduction="sum").item()
        count += t[:, 1:].numel()
    return total / count


# --- checks -------------------------------------------------------------------

def check_fast_path(model, device, log):
    """The fast mixer against transformers' own forward, float32, no autocast:
    logits and every parameter's gradient. Tolerance 1e-4 relative (both are
    float32 sums over at most a few hundred steps and d_inner terms; a wrong
    formula is off by O(1))."""
    g = torch.Generator(device="cpu").manual_seed(7)
    ids = torch.randint(0, model.config.vocab_size, (2, 96), generator=g).to(device)
    out = {}
    for fast in (False, True):
        use_fast_mixer(fast)
        model.zero_grad(set_to_none=True)
        logits = model(ids).logits.float()
        logits.square().mean().backward()
        out[fast] = (logits.detach(), {n: p.grad.detach().clone()
                                       for n, p in model.named_parameters()})
    model.zero_grad(set_to_none=True)
    use_fast_mixer(True)
    rel = lambda a, b: ((a - b).norm() / b.norm().clamp_min(1e-30)).item()
    worst_l = rel(out[True][0], out[False][0])
    worst_g = max(rel(out[True][1][n], out[False][1][n]) for n in out[False][1])
    log("check: fast mixer vs transformers forward: logits %.2e, worst gradient %.2e "
        "(tolerance 1e-4)" % (worst_l, worst_g))
    if worst_l > 1e-4 or worst_g > 1e-4:
        raise SystemExit("fast mixer disagrees with transformers' forward")


# --- training -----------------------------------------------------------------

def lr_at(step, a):
    if step < a.warmup:
        return a.lr * (step + 1) / a.warmup
    decay_start = a.total_steps - a.decay_steps
    if step < decay_start:
        return a.lr
    return a.lr * max(0.0, (a.total_steps - step) / max(1, a.decay_steps))


def make_optimizer(model, a):
    decay, plain = [], []
    for n, p in model.named_parameters():
        no_wd = p.dim() < 2 or n.endswith("A_log") or "norm" in n
        (plain if no_wd else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": a.weight_decay},
                              {"params": plain, "weight_decay": 0.0}],
                             lr=a.lr, betas=(0.9, 0.95), eps=1e-8,
                             fused=torch.cuda.is_available())


def save_checkpoint(path, model, opt, step, elapsed, a):
    tmp = path + ".tmp"
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                "elapsed": elapsed, "args": vars(a)}, tmp)
    os.replace(tmp, path)


def export(model, a, data_dir, log, val):
    os.makedirs(a.export, exist_ok=True)
    use_fast_mixer(False)
    model.to(torch.bfloat16).save_pretrained(a.export, safe_serialization=True)
    shutil.copy(os.path.join(data_dir, "tokenizer.json"), a.export)
    back = MambaForCausalLM.from_pretrained(a.export, dtype=torch.float32).to(model.device)
    use_fast_mixer(True)
    loss = heldout_loss(back, val, a.seq, str(model.device))
    log("export: %s, held-out loss of the bf16 export reloaded by from_pretrained: "
        "%.4f nats/token (perplexity %.2f)" % (a.export, loss, math.exp(loss)))
    return loss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--run", required=True)
    ap.add_argument("--time-limit", type=float, default=540)
    ap.add_argument("--save-every", type=float, default=120)
    ap.add_argument("--total-steps", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--decay-steps", type=int, default=1000)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--export")
    ap.add_argument("--check", action="store_true", help="only check the fast mixer")
    a = ap.parse_args()

    t_start = time.time()
    os.makedirs(a.run, exist_ok=True)
    logf = open(os.path.join(a.run, "train.log"), "a")

    def log(msg):
        print(msg, flush=True)
        logf.write(msg + "\n")
        logf.flush()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(a.seed)
    config = MambaConfig(**SHAPE, bos_token_id=0, eos_token_id=0, pad_token_id=1,
                         tie_word_embeddings=True, use_cache=False)
    model = MambaForCausalLM(config).to(device)
    log("model: %s, %d parameters" % (json.dumps(SHAPE), sum(p.numel() for p in model.parameters())))
    check_fast_path(model, device, log)
    if a.check:
        return
    opt = make_optimizer(model, a)

    ckpt = os.path.join(a.run, "ckpt.pt")
    step, elapsed = 0, 0.0
    if os.path.exists(ckpt):
        st = torch.load(ckpt, map_location=device, weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        step, elapsed = st["step"], st["elapsed"]
        log("resumed from %s at step %d (%.0f s of training so far)" % (ckpt, step, elapsed))

    train = load_tokens(os.path.join(a.data, "train.u16.xz"))
    val = load_tokens(os.path.join(a.data, "val.u16.xz"))
    log("data: %d training tokens, %d held-out" % (train.size, val.size))

    model.train()
    t_run, t_saved, tokens, t_log = time.time(), time.time(), 0, time.time()
    while step < a.total_steps:
        for gr in opt.param_groups:
            gr["lr"] = lr_at(step, a)
        inp, tgt = batch_for(train, step, a.seed, a.batch, a.seq, device)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            logits = model(inp).logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tgt.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        tokens += inp.numel()
        now = time.time()
        if step % 50 == 0 or step == a.total_steps:
            log("step %5d  loss %.4f  gnorm %.2f  lr %.2e  %.0f tok/s" %
                (step, loss.item(), gnorm.item(), lr_at(step - 1, a), tokens / (now - t_log)))
            tokens, t_log = 0, now
        if now - t_saved > a.save_every or now - t_start > a.time_limit:
            save_checkpoint(ckpt, model, opt, step, elapsed + now - t_run, a)
            t_saved = now
            if now - t_start > a.time_limit:
                log("time limit: stopped at step %d, checkpoint saved" % step)
                return
    elapsed += time.time() - t_run
    save_checkpoint(ckpt, model, opt, step, elapsed, a)
    model.eval()
    loss = heldout_loss(model, val, a.seq, device)
    log("done: %d steps, %.0f s of training, %.2fM tokens; held-out loss %.4f nats/token "
        "(perplexity %.2f)" % (step, elapsed, step * a.batch * a.seq / 1e6, loss, math.exp(loss)))
    if a.export:
        export(model, a, a.data, log, val)


if __name__ == "__main__":
    main()
