//! What the gateway reads of a completion request, taken from its JSON in one pass.
//!
//! The request goes upstream as the client wrote it, so the gateway needs only a few facts
//! from it: the model, the shape of `messages` or `prompt` and how much text they hold, `n`,
//! the token limits, `stream`, and the type of every sampling parameter it validates. Building
//! a `serde_json::Value` of the whole body for that (a map and a string for every message) was
//! a sixth of the gateway's own instructions per request. Values of the wrong type are kept as
//! such, so the handler answers with OpenAI's message naming the field rather than a parse
//! error.

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::fmt;

/// Tokens of a prompt of `chars` characters, as admission estimates them before the replica
/// counts: four characters to a token, at least one (the replica emulator counts the same way).
pub fn tokens_of_chars(chars: usize) -> u64 {
    (chars as u64).div_ceil(4).max(1)
}

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

/// A parameter's value as sent, reduced to its type (and its value when it is a number).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) enum Scalar {
    #[default]
    Absent,
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str,
    /// An array: how many entries, and whether all of them are strings.
    Array { len: usize, all_strings: bool },
    Object,
}

impl Scalar {
    /// Its value when it is a number.
    fn number(self) -> Option<f64> {
        match self {
            Scalar::Int(i) => Some(i as f64),
            Scalar::Float(f) => Some(f),
            _ => None,
        }
    }

    /// Absent or null: the parameter is not used.
    fn unset(self) -> bool {
        matches!(self, Scalar::Absent | Scalar::Null)
    }
}

/// What `prompt` holds, as the completions endpoint takes it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) enum Prompt {
    #[default]
    Absent,
    /// How many prompts, and the token ids given instead of text.
    Given { prompts: usize, token_ids: usize },
    /// Not a string, an array of strings, an array of token ids or an array of those.
    Invalid,
}

/// The roles a chat message may have.
const ROLES: [&str; 6] = ["system", "developer", "user", "assistant", "tool", "function"];

/// The endpoints whose bodies are read here.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Endpoint {
    Chat,
    Completions,
    Embeddings,
    /// OpenAI's Responses API.
    Responses,
}

impl Endpoint {
    /// The endpoint at `path`, if it is one of these.
    pub(crate) fn of(path: &str) -> Option<Endpoint> {
        match path {
            "/v1/chat/completions" => Some(Endpoint::Chat),
            "/v1/completions" => Some(Endpoint::Completions),
            "/v1/embeddings" => Some(Endpoint::Embeddings),
            "/v1/responses" => Some(Endpoint::Responses),
            _ => None,
        }
    }

    /// Its path.
    pub(crate) fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
            Endpoint::Embeddings => "/v1/embeddings",
            Endpoint::Responses => "/v1/responses",
        }
    }
}

/// The facts of a chat, completion or embedding request body.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct RequestFacts {
    /// `model`, when it is a string.
    pub model: Option<String>,
    /// How many entries `messages` has, when it is an array.
    pub messages: Option<usize>,
    /// The first message that is not an object with a known `role`.
    pub bad_message: Option<usize>,
    /// What `prompt` holds.
    pub prompt: Prompt,
    /// Characters of text in the messages' contents and the prompt.
    pub text_chars: usize,
    /// What an embedding request's `input` holds (the same shapes as a prompt).
    pub input: Prompt,
    /// Characters of text in `input`.
    pub input_chars: usize,
    /// An embedding request's `encoding_format`, when it is a string.
    pub encoding_format: Option<String>,
    /// An embedding request's `dimensions`.
    pub dimensions: Count,
    /// `n`, the number of choices.
    pub n: Count,
    /// `max_tokens`.
    pub max_tokens: Count,
    /// `max_completion_tokens`, which takes the place of `max_tokens` when given.
    pub max_completion_tokens: Count,
    /// `stream`.
    pub stream: Scalar,
    /// The sampling and output parameters the gateway checks, by name.
    pub params: Params,
}

/// The request parameters whose types and ranges are checked before a request goes upstream.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Params {
    pub temperature: Scalar,
    pub top_p: Scalar,
    pub presence_penalty: Scalar,
    pub frequency_penalty: Scalar,
    pub logprobs: Scalar,
    pub top_logprobs: Scalar,
    pub echo: Scalar,
    pub seed: Scalar,
    pub user: Scalar,
    pub stop: Scalar,
    pub stream_options: Scalar,
}

/// Why a body gave no facts.
#[derive(Debug, PartialEq)]
pub(crate) enum BodyError {
    /// Not JSON; serde's message.
    Invalid(String),
    /// JSON, but not an object.
    NotAnObject,
}

/// A refused request: OpenAI's message, and the parameter it names.
pub(crate) type Problem = (String, &'static str);

impl RequestFacts {
    /// The facts of `body`, a request to `endpoint`, which must be one JSON object.
    pub(crate) fn of_request(body: &[u8], endpoint: Endpoint) -> Result<RequestFacts, BodyError> {
        match endpoint {
            Endpoint::Responses => RequestFacts::of_response_request(body),
            _ => RequestFacts::of(body),
        }
    }

    /// The facts of a Responses API request: `input` as the prompt (its text counted with
    /// `instructions`), `max_output_tokens` as the limit. Read into a `Value`: this endpoint
    /// is not the one served ten thousand times a second.
    fn of_response_request(body: &[u8]) -> Result<RequestFacts, BodyError> {
        use serde_json::Value;
        let value: Value = serde_json::from_slice(body).map_err(|e| BodyError::Invalid(e.to_string()))?;
        let Value::Object(fields) = value else { return Err(BodyError::NotAnObject) };
        let scalar = |name: &str| match fields.get(name) {
            None => Scalar::Absent,
            Some(Value::Null) => Scalar::Null,
            Some(Value::Bool(b)) => Scalar::Bool(*b),
            Some(Value::Number(n)) => n.as_i64().map_or(Scalar::Float(n.as_f64().unwrap_or(f64::NAN)), Scalar::Int),
            Some(Value::String(_)) => Scalar::Str,
            Some(Value::Array(items)) => Scalar::Array { len: items.len(), all_strings: items.iter().all(Value::is_string) },
            Some(Value::Object(_)) => Scalar::Object,
        };
        let count = |name: &str| match fields.get(name) {
            None => Count::Absent,
            Some(Value::Null) => Count::Null,
            Some(v) => v.as_u64().map_or(Count::Other, Count::Is),
        };
        // An input item's text: a string content, or the `text` of each of its parts.
        let item_chars = |item: &Value| -> Option<usize> {
            let content = item.get("content")?;
            match content {
                Value::String(text) => Some(text.chars().count()),
                Value::Array(parts) => Some(parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).map(|t| t.chars().count()).sum()),
                _ => Some(0),
            }
        };
        let (prompt, input_chars) = match fields.get("input") {
            None | Some(Value::Null) => (Prompt::Absent, 0),
            Some(Value::String(text)) => (Prompt::Given { prompts: 1, token_ids: 0 }, text.chars().count()),
            Some(Value::Array(items)) if !items.is_empty() && items.iter().all(Value::is_object) => {
                (Prompt::Given { prompts: 1, token_ids: 0 }, items.iter().filter_map(item_chars).sum())
            }
            Some(_) => (Prompt::Invalid, 0),
        };
        let instructions = fields.get("instructions").and_then(Value::as_str).map_or(0, |t| t.chars().count());
        Ok(RequestFacts {
            model: fields.get("model").and_then(Value::as_str).map(str::to_string),
            prompt,
            text_chars: input_chars + instructions,
            max_tokens: count("max_output_tokens"),
            stream: scalar("stream"),
            params: Params { temperature: scalar("temperature"), top_p: scalar("top_p"), user: scalar("user"), ..Params::default() },
            ..RequestFacts::default()
        })
    }

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

    /// How many prompts: one for a chat, one per entry of a completion's prompt array.
    pub(crate) fn prompts(&self) -> u64 {
        match self.prompt {
            Prompt::Given { prompts, .. } => prompts.max(1) as u64,
            _ => 1,
        }
    }

    /// The prompt's size in tokens, as the emulator and the TPM estimate count it: a token
    /// for every four characters of text (at least one) and one for every token id.
    pub(crate) fn prompt_tokens(&self) -> u64 {
        let ids = match self.prompt {
            Prompt::Given { token_ids, .. } => token_ids as u64,
            _ => 0,
        };
        if ids > 0 && self.text_chars == 0 {
            return ids;
        }
        tokens_of_chars(self.text_chars) + ids
    }

    /// An embedding request's input in tokens, counted as a prompt is.
    pub(crate) fn input_tokens(&self) -> u64 {
        let ids = match self.input {
            Prompt::Given { token_ids, .. } => token_ids as u64,
            _ => 0,
        };
        if ids > 0 && self.input_chars == 0 {
            return ids;
        }
        tokens_of_chars(self.input_chars) + ids
    }

    /// How many inputs an embedding request has, one vector each.
    pub(crate) fn inputs(&self) -> u64 {
        match self.input {
            Prompt::Given { prompts, token_ids } if prompts == 1 && token_ids > 0 => 1,
            Prompt::Given { prompts, .. } => prompts.max(1) as u64,
            _ => 1,
        }
    }

    /// The tokens a request is charged before its answer says: prompt (or input) and the
    /// most it may generate, `default_output` per choice when it does not say.
    pub(crate) fn estimate(&self, endpoint: Endpoint, default_output: u64) -> u64 {
        match endpoint {
            Endpoint::Embeddings => self.input_tokens(),
            _ => self.prompt_tokens() + self.max_output_tokens().unwrap_or(default_output) * self.choices() * self.prompts(),
        }
    }

    /// The first thing wrong with a request to `endpoint`, as `problem` words it.
    pub(crate) fn problem_at(&self, endpoint: Endpoint) -> Option<Problem> {
        match endpoint {
            Endpoint::Chat => self.problem(true),
            Endpoint::Completions => self.problem(false),
            Endpoint::Embeddings => self.embedding_problem(),
            Endpoint::Responses => self.response_request_problem(),
        }
    }

    /// The first thing wrong with a Responses API request, in OpenAI's words.
    fn response_request_problem(&self) -> Option<Problem> {
        let refuse = |message: &str, param: &'static str| Some((message.to_string(), param));
        if self.model.is_none() {
            return refuse("you must provide a model parameter", "model");
        }
        match self.prompt {
            Prompt::Absent => return refuse("'input' is a required property", "input"),
            Prompt::Invalid => return refuse("'input' must be a string or a non-empty array of input items", "input"),
            Prompt::Given { .. } => {}
        }
        if self.max_tokens.is_invalid() {
            return refuse("'max_output_tokens' must be a non-negative integer", "max_output_tokens");
        }
        if !matches!(self.stream, Scalar::Absent | Scalar::Null | Scalar::Bool(_)) {
            return refuse("'stream' must be a boolean", "stream");
        }
        let p = &self.params;
        if let Some(problem) = first_out_of_range(&[("temperature", p.temperature, 0.0, 2.0), ("top_p", p.top_p, 0.0, 1.0)]) {
            return Some(problem);
        }
        if !matches!(p.user, Scalar::Absent | Scalar::Null | Scalar::Str) {
            return refuse("'user' must be a string", "user");
        }
        None
    }

    /// The first thing wrong with an embedding request, in OpenAI's words.
    fn embedding_problem(&self) -> Option<Problem> {
        let refuse = |message: &str, param: &'static str| Some((message.to_string(), param));
        if self.model.is_none() {
            return refuse("you must provide a model parameter", "model");
        }
        match self.input {
            Prompt::Absent => return refuse("'input' is a required property", "input"),
            Prompt::Invalid => return refuse("'input' must be a string, an array of strings, an array of token ids or an array of token-id arrays, not empty", "input"),
            Prompt::Given { .. } => {}
        }
        if self.encoding_format.as_deref().is_some_and(|f| f != "float" && f != "base64") {
            return refuse("'encoding_format' must be 'float' or 'base64'", "encoding_format");
        }
        match self.dimensions {
            Count::Absent | Count::Null => {}
            given if given.get().is_some_and(|d| (1..=65_536).contains(&d)) => {}
            _ => return refuse("'dimensions' must be an integer from 1 to 65536", "dimensions"),
        }
        if !matches!(self.params.user, Scalar::Absent | Scalar::Null | Scalar::Str) {
            return refuse("'user' must be a string", "user");
        }
        None
    }

    /// How many tokens a request may produce per choice, if it says.
    pub(crate) fn max_output_tokens(&self) -> Option<u64> {
        // A null max_completion_tokens (as some clients send for "unset") leaves max_tokens.
        match self.max_completion_tokens {
            Count::Absent | Count::Null => self.max_tokens.get(),
            given => given.get(),
        }
    }

    /// Choices per prompt (`n`), 1 when not given; only meaningful once `problem` is None.
    pub(crate) fn choices(&self) -> u64 {
        self.n.get().unwrap_or(1)
    }

    /// Whether the answer is to be streamed.
    pub(crate) fn streamed(&self) -> bool {
        self.stream == Scalar::Bool(true)
    }

    /// The first thing wrong with a request to the chat (`chat`) or the completions endpoint,
    /// in OpenAI's words, and the parameter it is about; None for a valid request.
    pub(crate) fn problem(&self, chat: bool) -> Option<Problem> {
        let refuse = |message: String, param: &'static str| Some((message, param));
        if self.model.is_none() {
            return refuse("you must provide a model parameter".into(), "model");
        }
        if chat {
            if self.messages.is_none_or(|n| n == 0) {
                return refuse("'messages' must be a non-empty array".into(), "messages");
            }
            if let Some(i) = self.bad_message {
                return refuse(format!("'messages[{i}]' must be an object with a 'role' of {}", ROLES.join(", ")), "messages");
            }
        } else {
            match self.prompt {
                Prompt::Absent => return refuse("'prompt' is a required property".into(), "prompt"),
                Prompt::Invalid => {
                    return refuse("'prompt' must be a string, an array of strings, an array of token ids or an array of token-id arrays, not empty".into(), "prompt")
                }
                Prompt::Given { .. } => {}
            }
        }
        match self.n {
            Count::Absent | Count::Null => {}
            given if given.get().is_some_and(|n| (1..=128).contains(&n)) => {}
            _ => return refuse("'n' must be an integer from 1 to 128".into(), "n"),
        }
        for (field, value) in [("max_tokens", self.max_tokens), ("max_completion_tokens", self.max_completion_tokens)] {
            if value.is_invalid() {
                return refuse(format!("'{field}' must be a non-negative integer"), field);
            }
        }
        if !matches!(self.stream, Scalar::Absent | Scalar::Null | Scalar::Bool(_)) {
            return refuse("'stream' must be a boolean".into(), "stream");
        }
        let p = &self.params;
        if let Some(problem) = first_out_of_range(&[
            ("temperature", p.temperature, 0.0, 2.0),
            ("top_p", p.top_p, 0.0, 1.0),
            ("presence_penalty", p.presence_penalty, -2.0, 2.0),
            ("frequency_penalty", p.frequency_penalty, -2.0, 2.0),
        ]) {
            return Some(problem);
        }
        let integer_in = |value: Scalar, low: i64, high: i64| matches!(value, Scalar::Int(i) if (low..=high).contains(&i));
        if chat {
            if !matches!(p.logprobs, Scalar::Absent | Scalar::Null | Scalar::Bool(_)) {
                return refuse("'logprobs' must be a boolean".into(), "logprobs");
            }
            if !p.top_logprobs.unset() {
                if !integer_in(p.top_logprobs, 0, 20) {
                    return refuse("'top_logprobs' must be an integer from 0 to 20".into(), "top_logprobs");
                }
                if p.logprobs != Scalar::Bool(true) {
                    return refuse("'logprobs' must be true when 'top_logprobs' is given".into(), "logprobs");
                }
            }
        } else {
            if !p.logprobs.unset() && !integer_in(p.logprobs, 0, 20) {
                return refuse("'logprobs' must be an integer from 0 to 20".into(), "logprobs");
            }
            if !matches!(p.echo, Scalar::Absent | Scalar::Null | Scalar::Bool(_)) {
                return refuse("'echo' must be a boolean".into(), "echo");
            }
        }
        if !p.seed.unset() && !matches!(p.seed, Scalar::Int(_)) {
            return refuse("'seed' must be an integer".into(), "seed");
        }
        if !matches!(p.user, Scalar::Absent | Scalar::Null | Scalar::Str) {
            return refuse("'user' must be a string".into(), "user");
        }
        if !matches!(p.stop, Scalar::Absent | Scalar::Null | Scalar::Str | Scalar::Array { all_strings: true, .. }) {
            return refuse("'stop' must be a string or an array of strings".into(), "stop");
        }
        if !matches!(p.stream_options, Scalar::Absent | Scalar::Null | Scalar::Object) {
            return refuse("'stream_options' must be an object".into(), "stream_options");
        }
        None
    }
}

/// The first of `fields` (name, value, lowest, highest) sent with a value that is not a number
/// in its range, in OpenAI's words.
fn first_out_of_range(fields: &[(&'static str, Scalar, f64, f64)]) -> Option<Problem> {
    fields
        .iter()
        .find(|(_, value, low, high)| !value.unset() && !value.number().is_some_and(|v| (*low..=*high).contains(&v)))
        .map(|(field, _, low, high)| (format!("'{field}' must be a number from {low} to {high}"), *field))
}

mod read;
use read::{Got, Read};

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn facts(body: &Value) -> RequestFacts {
        RequestFacts::of(&serde_json::to_vec(body).unwrap()).unwrap()
    }

    fn response_request(body: &Value) -> RequestFacts {
        RequestFacts::of_request(&serde_json::to_vec(body).unwrap(), Endpoint::Responses).unwrap()
    }

    #[test]
    fn responses_api_requests_are_read_and_checked() {
        let plain = response_request(&json!({"model": "m", "input": "abcdefgh", "max_output_tokens": 7, "stream": true}));
        assert_eq!((plain.model.as_deref(), plain.prompt_tokens(), plain.max_output_tokens(), plain.streamed()), (Some("m"), 2, Some(7), true));
        assert_eq!(plain.estimate(Endpoint::Responses, 256), 9);
        assert_eq!(plain.problem_at(Endpoint::Responses), None);
        // Items with a string content or with parts, and the instructions, all count as prompt.
        let items = response_request(&json!({"model": "m", "instructions": "abcd", "input": [
            {"role": "user", "content": "abcd"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "abcdefgh"}, {"type": "input_image", "image_url": "x"}]},
            {"type": "function_call_output", "call_id": "c", "output": "{}"}
        ], "temperature": 0.5, "metadata": {"k": "v"}, "unknown": 1}));
        assert_eq!((items.prompt_tokens(), items.max_output_tokens()), (4, None));
        assert_eq!(items.problem_at(Endpoint::Responses), None);
        for (body, param) in [
            (json!({"input": "x"}), "model"),
            (json!({"model": "m"}), "input"),
            (json!({"model": "m", "input": 5}), "input"),
            (json!({"model": "m", "input": []}), "input"),
            (json!({"model": "m", "input": ["x"]}), "input"),
            (json!({"model": "m", "input": "x", "max_output_tokens": -1}), "max_output_tokens"),
            (json!({"model": "m", "input": "x", "stream": "yes"}), "stream"),
            (json!({"model": "m", "input": "x", "temperature": 3}), "temperature"),
            (json!({"model": "m", "input": "x", "top_p": "all"}), "top_p"),
        ] {
            assert_eq!(response_request(&body).problem_at(Endpoint::Responses).map(|p| p.1), Some(param), "{body}");
        }
        assert_eq!(RequestFacts::of_request(b"[]", Endpoint::Responses), Err(BodyError::NotAnObject));
        assert!(matches!(RequestFacts::of_request(b"{", Endpoint::Responses), Err(BodyError::Invalid(_))));
    }

    #[test]
    fn the_facts_of_real_request_shapes() {
        let chat = facts(&json!({"model": "m", "messages": [
            {"role": "system", "content": "héllo \"there\""},
            {"role": "user", "content": [{"type": "text", "text": "abc"}, {"type": "image_url", "image_url": {"url": "x"}}]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "t"}]}],
            "n": 3, "max_completion_tokens": 9, "max_tokens": 4, "stream": true, "stream_options": {"include_usage": true}}));
        assert_eq!((chat.model.as_deref(), chat.messages, chat.bad_message), (Some("m"), Some(3), None));
        assert_eq!(chat.text_chars, "héllo \"there\"".len() + 3);
        assert_eq!((chat.choices(), chat.max_output_tokens(), chat.streamed()), (3, Some(9), true));
        assert_eq!(chat.params.stream_options, Scalar::Object);
        assert_eq!(chat.problem(true), None);
        let unset = facts(&json!({"model": "m", "messages": [], "max_tokens": 7, "max_completion_tokens": null}));
        assert_eq!(unset.max_output_tokens(), Some(7), "a null max_completion_tokens leaves max_tokens");

        let prompt = |p: Value| facts(&json!({"model": "m", "prompt": p}));
        let one = prompt(json!("abcdefgh"));
        assert_eq!((one.prompt, one.prompts(), one.prompt_tokens()), (Prompt::Given { prompts: 1, token_ids: 0 }, 1, 2));
        let strings = prompt(json!(["ab", "cde", ""]));
        assert_eq!((strings.prompts(), strings.text_chars, strings.prompt_tokens()), (3, 5, 2));
        let ids = prompt(json!([1, 2, 3]));
        assert_eq!((ids.prompts(), ids.prompt_tokens()), (1, 3));
        let id_arrays = prompt(json!([[1, 2], [3, 4, 5]]));
        assert_eq!((id_arrays.prompts(), id_arrays.prompt_tokens()), (2, 5));
        for bad in [json!([]), json!(["ab", [1]]), json!([1, "a"]), json!([[]]), json!([-1]), json!([[1.5]]), json!(null), json!(7), json!({"a": 1})] {
            let f = prompt(bad.clone());
            assert_eq!(f.prompt, Prompt::Invalid, "{bad}");
            assert_eq!(f.problem(false).map(|p| p.1), Some("prompt"), "{bad}");
        }
        assert_eq!(facts(&json!({"model": "m"})).problem(false).map(|p| p.1), Some("prompt"));

        let last_wins = RequestFacts::of(br#"{"model":"a","model":"b","stream":true,"stream":false,"messages":[{"role":"user","content":"abcd"}],"messages":"x"}"#).unwrap();
        assert_eq!((last_wins.model.as_deref(), last_wins.streamed(), last_wins.messages, last_wins.text_chars), (Some("b"), false, None, 0));
    }

    #[test]
    fn embedding_requests_are_read_and_checked() {
        let valid = facts(&json!({"model": "e", "input": ["abcd", "efghijkl"], "encoding_format": "base64", "dimensions": 8, "user": "u"}));
        assert_eq!(valid.problem_at(Endpoint::Embeddings), None);
        assert_eq!((valid.inputs(), valid.input_tokens(), valid.dimensions.get()), (2, 3, Some(8)));
        assert_eq!(valid.estimate(Endpoint::Embeddings, 256), 3, "an embedding is charged its input only");
        let ids = facts(&json!({"model": "e", "input": [1, 2, 3]}));
        assert_eq!((ids.inputs(), ids.input_tokens()), (1, 3));
        assert_eq!(facts(&json!({"model": "e", "input": [[1, 2], [3]]})).inputs(), 2);
        assert_eq!(facts(&json!({"model": "e", "input": "x", "encoding_format": null})).problem_at(Endpoint::Embeddings), None);
        for (body, param) in [
            (json!({"input": "x"}), "model"),
            (json!({"model": "e"}), "input"),
            (json!({"model": "e", "input": []}), "input"),
            (json!({"model": "e", "input": {"a": 1}}), "input"),
            (json!({"model": "e", "input": "x", "encoding_format": "int8"}), "encoding_format"),
            (json!({"model": "e", "input": "x", "dimensions": 0}), "dimensions"),
            (json!({"model": "e", "input": "x", "dimensions": "8"}), "dimensions"),
            (json!({"model": "e", "input": "x", "user": 1}), "user"),
        ] {
            assert_eq!(facts(&body).problem_at(Endpoint::Embeddings).map(|p| p.1), Some(param), "{body}");
        }
        assert_eq!(Endpoint::of("/v1/embeddings").map(Endpoint::path), Some("/v1/embeddings"));
        assert_eq!(Endpoint::of("/v1/responses"), Some(Endpoint::Responses));
        assert_eq!(Endpoint::of("/v1/images/generations"), None);
    }

    #[test]
    fn what_real_clients_send_is_valid() {
        let chat = json!({"model": "m", "messages": [{"role": "developer", "content": "be brief"}, {"role": "user", "content": "hi", "name": "u"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c", "content": "42"}],
            "n": 2, "logprobs": true, "top_logprobs": 2, "max_completion_tokens": 5, "temperature": 0.3, "top_p": 1, "seed": -7,
            "stop": ["\n", "END"], "user": "u", "metadata": {"a": "b"}, "store": false, "presence_penalty": -0.5, "frequency_penalty": 2,
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}], "tool_choice": "auto",
            "response_format": {"type": "json_object"}, "logit_bias": {"1": 1}, "parallel_tool_calls": false, "top_k": 5, "repetition_penalty": 1.1,
            "stream": false, "stream_options": null});
        assert_eq!(facts(&chat).problem(true), None);
        let completion = json!({"model": "m", "prompt": "hello", "echo": true, "logprobs": 2, "max_tokens": 3, "n": 2, "best_of": 2, "suffix": null,
            "stop": "\n", "temperature": 0, "seed": 1, "stream": true});
        assert_eq!(facts(&completion).problem(false), None);
    }

    #[test]
    fn each_invalid_parameter_is_named() {
        let base = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        let cases: [(&str, Value, &str); 24] = [
            ("model", json!(7), "model"),
            ("messages", json!([]), "messages"),
            ("messages", json!("hi"), "messages"),
            ("messages", json!([{"content": "no role"}]), "messages"),
            ("messages", json!([{"role": "wizard", "content": "x"}]), "messages"),
            ("messages", json!(["just text"]), "messages"),
            ("n", json!(0), "n"),
            ("n", json!(129), "n"),
            ("n", json!("2"), "n"),
            ("max_tokens", json!(-1), "max_tokens"),
            ("max_completion_tokens", json!(2.5), "max_completion_tokens"),
            ("stream", json!("yes"), "stream"),
            ("temperature", json!("hot"), "temperature"),
            ("temperature", json!(2.5), "temperature"),
            ("top_p", json!(-0.1), "top_p"),
            ("presence_penalty", json!(3), "presence_penalty"),
            ("frequency_penalty", json!([1]), "frequency_penalty"),
            ("logprobs", json!(3), "logprobs"),
            ("top_logprobs", json!(21), "top_logprobs"),
            ("top_logprobs", json!(2), "logprobs"),
            ("seed", json!(1.5), "seed"),
            ("user", json!(5), "user"),
            ("stop", json!([1, 2]), "stop"),
            ("stream_options", json!(true), "stream_options"),
        ];
        for (field, value, named) in cases {
            let mut body = base.clone();
            body[field] = value.clone();
            let (message, param) = facts(&body).problem(true).unwrap_or_else(|| panic!("{field}={value} was taken"));
            assert_eq!(param, named, "{field}={value}: {message}");
            assert!(message.contains(named), "{message}");
        }
        let completion = |field: &str, value: Value| {
            let mut body = json!({"model": "m", "prompt": "x"});
            body[field] = value;
            facts(&body).problem(false).map(|p| p.1)
        };
        assert_eq!(completion("logprobs", json!(true)), Some("logprobs"));
        assert_eq!(completion("logprobs", json!(21)), Some("logprobs"));
        assert_eq!(completion("echo", json!("yes")), Some("echo"));
        assert_eq!(completion("logprobs", json!(5)), None);
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
