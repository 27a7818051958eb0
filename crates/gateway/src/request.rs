//! What the gateway reads of a completion request, taken from its JSON in one pass.
//!
//! The request goes upstream as the client wrote it, so the gateway needs only a few facts
//! from it: the model, the shape of `messages` or `prompt` and how much text they hold, `n`,
//! the token limits and `stream`. Building a `serde_json::Value` of the whole body for that
//! (a map and a string for every message) was a sixth of the gateway's own instructions per
//! request. Values of the wrong type are kept as "not what was asked for", so the handler
//! still answers with OpenAI's message naming the field rather than a parse error.

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::fmt;

/// A number field as sent: absent, null, a non-negative integer or anything else.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) enum Count {
    #[default]
    Absent,
    Null,
    Is(u64),
    Other,
}

impl Count {
    /// The value when it is a non-negative integer.
    pub(crate) fn get(self) -> Option<u64> {
        match self {
            Count::Is(n) => Some(n),
            _ => None,
        }
    }

    /// Sent with a value that is neither null nor a non-negative integer.
    pub(crate) fn is_invalid(self) -> bool {
        self == Count::Other
    }
}

/// The facts of a chat or completion request body.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct RequestFacts {
    /// `model`, when it is a string.
    pub model: Option<String>,
    /// How many entries `messages` has, when it is an array.
    pub messages: Option<usize>,
    /// Whether the body has a `prompt` key at all.
    pub has_prompt: bool,
    /// Characters of text in the messages' contents and the prompt.
    pub text_chars: usize,
    /// `n`, the number of choices.
    pub n: Count,
    /// `max_tokens`.
    pub max_tokens: Count,
    /// `max_completion_tokens`, which takes the place of `max_tokens` when given.
    pub max_completion_tokens: Count,
    /// `stream`, when it is `true`.
    pub stream: bool,
}

/// Why a body gave no facts.
#[derive(Debug, PartialEq)]
pub(crate) enum BodyError {
    /// Not JSON; serde's message.
    Invalid(String),
    /// JSON, but not an object.
    NotAnObject,
}

impl RequestFacts {
    /// The facts of `body`, which must be one JSON object.
    pub(crate) fn of(body: &[u8]) -> Result<RequestFacts, BodyError> {
        let mut de = serde_json::Deserializer::from_slice(body);
        let read = Read::Top.deserialize(&mut de).map_err(|e| BodyError::Invalid(e.to_string()))?;
        de.end().map_err(|e| BodyError::Invalid(e.to_string()))?;
        match read {
            Got::Facts(facts) => Ok(*facts),
            _ => Err(BodyError::NotAnObject),
        }
    }

    /// The prompt's size in tokens, as the emulator and the TPM estimate count it.
    pub(crate) fn prompt_tokens(&self) -> u64 {
        crate::emulator::tokens_of_chars(self.text_chars)
    }

    /// How many tokens a request may produce per choice, if it says.
    pub(crate) fn max_output_tokens(&self) -> Option<u64> {
        match self.max_completion_tokens {
            Count::Absent => self.max_tokens.get(),
            given => given.get(),
        }
    }
}

/// What is read from one JSON value: which part of a request it is.
#[derive(Clone, Copy, PartialEq)]
enum Read {
    Top,
    Model,
    Messages,
    Message,
    Content,
    Part,
    Prompt,
    StrLen,
    Count,
    Stream,
    Skip,
}

/// What one value gave.
enum Got {
    Nothing,
    Facts(Box<RequestFacts>),
    Text(String),
    /// Characters of text.
    Chars(usize),
    /// Entries of an array and the characters of text in them.
    Entries(usize, usize),
    Count(Count),
    True,
}

impl Got {
    fn chars(&self) -> usize {
        match self {
            Got::Chars(n) => *n,
            _ => 0,
        }
    }
}

/// The top-level keys the gateway reads.
#[derive(Clone, Copy)]
enum Key {
    Model,
    Messages,
    Prompt,
    N,
    MaxTokens,
    MaxCompletionTokens,
    Stream,
    Content,
    Text,
    Other,
}

/// A map key, as one of the `Key`s looked for at that level.
struct KeyOf(Read);

impl<'de> DeserializeSeed<'de> for KeyOf {
    type Value = Key;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for KeyOf {
    type Value = Key;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
        Ok(match (self.0, key) {
            (Read::Top, "model") => Key::Model,
            (Read::Top, "messages") => Key::Messages,
            (Read::Top, "prompt") => Key::Prompt,
            (Read::Top, "n") => Key::N,
            (Read::Top, "max_tokens") => Key::MaxTokens,
            (Read::Top, "max_completion_tokens") => Key::MaxCompletionTokens,
            (Read::Top, "stream") => Key::Stream,
            (Read::Message, "content") => Key::Content,
            (Read::Part, "text") => Key::Text,
            _ => Key::Other,
        })
    }
}

impl<'de> DeserializeSeed<'de> for Read {
    type Value = Got;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Got, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Read {
    type Value = Got;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Got, E> {
        Ok(match self {
            Read::Stream if v => Got::True,
            Read::Count => Got::Count(Count::Other),
            _ => Got::Nothing,
        })
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Got, E> {
        Ok(if self == Read::Count { Got::Count(Count::Is(v)) } else { Got::Nothing })
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Got, E> {
        match u64::try_from(v) {
            Ok(v) => self.visit_u64(v),
            Err(_) => Ok(if self == Read::Count { Got::Count(Count::Other) } else { Got::Nothing }),
        }
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Got, E> {
        Ok(if self == Read::Count { Got::Count(Count::Other) } else { Got::Nothing })
    }

    fn visit_unit<E: de::Error>(self) -> Result<Got, E> {
        Ok(if self == Read::Count { Got::Count(Count::Null) } else { Got::Nothing })
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Got, E> {
        Ok(match self {
            Read::Model => Got::Text(v.to_string()),
            Read::Content | Read::Prompt | Read::StrLen => Got::Chars(v.len()),
            Read::Count => Got::Count(Count::Other),
            _ => Got::Nothing,
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Got, A::Error> {
        // A message's content is an array of parts with text; a prompt, an array of strings
        // (or of token ids, which hold no text).
        let each = match self {
            Read::Messages => Read::Message,
            Read::Content => Read::Part,
            Read::Prompt => Read::StrLen,
            _ => Read::Skip,
        };
        let (mut entries, mut chars) = (0, 0);
        while let Some(got) = seq.next_element_seed(each)? {
            entries += 1;
            chars += got.chars();
        }
        Ok(match self {
            Read::Messages => Got::Entries(entries, chars),
            Read::Content | Read::Prompt => Got::Chars(chars),
            Read::Count => Got::Count(Count::Other),
            _ => Got::Nothing,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Got, A::Error> {
        let mut facts = RequestFacts::default();
        // Each is its key's last value: a key given twice counts once, as in a parsed object.
        let (mut message_chars, mut prompt_chars, mut chars) = (0, 0, 0);
        while let Some(key) = map.next_key_seed(KeyOf(self))? {
            match key {
                Key::Model => facts.model = if let Got::Text(m) = map.next_value_seed(Read::Model)? { Some(m) } else { None },
                Key::Messages => {
                    (facts.messages, message_chars) = match map.next_value_seed(Read::Messages)? {
                        Got::Entries(n, c) => (Some(n), c),
                        _ => (None, 0),
                    }
                }
                Key::Prompt => {
                    facts.has_prompt = true;
                    prompt_chars = map.next_value_seed(Read::Prompt)?.chars();
                }
                Key::N => facts.n = count(map.next_value_seed(Read::Count)?),
                Key::MaxTokens => facts.max_tokens = count(map.next_value_seed(Read::Count)?),
                Key::MaxCompletionTokens => facts.max_completion_tokens = count(map.next_value_seed(Read::Count)?),
                Key::Stream => facts.stream = matches!(map.next_value_seed(Read::Stream)?, Got::True),
                Key::Content => chars = map.next_value_seed(Read::Content)?.chars(),
                Key::Text => chars = map.next_value_seed(Read::StrLen)?.chars(),
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        facts.text_chars = message_chars + prompt_chars;
        Ok(match self {
            Read::Top => Got::Facts(Box::new(facts)),
            Read::Message | Read::Part => Got::Chars(chars),
            Read::Count => Got::Count(Count::Other),
            _ => Got::Nothing,
        })
    }
}

fn count(got: Got) -> Count {
    match got {
        Got::Count(c) => c,
        _ => Count::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// The facts as read from a parsed `Value`, the way the handler read them before.
    fn from_value(body: &Value) -> RequestFacts {
        let count = |field: &str| match body.get(field) {
            None => Count::Absent,
            Some(Value::Null) => Count::Null,
            Some(v) => v.as_u64().map_or(Count::Other, Count::Is),
        };
        RequestFacts {
            model: body.get("model").and_then(Value::as_str).map(str::to_string),
            messages: body.get("messages").and_then(Value::as_array).map(Vec::len),
            has_prompt: body.get("prompt").is_some(),
            text_chars: 0,
            n: count("n"),
            max_tokens: count("max_tokens"),
            max_completion_tokens: count("max_completion_tokens"),
            stream: body.get("stream").and_then(Value::as_bool).unwrap_or(false),
        }
    }

    #[test]
    fn the_facts_match_a_full_parse_of_real_request_shapes() {
        let bodies = [
            json!({"model": "m", "messages": [{"role": "user", "content": "héllo \"there\""}], "max_tokens": 5, "stream": true, "stream_options": {"include_usage": true}}),
            json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "abc"}, {"type": "image_url", "image_url": {"url": "x"}}]}, {"role": "assistant", "content": null, "tool_calls": [{"id": "t"}]}], "n": 3, "max_completion_tokens": 9}),
            json!({"model": "m", "prompt": ["ab", "cde", [1, 2]], "n": null, "max_tokens": null, "logprobs": 2, "echo": true, "metadata": {"k": "v"}, "user": "u"}),
            json!({"model": "m", "prompt": [1, 2, 3], "n": 2.0, "max_tokens": -1, "stream": "yes"}),
            json!({"model": 7, "messages": "not an array", "n": "3", "max_tokens": [1], "max_completion_tokens": {"a": 1}, "stream": 1}),
            json!({"model": "m", "messages": [], "prompt": "", "n": 128}),
            json!({}),
        ];
        for body in bodies {
            let raw = serde_json::to_vec(&body).unwrap();
            let mut facts = RequestFacts::of(&raw).unwrap();
            assert_eq!(crate::emulator::prompt_tokens(&body), facts.prompt_tokens(), "{body}");
            assert_eq!(crate::emulator::max_output_tokens(&body), facts.max_output_tokens(), "{body}");
            facts.text_chars = 0;
            assert_eq!(facts, from_value(&body), "{body}");
        }
        let facts = RequestFacts::of(br#"{"model":"m","messages":[{"content":"abcd"},{"content":[{"text":"efgh"}]}],"prompt":"ij"}"#).unwrap();
        assert_eq!((facts.messages, facts.text_chars, facts.has_prompt), (Some(2), 10, true));
        let last_wins = RequestFacts::of(br#"{"model":"a","model":"b","stream":true,"stream":false,"messages":[{"content":"abcd"}],"messages":"x"}"#).unwrap();
        assert_eq!((last_wins.model.as_deref(), last_wins.stream, last_wins.messages, last_wins.text_chars), (Some("b"), false, None, 0));
    }

    #[test]
    fn a_body_that_is_not_one_json_object_is_refused() {
        assert_eq!(RequestFacts::of(b"[1]"), Err(BodyError::NotAnObject));
        assert_eq!(RequestFacts::of(b"\"s\""), Err(BodyError::NotAnObject));
        assert!(matches!(RequestFacts::of(b"{\"model\":"), Err(BodyError::Invalid(_))));
        assert!(matches!(RequestFacts::of(b"{} {}"), Err(BodyError::Invalid(_))));
        assert!(matches!(RequestFacts::of(b""), Err(BodyError::Invalid(_))));
    }
}
