"""CLIP's byte-level BPE vocabulary, shared by the tokenizer scripts."""


def bytes_to_unicode():
    """CLIP's (and GPT-2's) map from bytes to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def vocabulary(merges):
    """The ids CLIP assigns: bytes, bytes + "</w>", one per merge, then the two specials."""
    vocab = list(bytes_to_unicode().values())
    return vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
