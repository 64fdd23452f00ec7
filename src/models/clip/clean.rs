//! open_clip's text cleaning before its tokenizer (HPSv2 scores through it):
//! `whitespace_clean(basic_clean(text)).lower()`, where `basic_clean` is `ftfy.fix_text`
//! then `html.unescape` twice. Reproduced here: ftfy's HTML unescaping (only when the text
//! has no `<`), ligatures, character width, curly quotes, control characters and NFC;
//! Python's `html.unescape` (numeric references with its replacements, the HTML 4 named
//! entities, and the legacy names that need no `;`). Not reproduced: ftfy's mojibake repair
//! (`fix_encoding`, text decoded with the wrong codec) and HTML 5's rarer entity names,
//! which stay as written.

use unicode_normalization::UnicodeNormalization;

/// The HTML 4 Latin-1 entities, U+00A0 to U+00FF in order. Python accepts these without
/// the `;` too (and `amp`, `lt`, `gt`, `quot` and a few capitalised ones).
const LATIN1: [&str; 96] = [
    "nbsp", "iexcl", "cent", "pound", "curren", "yen", "brvbar", "sect", "uml", "copy", "ordf", "laquo", "not", "shy",
    "reg", "macr", "deg", "plusmn", "sup2", "sup3", "acute", "micro", "para", "middot", "cedil", "sup1", "ordm",
    "raquo", "frac14", "frac12", "frac34", "iquest", "Agrave", "Aacute", "Acirc", "Atilde", "Auml", "Aring", "AElig",
    "Ccedil", "Egrave", "Eacute", "Ecirc", "Euml", "Igrave", "Iacute", "Icirc", "Iuml", "ETH", "Ntilde", "Ograve",
    "Oacute", "Ocirc", "Otilde", "Ouml", "times", "Oslash", "Ugrave", "Uacute", "Ucirc", "Uuml", "Yacute", "THORN",
    "szlig", "agrave", "aacute", "acirc", "atilde", "auml", "aring", "aelig", "ccedil", "egrave", "eacute", "ecirc",
    "euml", "igrave", "iacute", "icirc", "iuml", "eth", "ntilde", "ograve", "oacute", "ocirc", "otilde", "ouml",
    "divide", "oslash", "ugrave", "uacute", "ucirc", "uuml", "yacute", "thorn", "yuml",
];

const LEGACY_OTHER: [(&str, char); 10] = [
    ("amp", '&'),
    ("lt", '<'),
    ("gt", '>'),
    ("quot", '"'),
    ("AMP", '&'),
    ("LT", '<'),
    ("GT", '>'),
    ("QUOT", '"'),
    ("COPY", '©'),
    ("REG", '®'),
];

/// The other HTML 4 entities (Python's `html.entities.name2codepoint`, with `apos`);
/// they need the `;`.
const SPECIAL: [(&str, u32); 153] = [
    ("apos", 0x0027),
    ("OElig", 0x0152),
    ("oelig", 0x0153),
    ("Scaron", 0x0160),
    ("scaron", 0x0161),
    ("Yuml", 0x0178),
    ("fnof", 0x0192),
    ("circ", 0x02C6),
    ("tilde", 0x02DC),
    ("Alpha", 0x0391),
    ("Beta", 0x0392),
    ("Gamma", 0x0393),
    ("Delta", 0x0394),
    ("Epsilon", 0x0395),
    ("Zeta", 0x0396),
    ("Eta", 0x0397),
    ("Theta", 0x0398),
    ("Iota", 0x0399),
    ("Kappa", 0x039A),
    ("Lambda", 0x039B),
    ("Mu", 0x039C),
    ("Nu", 0x039D),
    ("Xi", 0x039E),
    ("Omicron", 0x039F),
    ("Pi", 0x03A0),
    ("Rho", 0x03A1),
    ("Sigma", 0x03A3),
    ("Tau", 0x03A4),
    ("Upsilon", 0x03A5),
    ("Phi", 0x03A6),
    ("Chi", 0x03A7),
    ("Psi", 0x03A8),
    ("Omega", 0x03A9),
    ("alpha", 0x03B1),
    ("beta", 0x03B2),
    ("gamma", 0x03B3),
    ("delta", 0x03B4),
    ("epsilon", 0x03B5),
    ("zeta", 0x03B6),
    ("eta", 0x03B7),
    ("theta", 0x03B8),
    ("iota", 0x03B9),
    ("kappa", 0x03BA),
    ("lambda", 0x03BB),
    ("mu", 0x03BC),
    ("nu", 0x03BD),
    ("xi", 0x03BE),
    ("omicron", 0x03BF),
    ("pi", 0x03C0),
    ("rho", 0x03C1),
    ("sigmaf", 0x03C2),
    ("sigma", 0x03C3),
    ("tau", 0x03C4),
    ("upsilon", 0x03C5),
    ("phi", 0x03C6),
    ("chi", 0x03C7),
    ("psi", 0x03C8),
    ("omega", 0x03C9),
    ("thetasym", 0x03D1),
    ("upsih", 0x03D2),
    ("piv", 0x03D6),
    ("ensp", 0x2002),
    ("emsp", 0x2003),
    ("thinsp", 0x2009),
    ("zwnj", 0x200C),
    ("zwj", 0x200D),
    ("lrm", 0x200E),
    ("rlm", 0x200F),
    ("ndash", 0x2013),
    ("mdash", 0x2014),
    ("lsquo", 0x2018),
    ("rsquo", 0x2019),
    ("sbquo", 0x201A),
    ("ldquo", 0x201C),
    ("rdquo", 0x201D),
    ("bdquo", 0x201E),
    ("dagger", 0x2020),
    ("Dagger", 0x2021),
    ("bull", 0x2022),
    ("hellip", 0x2026),
    ("permil", 0x2030),
    ("prime", 0x2032),
    ("Prime", 0x2033),
    ("lsaquo", 0x2039),
    ("rsaquo", 0x203A),
    ("oline", 0x203E),
    ("frasl", 0x2044),
    ("euro", 0x20AC),
    ("image", 0x2111),
    ("weierp", 0x2118),
    ("real", 0x211C),
    ("trade", 0x2122),
    ("alefsym", 0x2135),
    ("larr", 0x2190),
    ("uarr", 0x2191),
    ("rarr", 0x2192),
    ("darr", 0x2193),
    ("harr", 0x2194),
    ("crarr", 0x21B5),
    ("lArr", 0x21D0),
    ("uArr", 0x21D1),
    ("rArr", 0x21D2),
    ("dArr", 0x21D3),
    ("hArr", 0x21D4),
    ("forall", 0x2200),
    ("part", 0x2202),
    ("exist", 0x2203),
    ("empty", 0x2205),
    ("nabla", 0x2207),
    ("isin", 0x2208),
    ("notin", 0x2209),
    ("ni", 0x220B),
    ("prod", 0x220F),
    ("sum", 0x2211),
    ("minus", 0x2212),
    ("lowast", 0x2217),
    ("radic", 0x221A),
    ("prop", 0x221D),
    ("infin", 0x221E),
    ("ang", 0x2220),
    ("and", 0x2227),
    ("or", 0x2228),
    ("cap", 0x2229),
    ("cup", 0x222A),
    ("int", 0x222B),
    ("there4", 0x2234),
    ("sim", 0x223C),
    ("cong", 0x2245),
    ("asymp", 0x2248),
    ("ne", 0x2260),
    ("equiv", 0x2261),
    ("le", 0x2264),
    ("ge", 0x2265),
    ("sub", 0x2282),
    ("sup", 0x2283),
    ("nsub", 0x2284),
    ("sube", 0x2286),
    ("supe", 0x2287),
    ("oplus", 0x2295),
    ("otimes", 0x2297),
    ("perp", 0x22A5),
    ("sdot", 0x22C5),
    ("lceil", 0x2308),
    ("rceil", 0x2309),
    ("lfloor", 0x230A),
    ("rfloor", 0x230B),
    ("lang", 0x2329),
    ("rang", 0x232A),
    ("loz", 0x25CA),
    ("spades", 0x2660),
    ("clubs", 0x2663),
    ("hearts", 0x2665),
    ("diams", 0x2666),
];

fn legacy(name: &str) -> Option<char> {
    if let Some(i) = LATIN1.iter().position(|n| *n == name) {
        return char::from_u32(0xA0 + i as u32);
    }
    LEGACY_OTHER.iter().find(|(n, _)| *n == name).map(|(_, c)| *c)
}

fn named(name: &str) -> Option<char> {
    legacy(name).or_else(|| SPECIAL.iter().find(|(n, _)| *n == name).and_then(|(_, c)| char::from_u32(*c)))
}

/// Windows-1252 for the references 0x80–0x9F, as Python's `html` maps them.
const CP1252: [u32; 32] = [
    0x20AC, 0x81, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160, 0x2039, 0x0152, 0x8D, 0x017D,
    0x8F, 0x90, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014, 0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x9D,
    0x017E, 0x0178,
];

fn charref(num: u64) -> String {
    let invalid = |n: u64| {
        (0x1..=0x8).contains(&n)
            || (0xE..=0x1F).contains(&n)
            || (0x7F..=0x9F).contains(&n)
            || (0xFDD0..=0xFDEF).contains(&n)
            || n == 0xB
            || (n & 0xFFFE) == 0xFFFE
    };
    match num {
        0 => "\u{FFFD}".into(),
        0x0D => "\r".into(),
        0x80..=0x9F => char::from_u32(CP1252[(num - 0x80) as usize]).map(String::from).unwrap_or_default(),
        0xD800..=0xDFFF => "\u{FFFD}".into(),
        n if n > 0x10FFFF => "\u{FFFD}".into(),
        n if invalid(n) => String::new(),
        n => char::from_u32(n as u32).map(String::from).unwrap_or_default(),
    }
}

/// Python's `html.unescape`.
pub fn html_unescape(text: &str) -> String {
    replace_each(text, "&", |after| match reference(after) {
        (Some(r), used) => Some((r, used)),
        (None, _) => None,
    })
}

/// `text` with each `marker` offered to `replace`, which gives the replacement and the
/// bytes after the marker it takes; where it gives none, the marker stays.
fn replace_each(text: &str, marker: &str, replace: impl Fn(&str) -> Option<(String, usize)>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(marker) {
        out.push_str(&rest[..at]);
        let after = &rest[at + marker.len()..];
        match replace(after) {
            Some((r, used)) => {
                out.push_str(&r);
                rest = &after[used..];
            }
            None => {
                out.push_str(marker);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The replacement of the reference that starts `s` (just after a `&`), and the bytes it
/// takes; `None` when none starts there.
fn reference(s: &str) -> (Option<String>, usize) {
    if let Some(num) = s.strip_prefix('#') {
        let (hex, digits) = match num.strip_prefix(['x', 'X']) {
            Some(h) => (true, h),
            None => (false, num),
        };
        let len = digits.chars().take_while(|c| if hex { c.is_ascii_hexdigit() } else { c.is_ascii_digit() }).count();
        if len == 0 {
            return (None, 0);
        }
        let value = u64::from_str_radix(&digits[..len.min(12)], if hex { 16 } else { 10 }).unwrap_or(u64::MAX);
        let value = if len > 12 { u64::MAX } else { value };
        let mut used = 1 + usize::from(hex) + len;
        if s[used..].starts_with(';') {
            used += 1;
        }
        return (Some(charref(value)), used);
    }
    // `[^\t\n\f <&#;]{1,32};?`
    let name_len: usize = s.chars().take_while(|c| !"\t\n\x0c <&#;".contains(*c)).take(32).map(char::len_utf8).sum();
    if name_len == 0 {
        return (None, 0);
    }
    let name = &s[..name_len];
    let semicolon = s[name_len..].starts_with(';');
    // The whole match: `name;` (any entity), or a bare legacy name.
    let exact = if semicolon { named(name) } else { legacy(name) };
    if let Some(c) = exact {
        return (Some(c.to_string()), name_len + usize::from(semicolon));
    }
    // The longest legacy name (no `;` needed) that starts the match, at least 2 long.
    let whole = name_len + usize::from(semicolon);
    let bounds: Vec<usize> = name.char_indices().map(|(i, _)| i).skip(2).chain([name_len]).collect();
    for &end in bounds.iter().rev() {
        if end < whole
            && let Some(c) = legacy(&name[..end])
        {
            return (Some(c.to_string()), end);
        }
    }
    (None, 0)
}

/// ftfy's own unescaping: `&name;` and `&#…;` (with the `;`), also all-caps names.
fn ftfy_unescape(text: &str) -> String {
    replace_each(text, "&", |after| {
        let len = after.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '#').count();
        let body = &after[..len];
        // `&#?[0-9A-Za-z]{1,24};`
        let hash = usize::from(body.starts_with('#'));
        let is_entity =
            (1 + hash..=24 + hash).contains(&len) && after[len..].starts_with(';') && !body[hash..].contains('#');
        if !is_entity {
            return None;
        }
        let replaced = if hash == 1 {
            reference(&after[..=len]).0
        } else {
            named(body).map(String::from).or_else(|| {
                // "&EACUTE;": the capitalised form of a lowercase entity ("&SZLIG;" is "SS").
                let upper = body.len() > 1 && body == body.to_uppercase();
                upper.then(|| named(&body.to_lowercase())).flatten().map(|c| c.to_uppercase().collect())
            })
        };
        replaced.map(|r| (r, len + 1))
    })
}

/// ftfy's explicit ligature table (not NFKC: it keeps the long s of ﬅ).
const LIGATURES: [(char, &str); 22] = [
    ('Ĳ', "IJ"),
    ('ĳ', "ij"),
    ('ŉ', "ʼn"),
    ('Ǳ', "DZ"),
    ('ǲ', "Dz"),
    ('ǳ', "dz"),
    ('Ǆ', "DŽ"),
    ('ǅ', "Dž"),
    ('ǆ', "dž"),
    ('Ǉ', "LJ"),
    ('ǈ', "Lj"),
    ('ǉ', "lj"),
    ('Ǌ', "NJ"),
    ('ǋ', "Nj"),
    ('ǌ', "nj"),
    ('ﬀ', "ff"),
    ('ﬁ', "fi"),
    ('ﬂ', "fl"),
    ('ﬃ', "ffi"),
    ('ﬄ', "ffl"),
    ('ﬅ', "ſt"),
    ('ﬆ', "st"),
];

fn is_control(c: char) -> bool {
    matches!(c as u32, 0x00..=0x08 | 0x0B | 0x0E..=0x1F | 0x7F | 0x206A..=0x206F | 0xFEFF | 0xFFF9..=0xFFFC)
}

/// `\x1b[` digits and `;`, then a letter.
fn remove_terminal_escapes(text: &str) -> String {
    replace_each(text, "\x1b[", |after| {
        let params = after.chars().take_while(|c| c.is_ascii_digit() || *c == ';').count();
        after[params..].starts_with(|c: char| c.is_ascii_alphabetic()).then(|| (String::new(), params + 1))
    })
}

/// One pass of ftfy's fixers after the HTML step, in its order.
fn ftfy_pass(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        // fix_c1_controls: C1 controls read as Windows-1252 (undefined bytes stay).
        let c = match c as u32 {
            n @ 0x80..=0x9F => char::from_u32(CP1252[(n - 0x80) as usize]).unwrap_or(c),
            _ => c,
        };
        let code = c as u32;
        if let Some((_, l)) = LIGATURES.iter().find(|(lig, _)| *lig == c) {
            out.push_str(l);
        } else if (0xFF01..0xFFF0).contains(&code) {
            out.extend(std::iter::once(c).nfkc());
        } else if code == 0x3000 {
            out.push(' ');
        } else if matches!(c, '\u{02bc}' | '\u{2018}'..='\u{201b}') {
            out.push('\'');
        } else if ('\u{201c}'..='\u{201f}').contains(&c) {
            out.push('"');
        } else {
            out.push(c);
        }
    }
    // fix_line_breaks only changes which whitespace: the cleaning folds it anyway.
    let out = remove_terminal_escapes(&out);
    out.chars().filter(|c| !is_control(*c)).nfc().collect()
}

/// `ftfy.fix_text` with its defaults, without the mojibake repair: its fixers until the
/// text no longer changes, HTML unescaping only when the input has no `<`.
pub fn ftfy_fix_text(text: &str) -> String {
    let html = !text.contains('<');
    let mut text = text.to_string();
    loop {
        let unescaped = if html { ftfy_unescape(&text) } else { text.clone() };
        let fixed = ftfy_pass(&unescaped);
        if fixed == text {
            return fixed;
        }
        text = fixed;
    }
}

/// open_clip's `whitespace_clean(basic_clean(text)).lower()`.
pub fn open_clip_clean(text: &str) -> String {
    let text = html_unescape(&html_unescape(&ftfy_fix_text(text)));
    text.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}
