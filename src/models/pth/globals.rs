//! The globals a checkpoint's pickle names, checked against what a state dict needs:
//! tensors (`torch._utils._rebuild_tensor_v2`, `torch.*Storage`), parameters and
//! `OrderedDict`. Anything else (a numpy array, `torch.device`, a pickled module
//! `__main__.Net`, `builtins.eval`) is refused by name: pytorch-reader would drop it
//! silently, and what it stood for would be lost. Only opcodes are walked; nothing is built.

use std::collections::HashMap;
use std::io::Read;

use anyhow::{Context, Result};

fn allowed(module: &str, name: &str) -> bool {
    matches!(
        (module, name),
        ("collections", "OrderedDict")
            | ("torch._utils", "_rebuild_tensor" | "_rebuild_tensor_v2" | "_rebuild_parameter")
            | ("builtins" | "__builtin__", "set" | "frozenset")
    ) || (module == "torch" && name.ends_with("Storage"))
}

fn take<'a>(p: &'a [u8], pos: &mut usize, n: usize) -> Result<&'a [u8]> {
    let end = pos.checked_add(n).context("a pickle length overflows")?;
    let s = p.get(*pos..end).context("the pickle ends early")?;
    *pos = end;
    Ok(s)
}

fn line(p: &[u8], pos: &mut usize) -> Result<String> {
    let rest = p.get(*pos..).unwrap_or_default();
    let n = rest.iter().position(|&b| b == b'\n').context("the pickle ends early")?;
    *pos += n + 1;
    Ok(String::from_utf8_lossy(&rest[..n]).into_owned())
}

fn le(b: &[u8]) -> u64 {
    b.iter().rev().fold(0u64, |a, &x| a << 8 | u64::from(x))
}

/// The first global outside the allow-list, if any.
pub fn foreign_global(p: &[u8]) -> Result<Option<String>> {
    let mut pos = 0usize;
    let mut memo: HashMap<u64, Option<String>> = HashMap::new();
    // The last two values pushed, when strings (STACK_GLOBAL's module and name).
    let mut recent: [Option<String>; 2] = [None, None];
    loop {
        let op = take(p, &mut pos, 1)?[0];
        // Some(v): pushed v (a string or not); None: the stack's top is untouched.
        let mut pushed: Option<Option<String>> = Some(None);
        match op {
            b'.' => return Ok(None),
            b'c' | b'i' => {
                let (m, n) = (line(p, &mut pos)?, line(p, &mut pos)?);
                if !allowed(&m, &n) {
                    return Ok(Some(format!("{m}.{n}")));
                }
            }
            0x93 => match &recent {
                [Some(m), Some(n)] if allowed(m, n) => {}
                [Some(m), Some(n)] => return Ok(Some(format!("{m}.{n}"))),
                _ => return Ok(Some("a global with a computed name (STACK_GLOBAL)".into())),
            },
            0x82..=0x84 => return Ok(Some("a global from the extension registry".into())),
            b'V' | b'S' => pushed = Some(Some(line(p, &mut pos)?)),
            b'I' | b'L' | b'F' | b'P' => {
                line(p, &mut pos)?;
            }
            b'g' => {
                let i = line(p, &mut pos)?.parse().unwrap_or(u64::MAX);
                pushed = Some(memo.get(&i).cloned().flatten());
            }
            b'p' => {
                let i = line(p, &mut pos)?.parse().unwrap_or(u64::MAX);
                memo.insert(i, recent[1].clone());
                pushed = None;
            }
            b'h' | b'j' => {
                let i = le(take(p, &mut pos, if op == b'h' { 1 } else { 4 })?);
                pushed = Some(memo.get(&i).cloned().flatten());
            }
            b'q' | b'r' => {
                let i = le(take(p, &mut pos, if op == b'q' { 1 } else { 4 })?);
                memo.insert(i, recent[1].clone());
                pushed = None;
            }
            0x94 => {
                memo.insert(memo.len() as u64, recent[1].clone());
                pushed = None;
            }
            0x80 => {
                take(p, &mut pos, 1)?;
                pushed = None;
            }
            0x95 => {
                take(p, &mut pos, 8)?;
                pushed = None;
            }
            b'K' => drop(take(p, &mut pos, 1)?),
            b'M' => drop(take(p, &mut pos, 2)?),
            b'J' => drop(take(p, &mut pos, 4)?),
            b'G' => drop(take(p, &mut pos, 8)?),
            b'U' | 0x8c | b'C' | 0x8a | b'T' | b'X' | b'B' | 0x8b | 0x8d | 0x8e | 0x96 => {
                let width = match op {
                    b'U' | 0x8c | b'C' | 0x8a => 1,
                    b'T' | b'X' | b'B' | 0x8b => 4,
                    _ => 8,
                };
                let n = usize::try_from(le(take(p, &mut pos, width)?)).context("a pickle length overflows")?;
                let data = take(p, &mut pos, n)?;
                if matches!(op, b'U' | 0x8c | b'T' | b'X' | 0x8d) {
                    pushed = Some(Some(String::from_utf8_lossy(data).into_owned()));
                }
            }
            _ => {}
        }
        if let Some(v) = pushed {
            recent = match v {
                Some(s) => [recent[1].take(), Some(s)],
                None => [None, None],
            };
        }
    }
}

/// The pickle (`<root>/data.pkl`) of a zip-format checkpoint; `None` for the legacy format.
pub fn read_pickle(path: &std::path::Path) -> Result<Option<Vec<u8>>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let config = zip::read::Config { archive_offset: zip::read::ArchiveOffset::Known(0) };
    let Ok(mut archive) = zip::ZipArchive::with_config(config, std::io::BufReader::new(file)) else { return Ok(None) };
    let names: Vec<String> = archive.file_names().filter_map(|n| n.ok()).map(|n| n.into_owned()).collect();
    let Some(name) = names.into_iter().filter(|n| n.ends_with("data.pkl")).min_by_key(|n| n.len()) else {
        return Ok(None);
    };
    let entry = archive.by_name(&name).with_context(|| format!("{}: {name}", path.display()))?;
    // A state dict's pickle is kilobytes: a larger one is read only up to the cap.
    const MAX: u64 = 64 << 20;
    anyhow::ensure!(
        entry.size() <= MAX,
        "{}: {name} is {} bytes, more than a checkpoint's pickle",
        path.display(),
        entry.size()
    );
    let mut bytes = Vec::with_capacity(entry.size() as usize);
    entry.take(MAX).read_to_end(&mut bytes).with_context(|| format!("{}: reading {name}", path.display()))?;
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::foreign_global;

    #[test]
    fn globals_are_found_in_protocol_2_and_4_pickles() {
        // pickle.dumps(collections.OrderedDict(), protocol=2) and a protocol-4 STACK_GLOBAL
        // of builtins.eval, written out by hand.
        let ordered = b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01.";
        assert_eq!(foreign_global(ordered).unwrap(), None);
        let eval = b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00\x8c\x08builtins\x94\x8c\x04eval\x94\x93\x94.";
        assert_eq!(foreign_global(eval).unwrap().as_deref(), Some("builtins.eval"));
        let main = b"\x80\x02c__main__\nNet\nq\x00)\x81q\x01.";
        assert_eq!(foreign_global(main).unwrap().as_deref(), Some("__main__.Net"));
        assert!(foreign_global(b"\x80\x02").is_err(), "a pickle cut short is an error");
    }
}
