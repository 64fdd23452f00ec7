"""open_clip's text cleaning (what HPSv2's tokenizer sees) on prompts with the characters
that it changes: tests/fixtures/open_clip_clean.json, `{"text", "clean"}` per case.

`clean` is open_clip.tokenizer's `whitespace_clean(basic_clean(text)).lower()`
(ftfy.fix_text, html.unescape twice). Mojibake (text decoded with the wrong codec, which
ftfy.fix_encoding repairs) is left out on purpose: mapo does not reproduce that repair.

Run from the repo root:  python3 tools/golden/make_open_clip_clean.py
"""
import json

import ftfy
import open_clip
from open_clip.tokenizer import basic_clean, whitespace_clean

CASES = [
    "a dog’s “best” friend",
    "‘single’ ‛reversed‛ ‚low‚ ʼmodifier",
    "„low double‟ quotes",
    "ﬁne ﬂowers, ﬀ ﬃ ﬄ ﬅ ﬆ, Ĳssel ĳs, ŉ, Ǆ ǅ ǆ Ǉ ǈ ǉ Ǌ ǋ ǌ Ǳ ǲ ǳ",
    "ＡＢＣ　ｆｕｌｌ－ｗｉｄｔｈ！ ｶﾀｶﾅ",
    "Tom &amp; Jerry",
    "&amp;amp;lt;3",
    "&amp;amp;amp;amp;",
    "a &lt;b&gt; tag <b>",
    "&lt;&amp;amp;&gt; with a < sign",
    "tab\there\nnew\r\nline\u2028sep",
    "&#39;quoted&#39; &#x27;hex&#x27; &#X41; &#65 &#x42",
    "&#150; &#128; &#0; &#x110000; &#xD800; &#1;x",
    "&eacute;t&eacute; &EACUTE;T&EACUTE; &Eacute; &eAcute;",
    "BUNDESSTRA&SZLIG;E &NTILDE; &nTILDE; &AMP; &Aring;",
    "&copy 2024 &copyx &amp &ampx &reg; &REG &notin; this&not that",
    "&hellip; &mdash; &ndash; &trade; &euro; &nbsp;x&nbsp;",
    "a\u00a0b\u2009c",
    "ctrl\u0007char\u000bvt\u007fdel\ufeffbom\u206ainv",
    "c1 \u0085ellipsis \u0091quote\u0092 \u0093dq\u0094 \u0081undefined",
    "\u001b[31mred\u001b[0m text \u001b[x",
    "café\u0301 e\u0301 Å",
    "CAPS Lock ÄÖÜ ΣΊΣΥΦΟΣ",
    "   leading and trailing   ",
    "&unknownentity; & alone &; &#; &#x;",
    "emoji 🐶 and 日本語",
    "&lt;script&gt;alert(1)&lt;/script&gt;",
]

out = [{"text": t, "clean": whitespace_clean(basic_clean(t)).lower()} for t in CASES]
with open("tests/fixtures/open_clip_clean.json", "w", encoding="utf-8") as f:
    json.dump({"open_clip": open_clip.__version__, "ftfy": ftfy.__version__, "cases": out}, f, ensure_ascii=False,
              indent=1)
for c in out:
    print(repr(c["text"]), "->", repr(c["clean"]))
