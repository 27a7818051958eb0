//! The one pass over a request body: a serde visitor that reads only the fields the gateway
//! judges a request by, counting text as it goes, and skips the rest unparsed.

use super::*;

/// What is read from one JSON value: which part of a request it is.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Read {
    Top,
    Model,
    Messages,
    Message,
    Content,
    Part,
    Prompt,
    PromptItem,
    TokenId,
    StrLen,
    Count,
    Scalar,
}

/// One entry of a prompt array.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Item {
    /// A string of this many characters.
    Text(usize),
    /// A token id.
    Id,
    /// An array of this many token ids.
    Ids(usize),
    Bad,
}

/// What one value gave.
pub(super) enum Got {
    Nothing,
    Facts(Box<RequestFacts>),
    Text(String),
    /// Characters of text.
    Chars(usize),
    /// A message: the characters of text in it, and whether its role is known.
    Message(usize, bool),
    /// Entries of the messages array, the characters of text in them, the first bad one.
    Messages(usize, usize, Option<usize>),
    Prompt(Prompt, usize),
    Item(Item),
    Count(Count),
    Scalar(Scalar),
}

impl Got {
    fn chars(&self) -> usize {
        match self {
            Got::Chars(n) => *n,
            _ => 0,
        }
    }

    /// What a value of the wrong type gives where `read` was expected.
    fn wrong_type(read: Read) -> Got {
        match read {
            Read::Count => Got::Count(Count::Other),
            Read::Prompt => Got::Prompt(Prompt::Invalid, 0),
            Read::PromptItem | Read::TokenId => Got::Item(Item::Bad),
            _ => Got::Nothing,
        }
    }
}

/// The top-level keys the gateway reads, and those of messages and their parts.
#[derive(Clone, Copy)]
enum Key {
    Model,
    Messages,
    Prompt,
    Input,
    EncodingFormat,
    Dimensions,
    N,
    MaxTokens,
    MaxCompletionTokens,
    Stream,
    Param(fn(&mut Params) -> &mut Scalar),
    Role,
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
            (Read::Top, "input") => Key::Input,
            (Read::Top, "encoding_format") => Key::EncodingFormat,
            (Read::Top, "dimensions") => Key::Dimensions,
            (Read::Top, "n") => Key::N,
            (Read::Top, "max_tokens") => Key::MaxTokens,
            (Read::Top, "max_completion_tokens") => Key::MaxCompletionTokens,
            (Read::Top, "stream") => Key::Stream,
            (Read::Top, "temperature") => Key::Param(|p| &mut p.temperature),
            (Read::Top, "top_p") => Key::Param(|p| &mut p.top_p),
            (Read::Top, "presence_penalty") => Key::Param(|p| &mut p.presence_penalty),
            (Read::Top, "frequency_penalty") => Key::Param(|p| &mut p.frequency_penalty),
            (Read::Top, "logprobs") => Key::Param(|p| &mut p.logprobs),
            (Read::Top, "top_logprobs") => Key::Param(|p| &mut p.top_logprobs),
            (Read::Top, "echo") => Key::Param(|p| &mut p.echo),
            (Read::Top, "seed") => Key::Param(|p| &mut p.seed),
            (Read::Top, "user") => Key::Param(|p| &mut p.user),
            (Read::Top, "stop") => Key::Param(|p| &mut p.stop),
            (Read::Top, "stream_options") => Key::Param(|p| &mut p.stream_options),
            (Read::Message, "role") => Key::Role,
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
        Ok(if self == Read::Scalar { Got::Scalar(Scalar::Bool(v)) } else { Got::wrong_type(self) })
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Got, E> {
        Ok(match self {
            Read::Count => Got::Count(Count::Is(v)),
            Read::Scalar => Got::Scalar(i64::try_from(v).map_or(Scalar::Float(v as f64), Scalar::Int)),
            Read::PromptItem | Read::TokenId => Got::Item(Item::Id),
            _ => Got::wrong_type(self),
        })
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Got, E> {
        match u64::try_from(v) {
            Ok(v) => self.visit_u64(v),
            Err(_) => Ok(if self == Read::Scalar { Got::Scalar(Scalar::Int(v)) } else { Got::wrong_type(self) }),
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Got, E> {
        Ok(if self == Read::Scalar { Got::Scalar(Scalar::Float(v)) } else { Got::wrong_type(self) })
    }

    fn visit_unit<E: de::Error>(self) -> Result<Got, E> {
        Ok(match self {
            Read::Count => Got::Count(Count::Null),
            Read::Scalar => Got::Scalar(Scalar::Null),
            _ => Got::wrong_type(self),
        })
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Got, E> {
        Ok(match self {
            Read::Model => Got::Text(v.to_string()),
            Read::Content | Read::StrLen => Got::Chars(v.len()),
            Read::Prompt => Got::Prompt(Prompt::Given { prompts: 1, token_ids: 0 }, v.len()),
            Read::PromptItem => Got::Item(Item::Text(v.len())),
            Read::Scalar => Got::Scalar(Scalar::Str),
            _ => Got::wrong_type(self),
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Got, A::Error> {
        match self {
            Read::Messages => {
                let (mut entries, mut chars, mut bad) = (0, 0, None);
                while let Some(got) = seq.next_element_seed(Read::Message)? {
                    match got {
                        Got::Message(c, true) => chars += c,
                        _ => bad = bad.or(Some(entries)),
                    }
                    entries += 1;
                }
                Ok(Got::Messages(entries, chars, bad))
            }
            // A message's content may be an array of parts with text.
            Read::Content => {
                let mut chars = 0;
                while let Some(got) = seq.next_element_seed(Read::Part)? {
                    chars += got.chars();
                }
                Ok(Got::Chars(chars))
            }
            Read::Prompt => {
                let mut items = Vec::new();
                while let Some(got) = seq.next_element_seed(Read::PromptItem)? {
                    items.push(if let Got::Item(item) = got { item } else { Item::Bad });
                }
                let chars = items.iter().map(|i| if let Item::Text(c) = i { *c } else { 0 }).sum();
                let shape = if items.is_empty() || items.contains(&Item::Bad) {
                    Prompt::Invalid
                } else if items.iter().all(|i| matches!(i, Item::Text(_))) {
                    Prompt::Given { prompts: items.len(), token_ids: 0 }
                } else if items.iter().all(|i| *i == Item::Id) {
                    Prompt::Given { prompts: 1, token_ids: items.len() }
                } else if items.iter().all(|i| matches!(i, Item::Ids(_))) {
                    Prompt::Given { prompts: items.len(), token_ids: items.iter().map(|i| if let Item::Ids(n) = i { *n } else { 0 }).sum() }
                } else {
                    Prompt::Invalid
                };
                Ok(Got::Prompt(shape, chars))
            }
            Read::PromptItem => {
                let (mut ids, mut all_ids) = (0, true);
                while let Some(got) = seq.next_element_seed(Read::TokenId)? {
                    ids += 1;
                    all_ids &= matches!(got, Got::Item(Item::Id));
                }
                Ok(Got::Item(if all_ids && ids > 0 { Item::Ids(ids) } else { Item::Bad }))
            }
            Read::Scalar => {
                let (mut len, mut all_strings) = (0, true);
                while let Some(got) = seq.next_element_seed(Read::Scalar)? {
                    len += 1;
                    all_strings &= matches!(got, Got::Scalar(Scalar::Str));
                }
                Ok(Got::Scalar(Scalar::Array { len, all_strings }))
            }
            _ => {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Got::wrong_type(self))
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Got, A::Error> {
        let mut facts = RequestFacts::default();
        // Each is its key's last value: a key given twice counts once, as in a parsed object.
        let (mut message_chars, mut prompt_chars, mut chars, mut role_known) = (0, 0, 0, false);
        while let Some(key) = map.next_key_seed(KeyOf(self))? {
            match key {
                Key::Model => facts.model = if let Got::Text(m) = map.next_value_seed(Read::Model)? { Some(m) } else { None },
                Key::Messages => {
                    (facts.messages, message_chars, facts.bad_message) = match map.next_value_seed(Read::Messages)? {
                        Got::Messages(n, c, bad) => (Some(n), c, bad),
                        _ => (None, 0, None),
                    }
                }
                Key::Prompt => {
                    (facts.prompt, prompt_chars) = match map.next_value_seed(Read::Prompt)? {
                        Got::Prompt(shape, c) => (shape, c),
                        _ => (Prompt::Invalid, 0),
                    }
                }
                Key::Input => {
                    (facts.input, facts.input_chars) = match map.next_value_seed(Read::Prompt)? {
                        Got::Prompt(shape, c) => (shape, c),
                        _ => (Prompt::Invalid, 0),
                    }
                }
                Key::EncodingFormat => {
                    // Null and other types read as unset: a string is what is checked here.
                    facts.encoding_format = match map.next_value_seed(Read::Model)? {
                        Got::Text(f) => Some(f),
                        _ => None,
                    }
                }
                Key::Dimensions => facts.dimensions = count(map.next_value_seed(Read::Count)?),
                Key::N => facts.n = count(map.next_value_seed(Read::Count)?),
                Key::MaxTokens => facts.max_tokens = count(map.next_value_seed(Read::Count)?),
                Key::MaxCompletionTokens => facts.max_completion_tokens = count(map.next_value_seed(Read::Count)?),
                Key::Stream => facts.stream = scalar(map.next_value_seed(Read::Scalar)?),
                Key::Param(field) => *field(&mut facts.params) = scalar(map.next_value_seed(Read::Scalar)?),
                Key::Role => role_known = matches!(map.next_value_seed(Read::Model)?, Got::Text(r) if ROLES.contains(&r.as_str())),
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
            Read::Message => Got::Message(chars, role_known),
            Read::Part => Got::Chars(chars),
            Read::Scalar => Got::Scalar(Scalar::Object),
            _ => Got::wrong_type(self),
        })
    }
}

fn count(got: Got) -> Count {
    match got {
        Got::Count(c) => c,
        _ => Count::Other,
    }
}

fn scalar(got: Got) -> Scalar {
    match got {
        Got::Scalar(s) => s,
        _ => Scalar::Absent,
    }
}
