#!/usr/bin/env python3
"""Turns unpacked Debian text packages into the demo model's corpus.

Sources (all under --root, as unpacked by prepare.sh):
  dict-gcide      /usr/share/dictd/gcide.{index,dict.dz}: one document per entry
  bible-kjv       /usr/bin/bible over /usr/lib/bible.data: one per chapter
  fortunes(-min)  /usr/share/games/fortunes/*: one per fortune
  manpages(-dev)  /usr/share/man/man*/*.gz rendered by man(1): one per page

Documents are assigned to the held-out split by a seeded hash of their name,
so the split does not depend on order or on which other documents exist. A
byte-level BPE (the GPT-NeoX pre-tokenizer and decoder) is trained on the
training split with Hugging Face `tokenizers`; every document is encoded and
followed by <|endoftext|> (id 0).
"""
import argparse
import base64
import concurrent.futures
import gzip
import hashlib
import json
import lzma
import os
import random
import re
import subprocess

import numpy as np
from tokenizers import (Tokenizer, decoders, models, normalizers,
                        pre_tokenizers, processors, trainers)

VOCAB = 8192
VAL_PERCENT = 0.5
SEED = "ssmd-demo-1"

B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def dict_num(s):
    """dictd's index numbers: base64 digits, most significant first."""
    n = 0
    for ch in s:
        n = n * 64 + B64.index(ch)
    return n


def gcide(root):
    base = os.path.join(root, "usr/share/dictd/gcide")
    with gzip.open(base + ".dict.dz", "rb") as f:
        data = f.read()
    seen = set()
    with open(base + ".index", encoding="utf-8") as f:
        for line in f:
            word, off, size = line.rstrip("\n").split("\t")
            if word.startswith("00-database") or word.startswith("00database"):
                continue
            off, size = dict_num(off), dict_num(size)
            if (off, size) in seen:
                continue
            seen.add((off, size))
            text = data[off:off + size].decode("utf-8", "replace").strip()
            if text:
                yield "gcide/%d" % off, text


def bible(root):
    exe = os.path.join(root, "usr/bin/bible")
    out = subprocess.run([exe, "-p", os.path.join(root, "usr/lib"), "-l", "100000",
                          "Gen1:1-Rev22:21"], check=True, capture_output=True,
                         text=True).stdout
    name, lines = None, []
    for line in out.splitlines():
        if re.fullmatch(r"[1-3]? ?[A-Z][A-Za-z ]+ \d+", line.strip()) and not line.startswith(" "):
            if name and lines:
                yield "bible/" + name, "\n".join(lines).strip()
            name, lines = line.strip(), [line.strip(), ""]
        elif line.strip():
            lines.append(re.sub(r"^\s*\d+\s+", "", line))
    if name and lines:
        yield "bible/" + name, "\n".join(lines).strip()


def fortunes(root):
    d = os.path.join(root, "usr/share/games/fortunes")
    for fn in sorted(os.listdir(d)):
        path = os.path.join(d, fn)
        if "." in fn or not os.path.isfile(path) or os.path.islink(path):
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            parts = f.read().split("\n%\n")
        for i, p in enumerate(parts):
            p = p.strip("%\n")
            if p.strip():
                yield "fortunes/%s/%d" % (fn, i), p


def render_man(path):
    env = dict(os.environ, MANWIDTH="80", LC_ALL="C.UTF-8")
    r = subprocess.run(["man", "--nh", "--nj", "-l", path], capture_output=True, env=env)
    if r.returncode != 0:
        return ""
    text = subprocess.run(["col", "-bx"], input=r.stdout, capture_output=True).stdout
    return text.decode("utf-8", "replace").strip()


def manpages(root):
    base = os.path.join(root, "usr/share/man")
    paths = []
    for sec in sorted(os.listdir(base)):
        if not sec.startswith("man"):
            continue
        for fn in sorted(os.listdir(os.path.join(base, sec))):
            p = os.path.join(base, sec, fn)
            if os.path.islink(p):
                continue
            with gzip.open(p, "rb") as f:
                head = f.read(64)
            if head.startswith(b".so "):  # an alias of another page
                continue
            paths.append((sec + "/" + fn, p))
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 2) as ex:
        for (name, _), text in zip(paths, ex.map(render_man, [p for _, p in paths])):
            if text:
                yield "man/" + name, text


SOURCES = [("dict-gcide", gcide), ("bible-kjv", bible), ("fortunes", fortunes),
           ("manpages", manpages)]


def is_val(name):
    h = hashlib.sha256((SEED + name).encode()).digest()
    return int.from_bytes(h[:4], "little") % 10000 < VAL_PERCENT * 100


def make_tokenizer(texts):
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, min_frequency=2, show_progress=False,
                                  special_tokens=["<|endoftext|>", "<|padding|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tok


def encode(tok, texts):
    ids = []
    for i in range(0, len(texts), 4096):
        for e in tok.encode_batch(texts[i:i + 4096]):
            ids.extend(e.ids)
            ids.append(0)
    return np.asarray(ids, dtype="<u2")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--packages", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    train, val, stats = [], [], {}
    for label, fn in SOURCES:
        st = stats.setdefault(label, {"docs": 0, "bytes": 0, "val_docs": 0})
        for name, text in fn(a.root):
            st["docs"] += 1
            st["bytes"] += len(text.encode())
            if is_val(name):
                st["val_docs"] += 1
                val.append(text)
            else:
                train.append(text)
        print("%-10s %7d documents %10d bytes" % (label, st["docs"], st["bytes"]), flush=True)
    random.Random(SEED).shuffle(train)

    tok = make_tokenizer(train)
    tok.save(os.path.join(a.out, "tokenizer.json"))
    for split, texts in (("train", train), ("val", val)):
        ids = encode(tok, texts)
        stats["tokens_" + split] = int(ids.size)
        with lzma.open(os.path.join(a.out, split + ".u16.xz"), "wb", preset=6) as f:
            f.write(ids.tobytes())
        print("%-5s %d tokens" % (split, ids.size), flush=True)
    with open(a.packages) as f:
        stats["packages"] = [line.strip() for line in f if line.strip()]
    stats["vocab"] = VOCAB
    stats["val_percent"] = VAL_PERCENT
    with open(os.path.join(a.out, "sources.json"), "w") as f:
        json.dump(stats, f, indent=1)


if __name__ == "__main__":
    main()
