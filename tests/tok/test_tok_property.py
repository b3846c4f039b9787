"""Property test: ssm-tokenize against Hugging Face `tokenizers` on fresh text.

Every run draws new random strings (the seed is printed on failure; set
SSMD_TOK_SEED to replay one) from a mix of scripts, whitespace runs, digits,
punctuation, emoji with ZWJ sequences, combining marks and special-token
text, and checks that ssm-tokenize gives the ids Hugging Face gives
(`encode(text, add_special_tokens=False)`), decodes Hugging Face's ids to
Hugging Face's text (`decode(ids, skip_special_tokens=False)`), and turns
encode-then-decode into the NFC form of the input. Variants of the GPT-NeoX
file exercise add_prefix_space, use_regex and the added-token flags
(single_word, lstrip, rstrip, normalized). Exact equality everywhere: token
ids are integers and text is compared byte for byte.

Characters come from blocks assigned by Unicode 6 or earlier, so the
Unicode tables of utf8proc and of the reference (which may be newer) agree.
"""
import copy
import glob
import gzip
import json
import os
import random
import re
import subprocess
import unicodedata

import pytest
from tokenizers import Tokenizer

BUILD = os.environ.get("SSMD_BUILD_ROOT", "build")
FIXTURES = os.environ.get("SSMD_SHARED_FIXTURES", "tests/fixtures/reference")
BINARY = os.path.join(BUILD, "daemon", "ssm-tokenize")
NEOX = os.path.join(FIXTURES, "..", "models", "gpt-neox-20b-tokenizer.json")
# The demo model's own byte-level BPE (8192 tokens, trained by tools/demo).
DEMO = os.path.join(os.path.dirname(__file__), "..", "..", "models", "demo", "tokenizer.json")

SEED = int(os.environ.get("SSMD_TOK_SEED") or random.SystemRandom().randrange(1 << 62))


def rng_for(name):
    return random.Random(f"{SEED}/{name}")


def span(a, b):
    return [chr(c) for c in range(a, b + 1)]


LATIN = span(0x61, 0x7A) + span(0x41, 0x5A) + span(0xC0, 0xFF) + span(0x100, 0x17F)
CYRILLIC = span(0x410, 0x44F) + ["ё", "Ё", "і", "ї", "є"]
GREEK = span(0x391, 0x3A1) + span(0x3A3, 0x3A9) + span(0x3B1, 0x3C9) + ["ά", "έ", "ή"]
CJK = span(0x4E00, 0x4FFF) + span(0x3041, 0x3096) + span(0x30A1, 0x30FA) + span(0xAC00, 0xAC40)
ARABIC = span(0x621, 0x64A) + span(0x660, 0x669) + ["\u064B", "\u064E", "\u0651"]
DEVANAGARI = span(0x905, 0x939) + span(0x93E, 0x94D) + span(0x966, 0x96F)
DIGITS = span(0x30, 0x39) + ["½", "²", "Ⅻ", "٣", "०"]
PUNCT = list("!\"#$%&()*+,-./:;<=>?@[\\]^_`{|}~") + list("“”‘’«»—–…¡¿•§¶€£¥©®™°±×÷")
CONTROL = ["\x01", "\x07", "\x1b", "\x7f", "\u200b", "\u00ad", "\ufeff"]
COMBINING = span(0x300, 0x36F) + ["\u20DD", "\u0488"]
WHITESPACE = [" ", " ", " ", "\t", "\n", "\r\n", "\r", "\u00a0", "\u2009", "\u3000",
              "\u2028", "\x0b", "\x0c", "\x85", "\u1680", "\u202f"]
EMOJI = ["😀", "🚀", "👍", "👍🏽", "❤️", "🇫🇷", "🇯🇵", "👩‍💻", "👨‍👩‍👧‍👦", "🏳️‍🌈",
         "🧑🏿‍🚀", "✌️", "☕", "🙏🏻", "😂"]
WORDS = ["the", "The", "state", "Mamba", "don't", "I'll", "we've", "they're", "it's",
         "she'd", "I'm", "O'Neil", "rock'n'roll", "'s", "'t", "'re", "'ve", "'m", "'ll",
         "'d", "'S", "''", "café", "naïve", "Straße", "東京", "Москва", "Αθήνα",
         "القاهرة", "नमस्ते", "<|endoftext|>", "<|padding|>", "<|endoftext|", "x**2",
         "snake_case", "CamelCase", "http://example.com/a?b=c", "1,000.50", "3.14159"]


def run_of(r, alphabet, lo=1, hi=8):
    return "".join(r.choice(alphabet) for _ in range(r.randint(lo, hi)))


def piece(r, extra_words=()):
    kind = r.randrange(15)
    if kind == 0:
        return run_of(r, LATIN)
    if kind == 1:
        return run_of(r, CYRILLIC + GREEK)
    if kind == 2:
        return run_of(r, CJK, 1, 5)
    if kind == 3:
        return run_of(r, ARABIC + DEVANAGARI)
    if kind == 4:
        return run_of(r, DIGITS, 1, 12)
    if kind == 5:
        return run_of(r, PUNCT, 1, 4)
    if kind == 6:
        return run_of(r, WHITESPACE, 1, 30 if r.random() < 0.3 else 4)
    if kind == 7:
        return " " * r.randint(1, 40)
    if kind == 8:
        return run_of(r, EMOJI, 1, 3)
    if kind == 9:  # a letter followed by combining marks (often NFC-composable)
        return r.choice(LATIN + GREEK + CYRILLIC) + run_of(r, COMBINING, 1, 3)
    if kind == 10:
        return r.choice(COMBINING + CONTROL)
    if kind == 11:
        return r.choice(WORDS + list(extra_words))
    if kind == 12:
        return r.choice(["'", "’"]) + r.choice(["s", "t", "re", "ve", "m", "ll", "d", "S", "x"])
    if kind == 13:  # random BMP code points from the older blocks
        return "".join(chr(r.choice([r.randint(0xA0, 0x24F), r.randint(0x370, 0x58F),
                                     r.randint(0x2000, 0x2BFF), r.randint(0x3000, 0x9FFF),
                                     r.randint(0xAC00, 0xD7A3)]))
                       for _ in range(r.randint(1, 4)))
    return r.choice(["Hello", " world", "\n\n", "    ", "  \n  ", "x\r\ny"])


def random_texts(r, count, extra_words=()):
    texts = []
    for _ in range(count):
        n = r.choice([1, 2, 3, 5, 8, 13, 30])
        texts.append("".join(piece(r, extra_words) for _ in range(n)))
    return texts


def valid(text):
    """Drop what ssm-tokenize's JSON reader cannot carry (U+0000) and the
    code points our generator may hit that are unassigned in older Unicode."""
    text = text.replace("\x00", "")
    return "".join(c for c in text if unicodedata.category(c) != "Cn")


def run_tool(tokenizer_path, lines, decode=False):
    args = [BINARY, "--tokenizer", tokenizer_path] + (["--decode"] if decode else [])
    inp = "".join(json.dumps(obj, ensure_ascii=bool(decode)) + "\n" for obj in lines)
    proc = subprocess.run(args, input=inp.encode(), capture_output=True, timeout=300)
    assert proc.returncode == 0, f"seed {SEED}: ssm-tokenize failed: {proc.stderr.decode()}" \
        f" {proc.stdout.decode()[-2000:]}"
    # split on "\n" only: str.splitlines() also breaks at U+2028, U+0085 ...
    out = [json.loads(line) for line in proc.stdout.decode("utf-8").split("\n") if line]
    assert len(out) == len(lines), f"seed {SEED}: {len(out)} output lines for {len(lines)}"
    return out


def compare(tokenizer_path, texts):
    ref = Tokenizer.from_file(tokenizer_path)
    texts = [valid(t) for t in texts]
    got = run_tool(tokenizer_path, [{"text": t} for t in texts])
    want = [ref.encode(t, add_special_tokens=False).ids for t in texts]
    for t, g, w in zip(texts, got, want):
        assert g["text"] == t, f"seed {SEED}: text not echoed for {t!r}"
        assert g["ids"] == w, f"seed {SEED}: ids differ for {t!r}:\n ours {g['ids']}\n  hf  {w}"

    decoded = run_tool(tokenizer_path, [{"ids": w} for w in want], decode=True)
    for t, d, w in zip(texts, decoded, want):
        hf = ref.decode(w, skip_special_tokens=False)
        assert d["text"] == hf, f"seed {SEED}: decode differs for {t!r}: {d['text']!r} vs {hf!r}"
    return texts, got


@pytest.fixture(scope="module")
def neox():
    assert os.path.exists(BINARY), f"{BINARY} not built"
    assert os.path.exists(NEOX), f"{NEOX} missing"
    return NEOX


def test_neox_random_text(neox):
    texts, got = compare(neox, random_texts(rng_for("neox"), 10000))
    # Round trip: decoding our ids gives the input, NFC-normalised between
    # the special tokens (they are matched before normalisation, so a
    # combining mark after "<|endoftext|>" stays apart).
    back = run_tool(neox, [{"ids": g["ids"]} for g in got], decode=True)
    for t, b in zip(texts, back):
        parts = re.split(r"(<\|endoftext\|>|<\|padding\|>)", t)
        want = "".join(unicodedata.normalize("NFC", p) for p in parts)
        assert b["text"] == want, f"seed {SEED}: round trip of {t!r} gave {b['text']!r}"


def test_demo_tokenizer_random_text():
    """The demo model's tokenizer: a smaller vocabulary, so other merges and
    more single-byte tokens than GPT-NeoX's on the same random text."""
    assert os.path.exists(BINARY), f"{BINARY} not built"
    compare(DEMO, random_texts(rng_for("demo"), 5000))


def test_demo_tokenizer_real_text():
    """Real English prose, markup and code: every Markdown document and C
    source of this project (always there), plus up to 200 of this machine's
    manual pages when it has any. Each text's source is named on failure."""
    root = os.path.join(os.path.dirname(__file__), "..", "..")
    names = sorted(glob.glob(os.path.join(root, "**", "*.md"), recursive=True) +
                   glob.glob(os.path.join(root, "daemon", "*.c")))
    names = [n for n in names if "/build" not in n.replace(root, "")]
    base = "/usr/share/man/man1"
    if os.path.isdir(base):
        names += [os.path.join(base, n) for n in sorted(os.listdir(base))[:200]
                  if n.endswith(".gz")]
    assert len(names) > 10, f"only {len(names)} texts found"
    texts = []
    for name in names:
        opener = gzip.open if name.endswith(".gz") else open
        with opener(name, "rb") as f:
            texts.append(f.read().decode("utf-8", "replace"))
    try:
        compare(DEMO, texts)
    except AssertionError:
        for name, text in zip(names, texts):  # name the failing source
            try:
                compare(DEMO, [text])
            except AssertionError as e:
                raise AssertionError(f"{name}: {e}") from None
        raise


def test_neox_long_text(neox):
    r = rng_for("long")
    texts = ["".join(random_texts(r, 200)) for _ in range(5)]
    texts.append("a" * 20000 + " " * 3000 + "🚀" * 500)
    compare(neox, texts)


def variant(tmp_path, name, edit):
    with open(NEOX, encoding="utf-8") as f:
        spec = json.load(f)
    spec = copy.deepcopy(spec)
    edit(spec)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    return str(path)


def test_add_prefix_space(neox, tmp_path):
    def edit(spec):
        spec["pre_tokenizer"]["add_prefix_space"] = True
    compare(variant(tmp_path, "prefix", edit), random_texts(rng_for("prefix"), 2000))


def test_no_regex(neox, tmp_path):
    def edit(spec):
        spec["pre_tokenizer"]["use_regex"] = False
    compare(variant(tmp_path, "noregex", edit), random_texts(rng_for("noregex"), 2000))


def test_added_token_flags(neox, tmp_path):
    extra = [
        dict(content="<mask>", single_word=False, lstrip=True, rstrip=False,
             normalized=False, special=True),
        dict(content="[SEP]", single_word=False, lstrip=False, rstrip=True,
             normalized=False, special=True),
        dict(content="word", single_word=True, lstrip=False, rstrip=False,
             normalized=False, special=False),
        dict(content="state", single_word=True, lstrip=True, rstrip=True,
             normalized=True, special=False),
        # stored decomposed: matched against the NFC form of the text
        dict(content="cafe\u0301", single_word=False, lstrip=False, rstrip=False,
             normalized=True, special=False),
        dict(content="<|endoftext|>extra", single_word=False, lstrip=False,
             rstrip=False, normalized=False, special=True),
    ]

    def edit(spec):
        # ids as Hugging Face assigns them when it saves a file: a token
        # already in the vocabulary keeps its id, the others come next
        vocab = spec["model"]["vocab"]
        next_id = max(t["id"] for t in spec["added_tokens"]) + 1
        for tok in extra:
            if tok["content"] in vocab:
                spec["added_tokens"].append(dict(tok, id=vocab[tok["content"]]))
            else:
                spec["added_tokens"].append(dict(tok, id=next_id))
                next_id += 1

    words = [t["content"] for t in extra] + ["café", "words", "sword", "_word", "état"]
    compare(variant(tmp_path, "added", edit), random_texts(rng_for("added"), 3000, words))


def test_cli_bad_lines(neox):
    """Bad lines get an error object in their place and the rest go on;
    invalid UTF-8 is read as Python's errors="replace" reads it (U+FFFD per
    maximal invalid subpart), ids as Hugging Face gives for that text."""
    ref = Tokenizer.from_file(neox)
    r = rng_for("bytes")
    raw_texts = [bytes(r.randrange(1, 256) for _ in range(r.randint(1, 40))) for _ in range(300)]
    raw_texts += [b"caf\xc3", b"\xed\xa0\x80x", b"\xf4\x90\x80\x80", b"ok \xe2\x82"]
    lines = [b'{"text": "a\\u0000b"}', b"not json", b'{"ids": [1]}']
    for t in raw_texts:
        # JSON-escape only what JSON requires; leave the raw bytes alone
        esc = t.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
        esc = b"".join(b"\\u%04x" % c if c < 0x20 else bytes([c]) for c in esc)
        lines.append(b'{"text": "' + esc + b'"}')
    proc = subprocess.run([BINARY, "--tokenizer", neox], input=b"\n".join(lines) + b"\n",
                          capture_output=True, timeout=300)
    assert proc.returncode == 1, f"exit status {proc.returncode}, want 1 (some lines bad)"
    out = [json.loads(x) for x in proc.stdout.decode("utf-8").split("\n") if x]
    assert len(out) == len(lines)
    assert all("error" in o for o in out[:3]), out[:3]
    for t, o in zip(raw_texts, out[3:]):
        text = t.decode("utf-8", errors="replace")
        want = ref.encode(text, add_special_tokens=False).ids
        assert o.get("text") == text and o.get("ids") == want, \
            f"seed {SEED}: bytes {t!r}: got {o}, want {want}"


def byte_token_ids(ref):
    """Ids of the 256 single-byte tokens (GPT-2's byte-to-character map)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    ids = (ref.token_to_id(chr(c)) for c in cs)
    return [i for i in ids if i is not None]


def test_decode_random_ids(neox):
    """Random id sequences, rich in single-byte tokens so that characters
    are cut and bytes are invalid: the text must equal Hugging Face's
    decode (both replace bad UTF-8 as from_utf8_lossy does)."""
    ref = Tokenizer.from_file(neox)
    r = rng_for("ids")
    size = ref.get_vocab_size()
    singles = byte_token_ids(ref)
    seqs = [[r.choice(singles) if r.random() < 0.6 else r.randrange(size)
             for _ in range(r.randint(1, 30))] for _ in range(3000)]
    got = run_tool(neox, [{"ids": s} for s in seqs], decode=True)
    for s, g in zip(seqs, got):
        want = ref.decode(s, skip_special_tokens=False)
        assert g["text"] == want, f"seed {SEED}: ids {s}: {g['text']!r} vs {want!r}"
