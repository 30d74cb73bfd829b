#!/usr/bin/env python3
"""Google's SentencePiece as the independent reference for tests/test_tokenizer.cpp.

Usage: /usr/bin/python3 sentencepiece_ids.py MODEL < request.json

request: {"encode": [HEX, ...], "decode": [[ID, ...], ...]}, each text as the hex of its bytes (so that texts that
are not valid UTF-8 can be sent too).
prints:  {"encode": [[ID, ...], ...], "decode": [TEXT, ...]}: the ids of each text (no BOS/EOS) and the text of
each id list, both from sentencepiece.SentencePieceProcessor.

Exit status 2 when the sentencepiece module is missing (python3-sentencepiece), 1 on any other failure.
"""
import json
import sys


def main():
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} MODEL < request.json")
    try:
        import sentencepiece
    except ImportError as error:
        print(f"sentencepiece_ids.py: {error} (Debian: apt-get install python3-sentencepiece)", file=sys.stderr)
        sys.exit(2)
    processor = sentencepiece.SentencePieceProcessor(model_file=sys.argv[1])
    request = json.load(sys.stdin)
    reply = {
        "encode": [processor.encode(bytes.fromhex(text)) for text in request.get("encode", [])],
        "decode": [processor.decode(ids) for ids in request.get("decode", [])],
    }
    json.dump(reply, sys.stdout)


if __name__ == "__main__":
    main()
