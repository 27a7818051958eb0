//! Passing a replica's event stream through: counting its tokens, learning its pace, and
//! ending it cleanly when a higher tier takes its slot.

use super::*;

impl Gateway {
    /// Passes an SSE stream through, counting tokens, and ends it cleanly when cut off.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn stream_through(
        self: Arc<Self>,
        resp: crate::upstream::Answer,
        guard: SlotGuard,
        cut: Arc<Notify>,
        tenant: usize,
        estimate: u64,
        endpoint: Endpoint,
        prompt: u64,
    ) -> Response {
        struct Pass {
            upstream: futures_util::stream::BoxStream<'static, Result<Bytes, String>>,
            buffer: Vec<u8>,
            guard: Option<SlotGuard>,
            cut: Arc<Notify>,
            gateway: Arc<Gateway>,
            tenant: usize,
            estimate: u64,
            prompt: u64,
            completion: u64,
            usage_seen: bool,
            /// One more than the highest choice index seen: each is ended when cut off.
            choices_seen: u64,
            endpoint: Endpoint,
            /// The first event (a Responses stream: the response object of the first event
            /// that carries one), the shape of the cut-off tail.
            template: Option<Value>,
            /// A Responses stream's last `sequence_number`.
            sequence: u64,
            done: bool,
            replica: ReplicaId,
            last_token: Option<Instant>,
        }
        impl Pass {
            fn finish(&mut self) {
                if let Some(g) = self.guard.take() {
                    drop(g);
                    let prompt = self.prompt;
                    self.gateway.settle(self.tenant, self.estimate, prompt, self.completion);
                }
            }
            /// Counts the tokens of complete events in the buffer; returns the bytes to pass on.
            fn take_events(&mut self) -> Vec<u8> {
                let Some(end) = self.buffer.windows(2).rposition(|w| w == b"\n\n") else { return Vec::new() };
                let out: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let mut tokens = 0u64;
                for event in out.split(|b| *b == b'\n') {
                    let Some(data) = event.strip_prefix(b"data: ") else { continue };
                    let Ok(v) = serde_json::from_slice::<Value>(data) else { continue };
                    if self.endpoint == Endpoint::Responses {
                        tokens += self.take_response_event(&v);
                        continue;
                    }
                    if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                        self.usage_seen = true;
                        self.prompt = u.get("prompt_tokens").and_then(Value::as_u64).unwrap_or(self.prompt);
                        self.completion = u.get("completion_tokens").and_then(Value::as_u64).unwrap_or(self.completion);
                    }
                    if let Some(choices) = v.get("choices").and_then(Value::as_array) {
                        for index in choices.iter().filter_map(|c| c.get("index").and_then(Value::as_u64)) {
                            self.choices_seen = self.choices_seen.max(index.saturating_add(1));
                        }
                        let here = choices
                            .iter()
                            .filter(|c| {
                                c.pointer("/delta/content").and_then(Value::as_str).is_some_and(|s| !s.is_empty())
                                    || c.get("text").and_then(Value::as_str).is_some_and(|s| !s.is_empty())
                            })
                            .count() as u64;
                        tokens += here;
                        if !self.usage_seen {
                            self.completion += here;
                        }
                    }
                    if self.template.is_none() {
                        self.template = Some(v);
                    }
                }
                if tokens > 0 {
                    let now = Instant::now();
                    // The first token's wait is prefill and queueing, not the batch's pace.
                    if let Some(last) = self.last_token.replace(now) {
                        self.gateway.observe_pace(self.replica, (now - last).as_secs_f64() * 1000.0 / tokens as f64);
                    }
                }
                out
            }
            /// Reads one event of a Responses stream: its text deltas are tokens, and the
            /// usage comes with the response that ends it; returns the tokens it carried.
            fn take_response_event(&mut self, event: &Value) -> u64 {
                self.sequence = self.sequence.max(event.get("sequence_number").and_then(Value::as_u64).unwrap_or(0));
                if let Some(response) = event.get("response") {
                    if let Some(u) = response.get("usage").filter(|u| !u.is_null()) {
                        self.usage_seen = true;
                        self.prompt = u.get("input_tokens").and_then(Value::as_u64).unwrap_or(self.prompt);
                        self.completion = u.get("output_tokens").and_then(Value::as_u64).unwrap_or(self.completion);
                    }
                    if self.template.is_none() {
                        self.template = Some(response.clone());
                    }
                }
                let delta = event.get("type").and_then(Value::as_str) == Some("response.output_text.delta")
                    && event.get("delta").and_then(Value::as_str).is_some_and(|d| !d.is_empty());
                if delta && !self.usage_seen {
                    self.completion += 1;
                }
                u64::from(delta)
            }
            /// How a stream cut off for realtime ends: a Responses stream with its response
            /// `incomplete` for the reason `preempted`, the others with a last chunk per choice
            /// whose `finish_reason` is `preempted`, then `[DONE]`.
            fn cut_off_tail(&self) -> Bytes {
                if self.endpoint == Endpoint::Responses {
                    let mut response = self.template.clone().unwrap_or_else(|| json!({}));
                    response["status"] = json!("incomplete");
                    response["incomplete_details"] = json!({"reason": "preempted"});
                    let event = json!({"type": "response.incomplete", "sequence_number": self.sequence + 1, "response": response});
                    return Bytes::from(format!("event: response.incomplete\ndata: {event}\n\n"));
                }
                let mut v = self.template.clone().unwrap_or_else(|| json!({}));
                if let Some(obj) = v.as_object_mut() {
                    obj.remove("usage");
                }
                let mut tail = String::new();
                for index in 0..self.choices_seen.min(128) {
                    let choice = if self.endpoint == Endpoint::Chat {
                        json!({"index": index, "delta": {}, "logprobs": null, "finish_reason": "preempted"})
                    } else {
                        json!({"index": index, "text": "", "logprobs": null, "finish_reason": "preempted"})
                    };
                    v["choices"] = json!([choice]);
                    tail.push_str(&format!("data: {v}\n\n"));
                }
                tail.push_str("data: [DONE]\n\n");
                Bytes::from(tail)
            }
        }
        impl Drop for Pass {
            fn drop(&mut self) {
                self.finish();
            }
        }
        let pass = Pass {
            replica: guard.replica,
            last_token: None,
            upstream: resp.into_stream(),
            buffer: Vec::new(),
            guard: Some(guard),
            cut,
            gateway: self.clone(),
            tenant,
            estimate,
            prompt,
            completion: 0,
            usage_seen: false,
            choices_seen: 1,
            endpoint,
            template: None,
            sequence: 0,
            done: false,
        };
        let body = futures_util::stream::unfold(pass, |mut pass| async move {
            if pass.done {
                return None;
            }
            loop {
                let next = tokio::select! {
                    chunk = pass.upstream.next() => Some(chunk),
                    _ = pass.cut.notified() => None,
                };
                match next {
                    None => {
                        pass.done = true;
                        let tail = pass.cut_off_tail();
                        pass.finish();
                        return Some((Ok::<Bytes, std::io::Error>(tail), pass));
                    }
                    Some(Some(Ok(bytes))) => {
                        pass.buffer.extend_from_slice(&bytes);
                        let out = pass.take_events();
                        if !out.is_empty() {
                            return Some((Ok(Bytes::from(out)), pass));
                        }
                    }
                    Some(Some(Err(e))) => {
                        pass.done = true;
                        pass.finish();
                        return Some((Err(std::io::Error::other(e)), pass));
                    }
                    Some(None) => {
                        pass.done = true;
                        let rest = std::mem::take(&mut pass.buffer);
                        pass.finish();
                        return Some((Ok(Bytes::from(rest)), pass));
                    }
                }
            }
        });
        let mut response = crate::openai::event_stream(Body::from_stream(body));
        self.rate_headers(tenant, response.headers_mut());
        response
    }
}
