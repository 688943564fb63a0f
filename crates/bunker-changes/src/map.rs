//! Changed-extent maps: which byte ranges of a volume may differ from the
//! base snapshot's image.
//!
//! Three spellings are read, told apart by their first non-blank text:
//! - `rbd diff` plain output (Ceph): a header `Offset Length Type`, then
//!   one extent per line, type `data` or `zero`;
//! - `rbd diff --format json`: `[{"offset": N, "length": N, "exists":
//!   "true"}, ...]`, where `exists` false means the extent reads as zeros;
//! - the generic text format `START LENGTH [data|zero]`, one extent per
//!   line (type `data` when left out), `#` comments and blank lines
//!   allowed; numbers decimal or `0x` hexadecimal.
//!
//! Guarantees: a parsed [`ChangeMap`] is sorted, non-overlapping, inside
//! the image and without empty extents; adjacent extents of the same type
//! are merged. Anything else is an error naming the line (or, for JSON,
//! the element) and what is wrong with it: a map that is out of order or
//! overlaps itself was not written by the tools above and may be the wrong
//! file, so it is refused rather than repaired.
//!
//! Memory: 17 bytes per extent after merging (a map of 1 million scattered
//! extents is 17 MB); maps are proportional to what changed, not to the
//! volume.

use std::io::BufRead;

use serde::Deserialize;

/// What a changed extent holds now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// New data: read it from the source.
    Data,
    /// Zeros (discarded or zeroed): no need to read the source.
    Zero,
}

/// One changed byte range `[offset, offset + len)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
    pub kind: Kind,
}

impl Extent {
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// The changed extents of an image, sorted and disjoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangeMap {
    extents: Vec<Extent>,
}

/// Why a map cannot be used. `at` is "line N" or "element N" (1-based).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MapError {
    #[error("changed-extent map, {at}: {reason}: {text:?}")]
    Bad {
        at: String,
        text: String,
        reason: String,
    },
    #[error("changed-extent map is not valid rbd diff JSON: {0}")]
    Json(serde_json::Error),
    #[error("cannot read the changed-extent map: {0}")]
    Io(#[from] std::io::Error),
}

impl ChangeMap {
    /// A map from extents already in order (tests, dirty bitmaps); the
    /// same checks as [`parse`] apply.
    pub fn from_extents(
        extents: impl IntoIterator<Item = Extent>,
        image_len: u64,
    ) -> Result<ChangeMap, MapError> {
        let mut map = ChangeMap::default();
        for (i, extent) in extents.into_iter().enumerate() {
            map.add(extent, image_len).map_err(|reason| {
                bad(format!("extent {}", i + 1), &extent_text(&extent), reason)
            })?;
        }
        Ok(map)
    }

    pub fn extents(&self) -> &[Extent] {
        &self.extents
    }

    /// Bytes the map calls changed.
    pub fn changed_bytes(&self) -> u64 {
        self.extents.iter().map(|e| e.len).sum()
    }

    /// Index of the first extent that ends after `offset`.
    pub fn first_ending_after(&self, offset: u64) -> usize {
        self.extents.partition_point(|e| e.end() <= offset)
    }

    fn add(&mut self, extent: Extent, image_len: u64) -> Result<(), String> {
        if extent.len == 0 {
            return Err("empty extent (length 0)".into());
        }
        let Some(end) = extent.offset.checked_add(extent.len) else {
            return Err("offset + length overflows".into());
        };
        if end > image_len {
            return Err(format!(
                "extent ends at {end}, beyond the image's {image_len} bytes"
            ));
        }
        if let Some(last) = self.extents.last_mut() {
            if extent.offset < last.end() {
                return Err(if extent.offset < last.offset {
                    format!(
                        "out of order: starts at {}, before the previous extent at {}",
                        extent.offset, last.offset
                    )
                } else {
                    format!("overlaps the previous extent {}+{}", last.offset, last.len)
                });
            }
            if extent.offset == last.end() && extent.kind == last.kind {
                last.len += extent.len;
                return Ok(());
            }
        }
        self.extents.push(extent);
        Ok(())
    }
}

fn bad(at: String, text: &str, reason: String) -> MapError {
    MapError::Bad {
        at,
        text: text.chars().take(120).collect(),
        reason,
    }
}

fn extent_text(e: &Extent) -> String {
    format!("{} {} {:?}", e.offset, e.len, e.kind)
}

/// Reads a map in any of the three spellings for an image of `image_len`
/// bytes.
pub fn parse(mut input: impl BufRead, image_len: u64) -> Result<ChangeMap, MapError> {
    let mut text = String::new();
    let mut map = ChangeMap::default();
    let mut line_no = 0usize;
    let mut first = true;
    loop {
        text.clear();
        if input.read_line(&mut text)? == 0 {
            return Ok(map);
        }
        line_no += 1;
        let line = text.trim();
        if first {
            if line.is_empty() {
                continue;
            }
            first = false;
            if line.starts_with('[') {
                // JSON: the rest of the input joins this line.
                let mut all = std::mem::take(&mut text);
                input.read_to_string(&mut all)?;
                return parse_json(&all, image_len);
            }
            if is_rbd_header(line) {
                continue;
            }
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = format!("line {line_no}");
        let extent = parse_line(line).map_err(|reason| bad(at.clone(), line, reason))?;
        map.add(extent, image_len)
            .map_err(|reason| bad(at, line, reason))?;
    }
}

fn is_rbd_header(line: &str) -> bool {
    let words: Vec<&str> = line.split_whitespace().collect();
    words.len() == 3
        && words[0].eq_ignore_ascii_case("offset")
        && words[1].eq_ignore_ascii_case("length")
        && words[2].eq_ignore_ascii_case("type")
}

fn parse_line(line: &str) -> Result<Extent, String> {
    let mut words = line.split_whitespace();
    let offset = number(words.next(), "offset")?;
    let len = number(words.next(), "length")?;
    let kind = match words.next() {
        None | Some("data") => Kind::Data,
        Some("zero") => Kind::Zero,
        Some(other) => return Err(format!("type {other:?} is neither data nor zero")),
    };
    if let Some(extra) = words.next() {
        return Err(format!("unexpected {extra:?} after the type"));
    }
    Ok(Extent { offset, len, kind })
}

fn number(word: Option<&str>, what: &str) -> Result<u64, String> {
    let word = word.ok_or_else(|| format!("missing {what}"))?;
    let parsed = match word.strip_prefix("0x").or_else(|| word.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => word.parse::<u64>(),
    };
    parsed.map_err(|_| format!("{what} {word:?} is not a non-negative integer"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonExtent {
    offset: u64,
    length: u64,
    exists: JsonBool,
}

/// rbd writes `"exists": "true"`; a real boolean is accepted too.
#[derive(Deserialize)]
#[serde(untagged)]
enum JsonBool {
    Bool(bool),
    Text(String),
}

fn parse_json(text: &str, image_len: u64) -> Result<ChangeMap, MapError> {
    let extents: Vec<JsonExtent> = serde_json::from_str(text).map_err(MapError::Json)?;
    let mut map = ChangeMap::default();
    for (i, e) in extents.into_iter().enumerate() {
        let at = format!("element {}", i + 1);
        let shown = format!("offset {} length {}", e.offset, e.length);
        let kind = match &e.exists {
            JsonBool::Bool(true) => Kind::Data,
            JsonBool::Bool(false) => Kind::Zero,
            JsonBool::Text(t) if t == "true" => Kind::Data,
            JsonBool::Text(t) if t == "false" => Kind::Zero,
            JsonBool::Text(t) => {
                return Err(bad(
                    at,
                    &shown,
                    format!("exists {t:?} is neither true nor false"),
                ))
            }
        };
        let extent = Extent {
            offset: e.offset,
            len: e.length,
            kind,
        };
        map.add(extent, image_len)
            .map_err(|reason| bad(at, &shown, reason))?;
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str, len: u64) -> Result<ChangeMap, MapError> {
        parse(text.as_bytes(), len)
    }

    fn ext(offset: u64, len: u64, kind: Kind) -> Extent {
        Extent { offset, len, kind }
    }

    #[test]
    fn rbd_plain_output_is_read_with_its_header() {
        let text = "Offset    Length   Type\n0         4194304  data\n8388608   4194304  zero\n12582912  4194304  data\n";
        let map = parse_str(text, 16 << 20).unwrap();
        assert_eq!(
            map.extents(),
            &[
                ext(0, 4194304, Kind::Data),
                ext(8388608, 4194304, Kind::Zero),
                ext(12582912, 4194304, Kind::Data)
            ]
        );
    }

    #[test]
    fn rbd_json_output_is_read() {
        let text = r#"[{"offset":0,"length":4096,"exists":"true"},{"offset":4096,"length":4096,"exists":"false"},{"offset":1048576,"length":512,"exists":true}]"#;
        let map = parse_str(text, 2 << 20).unwrap();
        assert_eq!(
            map.extents(),
            &[
                ext(0, 4096, Kind::Data),
                ext(4096, 4096, Kind::Zero),
                ext(1048576, 512, Kind::Data)
            ]
        );
        let err = parse_str(r#"[{"offset":0,"length":1,"exists":"maybe"}]"#, 10).unwrap_err();
        assert!(err.to_string().contains("element 1"), "{err}");
        assert!(matches!(
            parse_str("[{\"offset\":1}", 10),
            Err(MapError::Json(_))
        ));
    }

    #[test]
    fn the_generic_format_merges_neighbours_and_skips_comments() {
        let text = "# day 3\n0 100\n100 0x64 data\n\n300 50 zero\n350 10 zero\n";
        let map = parse_str(text, 1000).unwrap();
        assert_eq!(
            map.extents(),
            &[ext(0, 200, Kind::Data), ext(300, 60, Kind::Zero)]
        );
        assert_eq!(map.changed_bytes(), 260);
        assert_eq!(map.first_ending_after(199), 0);
        assert_eq!(map.first_ending_after(200), 1);
        assert_eq!(map.first_ending_after(360), 2);
    }

    #[test]
    fn bad_lines_are_refused_naming_the_line_and_the_fault() {
        let cases = [
            ("0 10\n20 5\n10 5\n", "line 3", "out of order"),
            ("0 10\n5 10\n", "line 2", "overlaps"),
            ("0 10\n990 11\n", "line 2", "beyond the image's 1000 bytes"),
            ("0 ten\n", "line 1", "length \"ten\""),
            ("0 10 dirty\n", "line 1", "neither data nor zero"),
            ("0 10 data extra\n", "line 1", "unexpected"),
            ("5 0\n", "line 1", "empty extent"),
            ("-5 10\n", "line 1", "offset \"-5\""),
            ("18446744073709551615 2\n", "line 1", "overflows"),
            ("7\n", "line 1", "missing length"),
        ];
        for (text, at, reason) in cases {
            let err = parse_str(text, 1000).unwrap_err().to_string();
            assert!(err.contains(at) && err.contains(reason), "{text:?}: {err}");
        }
    }
}
