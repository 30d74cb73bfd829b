#!/usr/bin/env python3
"""GPT-2 byte-level BPE as in OpenAI's encoder.py, the independent reference for tests/test_tokenizer_gpt2.cpp.

Usage: /usr/bin/python3 gpt2_bpe_ids.py VOCAB_JSON MERGES_TXT < request.json

request: {"encode": [HEX, ...]}, each text as the hex of its UTF-8 bytes.
prints:  {"encode": [[ID, ...], ...], "splitter": "regex" | "stdlib"}: the ids of each text (no BOS/EOS).

The words come from GPT-2's pattern run by the `regex` module when it is installed (as encoder.py does); without
it (Debian has no python3-regex in the test image), from a scanner written here that makes the pattern's matches
with the standard library: \\p{L} and \\p{N} are the Unicode categories L* and N* (unicodedata), \\s is the Unicode
White_Space property. The merges are encoder.py's bpe(), word for word.
"""
import json
import sys
import unicodedata

PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

WHITE_SPACE = set("\t\n\x0b\x0c\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000") | {
    chr(c) for c in range(0x2000, 0x200B)}


def is_letter(c):
    return unicodedata.category(c)[0] == "L"


def is_number(c):
    return unicodedata.category(c)[0] == "N"


def is_other(c):
    return c not in WHITE_SPACE and not is_letter(c) and not is_number(c)


def stdlib_words(text):
    """The matches of PATTERN, alternative by alternative, as a backtracking regex engine finds them."""
    words, i, n = [], 0, len(text)
    while i < n:
        end = None
        if text[i] == "'":
            if text[i + 1:i + 3] in ("re", "ve", "ll"):
                end = i + 3
            elif text[i + 1:i + 2] in ("s", "t", "m", "d"):
                end = i + 2
        if end is None:
            start = i + 1 if text[i] == " " and i + 1 < n else i
            for wanted in (is_letter, is_number, is_other):  # ' ?X+': the space, then at least one X
                if wanted(text[start]):
                    end = start
                    while end < n and wanted(text[end]):
                        end += 1
                    break
        if end is None:  # whitespace: \s+(?!\S), else \s+
            end = i
            while end < n and text[end] in WHITE_SPACE:
                end += 1
            if end < n and end - 1 > i:
                end -= 1  # give the last one back so that no non-space follows
        words.append(text[i:end])
        i = end
    return words


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(n) for n in cs]))


def get_pairs(word):
    pairs = set()
    prev_char = word[0]
    for char in word[1:]:
        pairs.add((prev_char, char))
        prev_char = char
    return pairs


class Encoder:
    def __init__(self, encoder, bpe_merges):
        self.encoder = encoder
        self.byte_encoder = bytes_to_unicode()
        self.bpe_ranks = dict(zip(bpe_merges, range(len(bpe_merges))))
        self.cache = {}

    def bpe(self, token):
        if token in self.cache:
            return self.cache[token]
        word = tuple(token)
        pairs = get_pairs(word)
        if not pairs:
            return token
        while True:
            bigram = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            new_word = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                    new_word.extend(word[i:j])
                    i = j
                except ValueError:
                    new_word.extend(word[i:])
                    break
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
            if len(word) == 1:
                break
            pairs = get_pairs(word)
        word = " ".join(word)
        self.cache[token] = word
        return word

    def encode(self, text, split):
        ids = []
        for token in split(text):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[piece] for piece in self.bpe(token).split(" "))
        return ids


def main():
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} VOCAB_JSON MERGES_TXT < request.json")
    with open(sys.argv[1], encoding="utf-8") as f:
        encoder = json.load(f)
    with open(sys.argv[2], encoding="utf-8") as f:
        bpe_data = f.read()
    bpe_merges = [tuple(merge_str.split()) for merge_str in bpe_data.split("\n")[1:-1]]
    try:
        import regex
        compiled = regex.compile(PATTERN)
        split, splitter = compiled.findall, "regex"
    except ImportError:
        split, splitter = stdlib_words, "stdlib"
    reference = Encoder(encoder, bpe_merges)
    request = json.load(sys.stdin)
    texts = [bytes.fromhex(text).decode("utf-8") for text in request.get("encode", [])]
    json.dump({"encode": [reference.encode(text, split) for text in texts], "splitter": splitter}, sys.stdout)


if __name__ == "__main__":
    main()
