//! Job-array index sets as users write them (`0-999`, `1-20%4`, `0-99:5`, `1,3,10-12`),
//! kept as ranges: a million-task array costs a few bytes, never a million rows.

use std::fmt;

/// One `start-end:step` piece of an array spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexRange {
    /// First index.
    pub start: u32,
    /// Last index (inclusive), always reached by `step`.
    pub end: u32,
    /// Distance between two indices, at least 1.
    pub step: u32,
}

impl IndexRange {
    fn len(&self) -> u32 {
        (self.end - self.start) / self.step + 1
    }
}

/// A parsed array spec: sorted, non-overlapping ranges and an optional throttle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArraySpec {
    ranges: Vec<IndexRange>,
    n_tasks: u32,
    /// At most this many tasks of the array run at once (`%N`).
    pub max_running: Option<u32>,
}

impl ArraySpec {
    /// A single task with index 0 (a job that is not an array).
    pub fn single() -> ArraySpec {
        ArraySpec {
            ranges: vec![IndexRange { start: 0, end: 0, step: 1 }],
            n_tasks: 1,
            max_running: None,
        }
    }

    /// Indices `0` to `n - 1` (`0-N`), or a single task when `n` is 0.
    pub fn first(n: u32) -> ArraySpec {
        if n == 0 {
            return ArraySpec::single();
        }
        ArraySpec { ranges: vec![IndexRange { start: 0, end: n - 1, step: 1 }], n_tasks: n, max_running: None }
    }

    /// Parses `A-B[:STEP][,...][%MAX]`; `max_index` is the largest index accepted.
    pub fn parse(text: &str, max_index: u32) -> Result<ArraySpec, String> {
        let text = text.trim();
        let (list, throttle) = match text.split_once('%') {
            Some((list, throttle)) => (list, Some(throttle)),
            None => (text, None),
        };
        let number = |s: &str, what: &str| -> Result<u32, String> {
            let s = s.trim();
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("'{text}': {what} '{s}' is not a whole number"));
            }
            s.parse::<u32>()
                .map_err(|_| format!("'{text}': {what} '{s}' is too large"))
        };
        let max_running = match throttle {
            Some(t) => {
                let n = number(t, "the limit after %")?;
                if n == 0 {
                    return Err(format!("'{text}': the limit after % must be at least 1"));
                }
                Some(n)
            }
            None => None,
        };
        // Slurm also takes the list in brackets: `[0-4]`, `[0-32]%20`.
        let list = match list.strip_prefix('[') {
            Some(inner) => inner.strip_suffix(']').ok_or_else(|| format!("'{text}': a '[' without its ']'"))?,
            None => list,
        };
        if list.is_empty() {
            return Err("the array spec is empty (example: 0-99)".to_string());
        }
        let mut ranges = Vec::new();
        for piece in list.split(',') {
            let (span, step) = match piece.split_once(':') {
                Some((span, step)) => (span, number(step, "step")?),
                None => (piece, 1),
            };
            if step == 0 {
                return Err(format!("'{text}': the step must be at least 1"));
            }
            let (start, end) = match span.split_once('-') {
                Some((a, b)) => (number(a, "start")?, number(b, "end")?),
                None => {
                    let i = number(span, "index")?;
                    (i, i)
                }
            };
            if end < start {
                return Err(format!("'{text}': range {start}-{end} ends before it starts"));
            }
            if end > max_index {
                return Err(format!(
                    "'{text}': index {end} is over the maximum array index {max_index}"
                ));
            }
            let end = start + (end - start) / step * step;
            ranges.push(IndexRange { start, end, step });
        }
        ranges.sort_by_key(|r| r.start);
        for pair in ranges.windows(2) {
            if pair[1].start <= pair[0].end {
                return Err(format!(
                    "'{text}': ranges starting at {} and {} overlap",
                    pair[0].start, pair[1].start
                ));
            }
        }
        let n_tasks = ranges.iter().map(IndexRange::len).sum();
        Ok(ArraySpec { ranges, n_tasks, max_running })
    }

    /// How many tasks the array has.
    pub fn n_tasks(&self) -> u32 {
        self.n_tasks
    }

    /// The ranges, sorted.
    pub fn ranges(&self) -> &[IndexRange] {
        &self.ranges
    }

    /// The array index of the task at `pos` (0-based position in index order).
    pub fn index_at(&self, pos: u32) -> Option<u32> {
        let mut pos = pos;
        for range in &self.ranges {
            let len = range.len();
            if pos < len {
                return Some(range.start + pos * range.step);
            }
            pos -= len;
        }
        None
    }

    /// The position of array index `index`, if the array has it.
    pub fn position_of(&self, index: u32) -> Option<u32> {
        let mut base = 0;
        for range in &self.ranges {
            if index >= range.start && index <= range.end {
                return (index - range.start).is_multiple_of(range.step)
                    .then(|| base + (index - range.start) / range.step);
            }
            base += range.len();
        }
        None
    }

    /// The largest index.
    pub fn max_index(&self) -> u32 {
        self.ranges.last().map(|r| r.end).unwrap_or(0)
    }
}

impl fmt::Display for ArraySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if r.start == r.end {
                write!(f, "{}", r.start)?;
            } else {
                write!(f, "{}-{}", r.start, r.end)?;
                if r.step != 1 {
                    write!(f, ":{}", r.step)?;
                }
            }
        }
        if let Some(n) = self.max_running {
            write!(f, "%{n}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_n_is_the_same_as_its_text() {
        assert_eq!(ArraySpec::first(1000), ArraySpec::parse("0-999", u32::MAX).unwrap());
        assert_eq!(ArraySpec::first(1), ArraySpec::single());
        assert_eq!(ArraySpec::first(0), ArraySpec::single());
    }

    #[test]
    fn ranges_steps_and_throttle() {
        let a = ArraySpec::parse("1-20%4", 1000).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(a.n_tasks(), 20);
        assert_eq!(a.max_running, Some(4));
        assert_eq!(a.index_at(0), Some(1));
        assert_eq!(a.index_at(19), Some(20));
        assert_eq!(a.index_at(20), None);

        let a = ArraySpec::parse("0-9:3,20,30-31", 1000).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(a.n_tasks(), 4 + 1 + 2);
        assert_eq!(a.to_string(), "0-9:3,20,30-31");
        for pos in 0..a.n_tasks() {
            let index = a.index_at(pos).unwrap_or(u32::MAX);
            assert_eq!(a.position_of(index), Some(pos));
        }
        assert_eq!(a.position_of(4), None);
        assert_eq!(a.position_of(21), None);
    }

    #[test]
    fn slurm_brackets_hold_the_same_list() {
        for (bracketed, plain) in [("[0-4]", "0-4"), ("[0-32]%20", "0-32%20"), ("[1,5,10,15]", "1,5,10,15")] {
            assert_eq!(ArraySpec::parse(bracketed, 1000), ArraySpec::parse(plain, 1000), "{bracketed}");
        }
        assert!(ArraySpec::parse("[0-4", 1000).unwrap_err().contains("without its ']'"));
        assert!(ArraySpec::parse("[]", 1000).is_err());
    }

    #[test]
    fn bad_specs_say_why() {
        for (spec, needle) in [
            ("5-1", "ends before"),
            ("0-1000001", "maximum"),
            ("0-9:0", "step"),
            ("1-4%0", "at least 1"),
            ("a-b", "whole number"),
            ("0-5,3-8", "overlap"),
            ("", "empty"),
        ] {
            let err = ArraySpec::parse(spec, 1_000_000).err().unwrap_or_default();
            assert!(err.contains(needle), "{spec}: {err}");
        }
    }

    #[test]
    fn a_million_is_a_few_bytes() {
        let a = ArraySpec::parse("0-999999", 1_000_000).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(a.n_tasks(), 1_000_000);
        assert_eq!(a.ranges().len(), 1);
    }
}
